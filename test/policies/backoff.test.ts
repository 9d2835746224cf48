import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { exponentialBackoff, type Jitter } from '../../src/policies/backoff.js'
import { seededRandom } from '../../src/policies/random.js'

describe('exponentialBackoff', () => {
  it('refuses a random source that answers a promise (an async one), naming it', async () => {
    const unhandled: unknown[] = []
    const onUnhandled = (reason: unknown) => unhandled.push(reason)
    process.on('unhandledRejection', onUnhandled)
    try {
      for (const random of [async () => 0.5, () => Promise.reject(new Error('no entropy'))]) {
        for (const jitter of ['full', 'equal', 'decorrelated'] as const) {
          const backoff = exponentialBackoff({ jitter, random: random as never })
          // A promise read as a number was NaN, clamped to 0: full jitter retried at once.
          expect(() => backoff.delayMs(3)).toThrow(
            expect.objectContaining({ code: 'INVALID_OPTION', option: 'backoff.random' }),
          )
        }
      }
      await new Promise((resolve) => setImmediate(resolve))
      expect(unhandled).toEqual([])
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })

  it('without jitter doubles from 100 ms and stops at the 30 s cap', () => {
    const backoff = exponentialBackoff({ jitter: 'none' })
    const delays = Array.from({ length: 12 }, (_, n) => backoff.delayMs(n))
    expect(delays).toEqual([
      100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000,
    ])
    // A retry count large enough to overflow factor^n still yields the cap.
    expect(backoff.delayMs(5_000)).toBe(30_000)
  })

  it('a zero base stays 0 however many retries (0 * factor^n must not overflow to NaN)', () => {
    for (const jitter of ['full', 'equal', 'none', 'decorrelated'] as const) {
      const backoff = exponentialBackoff({ jitter, baseDelayMs: 0 })
      for (const n of [0, 1, 1_023, 1_100, 5_000]) {
        expect(backoff.ceilingMs(n)).toBe(0)
        expect(backoff.delayMs(n)).toBe(0)
      }
    }
  })

  it('an infinite retry number gives the cap, also with factor 1 (1 ** Infinity is NaN)', () => {
    for (const jitter of ['full', 'equal', 'none', 'decorrelated'] as const) {
      for (const factor of [1, 2]) {
        const backoff = exponentialBackoff({ jitter, factor, maxDelayMs: 500, random: () => 0.5 })
        const cap = factor === 1 ? 100 : 500
        expect(backoff.ceilingMs(Number.POSITIVE_INFINITY)).toBe(cap)
        expect(backoff.delayMs(Number.POSITIVE_INFINITY)).not.toBeNaN()
      }
    }
  })

  it('refuses a retry number or previous delay that is not a number', () => {
    const backoff = exponentialBackoff({ jitter: 'decorrelated' })
    for (const bad of [Number.NaN, '1', undefined]) {
      expect(() => backoff.delayMs(bad as never)).toThrow(InvalidOptionError)
      expect(() => backoff.ceilingMs(bad as never)).toThrow(InvalidOptionError)
    }
    expect(() => backoff.delayMs(1, Number.NaN)).toThrow(/backoff\.delayMs\(previousDelayMs\)/)
  })

  it('honours baseDelayMs, factor and maxDelayMs', () => {
    const backoff = exponentialBackoff({
      jitter: 'none',
      baseDelayMs: 10,
      factor: 3,
      maxDelayMs: 500,
    })
    expect([0, 1, 2, 3, 4].map((n) => backoff.delayMs(n))).toEqual([10, 30, 90, 270, 500])
  })

  it('full jitter scales the ceiling by the random value (AWS: random(0, min(cap, base*2^n)))', () => {
    const values = [0, 0.5, 0.999]
    let i = 0
    const backoff = exponentialBackoff({ random: () => values[i++ % values.length]! })
    expect(backoff.jitter).toBe('full')
    expect(backoff.delayMs(3)).toBe(0)
    expect(backoff.delayMs(3)).toBe(400)
    expect(backoff.delayMs(3)).toBeCloseTo(799.2)
  })

  it('equal jitter keeps half of the ceiling fixed', () => {
    const backoff = exponentialBackoff({ jitter: 'equal', random: () => 0 })
    expect(backoff.delayMs(2)).toBe(200)
    const top = exponentialBackoff({ jitter: 'equal', random: () => 0.75 })
    expect(top.delayMs(2)).toBe(350)
  })

  it('decorrelated jitter draws between base and three times the previous delay', () => {
    const low = exponentialBackoff({ jitter: 'decorrelated', random: () => 0 })
    expect(low.delayMs(0)).toBe(100)
    expect(low.delayMs(5, 2_000)).toBe(100)
    const high = exponentialBackoff({ jitter: 'decorrelated', random: () => 0.5 })
    expect(high.delayMs(0)).toBe(200) // 100 + (300 - 100) / 2
    expect(high.delayMs(1, 1_000)).toBe(1_550) // 100 + (3000 - 100) / 2
    expect(high.delayMs(1, 100_000)).toBe(30_000)
  })

  it('decorrelated jitter stays a number after a huge previous delay (Infinity * 0 is NaN)', () => {
    // 3 * previous overflows to Infinity; a draw of 0 then made Infinity * 0 = NaN, a delay Node
    // fires after 1 ms, instead of the range's lower bound.
    for (const previous of [Number.POSITIVE_INFINITY, Number.MAX_VALUE, 1e308]) {
      const low = exponentialBackoff({ jitter: 'decorrelated', random: () => 0 })
      expect(low.delayMs(3, previous)).toBe(100)
      const high = exponentialBackoff({ jitter: 'decorrelated', random: () => 0.5 })
      expect(high.delayMs(3, previous)).toBe(30_000)
    }
  })

  it('clamps a random source that strays out of [0, 1)', () => {
    expect(exponentialBackoff({ random: () => 7 }).delayMs(0)).toBe(100)
    expect(exponentialBackoff({ random: () => -1 }).delayMs(0)).toBe(0)
    expect(exponentialBackoff({ random: () => Number.NaN }).delayMs(0)).toBe(0)
  })

  const ceiling = (n: number, base: number, factor: number, cap: number): number =>
    Math.min(cap, base * factor ** n)

  const params = fc.record({
    base: fc.integer({ min: 0, max: 5_000 }),
    factor: fc.double({ min: 1, max: 10, noNaN: true }),
    extraCap: fc.integer({ min: 0, max: 120_000 }),
    n: fc.integer({ min: 0, max: 60 }),
    // Uniform over [0, 1e6] ms in thousandths: fc.double would give mostly tiny values.
    previous: fc.option(
      fc.nat(1_000_000_000).map((n) => n / 1_000),
      { nil: undefined },
    ),
    seed: fc.integer(),
  })

  const bounds: Record<
    Exclude<Jitter, 'decorrelated'>,
    (n: number, base: number, factor: number, cap: number) => [number, number]
  > = {
    none: (n, base, factor, cap) => [ceiling(n, base, factor, cap), ceiling(n, base, factor, cap)],
    full: (n, base, factor, cap) => [0, ceiling(n, base, factor, cap)],
    equal: (n, base, factor, cap) => [
      ceiling(n, base, factor, cap) / 2,
      ceiling(n, base, factor, cap),
    ],
  }

  for (const jitter of ['full', 'equal', 'none'] as const) {
    it(`${jitter} jitter stays within its documented bounds (10,000 cases)`, () => {
      fc.assert(
        fc.property(params, ({ base, factor, extraCap, n, seed }) => {
          const cap = base + extraCap
          const backoff = exponentialBackoff({
            jitter,
            baseDelayMs: base,
            factor,
            maxDelayMs: cap,
            random: seededRandom(seed),
          })
          const [low, high] = bounds[jitter](n, base, factor, cap)
          const delay = backoff.delayMs(n)
          expect(delay).toBeGreaterThanOrEqual(low)
          expect(delay).toBeLessThanOrEqual(high)
          // Every kind but decorrelated is inside [0, min(cap, base * factor^n)].
          expect(delay).toBeLessThanOrEqual(ceiling(n, base, factor, cap))
        }),
        { numRuns: 10_000 },
      )
    })
  }

  // Documented: [min(cap, base), min(cap, 3 * max(base, previous))].
  it('decorrelated jitter stays within its documented bounds (10,000 cases)', () => {
    fc.assert(
      fc.property(params, ({ base, factor, extraCap, n, previous, seed }) => {
        const cap = base + extraCap
        const backoff = exponentialBackoff({
          jitter: 'decorrelated',
          baseDelayMs: base,
          factor,
          maxDelayMs: cap,
          random: seededRandom(seed),
        })
        const delay = backoff.delayMs(n, previous)
        expect(delay).toBeGreaterThanOrEqual(Math.min(cap, base))
        expect(delay).toBeLessThanOrEqual(Math.min(cap, 3 * Math.max(base, previous ?? base)))
      }),
      { numRuns: 10_000 },
    )
  })

  it('decorrelated delays chained retry after retry stay under min(cap, base * 3^(n+1))', () => {
    fc.assert(
      fc.property(fc.integer(), fc.integer({ min: 1, max: 1_000 }), (seed, base) => {
        const backoff = exponentialBackoff({
          jitter: 'decorrelated',
          baseDelayMs: base,
          random: seededRandom(seed),
        })
        let previous: number | undefined
        for (let n = 0; n < 20; n++) {
          const delay = backoff.delayMs(n, previous)
          expect(delay).toBeGreaterThanOrEqual(base)
          expect(delay).toBeLessThanOrEqual(Math.min(30_000, base * 3 ** (n + 1)))
          previous = delay
        }
      }),
      { numRuns: 1_000 },
    )
  })

  it.each([
    [{ baseDelayMs: -1 }, 'backoff.baseDelayMs'],
    [{ baseDelayMs: Number.NaN }, 'backoff.baseDelayMs'],
    [{ factor: 0.5 }, 'backoff.factor'],
    [{ maxDelayMs: 50 }, 'backoff.maxDelayMs'],
    [{ maxDelayMs: 2 ** 31 }, 'backoff.maxDelayMs'],
    [{ jitter: 'sometimes' }, 'backoff.jitter'],
    [{ random: 0.5 }, 'backoff.random'],
  ])('rejects invalid option %o naming %s', (options, name) => {
    const attempt = () => exponentialBackoff(options as never)
    expect(attempt).toThrow(InvalidOptionError)
    expect(attempt).toThrow(new RegExp(`^${name.replace('.', '\\.')}: expected`))
  })
})

describe('seededRandom', () => {
  it('repeats its sequence for the same seed and differs for another', () => {
    const a = seededRandom(42)
    const b = seededRandom(42)
    const c = seededRandom(43)
    const seqA = Array.from({ length: 20 }, () => a())
    expect(Array.from({ length: 20 }, () => b())).toEqual(seqA)
    expect(Array.from({ length: 20 }, () => c())).not.toEqual(seqA)
  })

  it('yields numbers in [0, 1) spread over the whole interval', () => {
    const random = seededRandom(7)
    const buckets = new Array<number>(10).fill(0)
    let outside = 0
    for (let i = 0; i < 100_000; i++) {
      const r = random()
      if (!(r >= 0 && r < 1)) outside++
      else buckets[Math.floor(r * 10)]!++
    }
    expect(outside).toBe(0)
    for (const count of buckets) expect(Math.abs(count - 10_000)).toBeLessThan(600)
  })

  it('rejects a seed that is not an integer', () => {
    expect(() => seededRandom(1.5)).toThrow(/^seededRandom\.seed: expected an integer/)
  })
})
