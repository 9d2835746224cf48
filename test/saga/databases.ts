// The real databases the saga tests run against: a SQLite file and a PostgreSQL database on
// the test server started by the global setup. Never a mock.
import { randomUUID } from 'node:crypto'
import { defineSaga, migrateSagas } from '../../src/saga/index.js'
import type { MeasuredLease } from '../../src/saga/store.js'
import { openDatabase, type SqlDriver, type SqlExecutor } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import type { Gate } from '../support/gate.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** A migrated database for one test (or file). */
export interface TestDb {
  readonly db: SqlDriver
  readonly url: string
  /** Opens another connection (pool) to the same database: a second process, as far as leases go. */
  reopen(): Promise<SqlDriver>
  close(): Promise<void>
}

/** One database engine under test. */
export interface DbTarget {
  readonly dialect: 'sqlite' | 'postgres'
  /** Creates a fresh database with the saga migrations applied. */
  open(name: string): Promise<TestDb>
  /** Creates a fresh empty database (no migrations), e.g. for the services' own tables. */
  openEmpty(name: string): Promise<TestDb>
}

async function opened(url: string, drop: () => Promise<void>, migrate: boolean): Promise<TestDb> {
  const db = await openDatabase(url)
  const others: SqlDriver[] = []
  try {
    if (migrate) await migrateSagas(db)
  } catch (error) {
    await db.close()
    await drop()
    throw error
  }
  return {
    db,
    url,
    async reopen() {
      const other = await openDatabase(url)
      others.push(other)
      return other
    },
    async close() {
      for (const other of others) await other.close().catch(() => {})
      await db.close()
      await drop()
    },
  }
}

export const sqliteDb: DbTarget = {
  dialect: 'sqlite',
  async open(name) {
    const file = createTestSqlite(name)
    return opened(file.url, async () => file.cleanup(), true)
  },
  async openEmpty(name) {
    const file = createTestSqlite(name)
    return opened(file.url, async () => file.cleanup(), false)
  },
}

export const postgresDb: DbTarget = {
  dialect: 'postgres',
  async open(name) {
    const database = await createTestDatabase(name)
    return opened(database.url, () => database.drop(), true)
  },
  async openEmpty(name) {
    const database = await createTestDatabase(name)
    return opened(database.url, () => database.drop(), false)
  },
}

export const dbTargets: readonly DbTarget[] = [sqliteDb, postgresDb]

/** A lease of `ms` for claimInstances, measured on a clock standing at `now`. */
export function leaseFrom(now: number, ms: number): MeasuredLease {
  return { clock: new ManualClock(now), ms }
}

/** Number of rows in a table. */
export async function countRows(
  db: SqlDriver,
  table: string,
  where = '',
  params: readonly unknown[] = [],
): Promise<number> {
  const rows = await db.query<{ n: number | string }>(
    `SELECT COUNT(*) AS n FROM ${table} ${where}`,
    params,
  )
  return Number(rows[0]?.n ?? 0)
}

/** A table of what steps and compensations did, per saga, in the order they did it. */
export interface EffectLog {
  /** Creates the table. */
  create(db: SqlDriver): Promise<unknown>
  /** Records an effect (pass a step's `tx` to record it with the step's state). */
  record(executor: SqlExecutor, sagaId: string, what: string): Promise<unknown>
  /** The effects of one saga, in order. */
  read(db: SqlDriver, sagaId: string): Promise<string[]>
}

/** An {@link EffectLog} in `table`. */
export function effectLog(table: string): EffectLog {
  let seq = 0
  return {
    create: (db) =>
      db.execute(
        `CREATE TABLE ${table} (seq INTEGER PRIMARY KEY, saga_id TEXT NOT NULL, what TEXT NOT NULL)`,
      ),
    record: (executor, sagaId, what) =>
      executor.execute(`INSERT INTO ${table} (seq, saga_id, what) VALUES ($1, $2, $3)`, [
        ++seq,
        sagaId,
        what,
      ]),
    read: async (db, sagaId) =>
      (
        await db.query<{ what: string }>(
          `SELECT what FROM ${table} WHERE saga_id = $1 ORDER BY seq`,
          [sagaId],
        )
      ).map((r) => r.what),
  }
}

/**
 * A one-step saga (named `${prefix}-<random>`) whose step `hold` opens `inside`, then runs until
 * `finish` opens: an instance held in a worker's hands for as long as a test needs.
 */
export function holdingSaga(prefix: string, inside: Gate, finish: Gate) {
  return defineSaga({
    name: `${prefix}-${randomUUID().slice(0, 8)}`,
    version: 1,
    steps: [
      {
        name: 'hold',
        action: async () => {
          inside.open()
          await finish.promise
        },
      },
    ],
  })
}
