// The headline figures, counted from the services' databases (never from logs or from what the
// processes say about themselves), and the invariants they must keep.
import { inboxTable, outboxArchiveTable, outboxTable } from 'breakwater/outbox'
import { sagaTable } from 'breakwater/saga'
import type { SqlDriver } from 'breakwater/stores'
import type { StoreOwner } from './domain/schema.js'

/** Everything the dashboard and the summary show that comes from the databases. */
export interface ShopFigures {
  readonly at: number
  /** Orders recorded: by the legacy monolith, by the new orders service. */
  readonly orders: { readonly legacy: number; readonly new: number; readonly total: number }
  /** Orders paid: legacy `paid`, new `order-confirmed`. */
  readonly paidOrders: { readonly legacy: number; readonly new: number; readonly total: number }
  /** New orders cancelled (their saga compensated) and legacy orders still pending. */
  readonly cancelledOrders: number
  readonly legacyPending: number
  /** Orders currently charged (charge rows not refunded), counted once per order. */
  readonly charges: number
  /** Charges taken and not refunded, every one: a second charge of the same order too. */
  readonly chargesTaken: number
  /**
   * Orders charged but not paid, and paid but not charged (their counts, and the first few ids
   * of each): by order, since one of each leaves the counts equal.
   */
  readonly unmatchedCharges: {
    readonly chargedNotPaid: number
    readonly paidNotCharged: number
    readonly ids: readonly string[]
  }
  readonly refunds: number
  /** Orders with more than one charge row: money taken twice. */
  readonly duplicateCharges: number
  /** Emails: sent (every one), orders with more than one, finished new orders with none. */
  readonly emails: {
    readonly sent: number
    readonly duplicated: number
    readonly missing: number
  }
  /** Outbox events committed by the orders service, delivered to notifications' inbox, lost. */
  readonly events: {
    readonly committed: number
    readonly delivered: number
    readonly lost: number
    readonly unpublished: number
    readonly oldestUnpublishedMs: number
  }
  /** Saga instances by status. */
  readonly sagas: Readonly<Record<string, number>>
  /**
   * The orders the load generator was told were accepted, and those of them recorded by
   * neither legacy nor the new service (their count, and the first few ids). Absent when no
   * accepted ids were given.
   */
  readonly accepted?: {
    readonly orders: number
    readonly missing: number
    readonly missingIds: readonly string[]
  }
}

/** One invariant, judged. */
export interface Invariant {
  readonly name: string
  readonly value: string
  readonly expected: string
  readonly ok: boolean
}

const count = async (db: SqlDriver, sql: string, params: unknown[] = []): Promise<number> => {
  const [row] = await db.query<{ n: number | string }>(sql, params)
  return Number(row?.n ?? 0)
}

/**
 * Counts the figures from the services' databases; with `accepted` (the ids of the orders the
 * load generator was told were accepted), also which of them neither side recorded.
 */
export async function countFigures(
  dbs: Readonly<Record<StoreOwner, SqlDriver>>,
  accepted?: readonly string[],
): Promise<ShopFigures> {
  // Taken before any query: every order in it was committed before it was answered.
  const acceptedIds = accepted === undefined ? undefined : [...accepted]
  const { legacy, orders, payments, notifications } = dbs
  const legacyOrders = await count(legacy, 'SELECT count(*) AS n FROM legacy_orders')
  const legacyPaid = await count(
    legacy,
    "SELECT count(*) AS n FROM legacy_orders WHERE status = 'paid'",
  )
  const legacyPending = await count(
    legacy,
    "SELECT count(*) AS n FROM legacy_orders WHERE status = 'pending'",
  )
  // The orders service's write side: one stream per order, one terminal event per outcome.
  const byType = await orders.query<{ type: string; n: number | string }>(
    `SELECT type, count(*) AS n FROM breakwater_events
     WHERE type IN ('order-placed', 'order-confirmed', 'order-cancelled') GROUP BY type`,
  )
  const typed = (type: string): number => Number(byType.find((r) => r.type === type)?.n ?? 0)
  const chargedIds = (
    await payments.query<{ order_id: string }>(
      "SELECT DISTINCT order_id FROM payments_charges WHERE status = 'charged'",
    )
  ).map((r) => r.order_id)
  const paidIds = new Set([
    ...(
      await legacy.query<{ id: string }>("SELECT id FROM legacy_orders WHERE status = 'paid'")
    ).map((r) => r.id),
    ...(
      await orders.query<{ stream_id: string }>(
        "SELECT stream_id FROM breakwater_events WHERE type = 'order-confirmed'",
      )
    ).map((r) => r.stream_id.replace(/^order-/, '')),
  ])
  const chargedSet = new Set(chargedIds)
  const chargedNotPaid = chargedIds.filter((id) => !paidIds.has(id))
  const paidNotCharged = [...paidIds].filter((id) => !chargedSet.has(id))
  const chargesTaken = await count(
    payments,
    "SELECT count(*) AS n FROM payments_charges WHERE status = 'charged'",
  )
  const refunds = await count(
    payments,
    "SELECT count(*) AS n FROM payments_charges WHERE status = 'refunded'",
  )
  const duplicateCharges = await count(
    payments,
    `SELECT count(*) AS n FROM (SELECT order_id FROM payments_charges
       GROUP BY order_id HAVING count(*) > 1) AS d`,
  )
  const emailRows = await notifications.query<{ order_id: string; n: number | string }>(
    'SELECT order_id, count(*) AS n FROM notifications_emails GROUP BY order_id',
  )
  const finished = await orders.query<{ stream_id: string }>(
    `SELECT stream_id FROM breakwater_events WHERE type IN ('order-confirmed', 'order-cancelled')`,
  )
  const emailed = new Set(emailRows.map((r) => r.order_id))
  const missing = finished.filter((r) => !emailed.has(r.stream_id.replace(/^order-/, ''))).length

  // Every event the outbox ever held (published ones may have moved to the archive) must be
  // in the consumer's inbox: that is "delivered", and anything else is lost.
  const committed = await orders.query<{ event_id: string }>(
    `SELECT event_id FROM ${outboxTable} UNION SELECT event_id FROM ${outboxArchiveTable}`,
  )
  const inbox = await notifications.query<{ message_id: string }>(
    `SELECT message_id FROM ${inboxTable} WHERE consumer = 'notifications'`,
  )
  const received = new Set(inbox.map((r) => r.message_id))
  const lost = committed.filter((r) => !received.has(r.event_id)).length
  const [pending] = await orders.query<{ n: number | string; oldest: number | string | null }>(
    `SELECT count(*) AS n, min(created_at) AS oldest FROM ${outboxTable} WHERE published_at IS NULL`,
  )
  const sagaRows = await orders.query<{ status: string; n: number | string }>(
    `SELECT status, count(*) AS n FROM ${sagaTable} GROUP BY status`,
  )
  let acceptedFigures: ShopFigures['accepted']
  if (acceptedIds !== undefined) {
    const recorded = new Set([
      ...(await legacy.query<{ id: string }>('SELECT id FROM legacy_orders')).map((r) => r.id),
      ...(
        await orders.query<{ stream_id: string }>(
          "SELECT stream_id FROM breakwater_events WHERE type = 'order-placed'",
        )
      ).map((r) => r.stream_id.replace(/^order-/, '')),
    ])
    const missingIds = acceptedIds.filter((id) => !recorded.has(id))
    acceptedFigures = {
      orders: acceptedIds.length,
      missing: missingIds.length,
      missingIds: missingIds.slice(0, 5),
    }
  }
  const now = Date.now()
  return {
    at: now,
    orders: {
      legacy: legacyOrders,
      new: typed('order-placed'),
      total: legacyOrders + typed('order-placed'),
    },
    paidOrders: {
      legacy: legacyPaid,
      new: typed('order-confirmed'),
      total: legacyPaid + typed('order-confirmed'),
    },
    cancelledOrders: typed('order-cancelled'),
    legacyPending,
    charges: chargedIds.length,
    chargesTaken,
    unmatchedCharges: {
      chargedNotPaid: chargedNotPaid.length,
      paidNotCharged: paidNotCharged.length,
      ids: [...chargedNotPaid.slice(0, 3), ...paidNotCharged.slice(0, 3)],
    },
    refunds,
    duplicateCharges,
    emails: {
      // Every email, a second one to the same order too: the duplicates must show here.
      sent: emailRows.reduce((sum, r) => sum + Number(r.n), 0),
      duplicated: emailRows.filter((r) => Number(r.n) > 1).length,
      missing,
    },
    events: {
      committed: committed.length,
      delivered: committed.length - lost,
      lost,
      unpublished: Number(pending?.n ?? 0),
      oldestUnpublishedMs:
        pending?.oldest === null || pending?.oldest === undefined
          ? 0
          : now - Number(pending.oldest),
    },
    sagas: Object.fromEntries(sagaRows.map((r) => [r.status, Number(r.n)])),
    ...(acceptedFigures === undefined ? {} : { accepted: acceptedFigures }),
  }
}

/** Whether the system is quiet: nothing in flight that could still change a figure. */
export function quiescent(f: ShopFigures): boolean {
  return (
    f.events.lost === 0 &&
    f.events.unpublished === 0 &&
    f.legacyPending === 0 &&
    (f.sagas.running ?? 0) === 0 &&
    (f.sagas.compensating ?? 0) === 0 &&
    f.emails.missing === 0
  )
}

/**
 * Judges the invariants. While the system runs, figures in flight are not failures (an event
 * not delivered yet, a saga between steps); `final` judges them after the system went quiet.
 * Every order the load generator was told was accepted must be recorded, at any time (it was
 * committed before it was answered); judged when the figures carry `accepted`.
 */
export function judge(f: ShopFigures, final: boolean): Invariant[] {
  const inFlight = (f.sagas.running ?? 0) + (f.sagas.compensating ?? 0)
  // By order, not by count: an order charged but not paid and another paid but not charged
  // leave the counts equal.
  const { chargedNotPaid, paidNotCharged, ids } = f.unmatchedCharges
  const chargesMatch = f.charges === f.paidOrders.total && chargedNotPaid + paidNotCharged === 0
  const list: Invariant[] = [
    {
      name: 'charges = paid orders',
      value: chargesMatch
        ? `${f.charges} = ${f.paidOrders.total}`
        : !final
          ? `${f.charges} vs ${f.paidOrders.total} (orders in flight)`
          : `${f.charges} vs ${f.paidOrders.total} (${chargedNotPaid} charged not paid, ${paidNotCharged} paid not charged: ${ids.join(', ')})`,
      expected: 'equal',
      ok: !final || chargesMatch,
    },
    {
      name: 'duplicate charges',
      value: String(f.duplicateCharges),
      expected: '0',
      ok: f.duplicateCharges === 0,
    },
    {
      name: 'emails per finished order',
      value:
        f.emails.duplicated > 0
          ? `${f.emails.duplicated} orders got 2+`
          : f.emails.missing > 0
            ? `${f.emails.missing} orders got 0${final ? '' : ' yet'}`
            : '1',
      expected: '1',
      ok: f.emails.duplicated === 0 && (!final || f.emails.missing === 0),
    },
    {
      name: 'events lost',
      value:
        final || f.events.lost === 0 ? String(f.events.lost) : `${f.events.lost} not delivered yet`,
      expected: '0',
      ok: !final || f.events.lost === 0,
    },
    {
      name: 'sagas not finished',
      value: final
        ? `${inFlight + (f.sagas.failed ?? 0)}`
        : `${f.sagas.failed ?? 0} (${inFlight} running)`,
      expected: '0',
      ok: (f.sagas.failed ?? 0) === 0 && (!final || inFlight === 0),
    },
  ]
  // By id, not by count: orders whose request failed after they were recorded (a lost reply)
  // count too, and would hide as many accepted orders that were lost.
  const accepted = f.accepted
  if (accepted !== undefined) {
    const more = accepted.missing - accepted.missingIds.length
    list.push({
      name: 'accepted orders recorded',
      value:
        `${accepted.orders - accepted.missing} of ${accepted.orders}` +
        (accepted.missing === 0
          ? ''
          : ` (missing: ${accepted.missingIds.join(', ')}${more > 0 ? ` and ${more} more` : ''})`),
      expected: 'all',
      ok: accepted.missing === 0,
    })
  }
  return list
}

/** The demo's verdict when it stops: the invariants judged, whether they held, and its last line. */
export interface StopVerdict {
  readonly invariants: Invariant[]
  readonly ok: boolean
  readonly line: string
}

/**
 * Judges the shop when the demo stops. Settled, or out of time for the settle, everything is
 * judged (work still in flight at the settle deadline is a failure). Stopped by the user
 * before it settled (Ctrl-C twice: `hurried`), work in flight is not a broken invariant, so only
 * what must hold at any time is judged, and the last line says so.
 */
export function judgeAtStop(
  f: ShopFigures,
  state: { readonly settled: boolean; readonly hurried: boolean },
): StopVerdict {
  const hurried = state.hurried && !state.settled
  const invariants = judge(f, !hurried)
  const ok = invariants.every((i) => i.ok)
  const line = !ok
    ? 'INVARIANTS BROKEN: see the table above.'
    : hurried
      ? 'Stopped before the system settled: work in flight was not judged; every invariant that must hold at any time held.'
      : 'All invariants held.'
  return { invariants, ok, line }
}
