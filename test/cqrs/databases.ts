// The real databases the cqrs tests run against: a SQLite file and a PostgreSQL database on the
// test server started by the global setup, each migrated for the event store (and, where a test
// needs them, idempotency and the outbox). Never a mock.
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
