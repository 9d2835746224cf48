// The new orders service's model: its events (the event store is the write side), the
// order-history read model built from them, the integration events it publishes through the
// outbox, and the order saga that the saga workers run.
import { createEventStore, defineProjection, type Event, type EventStore } from 'breakwater/cqrs'
import type { HttpClient } from 'breakwater/http'
import { createOutbox, type Outbox } from 'breakwater/outbox'
import { defineSaga } from 'breakwater/saga'
import type { SqlDriver, SqlExecutor } from 'breakwater/stores'
import { worthRetrying } from '../lib/outbound.js'
import type { OrderLine, PlaceOrder } from './catalog.js'

/**
 * The events of one order's stream (`order-<id>`). The store, the projection and
 * `recordOrderEvent` are typed by this union: an append with a wrong payload does not compile,
 * and `event.type` narrows `event.data` wherever events are read.
 */
export type OrderEvent =
  | Event<'order-placed', PlaceOrder & { readonly placedAt: number }>
  | Event<'order-confirmed', { readonly orderId: string; readonly chargeId: string }>
  | Event<'order-cancelled', { readonly orderId: string; readonly reason: string }>

/** The order-history read model: one row per order, kept by an asynchronous projector. */
export const orderHistory = defineProjection<OrderEvent>({
  name: 'order-history',
  tables: {
    order_history: (t) => [
      `CREATE TABLE ${t} (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
         amount_cents INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT,
         placed_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)`,
      `CREATE INDEX ${t}_by_customer ON ${t} (customer_id)`,
    ],
  },
  async apply(event, { tx, table }) {
    const rows = table('order_history')
    if (event.type === 'order-placed') {
      const d = event.data
      await tx.execute(`INSERT INTO ${rows} VALUES ($1, $2, $3, 'placed', NULL, $4, $4)`, [
        d.orderId,
        d.customerId,
        d.amountCents,
        d.placedAt,
      ])
    } else {
      const status = event.type === 'order-confirmed' ? 'confirmed' : 'cancelled'
      const reason = event.type === 'order-cancelled' ? event.data.reason : null
      await tx.execute(
        `UPDATE ${rows} SET status = $2, reason = $3, updated_at = $4 WHERE order_id = $1`,
        [event.data.orderId, status, reason, Date.now()],
      )
    }
  },
})

/** The event store of the orders service, typed by its events. */
export function openOrderStore(db: SqlDriver): EventStore<OrderEvent> {
  return createEventStore<OrderEvent>(db)
}

/** The outbox of the orders service (the relay publishes what it holds). */
export function ordersOutbox(topic: string): Outbox {
  return createOutbox({ topic })
}

/**
 * Records an order event and its integration event together: the append and the outbox row
 * commit in the caller's transaction, so an event is published if and only if it happened.
 * Resolves to the event's position in the log (for read-your-writes queries).
 */
export async function recordOrderEvent(
  tx: SqlExecutor,
  deps: { readonly store: EventStore<OrderEvent>; readonly outbox: Outbox },
  event: OrderEvent,
): Promise<number> {
  const orderId = event.data.orderId
  const appended = await deps.store.append(
    `order-${orderId}`,
    [{ ...event, id: `${orderId}:${event.type}` }],
    { expectedVersion: event.type === 'order-placed' ? 'noStream' : 'streamExists', tx },
  )
  await deps.outbox.enqueue(tx, {
    id: `${orderId}:${event.type}`,
    aggregateType: 'order',
    aggregateId: orderId,
    type: event.type,
    payload: event.data,
  })
  return appended.lastPosition
}

/** What the order saga's steps need: the outbound client, the event store and the outbox. */
export interface OrderSagaDeps {
  readonly client: HttpClient
  readonly store: EventStore<OrderEvent>
  readonly outbox: Outbox
}

/** A call answered with an error status: final for a 4xx, retried for a 5xx. */
class CallFailedError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
    this.name = 'CallFailedError'
  }
}

async function post(
  client: HttpClient,
  service: string,
  path: string,
  json: unknown,
  idempotencyKey: string,
  signal: AbortSignal,
): Promise<Record<string, unknown>> {
  const response = await client.request(service, {
    method: 'POST',
    path,
    json,
    idempotencyKey,
    signal,
  })
  const body = response.body.length > 0 ? response.json<Record<string, unknown>>() : {}
  if (response.status >= 400) {
    const detail = typeof body.error === 'string' ? body.error : `answered ${response.status}`
    // 4xx: final (the step fails for good and the saga compensates); 5xx: retried.
    throw new CallFailedError(response.status, `${service}: ${detail}`)
  }
  return body
}

/** The order saga's input. */
export interface OrderSagaInput {
  readonly orderId: string
  readonly items: readonly OrderLine[]
  readonly amountCents: number
}

/**
 * The order saga: accept -> reserve inventory -> charge payment -> create shipment -> confirm.
 * Each remote step sends the saga's deterministic idempotency key, so a repeat after a crash
 * or a lost reply is harmless; a step that fails for good (declined card, out of stock, a
 * service down longer than the retries last) compensates the completed ones in reverse order:
 * refund, release the stock, and record the order as cancelled.
 */
export function defineOrderSaga(deps: OrderSagaDeps | undefined) {
  const need = (): OrderSagaDeps => {
    if (deps === undefined) throw new Error('this process does not run saga steps')
    return deps
  }
  // Generous retries with backoff: a service that is down for ten seconds delays orders but
  // does not cancel them. The breaker in front of it makes those retries cheap.
  const retry = { maxAttempts: 10, baseDelayMs: 200, maxDelayMs: 2_000, shouldRetry: worthRetrying }
  return defineSaga({
    name: 'order',
    version: 1,
    input: (raw) => raw as OrderSagaInput,
    steps: [
      {
        name: 'accept',
        action: () => ({}),
        compensationRequired: true,
        // Runs last when the saga compensates. An action whose attempt recorded no outcome is
        // compensated itself, but one whose calls failed (a lost reply on every attempt) is
        // not, so this sweep releases and refunds whatever the order may hold: both calls are
        // no-ops when there is nothing to undo. Then the cancellation is recorded with its outbox event.
        compensation: async (ctx) => {
          const { client, store, outbox } = need()
          const id = encodeURIComponent(ctx.input.orderId)
          await post(
            client,
            'payments',
            `/charges/${id}/refund`,
            {},
            `${ctx.idempotencyKey}:refund`,
            ctx.signal,
          )
          await post(
            client,
            'inventory',
            `/reservations/${id}/release`,
            {},
            `${ctx.idempotencyKey}:release`,
            ctx.signal,
          )
          ctx.atCommit(async (tx) => {
            await recordOrderEvent(
              tx,
              { store, outbox },
              {
                type: 'order-cancelled',
                data: { orderId: ctx.input.orderId, reason: ctx.reason.slice(0, 200) },
              },
            )
          })
        },
      },
      {
        name: 'reserve',
        retry,
        timeoutMs: 5_000,
        action: async (ctx) => {
          const { orderId, items } = ctx.input
          await post(
            need().client,
            'inventory',
            '/reservations',
            { orderId, items },
            ctx.idempotencyKey,
            ctx.signal,
          )
          return { reserved: true }
        },
        compensation: async (ctx) => {
          const path = `/reservations/${encodeURIComponent(ctx.input.orderId)}/release`
          await post(need().client, 'inventory', path, {}, ctx.idempotencyKey, ctx.signal)
        },
      },
      {
        name: 'charge',
        retry,
        timeoutMs: 5_000,
        action: async (ctx) => {
          const { orderId, amountCents } = ctx.input
          const body = await post(
            need().client,
            'payments',
            '/charges',
            { orderId, amountCents },
            ctx.idempotencyKey,
            ctx.signal,
          )
          return { chargeId: String(body.chargeId) }
        },
        compensation: async (ctx) => {
          const path = `/charges/${encodeURIComponent(ctx.input.orderId)}/refund`
          await post(need().client, 'payments', path, {}, ctx.idempotencyKey, ctx.signal)
        },
      },
      {
        name: 'ship',
        retry,
        timeoutMs: 5_000,
        action: async (ctx) => {
          const { orderId } = ctx.input
          await post(
            need().client,
            'shipping',
            '/shipments',
            { orderId },
            ctx.idempotencyKey,
            ctx.signal,
          )
          return { shipped: true }
        },
      },
      {
        name: 'confirm',
        action: async (ctx) => {
          const { store, outbox } = need()
          ctx.atCommit(async (tx) => {
            await recordOrderEvent(
              tx,
              { store, outbox },
              {
                type: 'order-confirmed',
                data: { orderId: ctx.input.orderId, chargeId: ctx.context.chargeId },
              },
            )
          })
          return {}
        },
      },
    ],
  })
}
