// notifications: sends one email per finished order (confirmed or cancelled), consuming the
// orders service's events from the broker through the inbox. Brokers deliver at least once
// (a relay that dies after publishing publishes again; a consumer that dies before its ack gets
// the message again); the inbox records each message id in the same transaction as the email,
// so a redelivery sends nothing.
//
// SHOP_BREAK=inbox switches the deduplication off, to show that the checker then finds orders
// with two emails.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'breakwater/brokers'
import { createInbox, EVENT_TYPE_HEADER, inboxTable } from 'breakwater/outbox'
import type { SqlExecutor } from 'breakwater/stores'
import { readShopEnv } from '../lib/env.js'
import { currentChaos, hostService, sendJson } from '../lib/host.js'
import { openServiceDb, openShopBroker } from '../lib/infra.js'
import { router } from '../lib/routes.js'

const env = readShopEnv()
const db = await openServiceDb(env)
const { broker, close: closeBroker } = await openShopBroker(env)
let emailsSent = 0

async function sendEmail(tx: SqlExecutor, message: IncomingMessage): Promise<void> {
  if (!isEmailMessage(message)) return
  const type = message.headers[EVENT_TYPE_HEADER]
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

// inboxHandler(db, 'notifications', sendEmail) does the same in one line; spelled out here to
// count the redeliveries the inbox absorbed, for the dashboard.
const inbox = createInbox({ consumer: 'notifications' })
let redeliveriesAbsorbed = 0

// SHOP_BREAK=inbox: the message is still recorded (so the checker still sees it delivered),
// but a redelivery is no longer recognised: the email goes out again.
async function withoutDedupe(tx: SqlExecutor, message: IncomingMessage): Promise<void> {
  await tx.execute(
    `INSERT INTO ${inboxTable} (consumer, message_id, received_at) VALUES ('notifications', $1, $2)
     ON CONFLICT DO NOTHING`,
    [message.id, Date.now()],
  )
  await sendEmail(tx, message)
}

// Chaos bookkeeping. `acksLost` counts the email messages whose acknowledgement chaos lost;
// `awaitingRedelivery` holds the ids of those not delivered and acknowledged since. The demo
// waits for it to empty before judging, so a redelivery still on its way is not missed: with
// `--break inbox`, every lost acknowledgement of an email message becomes a second email.
let acksLost = 0
const awaitingRedelivery = new Set<string>()

function isEmailMessage(message: IncomingMessage): boolean {
  const type = message.headers[EVENT_TYPE_HEADER]
  return type === 'order-confirmed' || type === 'order-cancelled'
}

await broker.subscriber.subscribe(env.topic, 'notifications', async (message) => {
  await db.transaction(async (tx) => {
    if (env.breaks.has('inbox')) return withoutDedupe(tx, message)
    const result = await inbox.handle(tx, message, () => sendEmail(tx, message))
    if (result.duplicate) redeliveriesAbsorbed++
  })
  // Chaos: the email is sent and recorded, but the acknowledgement never reaches the broker
  // (a crash right after the commit looks the same). The broker delivers the message again.
  if (Math.random() < currentChaos().lostReplyRate) {
    if (isEmailMessage(message)) {
      acksLost++
      awaitingRedelivery.add(message.id)
    }
    throw new Error('acknowledgement lost (chaos)')
  }
  awaitingRedelivery.delete(message.id)
})

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
  state: () => ({
    emailsSent,
    redeliveriesAbsorbed,
    acksLost,
    awaitingRedelivery: awaitingRedelivery.size,
  }),
  close: async () => {
    // The database is closed even when the broker's close failed: it rejects with
    // SUBSCRIPTION_CLOSE_TIMEOUT when a handler is still running after closeTimeoutMs (30 s).
    // A failure goes to stderr, and the process still exits.
    await closeBroker().catch((error) => console.error('closing the broker failed:', error))
    await db.close().catch((error) => console.error('closing the database failed:', error))
  },
})
