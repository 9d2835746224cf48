// payments: charges a card exactly once per Idempotency-Key. Every POST goes through
// breakwater's idempotency adapter for node:http: the key is claimed in the same transaction
// that writes the charge and records the answer, so a retried charge (the saga's step after a
// lost reply, the proxy's retry) gets the first answer replayed and charges nothing.
//
// SHOP_BREAK=payments-idempotency switches the adapter off, to show that the demo's invariant
// checker then finds duplicate charges.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createIdempotency, idempotentHandler } from 'breakwater/idempotency'
import type { SqlExecutor } from 'breakwater/stores'
import { cardLimitCents } from '../domain/catalog.js'
import { readShopEnv } from '../lib/env.js'
import { hostService, sendJson } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)

// The routes write through `tx`: the idempotency record's transaction when the adapter runs.
function routes(tx: () => SqlExecutor, body: () => Record<string, unknown>) {
  return router({
    'POST /charges': async (_req, res) => {
      const { orderId, amountCents } = body() as { orderId: string; amountCents: number }
      // A declined card is an answer too: it is recorded and replayed like a success.
      if (amountCents > cardLimitCents) return sendJson(res, 402, { error: 'card declined' })
      const chargeId = `ch_${randomUUID()}`
      await tx().execute("INSERT INTO payments_charges VALUES ($1, $2, $3, 'charged', $4)", [
        chargeId,
        orderId,
        amountCents,
        Date.now(),
      ])
      sendJson(res, 201, { chargeId, orderId, amountCents })
    },
    // Refunds whatever the order was charged (nothing to refund is fine: compensations may
    // run for a charge whose outcome was unknown).
    'POST /charges/:orderId/refund': async (_req, res, { orderId }) => {
      const { rowCount } = await tx().execute(
        "UPDATE payments_charges SET status = 'refunded' WHERE order_id = $1 AND status = 'charged'",
        [orderId],
      )
      sendJson(res, 200, { orderId, refunded: rowCount })
    },
    'GET /charges/:orderId': async (_req, res, { orderId }) => {
      sendJson(
        res,
        200,
        await db.query('SELECT * FROM payments_charges WHERE order_id = $1', [orderId]),
      )
    },
  })
}

let handler: (req: IncomingMessage, res: ServerResponse) => Promise<void> | void
if (env.breaks.has('payments-idempotency')) {
  handler = async (req, res) => {
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const text = Buffer.concat(chunks).toString('utf8')
    await routes(
      () => db,
      () => (text === '' ? {} : JSON.parse(text)),
    )(req, res)
  }
} else {
  // 'in-transaction': one transaction claims the key, writes the charge and records the
  // answer; a concurrent duplicate waits for it and gets the same answer.
  const idempotency = createIdempotency({ store: db, claim: 'in-transaction' })
  handler = idempotentHandler({ idempotency }, async (req, res, { body, idempotency: ctx }) => {
    const parsed = body.length === 0 ? {} : JSON.parse(body.toString('utf8'))
    await routes(
      () => ctx?.tx ?? db,
      () => parsed,
    )(req, res)
  })
}

await hostService({ name: env.name, port: env.port, handler, close: () => db.close() })
