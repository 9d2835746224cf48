// A PostgreSQL database whose migration lock another session holds, as a hung `breakwater
// migrate` would hold it: a proxy that opens its idempotency store there waits on the lock,
// and tests see through pg_stat_activity whether it waits, and whether its sessions ended.

import type { SqlDriver } from '../../../src/stores/index.js'
import { createPostgresDriver } from '../../../src/stores/postgres.js'
import { type HeldTransaction, holdOpenTransaction } from '../../support/held-transaction.js'
import { createTestDatabase } from '../../support/postgres.js'

/** A test database for a proxy's idempotency store; see {@link createStoreDatabase}. */
export interface StoreDatabase {
  /** The URL as a config file holds it: no password (it goes through PGPASSWORD, as secrets do). */
  readonly fileUrl: string
  /** Takes the migration lock in another session; see {@link HeldMigrationLock}. */
  holdMigrationLock(): Promise<HeldMigrationLock>
  /** Drops the database and puts PGPASSWORD back. */
  drop(): Promise<void>
}

/** The migration lock, held open by a session of the test's own. */
export interface HeldMigrationLock {
  /** Whether a session of the proxy (application_name `breakwater`) waits on a lock. */
  proxyWaits(): Promise<boolean>
  /** Sessions of the proxy still connected. */
  proxySessions(): Promise<number>
  /** Lets the lock go (the transaction holding it commits); a second call does nothing. */
  release(): Promise<void>
  /** Releases the lock and closes the holder's connection. */
  close(): Promise<void>
}

// The lock every migration run takes first (runMigrations).
const migrationLock = 'SELECT pg_advisory_xact_lock(7121410496880042356)'

/** Creates a database named after `name`, with PGPASSWORD set for its `fileUrl`. */
export async function createStoreDatabase(name: string): Promise<StoreDatabase> {
  const db = await createTestDatabase(name)
  const pgPassword = process.env.PGPASSWORD
  const url = new URL(db.url)
  if (url.password !== '') process.env.PGPASSWORD = decodeURIComponent(url.password)
  url.password = ''
  return {
    fileUrl: url.toString(),
    async holdMigrationLock() {
      const other: SqlDriver = await createPostgresDriver({
        connectionString: db.url,
        applicationName: 'holder',
      })
      const held: HeldTransaction = await holdOpenTransaction(other, (tx) =>
        tx.query(migrationLock),
      )
      const proxyRows = async (where: string) =>
        other.query<{ n: string }>(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'breakwater'${where}`,
        )
      return {
        proxyWaits: async () =>
          Number((await proxyRows(" AND wait_event_type = 'Lock'"))[0]?.n) > 0,
        proxySessions: async () => Number((await proxyRows(''))[0]?.n),
        release: () => held.commit(),
        async close() {
          await held.commit().catch(() => {})
          await other.close()
        },
      }
    },
    async drop() {
      if (pgPassword === undefined) delete process.env.PGPASSWORD
      else process.env.PGPASSWORD = pgPassword
      await db.drop()
    },
  }
}
