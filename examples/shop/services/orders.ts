// orders (the new service): POST /orders places an order, GET /orders/:id reads the history.
//
// Placing an order is one transaction: the Idempotency-Key is claimed, `order-placed` is
// appended to the order's stream in the event store (the CQRS write side), its integration
// event goes into the outbox, and the order saga is started. Either all of it commits or none
// does; the saga workers and the outbox relay (their own processes) take it from there.
// The read side is the order-history projection, kept by an asynchronous projector in this
// process and served with read-your-writes when the caller passes `?atLeast=<position>`.

import { createProjector, createQueryHandler } from 'breakwater/cqrs'
import { createIdempotency, idempotentHandler } from 'breakwater/idempotency'
import { startSaga } from 'breakwater/saga'
import type { PlaceOrder } from '../domain/catalog.js'
import {
  defineOrderSaga,
  openOrderStore,
  orderHistory,
  ordersOutbox,
  recordOrderEvent,
} from '../domain/orders.js'
import { readShopEnv } from '../lib/env.js'
import { hostService, sendJson } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { queryOf, router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const store = openOrderStore(db)
const outbox = ordersOutbox(env.topic)
// Only the definition's identity is needed to start a saga here; its steps run in the workers.
const orderSaga = defineOrderSaga(undefined)

const projector = createProjector(store, orderHistory, { pollIntervalMs: 100 })
projector.start()

const orderById = createQueryHandler({
  db,
  projectors: [projector],
  run: (rm, orderId: string) =>
    rm.query('SELECT * FROM order_history WHERE order_id = $1', [orderId]),
})

const idempotency = createIdempotency({ store: db, claim: 'in-transaction' })

const handler = idempotentHandler({ idempotency }, async (req, res, { body, idempotency: ctx }) => {
  await router({
    'POST /orders': async () => {
      const order = JSON.parse(body.toString('utf8')) as PlaceOrder
      const tx = ctx?.tx
      if (tx === undefined) return sendJson(res, 400, { error: 'Idempotency-Key required' })
      const position = await recordOrderEvent(
        tx,
        { store, outbox },
        {
          type: 'order-placed',
          data: { ...order, placedAt: Date.now() },
        },
      )
      await startSaga(
        tx,
        orderSaga,
        { orderId: order.orderId, items: order.items, amountCents: order.amountCents },
        { id: `order-${order.orderId}` },
      )
      // The position lets the client read its own write: GET /orders/:id?atLeast=<position>
      // waits until the order-history projection has applied it.
      sendJson(res, 202, { orderId: order.orderId, status: 'placed', system: 'new', position })
    },
    'GET /orders/:orderId': async (_req, _res, { orderId }) => {
      const atLeast = Number(queryOf(req).get('atLeast') ?? Number.NaN)
      const rows = await orderById(
        String(orderId),
        Number.isFinite(atLeast) ? { atLeastPosition: atLeast, timeoutMs: 2_000 } : {},
      )
      if (rows.length === 0) return sendJson(res, 404, { error: 'no such order' })
      sendJson(res, 200, { ...rows[0], system: 'new' })
    },
  })(req, res)
})

await hostService({
  name: env.name,
  port: env.port,
  handler,
  state: async () => ({ readModelLag: await projector.lag() }),
  close: async () => {
    // The database is closed even when the projector's stop failed: a failure goes
    // to stderr, and the process still exits.
    await projector.stop().catch((error) => console.error('stopping the projector failed:', error))
    await db.close().catch((error) => console.error('closing the database failed:', error))
  },
})
