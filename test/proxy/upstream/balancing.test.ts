import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import type { OutlierEjectionConfig } from '../../../src/proxy/contracts.js'
import { type Endpoint, EndpointSet } from '../../../src/proxy/upstream/endpoints.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { refusedUrl, startFaultyUpstream } from '../support/faulty-upstream.js'
import { eventually, forwardRequest, serviceConfig, startFront, testDeps } from './helpers.js'

const cleanups: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function endpointSet(
  n: number,
  loadBalancer: 'round-robin' | 'least-request',
  ejection: OutlierEjectionConfig | undefined,
  clock: ManualClock,
  random: () => number = Math.random,
) {
  const ejections: string[] = []
  const set = new EndpointSet({
    loadBalancer,
    outlierEjection: ejection,
    clock,
    random,
    open: () => {},
    retire: () => {},
    onEject: (endpoint) => ejections.push(endpoint.url),
  })
  set.replace(
    Array.from({ length: n }, (_, i) => ({
      url: `http://10.0.0.${i + 1}:80`,
      servername: undefined,
    })),
  )
  return { set, ejections }
}

type Action =
  | { readonly kind: 'pick' }
  | { readonly kind: 'fail'; readonly index: number }
  | { readonly kind: 'succeed'; readonly index: number }
  | { readonly kind: 'advance'; readonly ms: number }
  | { readonly kind: 'load'; readonly index: number; readonly delta: number }

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ kind: 'pick' as const }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('fail' as const), index: fc.nat(15) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('succeed' as const), index: fc.nat(15) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('advance' as const),
      ms: fc.integer({ min: 1, max: 5_000 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('load' as const),
      index: fc.nat(15),
      delta: fc.integer({ min: -3, max: 3 }),
    }),
  },
)

describe('load balancing and outlier ejection (properties)', () => {
  it('picks only endpoints that are not ejected, and never ejects more than maxEjectedPercent', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 8 }),
        fc.constantFrom('round-robin' as const, 'least-request' as const),
        fc.record({
          consecutiveFailures: fc.integer({ min: 1, max: 3 }),
          baseEjectionMs: fc.integer({ min: 100, max: 3_000 }),
          maxEjectedPercent: fc.integer({ min: 0, max: 100 }),
        }),
        fc.array(actionArb, { maxLength: 80 }),
        async (n, lb, ejection, actions) => {
          const clock = new ManualClock(0)
          const { set } = endpointSet(n, lb, ejection, clock)
          const all = set.all
          for (const action of actions) {
            const endpoint = all[('index' in action ? action.index : 0) % n] as Endpoint
            if (action.kind === 'pick') {
              const picked = set.pick()
              expect(picked).toBeDefined()
              // The panic fallback (all ejected) only exists when 100% may be ejected.
              if (set.healthy.length > 0) expect(picked!.ejectedUntil).toBeUndefined()
            } else if (action.kind === 'fail') set.failure(endpoint)
            else if (action.kind === 'succeed') set.success(endpoint)
            else if (action.kind === 'load')
              endpoint.inFlight = Math.max(0, endpoint.inFlight + action.delta)
            else await clock.advance(action.ms)
            const ejected = all.filter((e) => e.ejectedUntil !== undefined)
            expect(ejected.length * 100).toBeLessThanOrEqual(ejection.maxEjectedPercent * n)
            expect(set.ejectedCount).toBe(ejected.length)
            expect(new Set(set.healthy)).toEqual(
              new Set(all.filter((e) => e.ejectedUntil === undefined)),
            )
            for (const e of ejected) expect(e.ejectedUntil!).toBeGreaterThan(clock.now())
          }
        },
      ),
      { numRuns: 300 },
    )
  })

  it('round robin visits every healthy endpoint once per cycle', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 10 }), (n) => {
        const { set } = endpointSet(n, 'round-robin', undefined, new ManualClock(0))
        const seen = Array.from({ length: n * 3 }, () => set.pick()!.url)
        for (let cycle = 0; cycle < 3; cycle++)
          expect(new Set(seen.slice(cycle * n, cycle * n + n)).size).toBe(n)
      }),
    )
  })

  it('least-request never picks the busier of its two choices, and avoids a just-failed endpoint', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat(20), { minLength: 2, maxLength: 8 }),
        // Uniform in [0, 1): fc.double would give mostly tiny values (doubles are spread over
        // their representations), so both choices would nearly always be the first endpoints.
        fc.array(
          fc.nat(999_999).map((n) => n / 1_000_000),
          { minLength: 64, maxLength: 64 },
        ),
        (loads, randoms) => {
          let r = 0
          const random = () => randoms[r++ % randoms.length]!
          const { set } = endpointSet(
            loads.length,
            'least-request',
            undefined,
            new ManualClock(0),
            random,
          )
          set.all.forEach((e, i) => {
            e.inFlight = loads[i]!
          })
          for (let k = 0; k < 20; k++) {
            const before = r
            const picked = set.pick()!
            // Recompute the two candidates from the same random numbers.
            const n = loads.length
            const i = Math.floor(randoms[before % randoms.length]! * n) % n
            let j = Math.floor(randoms[(before + 1) % randoms.length]! * (n - 1)) % (n - 1)
            if (j >= i) j++
            expect(picked.inFlight).toBe(Math.min(loads[i]!, loads[j]!))
          }
          const avoid = set.all[0]!
          for (let k = 0; k < 10; k++) expect(set.pick(avoid)).not.toBe(avoid)
        },
      ),
    )
  })

  it('an ejected endpoint returns after baseEjectionMs times its ejection count', async () => {
    const clock = new ManualClock(0)
    const { set, ejections } = endpointSet(
      4,
      'round-robin',
      { consecutiveFailures: 2, baseEjectionMs: 1_000, maxEjectedPercent: 50 },
      clock,
    )
    const target = set.all[1]!
    set.failure(target)
    expect(target.ejectedUntil).toBeUndefined()
    set.failure(target)
    expect(target.ejectedUntil).toBe(1_000)
    expect(ejections).toEqual([target.url])
    await clock.advance(999)
    expect(set.healthy).not.toContain(target)
    await clock.advance(1)
    expect(set.healthy).toContain(target)
    set.failure(target)
    set.failure(target)
    expect(target.ejectedUntil).toBe(1_000 + 2_000)
  })
})

describe('endpoint list changes', () => {
  it('keeps endpoints that stay (with their health), and ignores failures reported by removed ones', () => {
    const clock = new ManualClock(0)
    const { set } = endpointSet(
      3,
      'round-robin',
      { consecutiveFailures: 1, baseEjectionMs: 1_000, maxEjectedPercent: 100 },
      clock,
    )
    const [a, b, c] = set.all as [Endpoint, Endpoint, Endpoint]
    set.failure(a)
    expect(a.ejectedUntil).toBe(1_000)
    set.replace([
      { url: a.url, servername: undefined },
      { url: b.url, servername: undefined },
    ])
    expect(set.all).toEqual([a, b])
    expect(set.healthy).toEqual([b])
    // An attempt still running on the removed endpoint fails afterwards.
    set.failure(c)
    set.failure(c)
    expect(set.healthy).toEqual([b])
    expect(set.ejectedCount).toBe(1)
  })
})

describe('outlier ejection through the service', () => {
  it('ejects an endpoint that keeps failing, sends traffic to the others, and shows it in state()', async () => {
    const bad = await startFaultyUpstream({ fallback: { kind: 'respond', status: 500 } })
    const good = await startFaultyUpstream()
    cleanups.push(
      () => bad.close(),
      () => good.close(),
    )
    const clock = new ManualClock(0)
    const deps = testDeps(clock)
    const service = createServiceRuntime(
      serviceConfig([bad.url, good.url], {
        retry: undefined,
        outlierEjection: { consecutiveFailures: 2, baseEjectionMs: 10_000, maxEjectedPercent: 50 },
      }),
      deps,
    )
    cleanups.push(() => service.close())
    for (let i = 0; i < 4; i++) await service.exchange(forwardRequest(), 100)
    expect(bad.requests).toHaveLength(2)
    const state = service.state().endpoints.find((e) => e.url === bad.url)!
    expect(state).toMatchObject({ ejections: 1, ejectedUntil: 10_000 })
    for (let i = 0; i < 4; i++)
      expect((await service.exchange(forwardRequest(), 100)).status).toBe(200)
    expect(bad.requests).toHaveLength(2)
    expect(await deps.metrics.render()).toContain(
      'breakwater_proxy_upstream_ejections_total{service="orders"} 1',
    )
    await clock.advance(10_000)
    await service.exchange(forwardRequest(), 100)
    await service.exchange(forwardRequest(), 100)
    expect(bad.requests).toHaveLength(3)
    service.reset()
    expect(service.state().endpoints.every((e) => e.ejectedUntil === undefined)).toBe(true)
  })
})

describe('reset (the admin API)', () => {
  it('starts the ejection penalty over: the next ejection lasts baseEjectionMs, not n+1 times it', async () => {
    // An operator resets a service once its bad host is fixed; the host's past ejections
    // kept lengthening its next one (n x baseEjectionMs), as if the reset had not happened.
    const clock = new ManualClock(0)
    const { set } = endpointSet(
      2,
      'round-robin',
      { consecutiveFailures: 1, baseEjectionMs: 1_000, maxEjectedPercent: 50 },
      clock,
    )
    const bad = set.all[0] as Endpoint
    set.failure(bad)
    await clock.advance(1_000)
    set.failure(bad)
    expect(bad.state()).toMatchObject({ ejections: 2, ejectedUntil: 3_000 })
    set.reset()
    expect(bad.state()).toMatchObject({ ejections: 0, ejectedUntil: undefined })
    set.failure(bad)
    expect(bad.state()).toMatchObject({ ejections: 1, ejectedUntil: 2_000 })
  })
})

describe('retry budget (property)', () => {
  it('retries never exceed ratio x requests + the per-second floor over the window', async () => {
    const up = await startFaultyUpstream({ fallback: { kind: 'respond', status: 503 } })
    cleanups.push(() => up.close())
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 2, max: 4 }),
        fc.constantFrom(0, 0.1, 0.25, 0.5),
        fc.constantFrom(0, 0.1, 0.3),
        async (requests, attempts, ratio, perSecond) => {
          const clock = new ManualClock(0)
          const base = serviceConfig([up.url])
          const service = createServiceRuntime(
            {
              ...base,
              retry: {
                ...base.retry!,
                attempts,
                baseDelayMs: 0,
                maxDelayMs: 0,
                budgetRatio: ratio,
                budgetMinPerSecond: perSecond,
              },
            },
            testDeps(clock),
          )
          const front = await startFront(service, clock)
          const seenBefore = up.requests.length
          try {
            const answers = Array.from({ length: requests }, () => fetch(`${front.url}/r`))
            // Backoff is 0 ms, but still a timer on the manual clock: fire them until done.
            await eventually(async () => {
              await clock.advance(0)
              return front.outcomes.length === requests
            }, 20_000)
            for (const answer of answers) expect((await answer).status).toBe(503)
            const retries = up.requests.length - seenBefore - requests
            // Fixed point as the budget keeps it: deposits of ratio per request, plus the
            // reserve of perSecond x 10 s window.
            const budget = Math.floor(
              (Math.round(ratio * 1_000) * requests + Math.round(perSecond * 10 * 1_000)) / 1_000,
            )
            expect(retries).toBeLessThanOrEqual(budget)
            expect(retries).toBeLessThanOrEqual(requests * (attempts - 1))
            expect(front.outcomes.every((o) => o.attempts <= attempts)).toBe(true)
            if (budget >= 1) expect(retries).toBeGreaterThanOrEqual(1)
          } finally {
            await front.close()
            await service.close()
          }
        },
      ),
      { numRuns: 15 },
    )
  })
})

describe('no endpoints', () => {
  it('answers 503 UPSTREAM_NO_ENDPOINTS for an empty static list', async () => {
    const service = createServiceRuntime(serviceConfig([]), testDeps())
    cleanups.push(() => service.close())
    await expect(service.exchange(forwardRequest(), 10)).rejects.toMatchObject({
      code: 'UPSTREAM_NO_ENDPOINTS',
      status: 503,
    })
    expect(await refusedUrl()).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
  })
})
