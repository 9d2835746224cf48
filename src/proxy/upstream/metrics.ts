import {
  type Counter,
  type Gauge,
  type Histogram,
  metricsPerRegistry,
} from '../../observability/metrics.js'

/** The upstream metrics of one registry, shared by every service registered on it. */
export interface UpstreamMetrics {
  readonly requests: Counter
  readonly duration: Histogram
  readonly retries: Counter
  readonly breakerState: Gauge
  readonly bulkheadRunning: Gauge
  readonly bulkheadQueued: Gauge
  readonly ejections: Counter
  readonly ejected: Gauge
}

/** Latency buckets (seconds) from 0.5 ms: a proxy hop is fast, upstream calls vary. */
const durationBuckets = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]

/**
 * The upstream metrics on `registry`, registered on first use. A registry refuses a name twice,
 * and services come and go on reload, so the metrics belong to the registry, not the service.
 */
export const upstreamMetrics = metricsPerRegistry(
  (registry): UpstreamMetrics => ({
    requests: registry.counter({
      name: 'breakwater_proxy_upstream_requests_total',
      help: 'Requests forwarded to an upstream service, by the status sent to the client.',
      labelNames: ['service', 'status'],
    }),
    duration: registry.histogram({
      name: 'breakwater_proxy_upstream_request_duration_seconds',
      help: 'Time from forward to the end of the response, retries included.',
      labelNames: ['service'],
      buckets: durationBuckets,
    }),
    retries: registry.counter({
      name: 'breakwater_proxy_upstream_retries_total',
      help: 'Retried attempts to an upstream service.',
      labelNames: ['service'],
    }),
    breakerState: registry.gauge({
      name: 'breakwater_proxy_upstream_breaker_state',
      help: 'Circuit breaker state of an upstream service: 1 for the current state, else 0.',
      labelNames: ['service', 'state'],
    }),
    bulkheadRunning: registry.gauge({
      name: 'breakwater_proxy_upstream_bulkhead_running',
      help: 'Requests in flight to an upstream service (bulkhead slots taken).',
      labelNames: ['service'],
    }),
    bulkheadQueued: registry.gauge({
      name: 'breakwater_proxy_upstream_bulkhead_queued',
      help: 'Requests waiting for a bulkhead slot of an upstream service.',
      labelNames: ['service'],
    }),
    ejections: registry.counter({
      name: 'breakwater_proxy_upstream_ejections_total',
      help: 'Outlier ejections of endpoints of an upstream service.',
      labelNames: ['service'],
    }),
    ejected: registry.gauge({
      name: 'breakwater_proxy_upstream_endpoints_ejected',
      help: 'Endpoints of an upstream service ejected now.',
      labelNames: ['service'],
    }),
  }),
)

/**
 * Forgets every series of the per-service gauges (breaker state, bulkhead, ejected endpoints).
 * The proxy runtime calls it at the start of each collection, before the services' own
 * collectors set their current values, so a service a reload removed has no series left.
 */
export function resetUpstreamGauges(metrics: UpstreamMetrics): void {
  metrics.breakerState.reset()
  metrics.bulkheadRunning.reset()
  metrics.bulkheadQueued.reset()
  metrics.ejected.reset()
}
