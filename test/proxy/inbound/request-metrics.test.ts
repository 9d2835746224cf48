// countRequest keeps the request counter's counts beside the registry and adds them when the
// registry collects (as the service runtime does its upstream counts), so a labelled inc() is
// not paid per request. A render must show every request counted before it, once: none left
// behind, none added twice by a later render; and the OpenTelemetry counter and the duration
// histogram still take each request as it is counted.

import { describe, expect, it } from 'vitest'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { countRequest, listenerRequestMetrics } from '../../../src/proxy/inbound/request-metrics.js'
import { ManualClock } from '../../../src/testing/index.js'
import { recordOtelInstruments } from '../../support/otel-counters.js'

// Registered before any count: the OpenTelemetry instruments are created on first use.
const otel = recordOtelInstruments()
const recorded = otel.recorded

const series = (labels: string) => `breakwater_proxy_route_requests_total{${labels}}`

describe('countRequest', () => {
  it('shows every request counted before a render, once, however often it renders', async () => {
    const ctx = { clock: new ManualClock(1_000), metrics: createMetricsRegistry() }
    countRequest(ctx, 'out', 'ambassador', 'orders', 200, 1_000)
    countRequest(ctx, 'out', 'ambassador', 'orders', 200, 1_000)
    countRequest(ctx, 'out', 'ambassador', '', 404, 1_000)
    countRequest(ctx, 'out', '', '', 400)

    const first = await ctx.metrics.render()
    expect(first).toContain(
      `${series('listener="out",route="ambassador",service="orders",status="200"')} 2`,
    )
    expect(first).toContain(
      `${series('listener="out",route="ambassador",service="",status="404"')} 1`,
    )
    expect(first).toContain(`${series('listener="out",route="",service="",status="400"')} 1`)
    expect(await ctx.metrics.render()).toBe(first)

    countRequest(ctx, 'out', 'ambassador', 'orders', 200, 1_000)
    const third = await ctx.metrics.render()
    expect(third).toContain(
      `${series('listener="out",route="ambassador",service="orders",status="200"')} 3`,
    )
    expect(third).toContain(
      `${series('listener="out",route="ambassador",service="",status="404"')} 1`,
    )
  })

  // The OpenTelemetry counter had no duration beside it, while Prometheus has its histogram:
  // breakwater.proxy.request.duration takes the same requests, in seconds, with the counter's
  // attributes, as the Prometheus histogram does (only those read far enough to have a start).
  it('records the duration and the OpenTelemetry count and duration of each request at once', () => {
    const clock = new ManualClock(5_000)
    const ctx = { clock, metrics: createMetricsRegistry() }
    recorded.length = 0
    countRequest(ctx, 'in', 'orders', 'legacy', 503, 4_990)
    countRequest(ctx, 'in', 'orders', 'legacy', 503, 4_750)
    countRequest(ctx, 'in', '', '', 400)

    const duration = listenerRequestMetrics(ctx.metrics).duration.get({
      listener: 'in',
      route: 'orders',
    })
    expect(duration.count).toBe(2)
    expect(duration.sum).toBeCloseTo(0.26)
    const attributes = { listener: 'in', route: 'orders', service: 'legacy', status: 503 }
    expect(recorded).toEqual([
      { name: 'breakwater.proxy.requests', value: 1, attributes },
      { name: 'breakwater.proxy.request.duration', value: 0.01, attributes },
      { name: 'breakwater.proxy.requests', value: 1, attributes },
      { name: 'breakwater.proxy.request.duration', value: 0.25, attributes },
      {
        name: 'breakwater.proxy.requests',
        value: 1,
        attributes: { listener: 'in', route: '', service: '', status: 400 },
      },
    ])
    const histogram = otel.created.find((c) => c.name === 'breakwater.proxy.request.duration')
    expect(histogram).toMatchObject({ kind: 'histogram', options: { unit: 's' } })
    // The Prometheus histogram's buckets (seconds), not the SDK's default ones, made for ms.
    const bounds = duration.buckets.map((bucket) => bucket.le).filter(Number.isFinite)
    expect(histogram?.options?.advice?.explicitBucketBoundaries).toEqual(bounds)
  })

  it('keeps the counts of two registries apart', async () => {
    const clock = new ManualClock(0)
    const one = { clock, metrics: createMetricsRegistry() }
    const two = { clock, metrics: createMetricsRegistry() }
    countRequest(one, 'out', 'ambassador', 'orders', 200)
    countRequest(two, 'out', 'ambassador', 'orders', 200)
    countRequest(two, 'out', 'ambassador', 'orders', 200)
    const labels = 'listener="out",route="ambassador",service="orders",status="200"'
    expect(await one.metrics.render()).toContain(`${series(labels)} 1`)
    expect(await two.metrics.render()).toContain(`${series(labels)} 2`)
  })
})
