import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createMetricsRegistry,
  metricsPerRegistry,
  PROMETHEUS_CONTENT_TYPE,
} from '../../src/observability/index.js'
import { parsePrometheusText, sampleValue } from './prometheus-text.js'

describe('metrics registry: exposition format', () => {
  it('renders counters, gauges and histograms that parse back with their values', async () => {
    const registry = createMetricsRegistry()
    const published = registry.counter({
      name: 'app_published_total',
      help: 'Events published.',
      labelNames: ['broker'],
    })
    const lag = registry.gauge({ name: 'app_lag_seconds', help: 'Age of the oldest event.' })
    const latency = registry.histogram({
      name: 'app_publish_seconds',
      help: 'Publish latency.',
      buckets: [0.01, 0.1, 1],
    })
    published.inc({ broker: 'nats' })
    published.inc({ broker: 'nats' }, 4)
    published.inc({ broker: 'sql' }, 2)
    lag.set(12.5)
    lag.dec(0.5)
    for (const v of [0.005, 0.01, 0.05, 0.5, 3]) latency.observe(v)

    const text = await registry.render()
    const families = parsePrometheusText(text)
    expect(families.get('app_published_total')?.type).toBe('counter')
    expect(families.get('app_published_total')?.help).toBe('Events published.')
    expect(sampleValue(families, 'app_published_total', { broker: 'nats' })).toBe(5)
    expect(sampleValue(families, 'app_published_total', { broker: 'sql' })).toBe(2)
    expect(families.get('app_lag_seconds')?.type).toBe('gauge')
    expect(sampleValue(families, 'app_lag_seconds')).toBe(12)
    expect(families.get('app_publish_seconds')?.type).toBe('histogram')
    // Buckets are cumulative; le is inclusive; +Inf holds everything.
    expect(sampleValue(families, 'app_publish_seconds_bucket', { le: '0.01' })).toBe(2)
    expect(sampleValue(families, 'app_publish_seconds_bucket', { le: '0.1' })).toBe(3)
    expect(sampleValue(families, 'app_publish_seconds_bucket', { le: '1' })).toBe(4)
    expect(sampleValue(families, 'app_publish_seconds_bucket', { le: '+Inf' })).toBe(5)
    expect(sampleValue(families, 'app_publish_seconds_count')).toBe(5)
    expect(sampleValue(families, 'app_publish_seconds_sum')).toBeCloseTo(3.565, 10)
    expect(latency.get().buckets.map((b) => b.count)).toEqual([2, 3, 4, 5])
    expect(registry.contentType).toBe(PROMETHEUS_CONTENT_TYPE)
  })

  it('shows unlabelled metrics at 0 before they are touched, labelled ones not at all', async () => {
    const registry = createMetricsRegistry()
    registry.counter({ name: 'a_total', help: 'a' })
    registry.counter({ name: 'b_total', help: 'b', labelNames: ['x'] })
    registry.histogram({ name: 'c_seconds', help: 'c', buckets: [1] })
    const text = await registry.render()
    expect(text).toBe(
      [
        '# HELP a_total a',
        '# TYPE a_total counter',
        'a_total 0',
        '# HELP b_total b',
        '# TYPE b_total counter',
        '# HELP c_seconds c',
        '# TYPE c_seconds histogram',
        'c_seconds_bucket{le="1"} 0',
        'c_seconds_bucket{le="+Inf"} 0',
        'c_seconds_sum 0',
        'c_seconds_count 0',
        '',
      ].join('\n'),
    )
  })

  it('escapes label values and help text exactly as the format says', async () => {
    const registry = createMetricsRegistry()
    const g = registry.gauge({
      name: 'weird',
      help: 'back\\slash and\nnewline "quotes" stay',
      labelNames: ['v'],
    })
    g.set({ v: 'a"b\\c\nd' }, Number.POSITIVE_INFINITY)
    g.set({ v: 'nan' }, Number.NaN)
    g.set({ v: 'neg' }, Number.NEGATIVE_INFINITY)
    const text = await registry.render()
    expect(text).toContain('# HELP weird back\\\\slash and\\nnewline "quotes" stay\n')
    expect(text).toContain('weird{v="a\\"b\\\\c\\nd"} +Inf\n')
    const families = parsePrometheusText(text)
    expect(families.get('weird')?.help).toBe('back\\slash and\nnewline "quotes" stay')
    expect(sampleValue(families, 'weird', { v: 'a"b\\c\nd' })).toBe(Number.POSITIVE_INFINITY)
    expect(sampleValue(families, 'weird', { v: 'nan' })).toBeNaN()
    expect(sampleValue(families, 'weird', { v: 'neg' })).toBe(Number.NEGATIVE_INFINITY)
  })

  it('round-trips any label values and finite numbers (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(
          fc.record({
            a: fc.string({
              unit: fc.constantFrom('a', '"', '\\', '\n', 'é', '{', '}', ',', '=', ' '),
            }),
            b: fc.string(),
            value: fc.double({ noNaN: true, noDefaultInfinity: true }),
          }),
          { selector: (s) => `${s.a}\u0001${s.b}`, maxLength: 8 },
        ),
        async (series) => {
          const registry = createMetricsRegistry()
          const g = registry.gauge({ name: 'prop', help: 'p', labelNames: ['a', 'b'] })
          for (const s of series) g.set({ a: s.a, b: s.b }, s.value)
          const families = parsePrometheusText(await registry.render())
          const samples = families.get('prop')!.samples
          expect(samples).toHaveLength(series.length)
          for (const s of series) {
            // -0 renders as 0: the format has no negative zero.
            expect(sampleValue(families, 'prop', { a: s.a, b: s.b })).toBe(
              s.value === 0 ? 0 : s.value,
            )
          }
        },
      ),
      { numRuns: 200 },
    )
  })

  it('refreshes values in onCollect callbacks before rendering, and survives a failing one', async () => {
    const errors: unknown[] = []
    const registry = createMetricsRegistry({ onCollectError: (e) => errors.push(e) })
    const pending = registry.gauge({ name: 'pending', help: 'p' })
    let source = 3
    registry.onCollect(async () => {
      await Promise.resolve()
      pending.set(source)
    })
    const off = registry.onCollect(() => {
      throw new Error('source down')
    })
    expect(sampleValue(parsePrometheusText(await registry.render()), 'pending')).toBe(3)
    source = 7
    expect(sampleValue(parsePrometheusText(await registry.render()), 'pending')).toBe(7)
    expect(errors).toHaveLength(2)
    off()
    await registry.render()
    expect(errors).toHaveLength(2)
  })

  it('runs the collect callbacks once for scrapes that overlap a collection in flight', async () => {
    // A slow source (a database under stress) must not get one more query per scrape: two
    // Prometheus replicas, or a scrape that timed out and came back, join the running one.
    const registry = createMetricsRegistry()
    const pending = registry.gauge({ name: 'pending', help: 'p' })
    let calls = 0
    let release: () => void = () => {}
    registry.onCollect(async () => {
      calls++
      await new Promise<void>((resolve) => {
        release = resolve
      })
      pending.set(calls)
    })
    const first = registry.render()
    const second = registry.render()
    await Promise.resolve()
    expect(calls).toBe(1)
    release()
    const [a, b] = await Promise.all([first, second])
    expect(a).toBe(b)
    expect(sampleValue(parsePrometheusText(a), 'pending')).toBe(1)
    // The next scrape collects afresh.
    const third = registry.render()
    await Promise.resolve()
    release()
    expect(sampleValue(parsePrometheusText(await third), 'pending')).toBe(2)
  })

  it('refuses bad names, duplicate names, wrong labels and negative counter increments', () => {
    const registry = createMetricsRegistry()
    expect(() => registry.counter({ name: '1bad', help: 'x' })).toThrow(InvalidOptionError)
    expect(() => registry.counter({ name: 'ok', help: '' })).toThrow(/help/)
    expect(() => registry.gauge({ name: 'g', help: 'x', labelNames: ['__x'] })).toThrow(
      /labelNames/,
    )
    expect(() => registry.gauge({ name: 'g2', help: 'x', labelNames: ['a', 'a'] })).toThrow(
      /labelNames/,
    )
    expect(() => registry.histogram({ name: 'h', help: 'x', labelNames: ['le'] })).toThrow(
      /labelNames/,
    )
    expect(() => registry.histogram({ name: 'h2', help: 'x', buckets: [1, 1] })).toThrow(/buckets/)
    registry.histogram({ name: 'lat', help: 'x' })
    expect(() => registry.counter({ name: 'lat_count', help: 'x' })).toThrow(/not registered yet/)
    const c = registry.counter({ name: 'c_total', help: 'x', labelNames: ['route'] })
    expect(() => registry.counter({ name: 'c_total', help: 'again' })).toThrow(/not registered yet/)
    expect(() => c.inc()).toThrow(/route/)
    expect(() => c.inc({ route: '/a', extra: 'x' })).toThrow(/extra/)
    expect(() => c.inc({ route: '/a' }, -1)).toThrow(/>= 0/)
    expect(() => c.inc({ route: '/a' }, Number.NaN)).toThrow(/>= 0/)
    c.inc({ route: '/a' }, 2)
    expect(c.get({ route: '/a' })).toBe(2)
    expect(c.get({ route: '/b' })).toBe(0)
  })
})

describe('metricsPerRegistry', () => {
  it('registers once per registry and hands later callers the same metrics', async () => {
    let registrations = 0
    const counters = metricsPerRegistry((registry) => {
      registrations++
      return registry.counter({ name: 'shared_total', help: 'Shared by every caller.' })
    })
    const first = createMetricsRegistry()
    const second = createMetricsRegistry()
    // A second registration of the same name would throw: the memo is what prevents it.
    counters(first).inc()
    counters(first).inc()
    counters(second).inc()
    expect(registrations).toBe(2)
    expect(counters(first)).toBe(counters(first))
    expect(counters(first)).not.toBe(counters(second))
    expect(sampleValue(parsePrometheusText(await first.render()), 'shared_total')).toBe(2)
    expect(sampleValue(parsePrometheusText(await second.render()), 'shared_total')).toBe(1)
  })
})
