// The request metrics of every listener: each request a listener answers, forwarded or answered
// by the proxy itself (no route, an unknown service, a refusal, a body the client or the drain
// cut), is counted once, by listener, route, service and the status its client was sent. One
// place for the gateway, the ambassador and the listener's own refusals, so the Prometheus
// series and the OpenTelemetry counter always agree.

import { type Attributes, metrics as otel } from '@opentelemetry/api'
import type { Clock } from '../../core/clock.js'
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
}

// One set per registry: every listener, and every handler a reload creates, shares it.
export const listenerRequestMetrics = metricsPerRegistry(
  (registry): ListenerRequestMetrics => ({
    requests: registry.counter({
      name: 'breakwater_proxy_route_requests_total',
      help: 'Requests a listener answered, by listener, route (ambassador on an ambassador listener, empty when none matched), service (empty when the request reached none: no route, an unknown service, an idempotent replay or refusal) and status sent.',
      labelNames: ['listener', 'route', 'service', 'status'],
    }),
    duration: registry.histogram({
      name: 'breakwater_proxy_route_request_duration_seconds',
      help: 'Request time from the first byte read to the end of the response, by listener and route.',
      labelNames: ['listener', 'route'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    }),
  }),
)

interface OtelCounter {
  add(value: number, attributes?: Attributes): void
}
let otelRequests: OtelCounter | undefined
// Created on first use, not at import, so an SDK registered at startup is picked up.
function otelRequestCounter(): OtelCounter {
  if (otelRequests === undefined) {
    otelRequests = otel.getMeter('breakwater').createCounter('breakwater.proxy.requests', {
      description:
        'Requests a proxy listener answered (attributes listener, route, service, status)',
    })
  }
  return otelRequests
}

/** What {@link countRequest} needs of the listener's context. */
export interface RequestMetricsContext {
  readonly clock: Clock
  readonly metrics: MetricsRegistry
}

/**
 * Counts one request a listener answered: `breakwater_proxy_route_requests_total` and the
 * OpenTelemetry counter `breakwater.proxy.requests` with the same labels, and, when the request
 * was read far enough to have a start time (`startedAt`, on the context clock), its duration in
 * `breakwater_proxy_route_request_duration_seconds`. `route` is `''` when no route was
 * matched, `service` `''` when no service was called.
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
  const labels = { listener, route, service, status }
  metrics.requests.inc(labels)
  otelRequestCounter().add(1, labels)
  if (startedAt !== undefined)
    metrics.duration.observe({ listener, route }, (ctx.clock.now() - startedAt) / 1000)
}
