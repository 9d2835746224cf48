// The gateway listener's request handler (strangler fig and sidecar): read and validate the
// request, match a route on the normalized path, choose the target service (weighted, sticky),
// forward, then compare with the shadow in the background. Idempotency-Key enforcement wraps
// the forward on routes that ask for it. WebSocket handshakes take the handler's `upgrade`
// (websocket.ts).

import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidOptionError } from '../../core/errors.js'
import { checkFunction } from '../../core/validate.js'
import type {
  ForwardOptions,
  ForwardOutcome,
  InboundContext,
  ListenerConfig,
  RequestHandler,
  ServiceRuntime,
} from '../contracts.js'
import { dropsMethodOverrides, forwardedHeaders } from './forwarded-headers.js'
import {
  type InboundRequest,
  listenerRefusalLogger,
  logAccess,
  readInboundRequest,
  sendProblem,
  toForwardRequest,
} from './request.js'
import { countRequest } from './request-metrics.js'
import { retryKeyOf } from './retry-affinity.js'
import { noRouteAnswer, type RouteTable, stripPathPrefix } from './routes.js'
import { createShadowRunner, type ShadowRunner } from './shadow.js'
import type { SidecarIdempotency } from './sidecar-idempotency.js'
import { stickyValueOf } from './sticky.js'
import { createWebSocketHandler } from './websocket.js'

/**
 * The `code` values of problems the gateway answers itself: `ROUTE_NOT_FOUND` (404, no route
 * matches), `METHOD_NOT_ALLOWED` (405 with `Allow`, routes take the path but not the method),
 * `SERVICE_NOT_FOUND` (502, a route names a service the config lacks), `INTERNAL_ERROR` (500,
 * a bug in the proxy).
 */
export type GatewayProblemCode =
  | 'ROUTE_NOT_FOUND'
  | 'METHOD_NOT_ALLOWED'
  | 'SERVICE_NOT_FOUND'
  | 'INTERNAL_ERROR'

/** Options of {@link createGatewayHandler}. */
export interface GatewayHandlerOptions {
  /**
   * Idempotency-Key enforcement for routes with `idempotency` set
   * (`createSidecarIdempotency`). Without it such routes are forwarded unguarded, and a
   * warning is logged once per route.
   * @default undefined
   */
  readonly idempotency?: SidecarIdempotency | undefined
  /**
   * Runs shadow comparisons (shared by every route of the listener).
   * @default createShadowRunner({ clock: ctx.clock, logger: ctx.logger })
   */
  readonly shadow?: ShadowRunner | undefined
  /**
   * Source of randomness in [0, 1) for non-sticky splits and shadow sampling (tests pass a
   * seeded one).
   * @default Math.random
   */
  readonly random?: (() => number) | undefined
}

function noRoute(status: number, error: GatewayProblemCode): ForwardOutcome {
  return { status, attempts: 0, written: false, endpoint: undefined, error, captured: undefined }
}

/**
 * Creates the request handler of a gateway listener. `table` may be a function returning the
 * current table, so a reload can swap the routes without replacing the handler; a request
 * keeps the table, route and target it started with.
 *
 * @example
 * ```ts
 * const table = createRouteTable(listener.routes)
 * const handler = createGatewayHandler(listener, ctx, table, {
 *   idempotency: createSidecarIdempotency({ idempotency }),
 * })
 * const server = http.createServer(handler)
 * table.override('orders', [{ service: 'legacy', weight: 1 }]) // rollback, in-flight unaffected
 * ```
 */
export function createGatewayHandler(
  listener: ListenerConfig,
  ctx: InboundContext,
  table: RouteTable | (() => RouteTable),
  options: GatewayHandlerOptions = {},
): RequestHandler {
  if (typeof listener?.name !== 'string') {
    throw new InvalidOptionError('listener', 'a ListenerConfig', listener)
  }
  const currentTable =
    typeof table === 'function'
      ? table
      : typeof table?.match === 'function'
        ? () => table
        : undefined
  if (currentTable === undefined) {
    throw new InvalidOptionError('table', 'a RouteTable or a function returning one', table)
  }
  const random =
    options.random === undefined
      ? Math.random
      : checkFunction<() => number>('random', options.random)
  const shadows =
    options.shadow ??
    createShadowRunner({ clock: ctx.clock, logger: ctx.logger, metrics: ctx.metrics })
  const observe = (
    inbound: InboundRequest,
    outcome: ForwardOutcome,
    route: string,
    service: string,
  ): void => countRequest(ctx, listener.name, route, service, outcome.status, inbound.startedAt)
  // A routed request's access line and count name the same service: the one called, none when
  // the proxy answered without calling it (a replay, an idempotency refusal, the store down),
  // so the log never blames a service for an answer it did not give.
  const settled = (
    inbound: InboundRequest,
    outcome: ForwardOutcome,
    route: string,
    service: string,
  ): void => {
    const details = service === '' ? { route } : { route, service }
    logAccess(ctx, inbound, outcome, listener.name, details)
    observe(inbound, outcome, route, service)
  }
  const idempotency = options.idempotency
  // Builds each route's protocol now, so a bad idempotency setting fails here, not per request.
  for (const route of listener.routes) {
    if (route.idempotency !== undefined) idempotency?.guards(route.idempotency, 'POST')
  }
  const warned = new Set<string>()
  const scheme = listener.tls === undefined ? 'http' : 'https'
  const trustForwarded = listener.trustForwardedHeaders === true

  // A request whose connection went in the middle of its body: logged and counted with what
  // its client was sent (499 ABORTED for one that left, as for one that leaves while the
  // upstream answers; the listener's 408 when the request timer cut it; 503 DRAIN_TIMEOUT when
  // the drain's hard stop cut it), under the route its head matched; no service saw it.
  const bodyCut = (inbound: InboundRequest, outcome: ForwardOutcome): void => {
    const route = currentTable().match(inbound.method, inbound.path, inbound.headers)
    logAccess(
      ctx,
      inbound,
      outcome,
      listener.name,
      route === undefined ? {} : { route: route.name },
    )
    observe(inbound, outcome, route?.name ?? '', '')
  }

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // A client waiting for `100 Continue` is refused before it sends a body no route takes.
    // Its request then comes without the body, so it is refused even if a reload meanwhile
    // added a route for it.
    let refusedAtHead = false
    const inbound = await readInboundRequest(
      req,
      res,
      listener,
      ctx,
      (head) => {
        refusedAtHead = currentTable().match(head.method, head.path, head.headers) === undefined
        return !refusedAtHead
      },
      bodyCut,
    )
    if (inbound === undefined) return
    // Matched once the body is read, on the table then in force: a reload during the upload
    // may have taken the service away (test/proxy/runtime/reload-mid-request.test.ts).
    const routes = currentTable()
    const route = refusedAtHead
      ? undefined
      : routes.match(inbound.method, inbound.path, inbound.headers)
    if (route === undefined) {
      const answer = noRouteAnswer(routes, inbound.method, inbound.path, inbound.headers)
      if (answer.allow !== undefined) res.setHeader('allow', answer.allow)
      sendProblem(res, answer.status, answer.code, answer.detail)
      const outcome = noRoute(answer.status, answer.code)
      logAccess(ctx, inbound, outcome, listener.name)
      observe(inbound, outcome, '', '')
      return
    }
    const config = route.config
    const stickyValue = stickyValueOf(config.sticky, inbound.headers)
    const retryKey = retryKeyOf(config.retryAffinity, inbound.headers, stickyValue)
    const serviceName = routes.choose(route, stickyValue, random, retryKey)
    const registry = ctx.services()
    const service = registry.get(serviceName)
    if (service === undefined) {
      if (retryKey !== undefined) routes.settle(route, retryKey, serviceName, false)
      sendProblem(res, 502, 'SERVICE_NOT_FOUND', `route ${route.name} has no live target`)
      const outcome = noRoute(502, 'SERVICE_NOT_FOUND')
      logAccess(ctx, inbound, outcome, listener.name, { route: route.name, service: serviceName })
      observe(inbound, outcome, route.name, serviceName)
      return
    }
    const forwarded = toForwardRequest(
      inbound,
      route.name,
      `${stripPathPrefix(inbound.path, config.stripPrefix, config.match.caseSensitive)}${inbound.query}`,
      forwardedHeaders(inbound, req, scheme, trustForwarded, dropsMethodOverrides(config)),
    )

    // Sampling is decided before the forward, so only sampled responses are captured.
    let shadowService: ServiceRuntime | undefined
    const shadowConfig = config.shadow
    if (
      shadowConfig !== undefined &&
      route.shadow !== undefined &&
      shadowConfig.service !== serviceName &&
      shadowConfig.methods.includes(forwarded.method) &&
      random() < shadowConfig.sampleRate
    ) {
      shadowService = registry.get(shadowConfig.service)
      if (shadowService === undefined) route.shadow.errors++
    }
    const captureBytes = shadowService === undefined ? undefined : shadows.maxBodyBytes

    let called = false
    const forward = (
      forwardOptions: ForwardOptions,
      response: ServerResponse = res,
    ): Promise<ForwardOutcome> => {
      called = true
      const bytes = Math.max(forwardOptions.captureBytes ?? -1, captureBytes ?? -1)
      // On an idempotency route the app behind does not dedupe by key (the proxy does): a
      // request that may have been written to it is never sent again.
      if (config.idempotency !== undefined) {
        return service.forward(
          forwarded,
          response,
          bytes < 0 ? unsentOnly : { captureBytes: bytes, unsafeRetry: 'unsent-only' },
        )
      }
      return service.forward(forwarded, response, bytes < 0 ? undefined : { captureBytes: bytes })
    }

    let outcome: ForwardOutcome
    const guard = config.idempotency
    try {
      if (guard !== undefined && idempotency !== undefined) {
        outcome = idempotency.guards(guard, inbound.method)
          ? await idempotency.run(
              guard,
              { listener: listener.name, route: route.name },
              inbound,
              res,
              forward,
            )
          : await forward({})
      } else {
        if (guard !== undefined && !warned.has(route.name)) {
          warned.add(route.name)
          ctx.logger.warn('route asks for idempotency but the proxy has no idempotency store', {
            listener: listener.name,
            route: route.name,
          })
        }
        outcome = await forward({})
      }
    } catch (error) {
      // forward() answers its own failures, so this is the idempotency store failing (it is
      // down: begin, complete or abort threw). The request still ends as one: answered,
      // logged, counted, and its retry-affinity pin settled. Left unsettled, a pin taken for
      // a request that never reached the app would send the key's retries to that target for
      // the pin's whole ttlMs, whatever the weights say by then.
      ctx.logger.error('gateway request failed', {
        listener: listener.name,
        route: route.name,
        error: error instanceof Error ? error.message : String(error),
      })
      // An outage, not a bug: 503, which clients and load balancers retry, with the key.
      sendProblem(
        res,
        503,
        'IDEMPOTENCY_STORE_UNAVAILABLE',
        'the idempotency store is unavailable; retry the request with the same Idempotency-Key later',
      )
      // Once the app was called it may have run the request: the pin stays, as after a timeout.
      if (called) routes.count(route, serviceName)
      if (retryKey !== undefined) routes.settle(route, retryKey, serviceName, called)
      const failed: ForwardOutcome = {
        status: 503,
        attempts: called ? 1 : 0,
        written: called,
        endpoint: undefined,
        error: 'IDEMPOTENCY_STORE_UNAVAILABLE',
        captured: undefined,
      }
      settled(inbound, failed, route.name, called ? serviceName : '')
      return
    }
    // Replays and idempotency problems never reached the service: they are not its traffic.
    if (called) routes.count(route, serviceName)
    if (retryKey !== undefined)
      routes.settle(route, retryKey, serviceName, called && outcome.written)
    settled(inbound, outcome, route.name, called ? serviceName : '')

    const captured = outcome.captured
    if (
      shadowService === undefined ||
      shadowConfig === undefined ||
      route.shadow === undefined ||
      captured === undefined ||
      outcome.error !== undefined
    ) {
      return
    }
    const job = {
      config: shadowConfig,
      stats: route.shadow,
      primary: service,
      shadow: shadowService,
      request: forwarded,
      response: captured,
    }
    // Only once the client has the whole response: shadow traffic must never delay it.
    if (res.writableFinished) shadows.submit(job)
    else res.once('close', () => shadows.submit(job))
  }

  const upgrade = createWebSocketHandler(
    listener,
    ctx,
    currentTable,
    random,
    (inbound, status, route, service) =>
      countRequest(ctx, listener.name, route, service, status, inbound?.startedAt),
  )
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    serve(req, res).catch((error: unknown) => {
      ctx.logger.error('gateway request failed', {
        listener: listener.name,
        error: error instanceof Error ? error.message : String(error),
      })
      sendProblem(res, 500, 'INTERNAL_ERROR', 'the proxy failed to handle the request')
      countRequest(ctx, listener.name, '', '', 500)
    })
  }
  return Object.assign(handler, { upgrade, refused: listenerRefusalLogger(ctx, listener.name) })
}

const unsentOnly: ForwardOptions = { unsafeRetry: 'unsent-only' }
