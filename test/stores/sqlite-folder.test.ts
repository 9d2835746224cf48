// The SQLite driver creates the folders of its file one level at a time: Node 20's recursive
// mkdir never returned for a folder under /proc (it loops on ENOENT for a parent stat finds).
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createSqliteDriver } from '../../src/stores/sqlite.js'

describe('createSqliteDriver: the folders of its file', () => {
  it.runIf(process.platform === 'linux' && existsSync('/proc/self'))(
    'refuses a folder that cannot be created, naming the path and the folder',
    async () => {
      const filename = '/proc/nope/deeper/x.db'
      const error = await createSqliteDriver({ filename }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).code).toBe('INVALID_OPTION')
      expect((error as InvalidOptionError).option).toBe('filename')
      expect((error as InvalidOptionError).value).toBe(filename)
      expect((error as InvalidOptionError).message).toContain('creating /proc/nope failed')
    },
  )

  it('still creates every missing level of a deep path', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'breakwater-sqlite-folder-'))
    try {
      const filename = join(dir, 'a', 'b', 'c', 'x.db')
      const db = await createSqliteDriver({ filename })
      await db.close()
      expect(statSync(filename).isFile()).toBe(true)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('takes folders that already exist, some of them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'breakwater-sqlite-folder-'))
    try {
      const first = await createSqliteDriver({ filename: join(dir, 'a', 'one.db') })
      await first.close()
      const second = await createSqliteDriver({ filename: join(dir, 'a', 'b', 'two.db') })
      await second.close()
      expect(statSync(join(dir, 'a', 'b', 'two.db')).isFile()).toBe(true)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
