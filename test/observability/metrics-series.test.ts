// Series are told apart by all of their label values, whatever characters those hold.
import { describe, expect, it } from 'vitest'
import { createMetricsRegistry } from '../../src/observability/index.js'
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
    expect(sampleValue(families, 'hits_total', { a: 'x', b: '\u0000' })).toBe(2)
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
