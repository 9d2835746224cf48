// notifications: sends one email per finished order (confirmed or cancelled), consuming the
// orders service's events from the broker through the inbox. Brokers deliver at least once
// (a relay that dies after publishing publishes again; a consumer that dies before its ack gets
// the message again); the inbox records each message id in the same transaction as the email,
// so a redelivery sends nothing.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'breakwater/brokers'
import { EVENT_TYPE_HEADER, inboxHandler } from 'breakwater/outbox'
import type { SqlExecutor } from 'breakwater/stores'
import { readShopEnv } from '../lib/env.js'
import { hostService, sendJson } from '../lib/host.js'
import { openServiceDb, openShopBroker } from '../lib/infra.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const { broker, close: closeBroker } = await openShopBroker(env)
let emailsSent = 0

async function sendEmail(tx: SqlExecutor, message: IncomingMessage): Promise<void> {
  const type = message.headers[EVENT_TYPE_HEADER]
  if (type !== 'order-confirmed' && type !== 'order-cancelled') return
  // "Sending" is a row in the outbox of mail: the SMTP side is out of scope here.
  await tx.execute('INSERT INTO notifications_emails VALUES ($1, $2, $3, $4, $5)', [
    randomUUID(),
    message.key,
    type,
    message.id,
    Date.now(),
  ])
  emailsSent++
}

await broker.subscriber.subscribe(
  env.topic,
  'notifications',
  inboxHandler(db, 'notifications', (tx, message) => sendEmail(tx, message)),
)

const handler = router({
  'GET /emails/:orderId': async (_req, res, { orderId }) => {
    sendJson(
      res,
      200,
      await db.query('SELECT * FROM notifications_emails WHERE order_id = $1', [orderId]),
    )
  },
})

await hostService({
  name: env.name,
  port: env.port,
  handler,
  state: () => ({ emailsSent }),
  close: async () => {
    await closeBroker()
    await db.close()
  },
})
