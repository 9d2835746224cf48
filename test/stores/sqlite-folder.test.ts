// The SQLite driver creates the folders of its file one level at a time: Node 20's recursive
// mkdir never returned for a folder under /proc (it loops on ENOENT for a parent stat finds).
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
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

  // SQLite created a file called `new` for '/data/new/', and '/data/new/.' failed with its bare
  // "unable to open database file" after the folder was created.
  it.each(['new/', 'new/.', 'new/..'])(
    'refuses %j, which names a folder, as a folder',
    async (name) => {
      const dir = mkdtempSync(join(tmpdir(), 'breakwater-sqlite-folder-'))
      try {
        const filename = `${dir}/${name}`
        await expect(createSqliteDriver({ filename })).rejects.toThrow(
          new InvalidOptionError('filename', 'a file, not a folder', filename),
        )
        expect(existsSync(join(dir, 'new'))).toBe(false)
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    },
  )

  // /dev/null failed with SQLite's bare "disk I/O error", which does not say that the path is
  // no file at all.
  it.runIf(existsSync('/dev/null'))(
    'refuses a path that is not a regular file (a device), naming what it is',
    async () => {
      await expect(createSqliteDriver({ filename: '/dev/null' })).rejects.toThrow(
        new InvalidOptionError(
          'filename',
          'a regular file (/dev/null is a character device)',
          '/dev/null',
        ),
      )
    },
  )

  // Root may write any folder, so the refusal is seen through a child run as nobody.
  it.runIf(canRunAsNobody())(
    'names the folder this user may not write, for a new file and an existing one',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'breakwater-sqlite-folder-'))
      try {
        chmodSync(dir, 0o755)
        const folder = join(dir, 'ro')
        mkdirSync(folder, { mode: 0o755 })
        const existing = join(folder, 'exist.db')
        await (await createSqliteDriver({ filename: existing })).close()
        // The file itself is writable: only the folder is not.
        chmodSync(existing, 0o666)
        const filenames = [join(folder, 'new.db'), existing]
        expect(openAsNobody(filenames)).toEqual(
          filenames.map((filename) => {
            const name = filename.slice(folder.length + 1)
            return {
              code: 'INVALID_OPTION',
              message: new InvalidOptionError(
                'filename',
                `a file in a folder this user can write (${folder} is not: EACCES; SQLite creates ${name}-wal and ${name}-shm there, even to read a WAL database)`,
                filename,
              ).message,
            }
          }),
        )
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    },
  )
})

const repo = fileURLToPath(new URL('../..', import.meta.url))
const opener = fileURLToPath(new URL('./fixtures/open-sqlite.ts', import.meta.url))

function canRunAsNobody(): boolean {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false
  return spawnSync('runuser', ['-u', 'nobody', '--', 'true']).status === 0
}

function openAsNobody(filenames: readonly string[]): unknown {
  const child = spawnSync(
    'runuser',
    ['-u', 'nobody', '--', process.execPath, '--import', 'tsx', opener, ...filenames],
    { cwd: repo, encoding: 'utf8' },
  )
  if (child.status !== 0) throw new Error(`open-sqlite failed: ${child.stderr}`)
  return JSON.parse(child.stdout)
}
