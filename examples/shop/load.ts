// The load generator: places orders at a steady rate, as customers would, through the proxy's
// gateway (or, without the proxy, straight to legacy or the new service by the same weighted,
// per-customer split), and reads the catalog now and then (shadowed to the new system).
// It is itself a well-behaved client: breakwater/http with an Idempotency-Key per order, so its
// own retries never place an order twice.
import { randomUUID } from 'node:crypto'
import { sleep, systemClock } from 'breakwater'
import { createHttpClient } from 'breakwater/http'
import { type OrderLine, type PlaceOrder, priceOf } from './domain/catalog.js'

/** Options of {@link startLoad}. */
export interface LoadOptions {
  /** Orders per second. */
  readonly rate: number
  /** The gateway (proxy) when it runs. */
  readonly gatewayUrl: string | undefined
  /** Without a gateway: legacy's and the new orders service's URLs, and the new share. */
  readonly direct: { readonly legacy: string; readonly orders: string }
  readonly newShare: () => number
  /** Called for each order with its outcome, for the live lines. */
  readonly onOrder?: (outcome: OrderOutcome) => void
}

/** What happened to one order request. */
export interface OrderOutcome {
  readonly orderId: string
  readonly ok: boolean
  readonly status: number | undefined
  readonly system: string | undefined
  readonly ms: number
  readonly error?: string
}

/** Figures of the load generator. */
export interface LoadStats {
  sent: number
  accepted: number
  /** The ids of the accepted orders (the invariants check that each was recorded). */
  acceptedIds: string[]
  failed: number
  shed: number
  inFlight: number
  bySystem: Record<string, number>
  latencies: number[]
  /**
   * New orders read back from the read model right after placing them: found, or not, and why
   * not (`status 500`, the error's message), so that a run where none was found says why.
   */
  readYourWrites: { found: number; missed: number; missedBecause: Record<string, number> }
}

/** The running load generator. */
export interface Load {
  readonly stats: LoadStats
  /** Requests per second over the last few seconds. */
  rate(): number
  /** Stops placing orders and waits for the ones in flight. */
  stop(): Promise<void>
}

// A stable hash of the customer: the same customer always lands on the same side of a split
// (what the proxy's sticky routing does with the x-customer-id header).
function bucketOf(customerId: string): number {
  let h = 2166136261
  for (let i = 0; i < customerId.length; i++) h = Math.imul(h ^ customerId.charCodeAt(i), 16777619)
  return (h >>> 0) % 100
}

function randomOrder(runId: string, n: number): PlaceOrder {
  const roll = Math.random()
  let items: OrderLine[]
  // Mostly small baskets; 1 in 20 is above the card limit (declined: the saga compensates);
  // 1 in 10 wants the limited print, which sells out (out of stock: cancelled too).
  if (roll < 0.05) items = [{ sku: 'teapot', qty: 6 }]
  else if (roll < 0.15) items = [{ sku: 'limited-print', qty: 1 }]
  else {
    const skus = ['kettle', 'mug', 'teapot', 'tea-100g']
    items = [{ sku: skus[n % skus.length]!, qty: 1 + (n % 3) }]
    if (n % 4 === 0) items.push({ sku: 'mug', qty: 2 })
  }
  return {
    orderId: `${runId}-${n}`,
    customerId: `c-${1 + Math.floor(Math.random() * 40)}`,
    items,
    amountCents: priceOf(items),
  }
}

/** Starts placing orders at `rate` per second. */
export function startLoad(options: LoadOptions): Load {
  const services = options.gatewayUrl
    ? { gateway: options.gatewayUrl, orders: options.direct.orders }
    : { legacy: options.direct.legacy, orders: options.direct.orders }
  // Three attempts with jitter, and no breaker: the client reports the shop's health as a
  // customer sees it instead of hiding it behind its own fast failures.
  const client = createHttpClient({
    services: Object.fromEntries(
      Object.entries(services).map(([name, baseUrl]) => [
        name,
        {
          baseUrl,
          overallTimeoutMs: 8_000,
          attemptTimeoutMs: 4_000,
          retry: { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 1_000 },
          circuitBreaker: false as const,
          bulkhead: false as const,
        },
      ]),
    ),
  })
  const stats: LoadStats = {
    sent: 0,
    accepted: 0,
    acceptedIds: [],
    failed: 0,
    shed: 0,
    inFlight: 0,
    bySystem: {},
    latencies: [],
    readYourWrites: { found: 0, missed: 0, missedBecause: {} },
  }
  const stamps: number[] = []
  const runId = randomUUID().slice(0, 8)
  const maxInFlight = 32
  let stopped = false
  const inFlight = new Set<Promise<void>>()

  const place = async (order: PlaceOrder): Promise<void> => {
    const started = Date.now()
    const target = options.gatewayUrl
      ? 'gateway'
      : bucketOf(order.customerId) < options.newShare()
        ? 'orders'
        : 'legacy'
    try {
      const response = await client.request(target, {
        method: 'POST',
        path: '/orders',
        json: order,
        idempotencyKey: `place-${order.orderId}`,
        headers: { 'x-customer-id': order.customerId },
      })
      const body =
        response.body.length > 0 ? response.json<{ system?: string; position?: number }>() : {}
      const ok = response.status < 300
      if (ok) {
        stats.accepted++
        stats.acceptedIds.push(order.orderId)
      } else stats.failed++
      // Every third order of the new system is read back at once from its read model: the
      // position makes the query wait for the projection (read-your-writes).
      if (ok && body.position !== undefined && stats.accepted % 3 === 0)
        track(readBack(order.orderId, body.position))
      const system = body.system ?? target
      stats.bySystem[system] = (stats.bySystem[system] ?? 0) + 1
      options.onOrder?.({
        orderId: order.orderId,
        ok,
        status: response.status,
        system,
        ms: Date.now() - started,
      })
    } catch (error) {
      stats.failed++
      options.onOrder?.({
        orderId: order.orderId,
        ok: false,
        status: undefined,
        system: undefined,
        ms: Date.now() - started,
        error: error instanceof Error ? error.message : String(error),
      })
    } finally {
      stats.latencies.push(Date.now() - started)
      if (stats.latencies.length > 500) stats.latencies.shift()
    }
  }

  const track = (call: Promise<void>): void => {
    const tracked = call.finally(() => {
      inFlight.delete(tracked)
      stats.inFlight = inFlight.size
    })
    inFlight.add(tracked)
    stats.inFlight = inFlight.size
  }

  const readBack = async (orderId: string, position: number): Promise<void> => {
    try {
      const response = await client.request('orders', {
        path: `/orders/${encodeURIComponent(orderId)}`,
        query: { atLeast: position },
      })
      const found =
        response.status === 200 && response.json<{ order_id?: string }>().order_id === orderId
      if (found) stats.readYourWrites.found++
      else missed(response.status === 200 ? 'another order' : `status ${response.status}`)
    } catch (error) {
      missed(error instanceof Error ? error.message : String(error))
    }
  }

  const missed = (reason: string): void => {
    const reasons = stats.readYourWrites.missedBecause
    stats.readYourWrites.missed++
    reasons[reason] = (reasons[reason] ?? 0) + 1
  }

  const readCatalog = async (): Promise<void> => {
    const target = options.gatewayUrl ? 'gateway' : 'legacy'
    await client.request(target, { path: '/catalog' }).catch(() => {})
  }

  const loop = (async () => {
    const intervalMs = 1_000 / options.rate
    let next = Date.now()
    let n = 0
    let ticks = 0
    while (!stopped) {
      next += intervalMs
      if (inFlight.size >= maxInFlight) {
        // The shop is slower than the rate: shed instead of piling up (an open-loop generator
        // would only measure its own queue).
        stats.shed++
      } else {
        stats.sent++
        stamps.push(Date.now())
        if (stamps.length > 200) stamps.shift()
        track(place(randomOrder(runId, n++)))
      }
      if (++ticks % 5 === 0) void readCatalog()
      await sleep(systemClock, Math.max(0, next - Date.now()))
    }
  })()

  return {
    stats,
    rate: () => {
      const since = Date.now() - 3_000
      return stamps.filter((t) => t >= since).length / 3
    },
    stop: async () => {
      stopped = true
      await loop
      await Promise.all(inFlight)
      stats.inFlight = 0
      await client.close()
    },
  }
}
