// A test database reached through a TCP fault proxy, for tests of what the PostgreSQL driver
// does when the network between it and the server misbehaves.
import {
  createPostgresDriver,
  type PostgresDriver,
  type PostgresDriverOptions,
} from '../../src/stores/postgres.js'
import { createTestDatabase, type TestDatabase } from './postgres.js'
import { startTcpFaultProxy, type TcpFaultProxy } from './tcp-fault-proxy.js'

/** A driver whose connections all go through {@link PostgresBehindProxy.proxy}. */
export interface PostgresBehindProxy {
  readonly database: TestDatabase
  readonly proxy: TcpFaultProxy
  readonly db: PostgresDriver
  /** Lets held bytes through, then closes the driver and the proxy and drops the database. */
  close(): Promise<void>
}

/** Creates database `name` and a driver with `options` that reaches it through a fault proxy. */
export async function startPostgresBehindProxy(
  name: string,
  options: Omit<PostgresDriverOptions, 'connectionString'>,
): Promise<PostgresBehindProxy> {
  const database = await createTestDatabase(name)
  const url = new URL(database.url)
  const proxy = await startTcpFaultProxy(url.hostname, Number(url.port))
  url.hostname = '127.0.0.1'
  url.port = String(proxy.port)
  const db = await createPostgresDriver({ ...options, connectionString: url.toString() })
  return {
    database,
    proxy,
    db,
    close: async () => {
      // A failed expectation must not leave a statement's answer held or dropped for good.
      proxy.holdServerBytes(false)
      proxy.dropServerBytes(false)
      await db.close()
      await proxy.close()
      await database.drop()
    },
  }
}
