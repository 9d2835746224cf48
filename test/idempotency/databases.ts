// The real databases the idempotency tests run against: a SQLite file and a PostgreSQL
// database on the test server started by the global setup. Never a mock.
import { idempotencyStatements, migrateIdempotency } from '../../src/idempotency/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** A migrated database for one test file. */
export interface TestDb {
  readonly db: SqlDriver
  readonly url: string
  close(): Promise<void>
}

/** One database engine under test. */
export interface DbTarget {
  readonly dialect: 'sqlite' | 'postgres'
  /** Creates a fresh database with the idempotency migrations applied. */
  open(name: string): Promise<TestDb>
}

async function migrated(url: string, drop: () => Promise<void>): Promise<TestDb> {
  const db = await openDatabase(url)
  try {
    await migrateIdempotency(db)
  } catch (error) {
    await db.close()
    await drop()
    throw error
  }
  return {
    db,
    url,
    async close() {
      await db.close()
      await drop()
    },
  }
}

export const sqliteDb: DbTarget = {
  dialect: 'sqlite',
  async open(name) {
    const file = createTestSqlite(name)
    return migrated(file.url, async () => file.cleanup())
  },
}

export const postgresDb: DbTarget = {
  dialect: 'postgres',
  async open(name) {
    const database = await createTestDatabase(name)
    return migrated(database.url, () => database.drop())
  },
}

export const dbTargets: readonly DbTarget[] = [sqliteDb, postgresDb]

/** The business table the HTTP tests' handlers write to. */
export async function createChargesTable(db: SqlDriver): Promise<void> {
  await db.execute(
    'CREATE TABLE charges (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, amount INTEGER NOT NULL)',
  )
}

/** Number of rows in a table. */
export async function countRows(db: SqlDriver, table: string, where = ''): Promise<number> {
  const rows = await db.query<{ n: number | string }>(`SELECT COUNT(*) AS n FROM ${table} ${where}`)
  return Number(rows[0]?.n ?? 0)
}

/** The business write of the charges table's handlers. */
export const insertCharge = 'INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)'

/**
 * What a statement sent by the idempotency protocol (or the charges handlers) is, for tests
 * that note what reached the database: `claim`, `claim (autocommit)`, `record`, `select`,
 * `business write`, or the SQL itself.
 */
export function statementLabel(dialect: SqlDriver['dialect'], sql: string): string {
  const statements = idempotencyStatements[dialect]
  if (sql === statements.claimInTransaction) return 'claim'
  if (sql === statements.claim || sql === statements.claimAll) return 'claim (autocommit)'
  if (
    sql === statements.complete ||
    sql === statements.completeOrRaise ||
    sql === statements.completeAll
  ) {
    return 'record'
  }
  if (sql === statements.select) return 'select'
  if (sql === insertCharge) return 'business write'
  return sql
}
