// The drivers every store conformance test runs against: a real SQLite file and a real
// PostgreSQL database (from the global setup's server).
import { type OpenDatabaseOptions, openDatabase } from '../../src/stores/open.js'
import type { SqlDriver } from '../../src/stores/types.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** A database for one test file, and how to get rid of it. */
export interface OpenedTarget {
  readonly db: SqlDriver
  readonly url: string
  cleanup(): Promise<void>
}

/** One driver under test. */
export interface DriverTarget {
  readonly dialect: 'sqlite' | 'postgres'
  /** Creates a fresh database and opens it. */
  open(name: string, options?: OpenDatabaseOptions): Promise<OpenedTarget>
  /** Creates a fresh database without opening it. */
  create(name: string): Promise<{ url: string; cleanup(): Promise<void> }>
}

export const sqliteTarget: DriverTarget = {
  dialect: 'sqlite',
  async create(name) {
    const file = createTestSqlite(name)
    return { url: file.url, cleanup: async () => file.cleanup() }
  },
  async open(name, options) {
    const { url, cleanup } = await this.create(name)
    const db = await openDatabase(url, options)
    return {
      db,
      url,
      cleanup: async () => {
        await db.close()
        await cleanup()
      },
    }
  },
}

export const postgresTarget: DriverTarget = {
  dialect: 'postgres',
  async create(name) {
    const database = await createTestDatabase(name)
    return { url: database.url, cleanup: () => database.drop() }
  },
  async open(name, options) {
    const { url, cleanup } = await this.create(name)
    const db = await openDatabase(url, options)
    return {
      db,
      url,
      cleanup: async () => {
        await db.close()
        await cleanup()
      },
    }
  },
}

export const targets: readonly DriverTarget[] = [sqliteTarget, postgresTarget]

let tables = 0
/** A table name no other test in this process uses. */
export function uniqueTable(prefix = 't'): string {
  tables++
  return `${prefix}_${process.pid}_${tables}`
}
