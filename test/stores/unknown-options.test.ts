// A misspelt option of a store factory is refused at construction, naming it: it used to be
// dropped without a word and the driver opened with its default (`busyTimeoutMS` gave 5 s).
import { afterAll, beforeAll, describe, it } from 'vitest'
import {
  createPostgresDriver,
  createSqliteDriver,
  openDatabase,
  runMigrations,
  type SqlDriver,
} from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { expectUnknownOptionRefused } from '../support/unknown-option.js'

let db: SqlDriver
beforeAll(async () => {
  db = await createSqliteDriver({ filename: ':memory:' })
})
afterAll(async () => {
  await db?.close()
})

const closed = async (opened: Promise<{ close(): Promise<void> }>) => (await opened).close()

/** Each factory with correct options, and with them plus `extra`; the prefix of its errors. */
const factories: Array<[string, (extra: object) => Promise<unknown>, string]> = [
  [
    'createSqliteDriver',
    (x) => closed(createSqliteDriver({ filename: ':memory:', busyTimeoutMs: 10, ...x })),
    'options',
  ],
  [
    'createPostgresDriver',
    // The pool connects lazily: nothing here needs the server.
    (x) =>
      closed(
        createPostgresDriver({
          connectionString: 'postgres://app@127.0.0.1:1/app',
          maxConnections: 2,
          ...x,
        }),
      ),
    'options',
  ],
  [
    'openDatabase sqlite settings',
    (x) => closed(openDatabase('sqlite::memory:', { sqlite: { busyTimeoutMs: 10, ...x } })),
    'options.sqlite',
  ],
  [
    // The settings of the driver the URL does not select are checked too: the same options
    // are often given for both (one config, either database).
    'openDatabase postgres settings',
    (x) => closed(openDatabase('sqlite::memory:', { postgres: { maxConnections: 2, ...x } })),
    'options.postgres',
  ],
  [
    'runMigrations',
    (x) => runMigrations(db, 'unknown-options', [], { clock: new ManualClock(), ...x }),
    'options',
  ],
]

describe('store factories refuse unknown options', () => {
  it.each(factories)('%s', (_name, make, prefix) =>
    expectUnknownOptionRefused(make, prefix, { busyTimeoutMS: 10 }),
  )
})
