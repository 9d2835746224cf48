// Integration harness of the gateway tests: real node:http upstream servers, the real service
// runtime (src/proxy/upstream), the real listener server, and the gateway handler on it.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { systemClock } from '../../../src/core/clock.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry, type MetricsRegistry } from '../../../src/observability/metrics.js'
import { DEADLINE_HEADER } from '../../../src/policies/deadline.js'
import type {
  InboundContext,
  ListenerConfig,
  RouteConfig,
  ServiceConfig,
  ServiceRegistry,
} from '../../../src/proxy/contracts.js'
import {
  createGatewayHandler,
  type GatewayHandlerOptions,
} from '../../../src/proxy/inbound/gateway.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import type { RouteTable } from '../../../src/proxy/inbound/routes.js'
import { createServiceRuntime, type UpstreamService } from '../../../src/proxy/upstream/index.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { until as untilHolds } from '../../support/until.js'
import { serviceConfig as upstreamServiceConfig } from '../upstream/helpers.js'

/** A request as an upstream saw it. */
export interface UpstreamRequest {
  readonly method: string
  readonly url: string
  readonly headers: IncomingMessage['headers']
  readonly body: string
}

/** A real upstream server that hands every request, body read, to `respond`. */
export interface Upstream {
  readonly url: string
  readonly seen: UpstreamRequest[]
  close(): Promise<void>
}

export async function startUpstream(
  respond: (req: UpstreamRequest, res: ServerResponse) => void | Promise<void>,
): Promise<Upstream> {
  const seen: UpstreamRequest[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const request = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      }
      seen.push(request)
      void Promise.resolve(respond(request, res)).catch((error: unknown) => {
        res.destroy(error as Error)
      })
    })
  })
  const port = await listenOnLoopback(server)
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** Sends a JSON body. */
export function sendJson(res: ServerResponse, status: number, body: unknown): string {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
  return text
}

/** A service config as the loader would produce it: no retries, no breaker, no ejection. */
export function serviceConfig(name: string, url: string): ServiceConfig {
  // The upstream tests' defaults, without retries and with longer read and overall timeouts.
  return upstreamServiceConfig([url], {
    name,
    timeouts: { connectMs: 1_000, readMs: 10_000, overallMs: 20_000 },
    retry: undefined,
  })
}

/** A gateway listener on 127.0.0.1 with an ephemeral port, default limits and `routes`. */
export function gatewayListener(routes: readonly RouteConfig[]): ListenerConfig {
  return {
    name: 'gateway',
    role: 'gateway',
    host: '127.0.0.1',
    port: 0,
    tls: undefined,
    limits: {
      maxHeaderBytes: 16_384,
      maxHeaders: 100,
      maxBodyBytes: 1_048_576,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      keepAliveTimeoutMs: 5_000,
      maxConnections: 1_000,
    },
    routes,
    services: undefined,
  }
}

/** A running gateway with its services. */
export interface Gateway {
  readonly url: string
  readonly services: ReadonlyMap<string, UpstreamService>
  readonly logText: () => string
  close(): Promise<void>
}

/** Starts a gateway listener in front of `upstreams` (service name → URL). */
export async function startGateway(
  upstreams: Readonly<Record<string, string>>,
  routes: readonly RouteConfig[],
  table: RouteTable | (() => RouteTable),
  options: GatewayHandlerOptions = {},
  metrics: MetricsRegistry = createMetricsRegistry(),
): Promise<Gateway> {
  let log = ''
  const logger = createJsonLogger({
    output: {
      write(text: string) {
        log += text
      },
    },
    level: 'debug',
  })
  const deps = { clock: systemClock, logger, metrics }
  const services = new Map<string, UpstreamService>()
  for (const [name, url] of Object.entries(upstreams)) {
    services.set(name, createServiceRuntime(serviceConfig(name, url), deps))
  }
  const served = await serveGateway(deps, services, routes, table, options, true)
  return { ...served, services, logText: () => log }
}

/**
 * A gateway listener on a free loopback port over `services` (closed with it), with `deps`
 * as its clock, logger and metrics.
 */
export async function serveGateway(
  deps: Pick<InboundContext, 'clock' | 'logger' | 'metrics'>,
  services: ReadonlyMap<string, UpstreamService>,
  routes: readonly RouteConfig[],
  table: RouteTable | (() => RouteTable),
  options: GatewayHandlerOptions,
  accessLog: boolean,
): Promise<{ readonly url: string; close(): Promise<void> }> {
  const registry: ServiceRegistry = {
    get: (name) => services.get(name),
    names: () => [...services.keys()],
  }
  const ctx: InboundContext = {
    ...deps,
    services: () => registry,
    deadlineHeader: DEADLINE_HEADER,
    accessLog,
  }
  const listener = gatewayListener(routes)
  const server: ListenerServer = createListenerServer(
    listener,
    createGatewayHandler(listener, ctx, table, options),
    deps,
  )
  const { port } = await server.listen()
  return {
    url: `http://127.0.0.1:${port}`,
    async close() {
      await server.close(1_000)
      await Promise.all([...services.values()].map((s) => s.close()))
    },
  }
}

/** A gate a test opens by hand. */
export { gate } from '../../support/gate.js'

/** Polls `check` every 5 ms until it holds; fails, naming `what`, after 10 s. */
export function until(check: () => boolean, what = 'condition'): Promise<void> {
  return untilHolds(check, what, 10_000, 5)
}
