// Retry affinity: a request carrying an Idempotency-Key goes where the key's first request went,
// even after the split moved (override, rollback, reload), for ttlMs and up to maxKeys keys.
// Time is a ManualClock; the gateway case runs real HTTP upstreams.
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import type { RetryAffinityConfig, RouteTargetConfig } from '../../../src/proxy/contracts.js'
import { retryKeyOf } from '../../../src/proxy/inbound/retry-affinity.js'
import { createRouteTable, type SharedRetryPin } from '../../../src/proxy/inbound/routes.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { route, seededRandom } from './fixtures.js'
import { type Gateway, sendJson, startGateway, startUpstream, type Upstream } from './harness.js'

const affinity: RetryAffinityConfig = { header: 'idempotency-key', ttlMs: 60_000, maxKeys: 1_000 }

function split(legacy: number, next: number): RouteTargetConfig[] {
  return [
    { service: 'legacy', weight: legacy },
    { service: 'new', weight: next },
  ]
}

function table(options: { affinity?: RetryAffinityConfig; clock?: ManualClock } = {}) {
  const clock = options.clock ?? new ManualClock()
  const t = createRouteTable(
    [
      route('orders', '/orders', split(1, 0), {
        ...(options.affinity === undefined ? {} : { retryAffinity: options.affinity }),
      }),
    ],
    { clock },
  )
  return { table: t, orders: t.get('orders')!, clock }
}

describe('retry affinity in the route table', () => {
  it('sends a retried key where its first request went, through a weight change and a rollback', () => {
    const { table: t, orders } = table({ affinity })
    const random = seededRandom(1)
    expect(t.choose(orders, undefined, random, 'key-a')).toBe('legacy')
    t.override('orders', split(0, 1))
    // The retry follows its first attempt; a new key follows the new weights.
    expect(t.choose(orders, undefined, random, 'key-a')).toBe('legacy')
    expect(t.choose(orders, undefined, random, 'key-b')).toBe('new')
    expect(t.choose(orders, undefined, random)).toBe('new')
    // A rollback does not move a key that went to the new side either.
    t.override('orders', split(1, 0))
    expect(t.choose(orders, undefined, random, 'key-b')).toBe('new')
    expect(t.choose(orders, undefined, random, 'key-a')).toBe('legacy')
    expect(t.state()[0]?.retryAffinity).toEqual({ pinnedKeys: 2, repeatsFollowed: 3 })
  })

  it('without retry affinity, a retry follows the weights (the hazard it prevents)', () => {
    const { table: t, orders } = table()
    const random = seededRandom(2)
    expect(t.choose(orders, undefined, random, 'key-a')).toBe('legacy')
    t.override('orders', split(0, 1))
    expect(t.choose(orders, undefined, random, 'key-a')).toBe('new')
    expect(t.state()[0]?.retryAffinity).toBeUndefined()
  })

  it('forgets a key ttlMs after its first request, not after its latest', async () => {
    const { table: t, orders, clock } = table({ affinity })
    const random = seededRandom(3)
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    t.override('orders', split(0, 1))
    await clock.advance(30_000)
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    await clock.advance(29_999)
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    await clock.advance(1)
    expect(t.choose(orders, undefined, random, 'k')).toBe('new')
  })

  it('keeps at most maxKeys pins, dropping the oldest first', () => {
    const { table: t, orders } = table({ affinity: { ...affinity, maxKeys: 3 } })
    const random = seededRandom(4)
    for (const key of ['k1', 'k2', 'k3', 'k4']) t.choose(orders, undefined, random, key)
    expect(t.state()[0]?.retryAffinity?.pinnedKeys).toBe(3)
    t.override('orders', split(0, 1))
    for (const key of ['k2', 'k3', 'k4'])
      expect(t.choose(orders, undefined, random, key)).toBe('legacy')
    // k1 was dropped to make room for k4: it follows the weights now.
    expect(t.choose(orders, undefined, random, 'k1')).toBe('new')
  })

  it('keeps its pins through a reload, and drops a pin whose service left the route', () => {
    const clock = new ManualClock()
    const first = createRouteTable(
      [route('orders', '/orders', split(1, 0), { retryAffinity: affinity })],
      { clock },
    )
    const random = seededRandom(5)
    expect(first.choose(first.get('orders')!, undefined, random, 'k')).toBe('legacy')
    const reloaded = createRouteTable(
      [route('orders', '/orders', split(0, 1), { retryAffinity: affinity })],
      { clock, previous: first },
    )
    expect(reloaded.choose(reloaded.get('orders')!, undefined, random, 'k')).toBe('legacy')
    const withoutLegacy = createRouteTable(
      [
        route('orders', '/orders', [{ service: 'new', weight: 1 }], {
          retryAffinity: affinity,
        }),
      ],
      { clock, previous: reloaded },
    )
    const orders = withoutLegacy.get('orders')!
    expect(withoutLegacy.choose(orders, undefined, random, 'k')).toBe('new')
    expect(withoutLegacy.state()[0]?.retryAffinity?.pinnedKeys).toBe(1)
  })

  it('drops a pin no request may have got through, so a refused first attempt does not hold its retries', () => {
    const { table: t, orders } = table({ affinity })
    const random = seededRandom(6)
    // Refused before reaching legacy (breaker open, connection refused): the pin goes.
    expect(t.choose(orders, undefined, random, 'refused')).toBe('legacy')
    t.settle(orders, 'refused', 'legacy', false)
    expect(t.choose(orders, undefined, random, 'reached')).toBe('legacy')
    t.settle(orders, 'reached', 'legacy', true)
    t.override('orders', split(0, 1))
    expect(t.choose(orders, undefined, random, 'refused')).toBe('new')
    expect(t.choose(orders, undefined, random, 'reached')).toBe('legacy')
    // Once a request may have reached its service, a refused retry does not undo the pin.
    t.settle(orders, 'reached', 'legacy', false)
    expect(t.choose(orders, undefined, random, 'reached')).toBe('legacy')
  })

  it('keeps a pin while another request with its key is in flight, and drops it when none got through', () => {
    const { table: t, orders } = table({ affinity })
    const random = seededRandom(7)
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    t.override('orders', split(0, 1))
    t.settle(orders, 'k', 'legacy', false)
    // The second request is still out: it may yet reach legacy.
    expect(t.choose(orders, undefined, random, 'k')).toBe('legacy')
    t.settle(orders, 'k', 'legacy', false)
    t.settle(orders, 'k', 'legacy', false)
    expect(t.choose(orders, undefined, random, 'k')).toBe('new')
  })

  it('tells its listener about a pin once a request may have reached it, and adopts pins of other processes', async () => {
    const clock = new ManualClock(1_000)
    const told: SharedRetryPin[] = []
    const routes = [route('orders', '/orders', split(1, 0), { retryAffinity: affinity })]
    const here = createRouteTable(routes, { clock, onPinReached: (pin) => told.push(pin) })
    const there = createRouteTable(routes, { clock })
    const orders = here.get('orders')!
    const random = seededRandom(8)
    here.choose(orders, undefined, random, 'refused')
    here.settle(orders, 'refused', 'legacy', false)
    here.choose(orders, undefined, random, 'k')
    here.settle(orders, 'k', 'legacy', true)
    here.choose(orders, undefined, random, 'k')
    here.settle(orders, 'k', 'legacy', true)
    expect(told).toEqual([{ route: 'orders', key: 'k', service: 'legacy', expiresAt: 61_000 }])

    // Another worker takes it: its retries of k go to legacy after the split moved.
    for (const pin of told) there.adoptPin(pin)
    there.override('orders', split(0, 1))
    expect(there.choose(there.get('orders')!, undefined, random, 'k')).toBe('legacy')
    expect(there.choose(there.get('orders')!, undefined, random, 'other')).toBe('new')
    // A pin of its own that a request may have got through wins over a reported one.
    there.settle(there.get('orders')!, 'other', 'new', true)
    there.adoptPin({ route: 'orders', key: 'other', service: 'legacy', expiresAt: 61_000 })
    expect(there.choose(there.get('orders')!, undefined, random, 'other')).toBe('new')
    // Expired or unknown-route pins are ignored.
    await clock.advance(60_000)
    there.adoptPin({ route: 'orders', key: 'late', service: 'legacy', expiresAt: 61_000 })
    there.adoptPin({ route: 'nope', key: 'x', service: 'legacy', expiresAt: 99_000 })
    expect(there.choose(there.get('orders')!, undefined, random, 'late')).toBe('new')
  })

  it('property: within ttlMs every request of a key goes where the first one that may have reached a service went', async () => {
    const command = fc.oneof(
      fc.record({
        kind: fc.constant('request' as const),
        key: fc.integer({ min: 0, max: 12 }),
        reached: fc.boolean(),
      }),
      fc.record({
        kind: fc.constant('split' as const),
        legacy: fc.integer({ min: 0, max: 3 }),
        next: fc.integer({ min: 1, max: 3 }),
      }),
      fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 20_000 }) }),
    )
    await fc.assert(
      fc.asyncProperty(
        fc.array(command, { maxLength: 80 }),
        fc.integer(),
        async (commands, seed) => {
          const { table: t, orders, clock } = table({ affinity })
          const random = seededRandom(seed)
          const first = new Map<string, { service: string; at: number }>()
          for (const c of commands) {
            if (c.kind === 'split') t.override('orders', split(c.legacy, c.next))
            else if (c.kind === 'advance') await clock.advance(c.ms)
            else {
              const key = `k${c.key}`
              const service = t.choose(orders, undefined, random, key)
              t.settle(orders, key, service, c.reached)
              const seen = first.get(key)
              const live = seen !== undefined && clock.now() - seen.at < affinity.ttlMs
              if (live) expect(service).toBe(seen.service)
              else if (c.reached) first.set(key, { service, at: clock.now() })
            }
          }
        },
      ),
    )
  })
})

describe('retry affinity with requests in flight', () => {
  // Requests overlap: each is chosen, and later settled as reached or refused, in any order,
  // while the split flips. What matters to the user: no key is ever worked on by both sides.
  it('property: every request of a key that may have reached a service reached the same one', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('start' as const), key: fc.integer({ min: 0, max: 3 }) }),
      fc.record({
        kind: fc.constant('finish' as const),
        pick: fc.nat(),
        reached: fc.boolean(),
      }),
      fc.record({ kind: fc.constant('flip' as const), toNew: fc.boolean() }),
    )
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), fc.integer(), (ops, seed) => {
        const { table: t, orders } = table({ affinity: { ...affinity, ttlMs: 1e12 } })
        const random = seededRandom(seed)
        const inFlight: { key: string; service: string }[] = []
        const reachedBy = new Map<string, string>()
        for (const o of ops) {
          if (o.kind === 'flip') t.override('orders', o.toNew ? split(0, 1) : split(1, 0))
          else if (o.kind === 'start') {
            const key = `k${o.key}`
            inFlight.push({ key, service: t.choose(orders, undefined, random, key) })
          } else if (inFlight.length > 0) {
            const [request] = inFlight.splice(o.pick % inFlight.length, 1)
            const { key, service } = request!
            t.settle(orders, key, service, o.reached)
            if (!o.reached) continue
            const earlier = reachedBy.get(key)
            if (earlier !== undefined) expect(service).toBe(earlier)
            reachedBy.set(key, service)
          }
        }
      }),
    )
  })
})

describe('the pin key of a request', () => {
  const key = (headers: Record<string, string | string[]>, sticky?: string) =>
    retryKeyOf(affinity, headers, sticky)

  it('is scoped by credential and sticky value, so two clients never share a key', () => {
    const base = key({ 'idempotency-key': 'k1', authorization: 'Bearer a' }, 'user-1')
    expect(base).toMatch(/^[0-9a-f]{64}$/)
    expect(key({ 'idempotency-key': 'k1', authorization: 'Bearer a' }, 'user-1')).toBe(base)
    expect(key({ 'idempotency-key': 'k1', authorization: 'Bearer b' }, 'user-1')).not.toBe(base)
    expect(key({ 'idempotency-key': 'k1', authorization: 'Bearer a' }, 'user-2')).not.toBe(base)
    expect(key({ 'idempotency-key': 'k2', authorization: 'Bearer a' }, 'user-1')).not.toBe(base)
    // Authorization first, else X-API-Key, as the sidecar's idempotency scopes keys; and the
    // header name is part of it, so the same value in either header is another client.
    expect(key({ 'idempotency-key': 'k1', 'x-api-key': 'a' })).not.toBe(
      key({ 'idempotency-key': 'k1', authorization: 'a' }),
    )
    expect(key({ 'idempotency-key': 'k1', authorization: 'a', 'x-api-key': 'z' })).toBe(
      key({ 'idempotency-key': 'k1', authorization: 'a' }),
    )
    // No parts run into each other: moving text from one to the next changes the key.
    expect(key({ 'idempotency-key': 'c' }, 'ab')).not.toBe(key({ 'idempotency-key': 'bc' }, 'a'))
  })

  it('is undefined without the header, with an empty one, or with affinity off', () => {
    expect(key({})).toBeUndefined()
    expect(key({ 'idempotency-key': '' })).toBeUndefined()
    expect(retryKeyOf(undefined, { 'idempotency-key': 'k' }, undefined)).toBeUndefined()
    expect(key({ 'idempotency-key': ['a', 'b'] })).toBe(key({ 'idempotency-key': 'a, b' }))
  })
})

describe('retry affinity through the gateway', () => {
  let gateway: Gateway | undefined
  const upstreams: Upstream[] = []
  afterEach(async () => {
    await gateway?.close()
    await Promise.all(upstreams.splice(0).map((u) => u.close()))
    gateway = undefined
  })

  // Two upstreams answering which side they are, behind a gateway whose /orders route starts
  // all on legacy; `post` sends a POST with these headers and returns the side that answered.
  async function splitGateway() {
    const side = (system: string) =>
      startUpstream((_req, res) => {
        sendJson(res, 201, { system })
      })
    const legacy = await side('legacy')
    const next = await side('new')
    upstreams.push(legacy, next)
    const routes = [route('orders', '/orders', split(1, 0), { retryAffinity: affinity })]
    const table = createRouteTable(routes)
    gateway = await startGateway({ legacy: legacy.url, new: next.url }, routes, table)
    const url = gateway.url
    const post = async (headers: Record<string, string>): Promise<string> => {
      const res = await fetch(`${url}/orders`, { method: 'POST', headers, body: '{}' })
      return ((await res.json()) as { system: string }).system
    }
    return { legacy, next, table, post }
  }

  it('a POST retried after the split moved reaches the side that took its first attempt', async () => {
    const { legacy, next, table: t, post } = await splitGateway()
    const keyed = (key: string) => post({ 'idempotency-key': key })
    expect(await keyed('order-1')).toBe('legacy')
    t.override('orders', split(0, 1))
    expect(await keyed('order-1')).toBe('legacy')
    expect(await keyed('order-2')).toBe('new')
    expect(legacy.seen.map((r) => r.headers['idempotency-key'])).toEqual(['order-1', 'order-1'])
    expect(next.seen.map((r) => r.headers['idempotency-key'])).toEqual(['order-2'])
  })

  it('two clients with the same key do not share a pin', async () => {
    const { table: t, post } = await splitGateway()
    const as = (token: string) => post({ 'idempotency-key': '1', authorization: `Bearer ${token}` })
    expect(await as('alice')).toBe('legacy')
    t.override('orders', split(0, 1))
    expect(await as('bob')).toBe('new')
    expect(await as('alice')).toBe('legacy')
  })

  it('a POST refused by a dead side is retried on the side the split moved to', async () => {
    // legacy: a port nothing listens on (connection refused: the request cannot have arrived).
    const dead = await startUpstream(() => {})
    await dead.close()
    const next = await startUpstream((_req, res) => {
      sendJson(res, 201, { system: 'new' })
    })
    upstreams.push(next)
    const routes = [route('orders', '/orders', split(1, 0), { retryAffinity: affinity })]
    const t = createRouteTable(routes)
    gateway = await startGateway({ legacy: dead.url, new: next.url }, routes, t)
    const post = (key: string) =>
      fetch(`${gateway!.url}/orders`, {
        method: 'POST',
        headers: { 'idempotency-key': key },
        body: '{}',
      })
    const refused = await post('order-1')
    expect(refused.status).toBeGreaterThanOrEqual(500)
    await refused.arrayBuffer()
    t.override('orders', split(0, 1))
    const retried = await post('order-1')
    expect(retried.status).toBe(201)
    expect(((await retried.json()) as { system: string }).system).toBe('new')
    expect(t.state()[0]?.retryAffinity).toEqual({ pinnedKeys: 1, repeatsFollowed: 0 })
  })
})
