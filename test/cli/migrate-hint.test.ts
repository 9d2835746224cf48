// A command run on a database without its tables hints at `breakwater migrate`. When the URL
// came from BREAKWATER_DB_URL, the hint is `breakwater migrate` alone, which reads it too: the
// URL shown with its password hidden (`--db postgres://app:***@db/app`) is a command that does
// not work, and putting the password back in argv is what the variable is there to avoid.
import { EventEmitter } from 'node:events'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { type CapturedEntry, runCaptured } from './captured.js'

type Env = Readonly<Record<string, string | undefined>>

let database: TestDatabase

beforeAll(async () => {
  // Empty: no breakwater table at all.
  database = await createTestDatabase('cli_migrate_hint')
})

afterAll(async () => {
  await database?.drop()
})

const quiet = { stdout: { write: () => {} }, signals: new EventEmitter() }

function commands(env: Env): ReadonlyArray<readonly [string, CapturedEntry, string[]]> {
  return [
    ['outbox stats', (args, deps) => outboxCommand(args, { ...deps, env }), ['stats']],
    ['saga list', (args, deps) => sagaCommand(args, { ...deps, env }), ['list']],
    ['relay', (args, deps) => relayCommand(args, { ...quiet, ...deps, env }), []],
  ]
}

describe('the hint to migrate an unmigrated PostgreSQL database', () => {
  it.each(commands({}).map(([name]) => name))(
    '%s: the URL from BREAKWATER_DB_URL is not put back on the command line',
    async (name) => {
      const [, entry, args] = commands({ BREAKWATER_DB_URL: database.url }).find(
        ([n]) => n === name,
      )!
      const result = await runCaptured(entry, args)
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('run `breakwater migrate` first')
      expect(result.stderr).not.toContain('breakwater migrate --db')
    },
  )

  it.each(commands({}).map(([name]) => name))(
    '%s: a URL given with --db is named in the hint',
    async (name) => {
      const [, entry, args] = commands({}).find(([n]) => n === name)!
      const result = await runCaptured(entry, [...args, '--db', database.url])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain('run `breakwater migrate --db postgres://')
    },
  )
})
