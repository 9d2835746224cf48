// Series are told apart by all of their label values, whatever characters those hold.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createMetricsRegistry, escapeLabelValue } from '../../src/observability/index.js'
import { parsePrometheusText, sampleValue } from './prometheus-text.js'

describe('metrics registry: series identity', () => {
  it('keeps two series apart when their label values differ only in where a NUL falls', async () => {
    const registry = createMetricsRegistry()
    const hits = registry.counter({ name: 'hits_total', help: 'h', labelNames: ['a', 'b'] })
    hits.inc({ a: 'x\u0000', b: '' }, 1)
    hits.inc({ a: 'x', b: '\u0000' }, 2)
    expect(hits.get({ a: 'x\u0000', b: '' })).toBe(1)
    expect(hits.get({ a: 'x', b: '\u0000' })).toBe(2)
    const families = parsePrometheusText(await registry.render())
    expect(families.get('hits_total')!.samples).toHaveLength(2)
    // A NUL is rendered as its mark (see escapeLabelValue), U+FFFD then its code.
    expect(sampleValue(families, 'hits_total', { a: 'x', b: '\uFFFD0000' })).toBe(2)
    expect(sampleValue(families, 'hits_total', { a: 'x\uFFFD0000', b: '' })).toBe(1)
  })
})

describe('metrics registry: histogram buckets', () => {
  it('takes +Inf only as the last bound, as a strictly increasing list has it', () => {
    const registry = createMetricsRegistry()
    const h = registry.histogram({ name: 'h1', help: 'h', buckets: [0.1, 1, Infinity] })
    expect(h.get().buckets.map((b) => b.le)).toEqual([0.1, 1, Infinity])
    for (const buckets of [
      [Infinity, 1],
      [1, Infinity, 2],
      [1, Infinity, Infinity],
    ])
      expect(() => registry.histogram({ name: 'h2', help: 'h', buckets }), String(buckets)).toThrow(
        /buckets/,
      )
  })
})

describe('metrics registry: an onCollectError that throws', () => {
  it('still renders the values as they are', async () => {
    const registry = createMetricsRegistry({
      onCollectError: () => {
        throw new Error('reporter failed')
      },
    })
    registry.counter({ name: 'kept_total', help: 'k' }).inc(3)
    registry.onCollect(() => {
      throw new Error('source down')
    })
    const families = parsePrometheusText(await registry.render())
    expect(sampleValue(families, 'kept_total', {})).toBe(3)
  })
})

describe('metrics registry: gauge steps that are not finite', () => {
  it('refuses them, leaving the series as it was (a NaN step would stick for good)', async () => {
    const registry = createMetricsRegistry()
    const inFlight = registry.gauge({ name: 'in_flight', help: 'h', labelNames: ['route'] })
    inFlight.set({ route: 'a' }, 3)
    for (const step of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      expect(() => inFlight.inc({ route: 'a' }, step), `inc ${step}`).toThrow(/finite number/)
      expect(() => inFlight.dec({ route: 'a' }, step), `dec ${step}`).toThrow(/finite number/)
    }
    inFlight.dec({ route: 'a' })
    expect(inFlight.get({ route: 'a' })).toBe(2)
    // A value set outright may be anything Prometheus reads, NaN and ±Inf included.
    inFlight.set({ route: 'b' }, Number.NaN)
    expect(Number.isNaN(inFlight.get({ route: 'b' }))).toBe(true)
  })
})

// What a scraper reads: the rendered text encoded as UTF-8 (as the /metrics server sends it),
// decoded strictly, so an encoding that is not valid UTF-8 fails here.
function scraped(text: string): string {
  return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(text, 'utf8'))
}

// Reads a rendered label value back: U+FFFD then four hex digits of a surrogate is that lone
// surrogate, U+FFFD then `FFFD` is a U+FFFD.
function unmark(text: string): string {
  return text.replace(/\uFFFD(D[89A-F][0-9A-F]{2}|FFFD)/g, (_, hex: string) =>
    String.fromCharCode(Number.parseInt(hex, 16)),
  )
}

describe('metrics registry: label values with lone surrogates', () => {
  it('keeps series apart that differ only in a lone surrogate, in valid UTF-8', async () => {
    // Encoding turns every lone surrogate into U+FFFD: rendered as is, these four would be
    // one label value, and Prometheus refuses a scrape with the same series twice.
    const registry = createMetricsRegistry()
    const hits = registry.counter({ name: 'hits_total', help: 'h', labelNames: ['path'] })
    hits.inc({ path: '/a\uD800' }, 1)
    hits.inc({ path: '/a\uD801' }, 2)
    hits.inc({ path: '/a\uDC00' }, 3)
    hits.inc({ path: '/a\uFFFD' }, 4)
    hits.inc({ path: '/a\uFFFDD800' }, 5)
    hits.inc({ path: '/a\uD83D\uDE00' }, 6)
    const samples = parsePrometheusText(scraped(await registry.render())).get('hits_total')!.samples
    expect(samples.map((s) => [s.labels.path, s.value])).toEqual([
      ['/a\uFFFDD800', 1],
      ['/a\uFFFDD801', 2],
      ['/a\uFFFDDC00', 3],
      ['/a\uFFFD', 4],
      ['/a\uFFFDFFFDD800', 5],
      ['/a\uD83D\uDE00', 6],
    ])
    expect(escapeLabelValue('"\uDFFF\\')).toBe('\\"\uFFFDDFFF\\\\')
  })

  it('renders distinct label values as distinct valid UTF-8 (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(
          fc.string({
            // Few units, some of them the text of a mark, so that values colliding in a
            // rendering that is not injective turn up together.
            unit: fc.constantFrom(
              '\uD800',
              '\uDBFF',
              '\uDC00',
              '\uFFFD',
              'D800',
              'DC00',
              'FFFD',
              'd800',
              '\\',
              '"',
              '\n',
              'x',
            ),
            maxLength: 4,
          }),
          { maxLength: 16 },
        ),
        async (values) => {
          const registry = createMetricsRegistry()
          const g = registry.gauge({ name: 'prop', help: 'p', labelNames: ['v'] })
          values.forEach((v, i) => {
            g.set({ v }, i)
          })
          const samples = parsePrometheusText(scraped(await registry.render())).get('prop')!.samples
          expect(samples).toHaveLength(values.length)
          expect(new Set(samples.map((s) => s.labels.v)).size).toBe(values.length)
          // Each value reads back from its rendering, as escapeLabelValue documents it (so no
          // two can share one), and one without lone surrogates or U+FFFD is rendered as it is.
          samples.forEach((s, i) => {
            const v = values[i]!
            expect(unmark(s.labels.v!)).toBe(v)
            if (!/[\uD800-\uDFFF\uFFFD]/.test(v)) expect(s.labels.v).toBe(v)
          })
        },
      ),
      { numRuns: 500 },
    )
  })
})

describe('metrics registry: histogram observations that are not finite', () => {
  it('counts +Inf (its _sum stays +Inf) and refuses what would make _sum NaN, changing nothing', async () => {
    const registry = createMetricsRegistry()
    const h = registry.histogram({ name: 'size', help: 'h', labelNames: ['k'], buckets: [1] })
    h.observe({ k: 'a' }, 0.5)
    expect(() => h.observe({ k: 'a' }, Number.NaN)).toThrow(InvalidOptionError)
    h.observe({ k: 'a' }, Number.POSITIVE_INFINITY)
    expect(() => h.observe({ k: 'a' }, Number.NEGATIVE_INFINITY)).toThrow(/sum/)
    expect(h.get({ k: 'a' })).toEqual({
      count: 2,
      sum: Number.POSITIVE_INFINITY,
      buckets: [
        { le: 1, count: 1 },
        { le: Number.POSITIVE_INFINITY, count: 2 },
      ],
    })
    // The other way round, and a sum that overflowed to -Inf from finite observations.
    h.observe({ k: 'b' }, Number.NEGATIVE_INFINITY)
    expect(() => h.observe({ k: 'b' }, Number.POSITIVE_INFINITY)).toThrow(/sum/)
    h.observe({ k: 'c' }, -Number.MAX_VALUE)
    h.observe({ k: 'c' }, -Number.MAX_VALUE)
    expect(() => h.observe({ k: 'c' }, Number.POSITIVE_INFINITY)).toThrow(/sum/)
    expect(h.get({ k: 'b' }).count).toBe(1)
    expect(h.get({ k: 'c' })).toMatchObject({ count: 2, sum: Number.NEGATIVE_INFINITY })
    const families = parsePrometheusText(await registry.render())
    expect(sampleValue(families, 'size_sum', { k: 'a' })).toBe(Number.POSITIVE_INFINITY)
    expect(sampleValue(families, 'size_sum', { k: 'b' })).toBe(Number.NEGATIVE_INFINITY)
  })
})
