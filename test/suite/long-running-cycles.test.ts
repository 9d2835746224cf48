// An application, a supervisor or a test suite creates, starts and stops the long-running pieces
// many times in one process, on one database driver. Each stopped piece must give back what it
// took: no timer left on its clock, no PostgreSQL session of its own (they share the driver's
// pool and its one LISTEN connection). A piece that kept one per run would grow without bound in
// a process that restarts it (a supervisor's restart loop, a test suite). Their system timers
// and sockets are not counted here: the pieces time everything on their clock, and the other
// files of this worker's module graph may still hold or open some of their own.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  migrateCqrs,
} from '../../src/cqrs/index.js'
import {
  createOutbox,
  createRelay,
  createSqlQueue,
  migrateOutbox,
  migrateSqlQueue,
} from '../../src/outbox/index.js'
import { createSagaWorker, defineSaga, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestDatabase, postgresAdminUrl, type TestDatabase } from '../support/postgres.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

const cycles = 20
// A small pool: one that may grow to ten would let a session left per cycle hide among its own.
const maxConnections = 4

const saga = defineSaga({
  name: 'cycled',
  version: 1,
  steps: [{ name: 'only', action: async () => ({ done: true }) }],
})

const projection = defineProjection({
  name: 'cycled',
  tables: { cycled_rows: () => ['CREATE TABLE cycled_rows (n INTEGER)'] },
  apply: async () => {},
})

describe.each(['sqlite', 'postgres'] as const)('long-running pieces cycled on %s', (dialect) => {
  let db: SqlDriver
  let database: TestDatabase | undefined
  let file: TestSqlite | undefined
  let admin: pg.Client | undefined

  beforeAll(async () => {
    if (dialect === 'postgres') {
      database = await createTestDatabase('cycles')
      admin = new pg.Client({ connectionString: postgresAdminUrl() })
      await admin.connect()
    } else file = createTestSqlite('cycles')
    db = await openDatabase(database?.url ?? file!.url, {
      postgres: { maxConnections },
    })
    await migrateOutbox(db)
    await migrateSqlQueue(db)
    await migrateSagas(db)
    await migrateCqrs(db)
  })
  afterAll(async () => {
    await db?.close()
    await admin?.end()
    await database?.drop()
    file?.cleanup()
  })

  // The sessions of the test database: the driver's pool and its LISTEN connection.
  const sessions = async (): Promise<number> => {
    if (admin === undefined) return 0
    const { rows } = await admin.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1',
      [database!.name],
    )
    return rows[0]!.n
  }

  it('a relay, a saga worker, a projector, a subscription and a queue consumer leave nothing behind', async () => {
    const outbox = createOutbox()
    const store = createEventStore(db)
    for (let cycle = 0; cycle < cycles; cycle++) {
      const clock = new ManualClock(1_000_000)
      const queue = createSqlQueue(db, { clock })
      const consumer = await queue.subscriber.subscribe('cycled', 'g', async () => {})
      await db.transaction((tx) =>
        outbox.enqueue(tx, {
          id: `e${cycle}`,
          aggregateType: 'cycle',
          aggregateId: `a${cycle}`,
          type: 'cycled',
          payload: {},
        }),
      )
      const relay = createRelay({ db, publisher: queue.publisher, relayId: `r${cycle}`, clock })
      await relay.start()
      const worker = createSagaWorker({ db, sagas: [saga], clock })
      await worker.start()
      await startSaga(db, saga, {})
      await store.append(`s${cycle}`, [{ type: 'cycled', data: {} }])
      const projector = createProjector(store, projection, { clock })
      projector.start()
      const subscription = store.subscribe(() => {}, { clock })

      await subscription.stop()
      await projector.stop()
      await worker.stop()
      await relay.stop()
      await consumer.close()
      await queue.close()
      // Every wait of every piece ended with its stop: none is left to fire on the clock.
      expect(clock.pendingTimers, `timers left on the clock after cycle ${cycle}`).toBe(0)
    }
    // The pool and the LISTEN connection the pieces share, however many of the pool's the
    // cycles opened.
    expect(await sessions()).toBeLessThanOrEqual(maxConnections + 1)
  })
})
