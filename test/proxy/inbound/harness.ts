// Shared setup of the inbound tests: listener configs, a context with a captured JSON log, and
// an in-memory ServiceRuntime that records what it was asked to forward and answers itself
// (a unit-level stand-in until tests run against the real upstream runtime).

import type { ServerResponse } from 'node:http'
import { connect } from 'node:net'
import { expect } from 'vitest'
import type { Clock } from '../../../src/core/clock.js'
import { systemClock } from '../../../src/core/clock.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { DEADLINE_HEADER } from '../../../src/policies/deadline.js'
import type {
  ForwardOutcome,
  ForwardRequest,
  InboundContext,
  LimitsConfig,
  ListenerConfig,
  ServiceConfig,
  ServiceRegistry,
  ServiceRuntime,
} from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createGatewayHandler } from '../../../src/proxy/inbound/gateway.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'

export const defaultLimits: LimitsConfig = {
  maxHeaderBytes: 16_384,
  maxHeaders: 50,
  maxBodyBytes: 1_024,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 100,
}

export function listenerConfig(overrides: Partial<ListenerConfig> = {}): ListenerConfig {
  return {
    name: 'test',
    role: 'ambassador',
    host: '127.0.0.1',
    port: 0,
    tls: undefined,
    limits: defaultLimits,
    routes: [],
    services: undefined,
    ...overrides,
  }
}

/** Log lines captured from the context's JSON logger. */
export interface CapturedLog {
  readonly text: () => string
  readonly lines: () => Record<string, unknown>[]
}

export function captureLog(): { output: { write(text: string): void }; log: CapturedLog } {
  let text = ''
  return {
    output: {
      write(t: string) {
        text += t
      },
    },
    log: {
      text: () => text,
      lines: () =>
        text
          .split('\n')
          .filter((line) => line !== '')
          .map((line) => JSON.parse(line) as Record<string, unknown>),
    },
  }
}

export function registryOf(services: readonly ServiceRuntime[]): ServiceRegistry {
  const byName = new Map(services.map((service) => [service.name, service]))
  return { get: (name) => byName.get(name), names: () => [...byName.keys()] }
}

export function contextWith(
  services: () => ServiceRegistry,
  options: { clock?: Clock; accessLog?: boolean } = {},
): { ctx: InboundContext; log: CapturedLog } {
  const { output, log } = captureLog()
  const clock = options.clock ?? systemClock
  const ctx: InboundContext = {
    clock,
    logger: createJsonLogger({ output, clock, level: 'debug' }),
    metrics: createMetricsRegistry(),
    services,
    deadlineHeader: DEADLINE_HEADER,
    accessLog: options.accessLog ?? true,
  }
  return { ctx, log }
}

/**
 * Starts an ambassador listener (`listener`, by default listenerConfig()) in front of
 * `services` on a free loopback port. The caller closes `server`.
 */
export async function listenAmbassador(
  services: readonly ServiceRuntime[],
  options: { clock?: Clock; accessLog?: boolean; listener?: ListenerConfig } = {},
): Promise<{ server: ListenerServer; port: number; ctx: InboundContext; log: CapturedLog }> {
  const { listener = listenerConfig(), ...context } = options
  const { ctx, log } = contextWith(() => registryOf(services), context)
  const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
  const { port } = await server.listen()
  return { server, port, ctx, log }
}

/**
 * Starts an ambassador or gateway listener (named after its role, gateway `routes`, `limits`
 * by default defaultLimits) in front of one recording service named `orders`, on a free
 * loopback port. The caller closes `server`.
 */
export async function listenRole(
  role: 'ambassador' | 'gateway',
  routes: ListenerConfig['routes'],
  options: { limits?: LimitsConfig; clock?: Clock } = {},
): Promise<{
  server: ListenerServer
  port: number
  ctx: InboundContext
  log: CapturedLog
  orders: RecordingService
}> {
  const { limits = defaultLimits, ...context } = options
  const orders = recordingService('orders')
  const { ctx, log } = contextWith(() => registryOf([orders]), context)
  const listener = listenerConfig({
    name: role,
    role,
    limits,
    routes: role === 'gateway' ? routes : [],
  })
  const handler =
    role === 'gateway'
      ? createGatewayHandler(listener, ctx, createRouteTable(routes))
      : createAmbassadorHandler(listener, ctx)
  const server = createListenerServer(listener, handler, ctx)
  const { port } = await server.listen()
  return { server, port, ctx, log, orders }
}

/**
 * Checks a request cut mid-body on a {@link listenRole} listener: no `ABORTED` in the log, no
 * forward, and the listener's request counter at `status`, none at 499: on a gateway under the
 * route its head matched, on an ambassador under the service its path names.
 */
export async function expectBodyCutCounted(
  role: 'ambassador' | 'gateway',
  running: { ctx: InboundContext; log: CapturedLog; orders: RecordingService },
  status: number,
): Promise<void> {
  expect(running.log.text()).not.toContain('ABORTED')
  expect(running.orders.forwarded).toHaveLength(0)
  const metrics = await running.ctx.metrics.render()
  const labels =
    role === 'gateway'
      ? 'listener="gateway",route="orders",service=""'
      : 'listener="ambassador",route="ambassador",service="orders"'
  expect(metrics).toContain(`breakwater_proxy_route_requests_total{${labels},status="${status}"} 1`)
  expect(metrics).not.toContain('status="499"')
}

/**
 * Opens a raw connection to `port` and writes `request` on it: `received()` is what the proxy
 * wrote so far (latin1), `closed` settles when the connection closes.
 */
export function sendRaw(
  port: number,
  request: string,
): { received: () => string; closed: Promise<unknown> } {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let received = ''
  socket.on('data', (chunk: Buffer) => {
    received += chunk.toString('latin1')
  })
  const closed = new Promise((resolve) => socket.once('close', resolve))
  socket.write(request)
  return { received: () => received, closed }
}

/** An in-memory service: records each forward and answers 200 with a JSON echo. */
export interface RecordingService extends ServiceRuntime {
  readonly forwarded: ForwardRequest[]
}

export function recordingService(name: string): RecordingService {
  const forwarded: ForwardRequest[] = []
  return {
    name,
    config: { name } as unknown as ServiceConfig,
    forwarded,
    forward(req: ForwardRequest, res: ServerResponse): Promise<ForwardOutcome> {
      forwarded.push(req)
      const body = JSON.stringify({
        service: name,
        method: req.method,
        target: req.target,
        body: req.body?.toString('utf8') ?? null,
      })
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      })
      res.end(body)
      return Promise.resolve({
        status: 200,
        attempts: 1,
        written: true,
        endpoint: `memory://${name}`,
        error: undefined,
        captured: undefined,
      })
    },
    exchange: () => Promise.reject(new Error('not used')),
    tunnel: () => Promise.reject(new Error('not used')),
    state: () => ({
      name,
      breaker: 'disabled',
      bulkhead: { running: 0, queued: 0, max: 1 },
      retryBudgetLeft: undefined,
      endpoints: [],
    }),
    isolate: () => {},
    reset: () => {},
    close: () => Promise.resolve(),
  }
}
