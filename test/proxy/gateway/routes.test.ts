import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../../src/core/errors.js'
import type { RouteTargetConfig } from '../../../src/proxy/contracts.js'
import {
  createRouteTable,
  matchesPrefix,
  stripPathPrefix,
} from '../../../src/proxy/inbound/routes.js'
import { route, seededRandom, shadowConfig } from './fixtures.js'

const segment = fc.stringMatching(/^[a-z0-9._~-]{1,6}$/)
const serviceName = fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/)
const userId = fc.string({ minLength: 1, maxLength: 24 })

function split(legacy: number, next: number, names = ['legacy', 'new']): RouteTargetConfig[] {
  return [
    { service: names[0] as string, weight: legacy },
    { service: names[1] as string, weight: next },
  ]
}

// Targets with distinct names and weights 0..1000, at least one above 0.
function weightedTargets(minLength: number, maxLength: number) {
  return fc
    .uniqueArray(fc.record({ service: serviceName, weight: fc.integer({ min: 0, max: 1000 }) }), {
      minLength,
      maxLength,
      selector: (t) => t.service,
    })
    .filter((targets) => targets.some((t) => t.weight > 0))
}

function weightOf(targets: readonly RouteTargetConfig[], service: string): number {
  return targets.find((t) => t.service === service)?.weight ?? 0
}

// Sticky choice must depend on the value only.
const noRandom = (): number => {
  throw new Error('sticky choice must not use random')
}

describe('route matching', () => {
  it('matches a prefix only at a segment boundary', () => {
    fc.assert(
      fc.property(
        fc.array(segment, { minLength: 1, maxLength: 3 }),
        fc.stringMatching(/^[a-z0-9/._-]{0,8}$/),
        (segments, tail) => {
          const prefix = `/${segments.join('/')}`
          const path = `${prefix}${tail}`
          const expected = tail === '' || tail.startsWith('/')
          const table = createRouteTable([route('r', prefix, [{ service: 's', weight: 1 }])])
          expect(matchesPrefix(path, prefix)).toBe(expected)
          expect(table.match('GET', path, {}) !== undefined).toBe(expected)
          // A configured trailing slash means the same prefix.
          const slashed = createRouteTable([
            route('r', `${prefix}/`, [{ service: 's', weight: 1 }]),
          ])
          expect(slashed.match('GET', path, {}) !== undefined).toBe(expected)
        },
      ),
    )
  })

  it('never matches a sibling whose name starts with the prefix', () => {
    const table = createRouteTable([route('orders', '/orders', [{ service: 'o', weight: 1 }])])
    expect(table.match('GET', '/orders', {})?.name).toBe('orders')
    expect(table.match('GET', '/orders/1', {})?.name).toBe('orders')
    expect(table.match('GET', '/orders/', {})?.name).toBe('orders')
    expect(table.match('GET', '/ordersx', {})).toBeUndefined()
    expect(table.match('GET', '/orders-admin/1', {})).toBeUndefined()
    expect(table.match('GET', '/order', {})).toBeUndefined()
  })

  it('checks methods and exact header values, and the first match wins', () => {
    const table = createRouteTable([
      route('canary', '/orders', [{ service: 'new', weight: 1 }], {
        match: { prefix: '/orders', methods: ['GET'], headers: { 'x-canary': '1' } },
      }),
      route('writes', '/orders', [{ service: 'legacy', weight: 1 }], {
        match: { prefix: '/orders', methods: ['post', 'PUT'], headers: {} },
      }),
      route('rest', '/', [{ service: 'app', weight: 1 }]),
    ])
    expect(table.match('GET', '/orders/1', { 'x-canary': '1' })?.name).toBe('canary')
    expect(table.match('GET', '/orders/1', { 'x-canary': '10' })?.name).toBe('rest')
    expect(table.match('GET', '/orders/1', { 'x-canary': ['1', '1'] })?.name).toBe('rest')
    expect(table.match('HEAD', '/orders/1', { 'x-canary': '1' })?.name).toBe('rest')
    expect(table.match('POST', '/orders/1', { 'x-canary': '1' })?.name).toBe('writes')
    expect(table.match('put', '/orders', {})?.name).toBe('writes')
    expect(table.match('DELETE', '/anything', {})?.name).toBe('rest')
  })

  it('lists the methods of the routes whose prefix and headers match, for a 405', () => {
    const table = createRouteTable([
      route('canary', '/orders', [{ service: 'new', weight: 1 }], {
        match: { prefix: '/orders', methods: ['GET'], headers: { 'x-canary': '1' } },
      }),
      route('writes', '/orders', [{ service: 'legacy', weight: 1 }], {
        match: { prefix: '/orders', methods: ['post', 'PUT'], headers: {} },
      }),
      route('deletes', '/orders/old', [{ service: 'legacy', weight: 1 }], {
        match: { prefix: '/orders/old', methods: ['DELETE', 'PUT'], headers: {} },
      }),
    ])
    expect(table.allowedMethods('/orders/1', {})).toEqual(['POST', 'PUT'])
    expect(table.allowedMethods('/orders/1', { 'x-canary': '1' })).toEqual(['GET', 'POST', 'PUT'])
    expect(table.allowedMethods('/orders/old/1', {})).toEqual(['POST', 'PUT', 'DELETE'])
    expect(table.allowedMethods('/elsewhere', {})).toEqual([])
    // A route that takes any method would have matched: there is nothing to list.
    const open = createRouteTable([route('rest', '/', [{ service: 'app', weight: 1 }])])
    expect(open.allowedMethods('/x', {})).toEqual([])
  })

  it('strips a prefix at a segment boundary only', () => {
    expect(stripPathPrefix('/api/orders/1', '/api')).toBe('/orders/1')
    expect(stripPathPrefix('/api', '/api')).toBe('/')
    expect(stripPathPrefix('/api/', '/api/')).toBe('/')
    expect(stripPathPrefix('/apix/1', '/api')).toBe('/apix/1')
    expect(stripPathPrefix('/api/1', undefined)).toBe('/api/1')
    expect(stripPathPrefix('/api/1', '/')).toBe('/api/1')
  })
})

describe('target choice', () => {
  it('keeps a sticky user on one target while the weights stay, in any table built from them', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 100 }),
        fc.array(userId, { minLength: 1, maxLength: 50 }),
        fc.integer(),
        (newWeight, users, seed) => {
          const targets = split(100 - newWeight, newWeight)
          const a = createRouteTable([route('r', '/', targets)])
          const b = createRouteTable([route('r', '/', [...targets].reverse())])
          const random = seededRandom(seed)
          for (const user of users) {
            const first = a.choose(a.get('r')!, user, random)
            expect(a.choose(a.get('r')!, user, random)).toBe(first)
            expect(b.choose(b.get('r')!, user, random)).toBe(first)
          }
        },
      ),
    )
  })

  it('moves users only to a target whose weight rose, or only from one whose weight fell, with any number of targets', () => {
    fc.assert(
      fc.property(
        weightedTargets(1, 6),
        fc.nat(),
        fc.integer({ min: 0, max: 1000 }),
        fc.boolean(),
        fc.array(userId, { minLength: 1, maxLength: 100 }),
        (targets, pick, weight, reverse, users) => {
          const i = pick % targets.length
          const changed = targets[i] as RouteTargetConfig
          const next = targets.map((t, j) => (j === i ? { service: t.service, weight } : t))
          if (!next.some((t) => t.weight > 0)) return
          const table = createRouteTable([route('r', '/', targets)])
          const r = table.get('r')!
          const before = users.map((u) => table.choose(r, u, noRandom))
          // A live override, listed in another order when `reverse`: the order must not matter.
          table.override('r', reverse ? [...next].reverse() : next)
          const after = users.map((u) => table.choose(r, u, noRandom))
          users.forEach((_, k) => {
            expect(weightOf(next, after[k] as string)).toBeGreaterThan(0)
            if (before[k] === after[k]) return
            if (weight > changed.weight) expect(after[k]).toBe(changed.service)
            else if (weight < changed.weight) expect(before[k]).toBe(changed.service)
            else expect.unreachable('equal weights moved a user')
          })
        },
      ),
    )
  })

  it('moves only the users of a target that is added or removed', () => {
    fc.assert(
      fc.property(
        weightedTargets(2, 6),
        fc.nat(),
        fc.array(userId, { minLength: 1, maxLength: 100 }),
        (targets, pick, users) => {
          const gone = targets[pick % targets.length] as RouteTargetConfig
          const rest = targets.filter((t) => t !== gone)
          if (!rest.some((t) => t.weight > 0)) return
          const table = createRouteTable([route('r', '/', targets)])
          const r = table.get('r')!
          const all = users.map((u) => table.choose(r, u, noRandom))
          table.override('r', rest)
          const fewer = users.map((u) => table.choose(r, u, noRandom))
          users.forEach((_, k) => {
            // Removing `gone` moves only its users; adding it back (fewer -> all) moves users
            // only to it.
            if (all[k] !== gone.service) expect(fewer[k]).toBe(all[k])
            else expect(fewer[k]).not.toBe(gone.service)
          })
        },
      ),
    )
  })

  it('with three targets, raising one weight moves users only to it (no churn between the others)', () => {
    const three = (a: number) => [
      { service: 'a', weight: a },
      { service: 'b', weight: 1 },
      { service: 'c', weight: 1 },
    ]
    const table = createRouteTable([route('r', '/', three(1))])
    const r = table.get('r')!
    const users = Array.from({ length: 3000 }, (_, i) => `u-${i}`)
    const before = users.map((u) => table.choose(r, u, noRandom))
    table.override('r', three(2))
    const moves = new Set(users.map((u, i) => `${before[i]}->${table.choose(r, u, noRandom)}`))
    // The band scheme moved users from c to b here; rendezvous hashing never does.
    expect([...moves].sort()).toEqual(['a->a', 'b->a', 'b->b', 'c->a', 'c->c'])
  })

  it("gives each target its weight's share of sticky users (fixed seeds: cannot flake)", () => {
    fc.assert(
      fc.property(weightedTargets(1, 6), fc.integer(), (targets, seed) => {
        const table = createRouteTable([route('r', '/', targets)])
        const r = table.get('r')!
        const random = seededRandom(seed)
        const n = 20_000
        const counts = new Map<string, number>()
        for (let i = 0; i < n; i++) {
          // Half sequential ids (the common case, differing only in their last bytes), half
          // pseudo-random ones.
          const user = i % 2 === 0 ? `user-${i}` : Math.floor(random() * 2 ** 52).toString(36)
          const s = table.choose(r, user, noRandom)
          counts.set(s, (counts.get(s) ?? 0) + 1)
        }
        const total = targets.reduce((x, t) => x + t.weight, 0)
        for (const { service, weight } of targets) {
          // 20,000 users: the standard error of a share is below 0.0036; 0.02 is > 5 sigma.
          if (weight === 0) expect(counts.get(service) ?? 0).toBe(0)
          else expect(Math.abs((counts.get(service) ?? 0) / n - weight / total)).toBeLessThan(0.02)
        }
      }),
      { seed: 20_240_601, numRuns: 40 },
    )
  })

  it('respects the weights statistically, with a seeded random and with sticky users', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 4 }),
        fc.integer(),
        (weights, seed) => {
          if (!weights.some((w) => w > 0)) return
          const targets = weights.map((weight, i) => ({ service: `s${i}`, weight }))
          const table = createRouteTable([route('r', '/', targets)])
          const r = table.get('r')!
          const random = seededRandom(seed)
          const n = 20_000
          const byRandom = new Map<string, number>()
          const bySticky = new Map<string, number>()
          for (let i = 0; i < n; i++) {
            const s1 = table.choose(r, undefined, random)
            byRandom.set(s1, (byRandom.get(s1) ?? 0) + 1)
            const s2 = table.choose(r, `user-${seed}-${i}`, random)
            bySticky.set(s2, (bySticky.get(s2) ?? 0) + 1)
          }
          const total = weights.reduce((x, y) => x + y, 0)
          targets.forEach(({ service, weight }) => {
            const share = weight / total
            if (weight === 0) {
              expect(byRandom.get(service) ?? 0).toBe(0)
              expect(bySticky.get(service) ?? 0).toBe(0)
              return
            }
            // 20,000 draws: the standard error of a share is below 0.0036; 0.02 is > 5 sigma.
            expect(Math.abs((byRandom.get(service) ?? 0) / n - share)).toBeLessThan(0.02)
            expect(Math.abs((bySticky.get(service) ?? 0) / n - share)).toBeLessThan(0.02)
          })
        },
      ),
      { seed: 20_240_602, numRuns: 25 },
    )
  })
})

describe('overrides and state', () => {
  it('swaps targets atomically, counts per service, and clears back to the configuration', () => {
    const table = createRouteTable([
      route('orders', '/orders', split(90, 10), { shadow: shadowConfig('new') }),
      route('app', '/', [{ service: 'app', weight: 1 }]),
    ])
    const orders = table.get('orders')!
    table.count(orders, 'legacy')
    table.count(orders, 'legacy')
    table.count(orders, 'new')
    table.override('orders', [{ service: 'legacy', weight: 1 }])
    expect(table.choose(orders, 'anyone', Math.random)).toBe('legacy')
    expect(table.choose(orders, undefined, () => 0.999999)).toBe('legacy')
    const [state] = table.state()
    expect(state).toMatchObject({
      name: 'orders',
      overridden: true,
      targets: [{ service: 'legacy', weight: 1 }],
      requestsByService: { legacy: 2, new: 1 },
      shadow: { compared: 0, mismatches: 0, examples: [] },
    })
    table.clearOverride('orders')
    expect(table.state()[0]).toMatchObject({ overridden: false, targets: split(90, 10) })
    expect(table.state()[1]?.shadow).toBeUndefined()
  })

  it('refuses bad overrides and names what is wrong', () => {
    const table = createRouteTable([route('orders', '/orders', split(1, 1))])
    const bad: [string, unknown, string][] = [
      ['nope', [{ service: 'a', weight: 1 }], 'route'],
      ['orders', [], 'targets'],
      ['orders', [{ service: 'a', weight: -1 }], 'targets[0].weight'],
      ['orders', [{ service: 'a', weight: Number.NaN }], 'targets[0].weight'],
      ['orders', [{ service: 'a', weight: 1e308 }], 'targets[0].weight'],
      ['orders', [{ service: 'a', weight: 0 }], 'targets'],
      [
        'orders',
        [
          { service: 'a', weight: 1 },
          { service: 'a', weight: 2 },
        ],
        'targets[1].service',
      ],
    ]
    for (const [name, targets, option] of bad) {
      let thrown: unknown
      try {
        table.override(name, targets as RouteTargetConfig[])
      } catch (error) {
        thrown = error
      }
      expect(thrown).toBeInstanceOf(InvalidOptionError)
      expect((thrown as InvalidOptionError).option).toBe(option)
    }
    expect(() => table.clearOverride('nope')).toThrow(InvalidOptionError)
    expect(table.state()[0]?.overridden).toBe(false)
  })

  it('refuses bad route tables at construction', () => {
    const ok = [{ service: 'a', weight: 1 }]
    expect(() => createRouteTable([route('a', 'orders', ok)])).toThrow(/match.prefix/)
    expect(() => createRouteTable([route('a', '/', ok), route('a', '/x', ok)])).toThrow(
      /routes\[1\]\.name/,
    )
    expect(() => createRouteTable([route('a', '/', [{ service: 'a', weight: 0 }])])).toThrow(
      /routes\[0\]\.targets/,
    )
  })

  it('carries counters and shadow statistics over a reload, but not overrides', () => {
    const first = createRouteTable([
      route('orders', '/orders', split(1, 1), { shadow: shadowConfig('new') }),
    ])
    const orders = first.get('orders')!
    first.count(orders, 'legacy')
    orders.shadow!.record(undefined)
    first.override('orders', [{ service: 'legacy', weight: 1 }])
    const second = createRouteTable(
      [route('orders', '/orders', split(1, 1), { shadow: shadowConfig('new') })],
      { previous: first },
    )
    expect(second.state()[0]).toMatchObject({
      overridden: false,
      requestsByService: { legacy: 1 },
      shadow: { compared: 1 },
    })
  })
})
