// inventory: stock and reservations. A reservation is keyed by its order, so reserving twice
// (a retried saga step) finds the first one: natural idempotency, no key table needed.

import type { OrderLine } from '../domain/catalog.js'
import { readShopEnv } from '../lib/env.js'
import { hostService, readJson, sendJson } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)

class OutOfStock extends Error {}

const handler = router({
  'POST /reservations': async (req, res) => {
    const { orderId, items } = (await readJson(req)) as { orderId: string; items: OrderLine[] }
    try {
      const status = await db.transaction(async (tx) => {
        const [existing] = await tx.query<{ status: string }>(
          'SELECT status FROM inventory_reservations WHERE order_id = $1',
          [orderId],
        )
        if (existing !== undefined) return existing.status
        for (const line of items) {
          const { rowCount } = await tx.execute(
            'UPDATE inventory_stock SET available = available - $2 WHERE sku = $1 AND available >= $2',
            [line.sku, line.qty],
          )
          // Throwing rolls back the lines already taken.
          if (rowCount === 0) throw new OutOfStock(`out of stock: ${line.sku}`)
        }
        await tx.execute("INSERT INTO inventory_reservations VALUES ($1, $2, 'reserved', $3)", [
          orderId,
          JSON.stringify(items),
          Date.now(),
        ])
        return 'reserved'
      })
      sendJson(res, 201, { orderId, status })
    } catch (error) {
      if (error instanceof OutOfStock) sendJson(res, 409, { error: error.message })
      else throw error
    }
  },
  'POST /reservations/:orderId/release': async (_req, res, { orderId }) => {
    const released = await db.transaction(async (tx) => {
      const rows = await tx.query<{ items: string }>(
        "UPDATE inventory_reservations SET status = 'released' WHERE order_id = $1 AND status = 'reserved' RETURNING items",
        [orderId],
      )
      const row = rows[0]
      if (row === undefined) return false
      for (const line of JSON.parse(row.items) as OrderLine[])
        await tx.execute('UPDATE inventory_stock SET available = available + $2 WHERE sku = $1', [
          line.sku,
          line.qty,
        ])
      return true
    })
    sendJson(res, 200, { orderId, released })
  },
  // The new catalog endpoint the strangler's shadow mode compares with the legacy one.
  'GET /catalog': async (_req, res) => {
    const rows = await db.query<{ sku: string; name: string; price_cents: number }>(
      'SELECT sku, name, price_cents FROM inventory_stock ORDER BY sku',
    )
    sendJson(res, 200, {
      generatedAt: new Date().toISOString(),
      products: rows.map((r) => ({ sku: r.sku, name: r.name, priceCents: Number(r.price_cents) })),
    })
  },
})

await hostService({ name: env.name, port: env.port, handler, close: () => db.close() })
