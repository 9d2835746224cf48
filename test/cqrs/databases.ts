// The real databases the cqrs tests run against: a SQLite file and a PostgreSQL database on the
// test server started by the global setup, each migrated for the event store (and, where a test
// needs them, idempotency and the outbox). Never a mock.
import { afterAll, beforeAll } from 'vitest'
import { migrateCqrs } from '../../src/cqrs/index.js'
import { migrateIdempotency } from '../../src/idempotency/index.js'
import { migrateOutbox } from '../../src/outbox/index.js'
import { type OpenDatabaseOptions, openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** A migrated database for one test (or file). */
export interface TestDb {
  readonly db: SqlDriver
  /** Its URL, for child processes and second connections. */
  readonly url: string
  /** Opens another driver on the same database (another "process" in this one). */
  connect(options?: OpenDatabaseOptions): Promise<SqlDriver>
  close(): Promise<void>
}

/** What to migrate besides the event store. */
export interface MigrateOptions {
  readonly idempotency?: boolean
  readonly outbox?: boolean
}

/** One database engine under test. */
export interface DbTarget {
  readonly dialect: 'sqlite' | 'postgres'
  open(name: string, migrate?: MigrateOptions): Promise<TestDb>
}

// A pool wide enough for the concurrency tests (100 concurrent appends).
const postgresOptions: OpenDatabaseOptions = { postgres: { maxConnections: 30 } }

async function migrated(
  url: string,
  drop: () => Promise<void>,
  migrate: MigrateOptions,
): Promise<TestDb> {
  const db = await openDatabase(url, postgresOptions)
  const extra: SqlDriver[] = []
  try {
    await migrateCqrs(db)
    if (migrate.idempotency === true) await migrateIdempotency(db)
    if (migrate.outbox === true) await migrateOutbox(db)
  } catch (error) {
    await db.close()
    await drop()
    throw error
  }
  return {
    db,
    url,
    async connect(options = postgresOptions) {
      const other = await openDatabase(url, options)
      extra.push(other)
      return other
    },
    async close() {
      for (const other of extra) await other.close()
      await db.close()
      await drop()
    },
  }
}

export const sqliteDb: DbTarget = {
  dialect: 'sqlite',
  async open(name, migrate = {}) {
    const file = createTestSqlite(name)
    return migrated(file.url, async () => file.cleanup(), migrate)
  },
}

export const postgresDb: DbTarget = {
  dialect: 'postgres',
  async open(name, migrate = {}) {
    const database = await createTestDatabase(name)
    return migrated(database.url, () => database.drop(), migrate)
  },
}

export const dbTargets: readonly DbTarget[] = [sqliteDb, postgresDb]

/**
 * For the enclosing describe (or file): opens the database `name` on `target` before its tests
 * and closes it after them. The handle stands for that database from the first hook on; a hook
 * registered after this call (creating a store over `t.db`) runs once it is open.
 */
export function useTestDb(target: DbTarget, name: string, migrate: MigrateOptions = {}): TestDb {
  let opened: TestDb | undefined
  const current = (): TestDb => {
    if (opened === undefined) throw new Error(`test database ${name} is not open here`)
    return opened
  }
  const handle: TestDb = {
    get db() {
      return current().db
    },
    get url() {
      return current().url
    },
    connect: (options) => current().connect(options),
    async close() {
      const open = opened
      opened = undefined
      await open?.close()
    },
  }
  beforeAll(async () => {
    opened = await target.open(name, migrate)
  })
  afterAll(() => handle.close())
  return handle
}

/** How many rows `table` holds. */
export async function rowCount(db: SqlDriver, table: string): Promise<number> {
  return Number((await db.query<{ n: unknown }>(`SELECT count(*) AS n FROM ${table}`))[0]!.n)
}

/** What `promise` settles with: its value, or the error it rejects with (never rejects). */
export function outcomeOf<T>(promise: Promise<T>): Promise<T | unknown> {
  return promise.then(
    (value) => value,
    (error: unknown) => error,
  )
}

/** Rows of a table as plain objects sorted by the given key, numbers normalized. */
export async function tableRows(
  db: SqlDriver,
  table: string,
  orderBy: string,
): Promise<Record<string, unknown>[]> {
  const rows = await db.query(`SELECT * FROM ${table} ORDER BY ${orderBy}`)
  return rows.map((row) =>
    Object.fromEntries(
      Object.entries(row).map(([k, v]) => [k, typeof v === 'bigint' ? Number(v) : v]),
    ),
  )
}

/** The tables whose names start with `prefix`, sorted. */
export async function tablesLike(db: SqlDriver, prefix: string): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    db.dialect === 'postgres'
      ? "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1 ESCAPE '\\' ORDER BY 1"
      : "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE $1 ESCAPE '\\' ORDER BY 1",
    [`${prefix.replaceAll('_', '\\_')}%`],
  )
  return rows.map((row) => row.name)
}

/** The generation of the rebuild under way that projection `name`'s row records (null: none). */
export async function rebuildGenerationOf(db: SqlDriver, name: string): Promise<number | null> {
  const rows = await db.query<{ g: unknown }>(
    'SELECT rebuild_generation AS g FROM breakwater_projections WHERE name = $1',
    [name],
  )
  const g = rows[0]?.g
  return g === null || g === undefined ? null : Number(g)
}

/**
 * Runs `fn` and returns the unhandled rejections seen meanwhile (after a macrotask turn, so one
 * left unhandled by its end has surfaced).
 */
export async function unhandledRejectionsDuring(fn: () => Promise<void>): Promise<unknown[]> {
  const rejections: unknown[] = []
  const onRejection = (reason: unknown): void => {
    rejections.push(reason)
  }
  process.on('unhandledRejection', onRejection)
  try {
    await fn()
    await new Promise((resolve) => setImmediate(resolve))
  } finally {
    process.off('unhandledRejection', onRejection)
  }
  return rejections
}
