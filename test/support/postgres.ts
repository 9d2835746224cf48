import { randomBytes } from 'node:crypto'
import { inject } from 'vitest'

/**
 * The admin URL of the test PostgreSQL server started by the global setup (or given in
 * BREAKWATER_TEST_PG_URL). Throws, failing the calling test, when the server is not available.
 */
export function postgresAdminUrl(): string {
  const url = inject('breakwaterPostgresUrl') ?? process.env.BREAKWATER_TEST_PG_URL
  if (url === undefined || url === '') {
    const reason = inject('breakwaterPostgresError') ?? 'the global setup did not provide a URL'
    throw new Error(`PostgreSQL is needed by this test but is not available: ${reason}`)
  }
  return url
}

/** A database created for one test file. */
export interface TestDatabase {
  /** Connection URL of the new database. */
  readonly url: string
  /** Its name. */
  readonly name: string
  /** Drops it, disconnecting whoever is still connected. */
  drop(): Promise<void>
}

async function admin<T>(run: (query: (sql: string) => Promise<unknown>) => Promise<T>): Promise<T> {
  const pg = (await import('pg')).default
  const client = new pg.Client({ connectionString: postgresAdminUrl() })
  await client.connect()
  try {
    return await run((sql) => client.query(sql))
  } finally {
    await client.end()
  }
}

/**
 * Creates a fresh, empty database on the test server (one per test file keeps files
 * independent while they run in parallel).
 */
export async function createTestDatabase(name = 'test'): Promise<TestDatabase> {
  const safe = name
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .slice(0, 30)
  const database = `bw_${safe}_${randomBytes(4).toString('hex')}`
  await admin((query) => query(`CREATE DATABASE ${database}`))
  const url = new URL(postgresAdminUrl())
  url.pathname = `/${database}`
  return {
    url: url.toString(),
    name: database,
    drop: () =>
      admin(
        async (query) => void (await query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)),
      ),
  }
}
