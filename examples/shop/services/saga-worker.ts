// A saga worker of the orders service: claims order sagas from the orders database and runs
// their steps, calling inventory, payments and shipping through the outbound seam (the proxy's
// ambassador, or breakwater/http in-process). Two of them run; kill one and the other resumes
// its sagas after their lease, from the persisted state, with the same idempotency keys.
import { createSagaWorker } from 'breakwater/saga'
import { defineOrderSaga, openOrderStore, ordersOutbox } from '../domain/orders.js'
import { readShopEnv } from '../lib/env.js'
import { hostService } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { createOutbound } from '../lib/outbound.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const outbound = createOutbound(env, ['inventory', 'payments', 'shipping'])
const orderSaga = defineOrderSaga({
  client: outbound.client,
  store: openOrderStore(db),
  outbox: ordersOutbox(env.topic),
})

const worker = createSagaWorker({ db, sagas: [orderSaga], leaseMs: 1_500, workerId: env.name })
await worker.start()

await hostService({
  name: env.name,
  port: env.port,
  state: () => ({ worker: worker.metrics(), outbound: outbound.state() }),
  close: async () => {
    // Each step runs even when the one before it failed: a rejected stop() must not leave the
    // database open. A failure goes to stderr.
    await worker.stop().catch((error) => console.error('stopping the saga worker failed:', error))
    await outbound.close().catch((error) => console.error('closing the clients failed:', error))
    await db.close().catch((error) => console.error('closing the database failed:', error))
  },
})
