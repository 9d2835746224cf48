// The gateway's WebSocket handshakes: an `Upgrade: websocket` request is validated like any
// request (plus the handshake's own rules), routed on its path like any request, split between
// the route's targets by the same weights and sticky value, and tunnelled to the chosen service
// (upstream/tunnel.ts). Only routes with `websocket` set accept it; others answer 400.
//
// What does not apply to a tunnel: shadow comparison (there is no response to compare),
// Idempotency-Key enforcement (a handshake is a GET), retry affinity (a handshake is never
// retried by the proxy) and the deadline header (a tunnel lives as long as its conversation;
// the inbound deadline only bounds the wait for a DNS-discovered service's first answer).

import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { type MetricsRegistry, metricsPerRegistry } from '../../observability/metrics.js'
import type {
  InboundContext,
  ListenerConfig,
  ServiceRuntime,
  TunnelEnd,
  TunnelOutcome,
  TunnelRequest,
  UpgradeHandler,
} from '../contracts.js'
import { dropsMethodOverrides, forwardedHeaders } from './forwarded-headers.js'
import { endWithProblem } from './raw-response.js'
import { checkUpgradeRequest, type InboundRequest, logAccess, logRefusal } from './request.js'
import { noRouteAnswer, type RouteTable, stripPathPrefix } from './routes.js'
import { stickyValueOf } from './sticky.js'

/** What the gateway counts for each handshake (its route request metrics). */
export type HandshakeObserver = (
  inbound: InboundRequest | undefined,
  status: number,
  route: string,
  service: string,
) => void

// One gauge per registry, shared by every gateway listener and every handler a reload creates.
const tunnelGauges = metricsPerRegistry((registry) =>
  registry.gauge({
    name: 'breakwater_proxy_tunnels_open',
    help: 'WebSocket tunnels open now, by listener and route.',
    labelNames: ['listener', 'route'],
  }),
)

/**
 * Makes the `breakwater_proxy_tunnels_open` series of a listener and route that can tunnel
 * exist before its first handshake, at 0, so that dashboards and alerts see 0 rather than no
 * data; a series with tunnels open keeps its value. The runtime calls it for each such route at
 * start and at every reload.
 */
export function exportTunnelGauge(
  registry: MetricsRegistry,
  listener: string,
  route: string,
): void {
  tunnelGauges(registry).inc({ listener, route }, 0)
}

/**
 * The `Upgrade` handler of a gateway listener: see the module comment. `table` returns the
 * current route table (a reload swaps it; a tunnel keeps the target it started with), `random`
 * splits non-sticky handshakes, and `observe` counts each handshake with the listener's request
 * metrics. Every handshake gets one access log line when its connection closes (status 101 for
 * a tunnel, with its bytes and duration).
 *
 * @example
 * ```ts
 * const upgrade = createWebSocketHandler(listener, ctx, () => table, Math.random, () => {})
 * server.on('upgrade', upgrade)
 * ```
 */
export function createWebSocketHandler(
  listener: ListenerConfig,
  ctx: InboundContext,
  table: () => RouteTable,
  random: () => number,
  observe: HandshakeObserver,
): UpgradeHandler {
  const scheme = listener.tls === undefined ? 'http' : 'https'
  const trustForwarded = listener.trustForwardedHeaders === true

  // `service` is counted and logged, as for a request, only for the target a route chose that
  // the config lacks (502 SERVICE_NOT_FOUND): the only name of the missing service. Other
  // refusals reached no service.
  const refuse = (
    req: IncomingMessage,
    socket: Duplex,
    inbound: InboundRequest | undefined,
    status: number,
    code: string,
    detail: string,
    where: {
      readonly route?: string
      readonly allow?: string | undefined
      readonly service?: string
    } = {},
  ): void => {
    const { route = '', allow, service = '' } = where
    const refusal = allow === undefined ? { status, code, detail } : { status, code, detail, allow }
    refuseUpgrade(ctx, listener.name, req, socket, refusal, inbound?.path, route, service)
    observe(inbound, status, route, service)
  }

  const serve = async (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> => {
    const check = checkUpgradeRequest(req, listener, ctx)
    if (!check.ok) {
      refuse(req, socket, undefined, check.status, check.code, check.detail)
      return
    }
    const inbound = check.request
    const routes = table()
    const route = routes.match(inbound.method, inbound.path, inbound.headers)
    if (route === undefined) {
      const answer = noRouteAnswer(routes, inbound.method, inbound.path, inbound.headers)
      refuse(req, socket, inbound, answer.status, answer.code, answer.detail, {
        allow: answer.allow,
      })
      return
    }
    const config = route.config
    if (config.websocket === undefined) {
      const detail = `route ${route.name} does not accept WebSocket upgrades`
      refuse(req, socket, inbound, 400, 'REQUEST_UPGRADE_REFUSED', detail, { route: route.name })
      return
    }
    const serviceName = routes.choose(route, stickyValueOf(config.sticky, inbound.headers), random)
    const service = ctx.services().get(serviceName)
    if (service === undefined) {
      const detail = `route ${route.name} has no live target`
      refuse(req, socket, inbound, 502, 'SERVICE_NOT_FOUND', detail, {
        route: route.name,
        service: serviceName,
      })
      return
    }
    const headers = forwardedHeaders(
      inbound,
      req,
      scheme,
      trustForwarded,
      dropsMethodOverrides(config),
    )
    await tunnelAndLog(
      ctx,
      listener.name,
      route.name,
      inbound,
      service,
      {
        target: `${stripPathPrefix(inbound.path, config.stripPrefix, config.match.caseSensitive)}${inbound.query}`,
        headers,
        host: inbound.host,
        requestId: inbound.requestId,
        idleTimeoutMs: config.websocket.idleTimeoutMs,
        deadlineAt: inbound.deadlineAt,
      },
      socket,
      head,
      (outcome) => {
        // The route's own counters take the handshakes that reached the service; the request
        // metric, as for a forward and as the access line, the service it was sent to, also
        // when the proxy answered for it (its breaker open, its endpoint refusing).
        if (outcome.error === undefined || outcome.status === 499) routes.count(route, serviceName)
        observe(inbound, outcome.status, route.name, serviceName)
      },
    )
  }

  return (req, socket, head) => {
    serve(req, socket, head).catch((error: unknown) => {
      ctx.logger.error('websocket handshake failed', {
        listener: listener.name,
        error: error instanceof Error ? error.message : String(error),
      })
      endWithProblem(
        socket,
        ctx.clock,
        500,
        'INTERNAL_ERROR',
        'the proxy failed to handle the request',
      )
    })
  }
}

/**
 * Tunnels a checked handshake to `service` ({@link ServiceRuntime.tunnel}), calls `decided`
 * with the handshake's outcome, keeps `breakwater_proxy_tunnels_open` while the tunnel is open,
 * and writes one access log line when the client connection closes (status 101 for a tunnel,
 * with its bytes, duration and `tunnelEnd`). Shared by gateway routes and the ambassador.
 */
export async function tunnelAndLog(
  ctx: InboundContext,
  listener: string,
  route: string,
  inbound: InboundRequest,
  service: ServiceRuntime,
  request: TunnelRequest,
  socket: Duplex,
  head: Buffer,
  decided: (outcome: TunnelOutcome) => void = () => {},
): Promise<void> {
  const outcome = await service.tunnel(request, socket, head)
  decided(outcome)
  const open = tunnelGauges(ctx.metrics)
  const labels = { listener, route }
  if (outcome.status === 101) open.inc(labels)
  const end: TunnelEnd = await outcome.ended
  if (outcome.status === 101) open.dec(labels)
  const attempts = outcome.endpoint === undefined ? 0 : 1
  const { status, endpoint, error } = outcome
  const logged = { status, attempts, written: attempts > 0, endpoint, error, captured: undefined }
  logAccess(ctx, inbound, logged, listener, { route, service: service.name, tunnel: end })
}

/** A refusal the proxy answers to a handshake itself. */
export interface UpgradeRefusal {
  readonly status: number
  readonly code: string
  readonly detail: string
  /** The `Allow` header of a 405. */
  readonly allow?: string
}

/**
 * Answers a handshake with the proxy's own problem (and ends the connection), and logs it as
 * `request refused` when access logs are on, with its path, route and service when known (a
 * service only for a route's target the config lacks, see {@link logRefusal}).
 */
export function refuseUpgrade(
  ctx: InboundContext,
  listener: string,
  req: IncomingMessage,
  socket: Duplex,
  refusal: UpgradeRefusal,
  path?: string,
  route = '',
  service = '',
): void {
  const extras = refusal.allow === undefined ? undefined : { headers: { allow: refusal.allow } }
  endWithProblem(socket, ctx.clock, refusal.status, refusal.code, refusal.detail, extras)
  logRefusal(ctx, listener, req, refusal, {
    path,
    route: route === '' ? undefined : route,
    service: service === '' ? undefined : service,
  })
}
