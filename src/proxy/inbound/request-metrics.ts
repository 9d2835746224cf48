// The request metrics of every listener: each request a listener answers, forwarded or answered
// by the proxy itself (no route, an unknown service, a refusal, a body the client or the drain
// cut), is counted once, by listener, route, service and the status its client was sent. One
// place for the gateway, the ambassador and the listener's own refusals, so the Prometheus
// series and the OpenTelemetry counter and histogram always agree.

import type { Attributes } from '@opentelemetry/api'
import type { Clock } from '../../core/clock.js'
import { otelInstruments } from '../../core/otel-instruments.js'
import {
  type Counter,
  type Histogram,
  type MetricsRegistry,
  metricsPerRegistry,
} from '../../observability/metrics.js'

/** The Prometheus request metrics of one registry, shared by every listener registered on it. */
export interface ListenerRequestMetrics {
  readonly requests: Counter
  readonly duration: Histogram
  /** The request counter's series by listener, route, service and status (see below). */
  readonly series: Map<string, Map<string, Map<string, Map<number, RequestSeries>>>>
  /** The duration histogram's label objects by listener and route, made once each. */
  readonly durationLabels: Map<string, Map<string, DurationLabels>>
}

// Type aliases, not interfaces: the label and attribute parameters take them as records.
/** The labels of one series of the request counter (and the OpenTelemetry counter's attributes). */
type RequestLabels = {
  readonly listener: string
  readonly route: string
  readonly service: string
  readonly status: number
}

/** One series of the request counter: its labels, made once, and the requests not yet added. */
interface RequestSeries {
  readonly labels: RequestLabels
  pending: number
}

type DurationLabels = { readonly listener: string; readonly route: string }

/** Upper bounds (seconds) of the request duration buckets, Prometheus' and OpenTelemetry's. */
const durationBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

// One set per registry: every listener, and every handler a reload creates, shares it.
//
// Requests are counted here and added to the Prometheus counter when the registry collects (each
// render, so every scrape and the cluster's merge see them all), as the service runtime counts
// its upstream requests: a labelled inc() checks and serializes its labels on every call, which
// per request was half of what counting added to the ambassador's hot path (about 5,700 of
// 11,400 instructions). The histogram still takes each request: it has no way to add many.
export const listenerRequestMetrics = metricsPerRegistry((registry): ListenerRequestMetrics => {
  const metrics: ListenerRequestMetrics = {
    requests: registry.counter({
      name: 'breakwater_proxy_route_requests_total',
      help: 'Requests a listener answered, by listener, route (ambassador on an ambassador listener, empty when none matched), service (empty when the request reached none: no route, an unknown service on an ambassador, an idempotent replay or refusal; on a gateway, a target the config lacks is named) and status sent.',
      labelNames: ['listener', 'route', 'service', 'status'],
    }),
    duration: registry.histogram({
      name: 'breakwater_proxy_route_request_duration_seconds',
      help: 'Request time from the first byte read to the end of the response, by listener and route.',
      labelNames: ['listener', 'route'],
      buckets: durationBuckets,
    }),
    series: new Map(),
    durationLabels: new Map(),
  }
  registry.onCollect(() => flushRequestCounts(metrics))
  return metrics
})

/** Adds the requests counted since the last collection to the Prometheus counter. */
function flushRequestCounts(metrics: ListenerRequestMetrics): void {
  for (const byRoute of metrics.series.values())
    for (const byService of byRoute.values())
      for (const byStatus of byService.values())
        for (const series of byStatus.values()) {
          if (series.pending === 0) continue
          metrics.requests.inc(series.labels, series.pending)
          series.pending = 0
        }
}

// The series of these labels, made on first use. Nested maps rather than one key joined from
// the labels: no string built per request, and no two label sets can share a key.
function seriesOf(
  metrics: ListenerRequestMetrics,
  listener: string,
  route: string,
  service: string,
  status: number,
): RequestSeries {
  const byStatus = mapIn(mapIn(mapIn(metrics.series, listener), route), service)
  let series = byStatus.get(status)
  if (series === undefined) {
    series = { labels: Object.freeze({ listener, route, service, status }), pending: 0 }
    byStatus.set(status, series)
  }
  return series
}

function durationLabelsOf(
  metrics: ListenerRequestMetrics,
  listener: string,
  route: string,
): DurationLabels {
  const byRoute = mapIn(metrics.durationLabels, listener)
  let labels = byRoute.get(route)
  if (labels === undefined) {
    labels = Object.freeze({ listener, route })
    byRoute.set(route, labels)
  }
  return labels
}

/** The map `outer` holds under `key`, made on first use. */
function mapIn<K, L, V>(outer: Map<K, Map<L, V>>, key: K): Map<L, V> {
  let inner = outer.get(key)
  if (inner === undefined) {
    inner = new Map()
    outer.set(key, inner)
  }
  return inner
}

/** The OpenTelemetry request instruments: the counter and the duration histogram. */
interface OtelRequestInstruments {
  readonly requests: { add(value: number, attributes?: Attributes): void }
  readonly duration: { record(value: number, attributes?: Attributes): void }
}
// Made on first use, not at import, and again for a new global meter provider. Without
// one they are the API's no-op instruments, whose add and record are empty methods TurboFan
// inlines into countRequest. The histogram's record added 10 to 60 instructions to about
// 5,000 per countRequest (callgrind, no SDK), under 0.05% of a request's 130,000; testing for
// the no-op instance to skip the call saved none of them, so it is not done.
const otelRequestInstruments = otelInstruments(
  (meter): OtelRequestInstruments => ({
    requests: meter.createCounter('breakwater.proxy.requests', {
      description:
        'Requests a proxy listener answered (attributes listener, route, service, status)',
    }),
    // Seconds, with the Prometheus histogram's buckets: the SDK's default ones (0 to 10 000)
    // are made for milliseconds, and every breakwater duration is in seconds.
    duration: meter.createHistogram('breakwater.proxy.request.duration', {
      description:
        'Request time from the first byte read to the end of the response, of the requests of breakwater.proxy.requests read far enough to be routed (same attributes)',
      unit: 's',
      advice: { explicitBucketBoundaries: durationBuckets },
    }),
  }),
)

/** What {@link countRequest} needs of the listener's context. */
export interface RequestMetricsContext {
  readonly clock: Clock
  readonly metrics: MetricsRegistry
}

/**
 * Counts one request a listener answered: `breakwater_proxy_route_requests_total` and the
 * OpenTelemetry counter `breakwater.proxy.requests` with the same labels, and, when the request
 * was read far enough to have a start time (`startedAt`, on the context clock), its duration in
 * `breakwater_proxy_route_request_duration_seconds` and in the OpenTelemetry histogram
 * `breakwater.proxy.request.duration` (seconds, the counter's attributes). `route` is `''` when
 * no route was matched, `service` `''` when no service was called. The Prometheus counter takes
 * the count at the registry's next collection (every `render()` collects first); the
 * OpenTelemetry instruments and the Prometheus histogram at once.
 *
 * @example
 * ```ts
 * countRequest(ctx, listener.name, 'ambassador', '', 404, inbound.startedAt)
 * ```
 */
export function countRequest(
  ctx: RequestMetricsContext,
  listener: string,
  route: string,
  service: string,
  status: number,
  startedAt?: number,
): void {
  const metrics = listenerRequestMetrics(ctx.metrics)
  const series = seriesOf(metrics, listener, route, service, status)
  series.pending++
  const otelRequests = otelRequestInstruments()
  otelRequests.requests.add(1, series.labels)
  if (startedAt !== undefined) {
    const seconds = (ctx.clock.now() - startedAt) / 1000
    metrics.duration.observe(durationLabelsOf(metrics, listener, route), seconds)
    otelRequests.duration.record(seconds, series.labels)
  }
}
