// Small builders for gateway tests: route configs with the defaults the config loader would
// fill in, a seeded random source, and an in-memory ServiceRuntime for unit tests only (the
// integration tests use the real runtime from src/proxy/upstream).

import type { ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type {
  CapturedResponse,
  ForwardOptions,
  ForwardOutcome,
  ForwardRequest,
  RouteConfig,
  RouteTargetConfig,
  ServiceConfig,
  ServiceRuntime,
  ServiceState,
  ShadowConfig,
  TunnelOutcome,
  TunnelRequest,
} from '../../../src/proxy/contracts.js'

/** A route config with loader-like defaults; `overrides` replace whole fields. */
export function route(
  name: string,
  prefix: string,
  targets: readonly RouteTargetConfig[],
  overrides: Partial<RouteConfig> = {},
): RouteConfig {
  return {
    name,
    match: { prefix, methods: undefined, headers: {} },
    targets,
    sticky: undefined,
    stripPrefix: undefined,
    shadow: undefined,
    idempotency: undefined,
    ...overrides,
  }
}

/** A shadow config with defaults. */
export function shadowConfig(service: string, overrides: Partial<ShadowConfig> = {}): ShadowConfig {
  return {
    service,
    sampleRate: 1,
    ignoreFields: [],
    ignoreHeaders: [],
    learnNoise: true,
    keepExamples: 10,
    methods: ['GET', 'HEAD', 'OPTIONS'],
    ...overrides,
  }
}

/** mulberry32: a small seeded generator of numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}

/** A captured JSON response. */
export function jsonResponse(
  body: unknown,
  status = 200,
  headers: Record<string, string | string[]> = {},
): CapturedResponse {
  return {
    status,
    headers: { 'content-type': 'application/json', ...headers },
    body: Buffer.from(JSON.stringify(body)),
    truncated: false,
  }
}

/**
 * An in-memory ServiceRuntime for unit tests of the shadow runner: `exchange` answers from
 * `answer` (which may return a promise to hold the call open). `forward` and `tunnel` are not used
 * by those tests and reject.
 */
export class FakeService implements ServiceRuntime {
  readonly name: string
  readonly config = {} as ServiceConfig
  readonly exchanges: ForwardRequest[] = []
  readonly #answer: (
    req: ForwardRequest,
    call: number,
  ) => CapturedResponse | Promise<CapturedResponse>

  constructor(
    name: string,
    answer: (req: ForwardRequest, call: number) => CapturedResponse | Promise<CapturedResponse>,
  ) {
    this.name = name
    this.#answer = answer
  }

  forward(
    _req: ForwardRequest,
    _res: ServerResponse,
    _options?: ForwardOptions,
  ): Promise<ForwardOutcome> {
    return Promise.reject(new Error('FakeService.forward is not used by unit tests'))
  }

  tunnel(_req: TunnelRequest, _client: Duplex, _head: Buffer): Promise<TunnelOutcome> {
    return Promise.reject(new Error('FakeService.tunnel is not used by unit tests'))
  }

  async exchange(req: ForwardRequest, _maxBytes: number): Promise<CapturedResponse> {
    this.exchanges.push(req)
    return this.#answer(req, this.exchanges.length)
  }

  state(): ServiceState {
    return {
      name: this.name,
      breaker: 'disabled',
      bulkhead: { running: 0, queued: 0, max: 0 },
      retryBudgetLeft: undefined,
      endpoints: [],
    }
  }

  isolate(): void {}
  reset(): void {}
  async close(): Promise<void> {}
}

/** A forward request as the gateway builds it. */
export function forwardRequest(overrides: Partial<ForwardRequest> = {}): ForwardRequest {
  return {
    method: 'GET',
    target: '/orders/1',
    headers: {},
    host: 'gateway.test',
    body: undefined,
    deadlineAt: undefined,
    route: 'orders',
    requestId: 'req-1',
    signal: new AbortController().signal,
    ...overrides,
  }
}
