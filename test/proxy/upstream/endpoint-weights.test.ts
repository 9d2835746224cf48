import { describe, expect, it } from 'vitest'
import type { OutlierEjectionConfig } from '../../../src/proxy/contracts.js'
import {
  type Endpoint,
  EndpointSet,
  type EndpointTarget,
} from '../../../src/proxy/upstream/endpoints.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'

const ejectAtOnce: OutlierEjectionConfig = {
  consecutiveFailures: 1,
  baseEjectionMs: 10_000,
  maxEjectedPercent: 100,
}

/** Endpoints named a, b, c… (http://a:80) with these weights and priorities (default 0). */
function weightedSet(
  weights: readonly number[],
  loadBalancer: 'round-robin' | 'least-request',
  options: { random?: () => number; priorities?: readonly number[] } = {},
) {
  const set = new EndpointSet({
    loadBalancer,
    outlierEjection: ejectAtOnce,
    clock: new ManualClock(0),
    random: options.random ?? Math.random,
    open: () => {},
    retire: () => {},
    onEject: () => {},
  })
  const targets: EndpointTarget[] = weights.map((weight, i) => ({
    url: `http://${String.fromCharCode(97 + i)}:80`,
    servername: undefined,
    priority: options.priorities?.[i] ?? 0,
    weight,
  }))
  set.replace(targets)
  return set
}

const nameOf = (endpoint: Endpoint | undefined): string => endpoint?.url.slice(7, 8) ?? '-'

function picks(set: EndpointSet, n: number, avoid?: Endpoint): string {
  let out = ''
  for (let i = 0; i < n; i++) out += nameOf(set.pick(avoid))
  return out
}

/** Random numbers from a list, in turn. */
function sequence(...values: number[]): () => number {
  let i = 0
  return () => values[i++ % values.length] as number
}

describe('endpoint weights (SRV weight, RFC 2782)', () => {
  it('round robin spreads picks by weight, smoothly (no burst on the heavy endpoint)', () => {
    const set = weightedSet([5, 1, 1], 'round-robin')
    expect(picks(set, 7)).toBe('aabacaa')
    expect(picks(set, 7)).toBe('aabacaa')
  })

  it('round robin with equal weights is the plain rotation', () => {
    expect(picks(weightedSet([3, 3, 3], 'round-robin'), 6)).toBe('abcabc')
  })

  it('gives an endpoint of weight 0 nothing while one of weight > 0 is there', () => {
    expect(picks(weightedSet([0, 2, 1], 'round-robin'), 6)).toBe('bcbbcb')
    const random = sequence(0, 0.3, 0.6, 0.99, 0.5)
    const lr = weightedSet([0, 2, 1], 'least-request', { random })
    expect(picks(lr, 40)).not.toContain('a')
  })

  it('shares the load equally when every weight of the priority is 0', () => {
    expect(picks(weightedSet([0, 0, 0], 'round-robin'), 6)).toBe('abcabc')
    // Only the priority in use counts: the backups' weights do not make these unequal.
    const tiered = weightedSet([0, 0, 7, 1], 'round-robin', { priorities: [1, 1, 2, 2] })
    expect(picks(tiered, 4)).toBe('abab')
  })

  it('turns to the endpoints of weight 0 when every other one of the priority is ejected', () => {
    const set = weightedSet([0, 3, 0], 'round-robin', { priorities: [1, 1, 1] })
    const b = set.all[1] as Endpoint
    expect(picks(set, 3)).toBe('bbb')
    set.failure(b)
    expect(picks(set, 4)).toBe('acac')
    set.reset()
    expect(picks(set, 2)).toBe('bb')
  })

  it('least-request draws its two candidates by weight and weighs their load by it', () => {
    // Two endpoints, weights 3 and 1: the first draw (3/4 of [0, 1) for a) leads on a tie.
    const set = weightedSet([3, 1], 'least-request', { random: sequence(0.5, 0, 0.8, 0) })
    expect(picks(set, 2)).toBe('ab')
    const [a, b] = set.all as [Endpoint, Endpoint]
    // a has three requests for its weight of 3, b one for 1: a tie, the first drawn wins.
    a.inFlight = 3
    b.inFlight = 1
    expect(picks(set, 2)).toBe('ab')
    // One more on a: b has less load for its weight, whichever is drawn first.
    a.inFlight = 4
    expect(picks(set, 2)).toBe('bb')
  })

  it('least-request shares picks by weight over many idle picks', () => {
    // A fixed-seed generator: the counts are the same on every run.
    let seed = 12345
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed / 2 ** 31
    }
    const set = weightedSet([6, 3, 1], 'least-request', { random })
    const counts = { a: 0, b: 0, c: 0 } as Record<string, number>
    for (let i = 0; i < 10_000; i++) counts[nameOf(set.pick())]! += 1
    expect(counts.a! / 10_000).toBeCloseTo(0.6, 1)
    expect(counts.b! / 10_000).toBeCloseTo(0.3, 1)
    expect(counts.c! / 10_000).toBeCloseTo(0.1, 1)
  })

  it('avoids the endpoint a retry failed on, by weight among the others', () => {
    const set = weightedSet([5, 1, 1], 'round-robin')
    const a = set.all[0] as Endpoint
    expect(picks(set, 4, a)).not.toContain('a')
  })

  it('follows a weight changed by a new answer', () => {
    const set = weightedSet([1, 1], 'round-robin')
    expect(picks(set, 4)).toBe('abab')
    set.replace([
      { url: 'http://a:80', servername: undefined, weight: 3 },
      { url: 'http://b:80', servername: undefined, weight: 1 },
    ])
    expect(picks(set, 4)).toBe('aaba')
  })
})
