// The admin commands and `breakwater migrate` against a PostgreSQL server that does not answer,
// or a database that is not there: the message says which URL could not be opened (pg connects
// only at the first statement, so this used to surface as the command's own failure, with a
// bare "connect ECONNREFUSED" and, for a missing database, a hint to run migrate, which does
// not create databases).
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { outboxMigrations } from '../../src/outbox/index.js'
import { freeLoopbackPort } from '../support/loopback.js'
import { postgresAdminUrl } from '../support/postgres.js'
import { type CapturedEntry, runCaptured } from './captured.js'

const migrate: CapturedEntry = (args, deps) =>
  migrateCommand(args, { capabilities: { outbox: outboxMigrations }, ...deps })

const commands: ReadonlyArray<readonly [string, CapturedEntry, readonly string[]]> = [
  ['outbox stats', outboxCommand, ['stats']],
  ['saga list', sagaCommand, ['list']],
  ['migrate', migrate, []],
]

describe('a PostgreSQL database that cannot be opened', () => {
  it.each(commands)('%s names the URL of a server that does not answer', async (_, entry, args) => {
    const port = await freeLoopbackPort()
    const url = `postgres://app:hunter2-pw@127.0.0.1:${port}/app`
    const result = await runCaptured(entry, [...args, '--db', url])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain(`cannot open postgres://app:***@127.0.0.1:${port}/app: `)
    expect(result.stderr).toContain('ECONNREFUSED')
    expect(result.stderr).not.toContain('hunter2')
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
  })

  // pg reads a password under a percent-encoded query key too (`pass%77ord`), which the message
  // used to show whole.
  it.each(commands)('%s hides a password under an encoded query key', async (_, entry, args) => {
    const port = await freeLoopbackPort()
    const url = `postgres://app@127.0.0.1:${port}/app?pass%77ord=hunter2-pw`
    const result = await runCaptured(entry, [...args, '--db', url])
    expect(result.code).toBe(1)
    // (outbox and saga write through the logger, which hides a lone user name as a token.)
    expect(result.stderr).toContain(`@127.0.0.1:${port}/app?pass%77ord=***: `)
    expect(result.stderr).not.toContain('hunter2')
  })

  it.each(commands)(
    '%s names a database that does not exist, without a hint to migrate',
    async (_, entry, args) => {
      const url = new URL(postgresAdminUrl())
      const missing = `bw_missing_${randomBytes(4).toString('hex')}`
      url.pathname = `/${missing}`
      const result = await runCaptured(entry, [...args, '--db', url.toString()])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('cannot open postgres://')
      expect(result.stderr).toContain(`database "${missing}" does not exist`)
      expect(result.stderr).not.toContain('run `breakwater migrate')
      expect(result.stderr).not.toContain(url.password)
    },
  )
})

describe('a sqlite: URL that names a folder', () => {
  it('is refused as not a file, a bad argument (exit 2), with nothing created in it', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'breakwater-cli-folder-'))
    try {
      const result = await runCaptured(outboxCommand, ['stats', '--db', `sqlite:${folder}`])
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        `breakwater outbox: --db: filename: expected a file, not a folder, got ${JSON.stringify(folder)}`,
      )
      expect(readdirSync(folder)).toEqual([])
    } finally {
      rmSync(folder, { recursive: true, force: true })
    }
  })
})
