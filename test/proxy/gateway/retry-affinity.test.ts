// Retry affinity: a request carrying an Idempotency-Key goes where the key's first request went,
// even after the split moved (override, rollback, reload), for ttlMs and up to maxKeys keys.
// Time is a ManualClock; the gateway case runs real HTTP upstreams.
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import type { RetryAffinityConfig, RouteTargetConfig } from '../../../src/proxy/contracts.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
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

  it('property: within ttlMs every request of a key goes to its first target, whatever the splits did', async () => {
    const command = fc.oneof(
      fc.record({ kind: fc.constant('request' as const), key: fc.integer({ min: 0, max: 12 }) }),
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
              const seen = first.get(key)
              if (seen !== undefined && clock.now() - seen.at < affinity.ttlMs)
                expect(service).toBe(seen.service)
              else first.set(key, { service, at: clock.now() })
            }
          }
        },
      ),
    )
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

  it('a POST retried after the split moved reaches the side that took its first attempt', async () => {
    const legacy = await startUpstream((_req, res) => {
      sendJson(res, 201, { system: 'legacy' })
    })
    const next = await startUpstream((_req, res) => {
      sendJson(res, 201, { system: 'new' })
    })
    upstreams.push(legacy, next)
    const routes = [route('orders', '/orders', split(1, 0), { retryAffinity: affinity })]
    const t = createRouteTable(routes)
    gateway = await startGateway({ legacy: legacy.url, new: next.url }, routes, t)
    const post = async (key: string): Promise<string> => {
      const res = await fetch(`${gateway!.url}/orders`, {
        method: 'POST',
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{}',
      })
      return ((await res.json()) as { system: string }).system
    }
    expect(await post('order-1')).toBe('legacy')
    t.override('orders', split(0, 1))
    expect(await post('order-1')).toBe('legacy')
    expect(await post('order-2')).toBe('new')
    expect(legacy.seen.map((r) => r.headers['idempotency-key'])).toEqual(['order-1', 'order-1'])
    expect(next.seen.map((r) => r.headers['idempotency-key'])).toEqual(['order-2'])
  })
})
