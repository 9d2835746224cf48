// A command run on a database without its tables hints at `breakwater migrate`. When the URL
// came from BREAKWATER_DB_URL, the hint is `breakwater migrate` alone, which reads it too: the
// URL shown with its password hidden (`--db postgres://app:***@db/app`) is a command that does
// not work, and putting the password back in argv is what the variable is there to avoid.
import { EventEmitter } from 'node:events'
import { existsSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
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

// The same hint for a SQLite file that is missing or holds no breakwater table, given before the
// database is opened (nothing may create the file): it named --db even when the URL came from
// BREAKWATER_DB_URL; it is `breakwater migrate` alone then, as above.
describe('the hint to migrate a missing or foreign SQLite file', () => {
  let empty: TestSqlite
  let foreign: TestSqlite

  beforeAll(async () => {
    empty = createTestSqlite('hint-missing')
    foreign = createTestSqlite('hint-foreign')
    const db = await openDatabase(foreign.url)
    try {
      await db.execute('CREATE TABLE other (id TEXT)')
    } finally {
      await db.close()
    }
  })

  afterAll(() => {
    empty?.cleanup()
    foreign?.cleanup()
  })

  const cases = () =>
    [
      ['missing', empty.url, 'which creates it'],
      ['foreign', foreign.url, 'not a breakwater database'],
    ] as const

  it.each(commands({}).map(([name]) => name))(
    '%s: the URL from BREAKWATER_DB_URL gives `breakwater migrate` alone',
    async (name) => {
      for (const [, url, why] of cases()) {
        const [, entry, args] = commands({ BREAKWATER_DB_URL: url }).find(([n]) => n === name)!
        const result = await runCaptured(entry, args)
        expect(result.code).toBe(1)
        expect(result.stderr).toContain(why)
        expect(result.stderr).toContain('run `breakwater migrate` first')
        expect(result.stderr).not.toContain('breakwater migrate --db')
      }
      expect(existsSync(empty.filename)).toBe(false)
    },
  )

  it.each(commands({}).map(([name]) => name))(
    '%s: a URL given with --db is named in the hint',
    async (name) => {
      for (const [, url, why] of cases()) {
        const [, entry, args] = commands({}).find(([n]) => n === name)!
        const result = await runCaptured(entry, [...args, '--db', url])
        expect(result.code).toBe(1)
        expect(result.stderr).toContain(why)
        expect(result.stderr).toContain(`run \`breakwater migrate --db ${url}\` first`)
      }
    },
  )
})
