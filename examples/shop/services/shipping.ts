// shipping: creates one shipment per order (keyed by the order: a repeat is a no-op).
import { readShopEnv } from '../lib/env.js'
import { hostService, readJson, sendJson } from '../lib/host.js'
import { openServiceDb } from '../lib/infra.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)

const handler = router({
  'POST /shipments': async (req, res) => {
    const { orderId } = (await readJson(req)) as { orderId: string }
    await db.execute(
      'INSERT INTO shipping_shipments VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING',
      [orderId, Date.now()],
    )
    sendJson(res, 201, { orderId, shipmentId: `ship-${orderId}` })
  },
})

await hostService({ name: env.name, port: env.port, handler, close: () => db.close() })
