// Shared pieces of the upstream tests: a ServiceConfig with test defaults, deps with a
// ManualClock and a logger whose lines the test can read, and a minimal node:http front
// server that hands each request to a service's forward() as the inbound side would.

import { createServer, type Server, type ServerResponse } from 'node:http'
import { Duplex } from 'node:stream'
import { afterEach } from 'vitest'
import type { Clock } from '../../../src/core/clock.js'
import { DEADLINE_HEADER } from '../../../src/index.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry, type MetricsRegistry } from '../../../src/observability/metrics.js'
import type {
  ForwardOutcome,
  ForwardRequest,
  ProxyDeps,
  ServiceConfig,
  ServiceRuntime,
} from '../../../src/proxy/contracts.js'
import { forwardableHeaders } from '../../../src/proxy/hop-by-hop.js'
import { createServiceRuntime, type UpstreamService } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'

import { type FaultyUpstream, startFaultyUpstream } from '../support/faulty-upstream.js'

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

/** What a test file closes after each test (run newest first). */
export type Cleanups = Array<() => Promise<unknown> | unknown>

/** A scripted upstream (see startFaultyUpstream) that `cleanups` closes. */
export async function trackedUpstream(
  cleanups: Cleanups,
  ...args: Parameters<typeof startFaultyUpstream>
): Promise<FaultyUpstream> {
  const started = await startFaultyUpstream(...args)
  cleanups.push(() => started.close())
  return started
}

/**
 * A service runtime over `config` on its own ManualClock (random fixed at 0.5, so backoffs are
 * known), that `cleanups` closes.
 */
export function manualClockService(
  cleanups: Cleanups,
  config: ServiceConfig,
): { service: UpstreamService; clock: ManualClock } {
  const clock = new ManualClock(1_000_000)
  const created = createServiceRuntime(config, testDeps(clock), { random: () => 0.5 })
  cleanups.push(() => created.close())
  return { service: created, clock }
}

/** What {@link useUpstreamTest} gives a test file. */
export interface UpstreamTest {
  /** Closed after each test, newest first. */
  readonly cleanups: Cleanups
  /** {@link trackedUpstream} on these cleanups. */
  upstream(...args: Parameters<typeof startFaultyUpstream>): Promise<FaultyUpstream>
  /** {@link manualClockService} on these cleanups. */
  service(config: ServiceConfig): { service: UpstreamService; clock: ManualClock }
}

/**
 * Registers, in the calling file (or describe block), an afterEach that closes what its tests
 * started, newest first, and returns the starters that record into it.
 */
export function useUpstreamTest(): UpstreamTest {
  const cleanups: Cleanups = []
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
  })
  return {
    cleanups,
    upstream: (...args) => trackedUpstream(cleanups, ...args),
    service: (config) => manualClockService(cleanups, config),
  }
}

/** A service config with small, test-friendly defaults; `overrides` replace whole sections. */
export function serviceConfig(
  endpoints: readonly string[],
  overrides: Partial<Mutable<ServiceConfig>> = {},
): ServiceConfig {
  return {
    name: 'orders',
    discovery: { kind: 'static', endpoints },
    loadBalancer: 'round-robin',
    timeouts: { connectMs: 1_000, readMs: 2_000, overallMs: 10_000 },
    retry: {
      attempts: 3,
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      retryOnStatus: [408, 429, 502, 503, 504],
      budgetRatio: 0.2,
      budgetMinPerSecond: 10,
      addIdempotencyKey: false,
    },
    breaker: undefined,
    bulkhead: { maxConcurrent: 64, maxQueue: 64, connectionsPerEndpoint: 8 },
    outlierEjection: undefined,
    tls: {
      caFile: undefined,
      certFile: undefined,
      keyFile: undefined,
      serverName: undefined,
      verify: true,
    },
    auth: undefined,
    rewriteHost: true,
    ...overrides,
  }
}

/** Deps on a ManualClock (unless given), with every log line kept in `logs`. */
export function testDeps(clock: Clock = new ManualClock(1_000_000)): ProxyDeps & {
  readonly logs: string[]
  readonly metrics: MetricsRegistry
  readonly clock: Clock
} {
  const logs: string[] = []
  return {
    clock,
    logger: createJsonLogger({ level: 'debug', output: { write: (line) => logs.push(line) } }),
    metrics: createMetricsRegistry(),
    logs,
  }
}

/** A front server that forwards every request to one service. */
export interface Front {
  readonly url: string
  /** Outcomes in the order forwards finished. */
  readonly outcomes: ForwardOutcome[]
  /** The ForwardRequests handed to the service, in arrival order. */
  readonly forwarded: ForwardRequest[]
  /** The responses the service writes to, in arrival order. */
  readonly responses: ServerResponse[]
  readonly server: Server
  close(): Promise<void>
}

/**
 * Starts the front on 127.0.0.1. A request's `x-breakwater-deadline-ms` header becomes its
 * `deadlineAt` on `clock`.
 */
export async function startFront(service: ServiceRuntime, clock: Clock): Promise<Front> {
  const outcomes: ForwardOutcome[] = []
  const forwarded: ForwardRequest[] = []
  const responses: ServerResponse[] = []
  let n = 0
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const controller = new AbortController()
      res.on('close', () => {
        if (!res.writableFinished) controller.abort()
      })
      const headers = forwardableHeaders(req.rawHeaders, new Set(['host']))
      const budget = req.headers[DEADLINE_HEADER]
      const forward: ForwardRequest = {
        method: req.method ?? 'GET',
        target: req.url ?? '/',
        headers,
        host: req.headers.host ?? 'front',
        body: chunks.length === 0 ? undefined : Buffer.concat(chunks),
        deadlineAt: typeof budget === 'string' ? clock.now() + Number(budget) : undefined,
        route: 'ambassador',
        requestId: `req-${++n}`,
        signal: controller.signal,
      }
      forwarded.push(forward)
      responses.push(res)
      void service.forward(forward, res).then((outcome) => outcomes.push(outcome))
    })
  })
  const serverPort = await listenOnLoopback(server)
  return {
    url: `http://127.0.0.1:${serverPort}`,
    outcomes,
    forwarded,
    responses,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** Polls `check` on real time until it holds (for file watches and sockets, never for policy time). */
export function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  return until(check, 'condition', timeoutMs, 10)
}

/** A ForwardRequest for calling a service directly (no front). */
export function forwardRequest(overrides: Partial<Mutable<ForwardRequest>> = {}): ForwardRequest {
  return {
    method: 'GET',
    target: '/items',
    headers: {},
    host: 'front',
    body: undefined,
    deadlineAt: undefined,
    route: 'ambassador',
    requestId: 'req-x',
    signal: new AbortController().signal,
    ...overrides,
  }
}

/**
 * A WebSocket client's side of a tunnel, recording what the proxy writes to it (`written`),
 * that `cleanups` destroys.
 */
export function recordingClient(cleanups: Cleanups): { client: Duplex; written: Buffer[] } {
  const written: Buffer[] = []
  const client = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      written.push(chunk)
      callback()
    },
  })
  cleanups.push(() => client.destroy())
  return { client, written }
}
