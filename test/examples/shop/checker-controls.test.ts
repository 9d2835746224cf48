// Negative controls for every invariant the shop demo checks, on real SQLite files migrated as the
// demo migrates them: a settled shop that kept every invariant, then one planted defect at a
// time, written straight into the table the checker counts. Each must break exactly its own
// invariant (a checker that cannot fail proves nothing). checker.test.ts and
// checker-inbox.test.ts break the running system itself (duplicate charges, second emails);
// these cover the invariants no --break switch reaches.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inboxTable, outboxArchiveTable, outboxTable } from 'breakwater/outbox'
import { sagaTable } from 'breakwater/saga'
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  openOrderStore,
  ordersOutbox,
  recordOrderEvent,
} from '../../../examples/shop/domain/orders.js'
import {
  migrateService,
  type StoreOwner,
  storeOwners,
} from '../../../examples/shop/domain/schema.js'
import { countFigures, judge, quiescent } from '../../../examples/shop/invariants.js'

let dir: string
let dbs: Record<StoreOwner, SqlDriver>
const accepted = ['new-1', 'legacy-1']
const now = Date.now()

const charge = (orderId: string, id: string, status = 'charged') =>
  dbs.payments.execute('INSERT INTO payments_charges VALUES ($1, $2, 100, $3, $4)', [
    id,
    orderId,
    status,
    now,
  ])
const email = (orderId: string, id: string) =>
  dbs.notifications.execute(
    `INSERT INTO notifications_emails VALUES ($1, $2, 'confirmed', $3, $4)`,
    [id, orderId, `${orderId}:order-confirmed`, now],
  )
const received = (messageId: string) =>
  dbs.notifications.execute(
    `INSERT INTO ${inboxTable} (consumer, message_id, received_at) VALUES ('notifications', $1, $2)`,
    [messageId, now],
  )
const saga = (id: string, status: string) =>
  dbs.orders.execute(
    `INSERT INTO ${sagaTable} (id, name, version, definition, status, input, context, steps,
       step_index, attempt, next_run_at, lease_token, created_at, updated_at)
     VALUES ($1, 'order', 1, '{}', $2, '{}', '{}', '[]', 0, 0, $3, 0, $3, $3)`,
    [id, status, now],
  )

// The settled shop: a new order placed and confirmed (charged, emailed, both events delivered,
// its saga completed) and a legacy order paid (charged).
beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'breakwater-shop-controls-'))
  dbs = {} as Record<StoreOwner, SqlDriver>
  for (const owner of storeOwners) {
    const db = await openDatabase(`sqlite:${join(dir, `${owner}.db`)}`)
    await migrateService(owner, db)
    dbs[owner] = db
  }
  const deps = { store: openOrderStore(dbs.orders), outbox: ordersOutbox('shop_test_orders') }
  await dbs.orders.transaction(async (tx) => {
    await recordOrderEvent(tx, deps, {
      type: 'order-placed',
      data: { orderId: 'new-1', customerId: 'c-1', items: [], amountCents: 100, placedAt: now },
    })
    await recordOrderEvent(tx, deps, {
      type: 'order-confirmed',
      data: { orderId: 'new-1', chargeId: 'ch-1' },
    })
  })
  await dbs.orders.execute(`UPDATE ${outboxTable} SET published_at = $1`, [now])
  await saga('new-1', 'completed')
  await charge('new-1', 'ch-1')
  await email('new-1', 'em-1')
  await received('new-1:order-placed')
  await received('new-1:order-confirmed')
  await dbs.legacy.execute(
    `INSERT INTO legacy_orders VALUES ('legacy-1', 'c-2', '[]', 100, 'paid', $1, $1)`,
    [now],
  )
  await charge('legacy-1', 'ch-2')
})

afterEach(async () => {
  for (const db of Object.values(dbs)) await db.close()
  rmSync(dir, { recursive: true, force: true })
})

const brokenNow = async (final: boolean): Promise<string[]> =>
  judge(await countFigures(dbs, accepted), final)
    .filter((i) => !i.ok)
    .map((i) => i.name)

describe('the invariant checker on real databases', () => {
  it('passes the settled shop (the control for the controls)', async () => {
    const figures = await countFigures(dbs, accepted)
    expect(quiescent(figures)).toBe(true)
    expect(await brokenNow(true)).toEqual([])
  })

  // The summary's and the dashboard's "emails sent": with `--break inbox` the table showed as
  // many emails as orders emailed (25) beside "5 orders got 2+", hiding the duplicates.
  it('counts every email sent, a second one to the same order too', async () => {
    await email('new-1', 'em-2')
    const figures = await countFigures(dbs, accepted)
    expect(figures.emails).toEqual({ sent: 2, duplicated: 1, missing: 0 })
  })

  // Likewise "charges" beside "duplicate charges": with `--break payments-idempotency` the
  // summary showed "paid orders / charges 50 / 50" beside "duplicate charges 19" (69 taken).
  // The invariant still matches orders charged with orders paid, order by order.
  it('counts every charge taken, a second one for the same order too', async () => {
    await charge('new-1', 'ch-3')
    const figures = await countFigures(dbs, accepted)
    expect(figures.chargesTaken).toBe(3)
    expect(figures.charges).toBe(2)
    expect(figures.duplicateCharges).toBe(1)
  })

  it.each([
    ['a charge without a paid order', () => charge('nobody', 'ch-x'), 'charges = paid orders'],
    [
      'a paid order without a charge',
      () => dbs.payments.execute("DELETE FROM payments_charges WHERE order_id = 'legacy-1'"),
      'charges = paid orders',
    ],
    ['an order charged twice', () => charge('new-1', 'ch-3'), 'duplicate charges'],
    ['an order emailed twice', () => email('new-1', 'em-2'), 'emails per finished order'],
    [
      'a finished order never emailed',
      () => dbs.notifications.execute('DELETE FROM notifications_emails'),
      'emails per finished order',
    ],
    [
      'an outbox event the consumer never received',
      () =>
        dbs.notifications.execute(
          `DELETE FROM ${inboxTable} WHERE message_id = 'new-1:order-confirmed'`,
        ),
      'events lost',
    ],
    [
      'an archived event the consumer never received',
      async () => {
        await dbs.orders.execute(
          `INSERT INTO ${outboxArchiveTable} (id, event_id, aggregate_type, aggregate_id,
             event_type, topic, payload, headers, partition_no, created_at, published_at,
             attempts, archived_at)
           VALUES (999, 'old-1:order-placed', 'order', 'old-1', 'order-placed', 't', '{}', '{}',
             0, $1, $1, 1, $1)`,
          [now],
        )
      },
      'events lost',
    ],
    ['a saga parked as failed', () => saga('new-2', 'failed'), 'sagas not finished'],
    ['a saga still running', () => saga('new-2', 'running'), 'sagas not finished'],
    ['a saga still compensating', () => saga('new-2', 'compensating'), 'sagas not finished'],
    [
      'an accepted order recorded nowhere',
      () => dbs.legacy.execute("DELETE FROM legacy_orders WHERE id = 'legacy-1'"),
      // Its charge now has no paid order as well.
      'accepted orders recorded',
    ],
  ])('reports %s', async (_what, plant, invariant) => {
    await plant()
    expect(await brokenNow(true)).toContain(invariant)
    // Only what was planted: the other invariants still hold (bar a charge left orphaned).
    const others = (await brokenNow(true)).filter(
      (name) => name !== invariant && name !== 'charges = paid orders',
    )
    expect(others).toEqual([])
  })

  it('reports a charge without a paid order even when a paid order without a charge evens the count', async () => {
    // Two charges, two paid orders: a count finds nothing wrong, by order it is two defects.
    await dbs.payments.execute("DELETE FROM payments_charges WHERE order_id = 'legacy-1'")
    await charge('nobody', 'ch-x')
    const invariant = judge(await countFigures(dbs, accepted), true).find(
      (i) => i.name === 'charges = paid orders',
    )
    expect(invariant).toMatchObject({ ok: false })
    expect(invariant?.value).toContain('nobody')
    expect(invariant?.value).toContain('legacy-1')
  })
})
