// The ambassador: the local app calls `http://localhost:PORT/<service>/<path>` and the proxy
// forwards `/<path>` to that service's endpoints with the service's policies. The only inputs
// that choose a destination are the first segment of the normalized path and the configured
// service table; Host, an absolute-form target or anything else in the path never do, so the
// ambassador cannot be used as an open proxy. WebSocket handshakes are routed the same way and
// tunnelled to services that set `websocket`.

import type { IncomingMessage, ServerResponse } from 'node:http'
import type {
  ForwardOutcome,
  InboundContext,
  ListenerConfig,
  ProxyResponse,
  RequestHandler,
  ServiceRuntime,
  TunnelOutcome,
  UpgradeHandler,
} from '../contracts.js'
import type { FastRequestHandler } from './fast-connection.js'
import { endWithProblem } from './raw-response.js'
import {
  checkUpgradeRequest,
  type InboundRequest,
  listenerRefusalLogger,
  logAccess,
  readFastInbound,
  readInbound,
  sendProblem,
  toForwardRequest,
} from './request.js'
import { countRequest } from './request-metrics.js'
import { refuseUpgrade, tunnelAndLog } from './websocket.js'

/** The route name ambassador requests carry in metrics and logs (once a service is named). */
export const AMBASSADOR_ROUTE = 'ambassador'

/**
 * The request handler of an `ambassador` listener: `/<service>/<rest>?query` goes to
 * `ctx.services().get(service)` as `/<rest>?query` (`/<service>` alone as `/`). A service that
 * does not exist, or that the listener does not expose (`listener.services`), is answered 404
 * with code `SERVICE_NOT_FOUND`, and so is a path without a service segment. The registry is
 * read per request, so a reload takes effect for the next request while requests in flight
 * finish on the runtime they started with.
 *
 * @example
 * ```ts
 * const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
 * await server.listen()
 * // the app: fetch('http://127.0.0.1:15001/orders/v1/orders/42')
 * ```
 */
export function createAmbassadorHandler(
  listener: ListenerConfig,
  ctx: InboundContext,
): RequestHandler {
  const exposed = listener.services === undefined ? undefined : new Set(listener.services)
  const failed = (res: ProxyResponse, error: unknown): void => {
    ctx.logger.error('ambassador handler failed', {
      listener: listener.name,
      error: (error as Error).message,
    })
    sendProblem(res, 500, 'INTERNAL_ERROR', 'internal proxy error')
    countRequest(ctx, listener.name, '', '', 500)
  }
  // The returned promise never rejects: a failure of the forward is answered here.
  // The service a path's first segment names, if this listener exposes it. (Separate small
  // functions rather than one returning an object: no allocation per request.)
  const serviceNamed = (name: string): ServiceRuntime | undefined =>
    name === '' || (exposed !== undefined && !exposed.has(name))
      ? undefined
      : ctx.services().get(name)
  const route = (inbound: InboundRequest, res: ProxyResponse): Promise<unknown> | undefined => {
    const name = serviceSegment(inbound.path)
    const service = serviceNamed(name)
    if (service === undefined) {
      sendProblem(res, 404, 'SERVICE_NOT_FOUND', notFoundDetail(name))
      logAccess(ctx, inbound, notFound, listener.name, { route: AMBASSADOR_ROUTE })
      countRequest(ctx, listener.name, AMBASSADOR_ROUTE, '', 404, inbound.startedAt)
      return undefined
    }
    const target = targetAfterService(inbound)
    const pending = service.forward(toForwardRequest(inbound, AMBASSADOR_ROUTE, target), res)
    return pending.then(
      (outcome) => settled(inbound, outcome, service.name),
      (error: unknown) => settled(inbound, threw(res, error, service.name), service.name),
    )
  }
  // forward() promises never to throw; if it does anyway, the client still gets an answer.
  const threw = (res: ProxyResponse, error: unknown, service?: string): ForwardOutcome => {
    ctx.logger.error('service forward threw', {
      listener: listener.name,
      service,
      error: (error as Error).message,
    })
    sendProblem(res, 500, 'INTERNAL_ERROR', 'the proxy failed to forward the request')
    return forwardThrew
  }
  // A forwarded request: logged, and counted as the gateway counts its routes, under the
  // ambassador's route name.
  const settled = (inbound: InboundRequest, outcome: ForwardOutcome, service: string): void => {
    // Checked here too: without access logs, no details object per request.
    if (ctx.accessLog)
      logAccess(ctx, inbound, outcome, listener.name, { route: AMBASSADOR_ROUTE, service })
    countRequest(ctx, listener.name, AMBASSADOR_ROUTE, service, outcome.status, inbound.startedAt)
  }
  // A request whose connection went in the middle of its body: logged and counted with what
  // its client was sent (499 ABORTED for one that left, as for one that leaves while the
  // upstream answers; the listener's 408 when the request timer cut it; 503 DRAIN_TIMEOUT when
  // the drain's hard stop cut it), under the service its path names, as the gateway logs and
  // counts it under the route its head matched (on an ambassador the service is the route);
  // no service saw it.
  const bodyCut = (inbound: InboundRequest, outcome: ForwardOutcome): void => {
    const service = serviceNamed(serviceSegment(inbound.path))
    logAccess(
      ctx,
      inbound,
      outcome,
      listener.name,
      service === undefined
        ? { route: AMBASSADOR_ROUTE }
        : { route: AMBASSADOR_ROUTE, service: service.name },
    )
    const name = service?.name ?? ''
    countRequest(ctx, listener.name, AMBASSADOR_ROUTE, name, outcome.status, inbound.startedAt)
  }
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      const read = readInbound(req, res, listener, ctx, undefined, bodyCut)
      // A request without a body is routed in this turn, without a promise for the read.
      if (read instanceof Promise) {
        read
          .then((inbound) => (inbound === undefined ? undefined : route(inbound, res)))
          .then(undefined, (error: unknown) => failed(res, error))
      } else if (read !== undefined) {
        route(read, res)
      }
    } catch (error) {
      failed(res, error)
    }
  }
  // Plain requests the listener read itself: the same validation, and a refused one goes
  // back to node:http (false), which answers it through `handler`.
  const fast: FastRequestHandler = (req, res) => {
    let inbound: InboundRequest | undefined
    try {
      inbound = readFastInbound(req, res, listener, ctx)
    } catch {
      // A bug in validation: node:http's path meets it too, and answers it (500, logged).
      // Thrown out of here, it would reset the connection without an answer.
      return false
    }
    if (inbound === undefined) return false
    try {
      route(inbound, res)
    } catch (error) {
      failed(res, error)
    }
    return true
  }
  // WebSocket handshakes: routed by the same first path segment, tunnelled to services that
  // accept them (`websocket` on the service); the app is the client, so no X-Forwarded-*.
  const upgrade: UpgradeHandler = (req, socket, head) => {
    // Counted as the gateway counts its handshakes: no route for one refused before routing.
    const refuse = (status: number, code: string, detail: string, inbound?: InboundRequest) => {
      refuseUpgrade(ctx, listener.name, req, socket, { status, code, detail }, inbound?.path)
      const route = inbound === undefined ? '' : AMBASSADOR_ROUTE
      countRequest(ctx, listener.name, route, '', status, inbound?.startedAt)
    }
    const check = checkUpgradeRequest(req, listener, ctx)
    if (!check.ok) {
      refuse(check.status, check.code, check.detail)
      return
    }
    const inbound = check.request
    const name = serviceSegment(inbound.path)
    const service = serviceNamed(name)
    if (service === undefined) {
      refuse(404, 'SERVICE_NOT_FOUND', notFoundDetail(name), inbound)
      return
    }
    const websocket = service.config.websocket
    if (websocket === undefined) {
      const detail = `service ${service.name} does not accept WebSocket upgrades`
      refuse(400, 'REQUEST_UPGRADE_REFUSED', detail, inbound)
      return
    }
    const request = {
      target: targetAfterService(inbound),
      headers: inbound.headers,
      host: inbound.host,
      requestId: inbound.requestId,
      idleTimeoutMs: websocket.idleTimeoutMs,
      deadlineAt: inbound.deadlineAt,
    }
    // Counted as a gateway route counts its tunnels, under the service it was sent to.
    const decided = (outcome: TunnelOutcome): void =>
      countRequest(
        ctx,
        listener.name,
        AMBASSADOR_ROUTE,
        service.name,
        outcome.status,
        inbound.startedAt,
      )
    tunnelAndLog(
      ctx,
      listener.name,
      AMBASSADOR_ROUTE,
      inbound,
      service,
      request,
      socket,
      head,
      decided,
    )
      // tunnel() never rejects; this is a bug's last answer.
      .catch((error: unknown) => {
        ctx.logger.error('websocket handshake failed', {
          listener: listener.name,
          error: (error as Error).message,
        })
        endWithProblem(socket, ctx.clock, 500, 'INTERNAL_ERROR', 'internal proxy error')
      })
  }
  return Object.assign(handler, {
    fast,
    upgrade,
    refused: listenerRefusalLogger(ctx, listener.name),
  })
}

/** The first segment of a normalized path (`/orders/v1/x` → `orders`). */
function serviceSegment(path: string): string {
  const slash = path.indexOf('/', 1)
  return slash === -1 ? path.slice(1) : path.slice(1, slash)
}

/** The origin-form target after the service segment: `/<service>/<rest>?q` → `/<rest>?q`. */
function targetAfterService(inbound: InboundRequest): string {
  const path = inbound.path
  const slash = path.indexOf('/', 1)
  return slash === -1 ? `/${inbound.query}` : `${path.slice(slash)}${inbound.query}`
}

function notFoundDetail(name: string): string {
  return name === '' ? 'the path names no service' : 'no such service on this listener'
}

const notFound: ForwardOutcome = {
  status: 404,
  attempts: 0,
  written: false,
  endpoint: undefined,
  error: 'SERVICE_NOT_FOUND',
  captured: undefined,
}
const forwardThrew: ForwardOutcome = { ...notFound, status: 500, error: 'INTERNAL_ERROR' }
