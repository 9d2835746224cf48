// Opening a service's database and the message broker from its settings. SQLite files and the
// SQL queue are the embedded default; the same code runs on PostgreSQL and on NATS, RabbitMQ
// or Redis when the demo is started with `--db` / `--broker`.
import { type Broker, openBroker } from 'breakwater/brokers'
import { createSqlQueue } from 'breakwater/outbox'
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import type { ShopEnv } from './env.js'

/** Opens the service's own database. */
export function openServiceDb(env: ShopEnv): Promise<SqlDriver> {
  // Several processes write one SQLite file (orders, its saga workers and relay): a generous
  // busy timeout lets them take turns on the write lock instead of failing.
  return openDatabase(env.dbUrl, {
    sqlite: { busyTimeoutMs: 10_000 },
    postgres: { maxConnections: 4, applicationName: `shop-${env.name}` },
  })
}

/** The broker and the database it owns (the SQL queue's), closed together. */
export interface ShopBroker {
  readonly broker: Pick<Broker, 'publisher' | 'subscriber'>
  close(): Promise<void>
}

/** Opens the broker: the SQL queue in its own database, or a broker server by URL. */
export async function openShopBroker(env: ShopEnv): Promise<ShopBroker> {
  if (env.brokerUrl === 'sql') {
    const db = await openDatabase(env.queueDbUrl, {
      sqlite: { busyTimeoutMs: 10_000 },
      postgres: { maxConnections: 3, applicationName: `shop-${env.name}-queue` },
    })
    // A message whose consumer died is redelivered after the visibility timeout: a few
    // seconds, so a killed consumer's messages come back within the demo's run.
    const queue = createSqlQueue(db, { visibilityTimeoutMs: 3_000, retryDelayMs: 200 })
    return {
      broker: queue,
      // The database is closed even when the queue's close fails (a handler outliving its
      // closeTimeoutMs): the failure is still the caller's to report.
      close: async () => {
        try {
          await queue.close()
        } finally {
          await db.close()
        }
      },
    }
  }
  // The same few seconds on the servers that wait for an acknowledgement (RabbitMQ hands a dead
  // consumer's messages back as soon as its connection drops).
  const broker = openBroker(env.brokerUrl, {
    nats: { ackWaitMs: 3_000 },
    redis: { visibilityTimeoutMs: 3_000 },
  })
  return { broker, close: () => broker.close() }
}
