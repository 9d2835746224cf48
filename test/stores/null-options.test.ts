// `null` for a store option was taken as its default wherever it was read with `?? default`:
// createSqliteDriver({ busyTimeoutMs: null }) waited 5 s, createPostgresDriver({ maxConnections:
// null }) opened 10. Only undefined (or leaving it out) means the default: every option given as
// null is refused at construction with INVALID_OPTION naming it. Nothing connects to PostgreSQL:
// the pool connects lazily and the checks come first.
import { afterAll, beforeAll, describe, it } from 'vitest'
import {
  createPostgresDriver,
  createSqliteDriver,
  openDatabase,
  runMigrations,
  type SqlDriver,
} from '../../src/stores/index.js'
import { runMigrationsOptions } from '../../src/stores/migrations.js'
import { openOptions } from '../../src/stores/open.js'
import { postgresDriverOptions } from '../../src/stores/postgres.js'
import { sqliteDriverOptions } from '../../src/stores/sqlite.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'

let db: SqlDriver
beforeAll(async () => {
  db = await createSqliteDriver({ filename: ':memory:' })
})
afterAll(async () => {
  await db?.close()
})

const closed = async (opened: Promise<{ close(): Promise<void> }>) => (await opened).close()
const postgresUrl = 'postgres://app@127.0.0.1:1/app'

/** The driver's own settings without the one the URL gives (refused there whatever its value). */
function without(keys: ReadonlySet<string>, given: string): ReadonlySet<string> {
  return new Set([...keys].filter((key) => key !== given))
}

const bags: Record<string, NullOptionCase> = {
  createSqliteDriver: {
    build: (o) => closed(createSqliteDriver(o)),
    good: { filename: ':memory:' },
    keys: sqliteDriverOptions,
    prefix: undefined,
  },
  createPostgresDriver: {
    build: (o) => closed(createPostgresDriver(o as never)),
    good: { connectionString: postgresUrl },
    keys: postgresDriverOptions,
    prefix: undefined,
  },
  openDatabase: {
    build: (o) => closed(openDatabase('sqlite::memory:', o)),
    good: {},
    keys: openOptions,
    prefix: 'options',
  },
  'openDatabase sqlite settings': {
    build: (o) => closed(openDatabase('sqlite::memory:', { sqlite: o })),
    good: {},
    keys: without(sqliteDriverOptions, 'filename'),
    prefix: 'options.sqlite',
  },
  'openDatabase postgres settings': {
    build: (o) => closed(openDatabase('sqlite::memory:', { postgres: o })),
    good: {},
    keys: without(postgresDriverOptions, 'connectionString'),
    prefix: 'options.postgres',
  },
  runMigrations: {
    build: (o) => runMigrations(db, 'null-options', [], o),
    good: {},
    keys: runMigrationsOptions,
    prefix: undefined,
  },
}

describe('store options given as null', () => {
  it.each(Object.keys(bags))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags[name]!),
  )

  it.each(Object.keys(bags))('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags[name]!),
  )
})
