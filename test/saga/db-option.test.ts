// Every saga entry point that takes a database refuses, at construction, anything that is not a
// SQLite or PostgreSQL SqlDriver, naming `db`. Before, only `transaction` was looked at: a
// driver-shaped object of another dialect (or none) was taken, and every statement chosen by
// dialect failed later, far from the mistake.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createFlowTracker,
  createReactor,
  createSagaWorker,
  sagaReplyHandler,
} from '../../src/saga/index.js'

const notDrivers: ReadonlyArray<readonly [string, unknown]> = [
  ['undefined', undefined],
  ['a URL', 'sqlite:./app.db'],
  ['a driver without dialect', { transaction: async () => {}, query: async () => [] }],
  [
    'a driver of another dialect',
    { dialect: 'mysql', transaction: async () => {}, query: async () => [] },
  ],
]

const entryPoints: ReadonlyArray<readonly [string, (db: unknown) => unknown]> = [
  ['createSagaWorker', (db) => createSagaWorker({ db } as never)],
  ['sagaReplyHandler', (db) => sagaReplyHandler(db as never)],
  ['createReactor', (db) => createReactor({ db } as never)],
  ['createFlowTracker', (db) => createFlowTracker({ db } as never)],
]

describe.each(entryPoints)('%s', (_name, make) => {
  it.each(notDrivers)('refuses %s as db, naming db', (_what, db) => {
    let error: unknown
    try {
      make(db)
    } catch (thrown) {
      error = thrown
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('db')
  })
})
