// The gateway's WebSocket handshakes: an `Upgrade: websocket` request is validated like any
// request (plus the handshake's own rules), routed on its path like any request, split between
// the route's targets by the same weights and sticky value, and tunnelled to the chosen service
// (upstream/tunnel.ts). Only routes with `websocket` set accept it; others answer 400.
//
// What does not apply to a tunnel: shadow comparison (there is no response to compare),
// Idempotency-Key enforcement (a handshake is a GET), retry affinity (a handshake is never
// retried by the proxy) and the deadline header (a tunnel lives as long as its conversation).

import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { metricsPerRegistry } from '../../observability/metrics.js'
import type { InboundContext, ListenerConfig, TunnelEnd, UpgradeHandler } from '../contracts.js'
import { forwardedHeaders } from './forwarded-headers.js'
import { endWithProblem } from './raw-response.js'
import { checkUpgradeRequest, type InboundRequest } from './request.js'
import { type RouteTable, stripPathPrefix } from './routes.js'
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
  const open = tunnelGauges(ctx.metrics)

  const refuse = (
    req: IncomingMessage,
    socket: Duplex,
    inbound: InboundRequest | undefined,
    status: number,
    code: string,
    detail: string,
    route = '',
  ): void => {
    endWithProblem(socket, ctx.clock, status, code, detail)
    if (ctx.accessLog) {
      ctx.logger.warn('request refused', {
        listener: listener.name,
        method: req.method,
        path: inbound?.path,
        route: route === '' ? undefined : route,
        status,
        code,
        detail,
        remote: req.socket.remoteAddress,
      })
    }
    observe(inbound, status, route, '')
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
      refuse(req, socket, inbound, 404, 'ROUTE_NOT_FOUND', 'no route matches this request')
      return
    }
    const config = route.config
    if (config.websocket === undefined) {
      const detail = `route ${route.name} does not accept WebSocket upgrades`
      refuse(req, socket, inbound, 400, 'REQUEST_UPGRADE_REFUSED', detail, route.name)
      return
    }
    const serviceName = routes.choose(route, stickyValueOf(config.sticky, inbound.headers), random)
    const service = ctx.services().get(serviceName)
    if (service === undefined) {
      const detail = `route ${route.name} has no live target`
      refuse(req, socket, inbound, 502, 'SERVICE_NOT_FOUND', detail, route.name)
      return
    }
    const headers = forwardedHeaders(
      inbound,
      req,
      scheme,
      trustForwarded,
      config.match.methods !== undefined,
    )
    const outcome = await service.tunnel(
      {
        target: `${stripPathPrefix(inbound.path, config.stripPrefix)}${inbound.query}`,
        headers,
        host: inbound.host,
        requestId: inbound.requestId,
        idleTimeoutMs: config.websocket.idleTimeoutMs,
      },
      socket,
      head,
    )
    const reached = outcome.error === undefined || outcome.status === 499
    if (reached) routes.count(route, serviceName)
    observe(inbound, outcome.status, route.name, reached ? serviceName : '')
    const labels = { listener: listener.name, route: route.name }
    if (outcome.status === 101) open.inc(labels)
    const end: TunnelEnd = await outcome.ended
    if (outcome.status === 101) open.dec(labels)
    if (!ctx.accessLog) return
    ctx.logger.info('access', {
      listener: listener.name,
      method: inbound.method,
      path: inbound.path,
      route: route.name,
      service: serviceName,
      status: outcome.status,
      attempts: outcome.endpoint === undefined ? 0 : 1,
      endpoint: outcome.endpoint,
      error: outcome.error,
      requestId: inbound.requestId,
      durationMs: ctx.clock.now() - inbound.startedAt,
      bytesIn: end.bytesIn,
      bytesOut: end.bytesOut,
      ...(outcome.status === 101 ? { tunnelEnd: end.reason } : {}),
    })
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
