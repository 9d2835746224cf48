// legacy: the monolith being strangled. It takes orders, serves the catalog and customers the
// old way: one process, its own database, payment charged inline during the request, the email
// written in the same request. Its one concession to the new world is the payments call, which
// goes through the outbound seam with an Idempotency-Key, and a reconciliation loop (the
// monolith's cron job) that settles orders whose payment answer never came back.
import { sleep, systemClock } from 'breakwater'
import type { PlaceOrder } from '../domain/catalog.js'
import { readShopEnv } from '../lib/env.js'
import { hostService, readJson, sendJson } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { createOutbound } from '../lib/outbound.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const outbound = createOutbound(env, ['payments'])

// Charges an order (same key every time: a repeat is replayed by payments) and settles it.
async function settle(orderId: string, amountCents: number): Promise<string> {
  const response = await outbound.client.request('payments', {
    method: 'POST',
    path: '/charges',
    json: { orderId, amountCents },
    idempotencyKey: `legacy-${orderId}:charge`,
  })
  if (response.status >= 500) throw new Error(`payments answered ${response.status}`)
  const status = response.status === 402 ? 'declined' : response.status < 300 ? 'paid' : 'failed'
  await db.transaction(async (tx) => {
    const { rowCount } = await tx.execute(
      "UPDATE legacy_orders SET status = $2, updated_at = $3 WHERE id = $1 AND status = 'pending'",
      [orderId, status, Date.now()],
    )
    if (rowCount === 1 && status === 'paid')
      await tx.execute('INSERT INTO legacy_emails VALUES ($1, $2)', [orderId, Date.now()])
  })
  return status
}

const handler = router({
  'POST /orders': async (req, res) => {
    const order = (await readJson(req)) as unknown as PlaceOrder
    await db.execute(
      `INSERT INTO legacy_orders VALUES ($1, $2, $3, $4, 'pending', $5, $5)
       ON CONFLICT (id) DO NOTHING`,
      [order.orderId, order.customerId, JSON.stringify(order.items), order.amountCents, Date.now()],
    )
    try {
      const status = await settle(order.orderId, order.amountCents)
      sendJson(res, 201, { orderId: order.orderId, status, system: 'legacy' })
    } catch (error) {
      // The order stays pending; the reconciliation loop finishes it.
      sendJson(res, 503, { orderId: order.orderId, status: 'pending', error: String(error) })
    }
  },
  'GET /orders/:orderId': async (_req, res, { orderId }) => {
    const [row] = await db.query('SELECT * FROM legacy_orders WHERE id = $1', [orderId])
    if (row === undefined) return sendJson(res, 404, { error: 'no such order' })
    sendJson(res, 200, { ...row, system: 'legacy' })
  },
  // Sorted by price: the new catalog sorts by SKU, a difference the shadow comparison finds.
  'GET /catalog': async (_req, res) => {
    const rows = await db.query<{ sku: string; name: string; price_cents: number }>(
      'SELECT sku, name, price_cents FROM legacy_catalog ORDER BY price_cents',
    )
    sendJson(res, 200, {
      generatedAt: new Date().toISOString(),
      products: rows.map((r) => ({ sku: r.sku, name: r.name, priceCents: Number(r.price_cents) })),
    })
  },
  'GET /customers/:customerId': (_req, res, { customerId }) => {
    sendJson(res, 200, { id: customerId, name: `Customer ${customerId}`, system: 'legacy' })
  },
})

// The reconciliation loop: orders left pending by a failed payments call are charged again
// with the same key until they settle.
let stopping = false
const reconciling = (async () => {
  while (!stopping) {
    await sleep(systemClock, 1_000)
    const pending = await db.query<{ id: string; amount_cents: number }>(
      "SELECT id, amount_cents FROM legacy_orders WHERE status = 'pending' AND updated_at < $1 LIMIT 20",
      [Date.now() - 1_000],
    )
    for (const order of pending) await settle(order.id, Number(order.amount_cents)).catch(() => {})
  }
})()

await hostService({
  name: env.name,
  port: env.port,
  handler,
  state: () => ({ outbound: outbound.state() }),
  close: async () => {
    stopping = true
    await reconciling.catch(() => {})
    // The database is closed even when closing the clients failed: a failure goes
    // to stderr, and the process still exits.
    await outbound.close().catch((error) => console.error('closing the clients failed:', error))
    await db.close().catch((error) => console.error('closing the database failed:', error))
  },
})
