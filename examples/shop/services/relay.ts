// The outbox relay of the orders service, in its own process so that chaos can kill it: the
// events it had not marked as published are published again by its successor (at least once;
// the consumers' inboxes make that exactly once in effect), and nothing committed is lost.
import { createRelay } from 'breakwater/outbox'
import { readShopEnv } from '../lib/env.js'
import { hostService } from '../lib/host.js'
import { openServiceDb, openShopBroker } from '../lib/infra.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const { broker, close: closeBroker } = await openShopBroker(env)

// A short lease: a killed relay's partitions are taken over within seconds by its restart.
const relay = createRelay({ db, publisher: broker.publisher, relayId: env.name, leaseMs: 2_000 })
await relay.start()

await hostService({
  name: env.name,
  port: env.port,
  state: () => relay.metrics(),
  close: async () => {
    // Each step runs even when the one before it failed, so the database is closed whatever
    // the relay's stop did: a failure goes to stderr.
    await relay.stop().catch((error) => console.error('stopping the relay failed:', error))
    await closeBroker().catch((error) => console.error('closing the broker failed:', error))
    await db.close().catch((error) => console.error('closing the database failed:', error))
  },
})
