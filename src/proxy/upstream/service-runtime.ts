import { randomUUID } from 'node:crypto'
import type { Duplex } from 'node:stream'
import type { Clock, TimerHandle } from '../../core/clock.js'
import type { ErrorCode } from '../../core/error-codes.js'
import { BreakwaterError, InvalidOptionError } from '../../core/errors.js'
import { checkFunction, checkObject } from '../../core/validate.js'
import { idempotentMethods } from '../../http/methods.js'
import { httpTokenPattern } from '../../http/token.js'
import {
  type Backoff,
  createRetryBudget,
  DEADLINE_HEADER,
  exponentialBackoff,
  GRPC_TIMEOUT_HEADER,
  parseRetryAfter,
  type RandomSource,
  type RetryBudget,
} from '../../index.js'
import type { Logger } from '../../observability/logger.js'
import type {
  CapturedResponse,
  ExchangeOptions,
  ForwardOptions,
  ForwardOutcome,
  ForwardRequest,
  ProxyDeps,
  ProxyResponse,
  ServiceConfig,
  ServiceRuntime,
  ServiceState,
  TunnelOutcome,
  TunnelRequest,
} from '../contracts.js'
import { cutByDrain } from '../drain-cut.js'
import { emptyHeaderRecord, HOP_BY_HOP_HEADERS, isPlainChunked } from '../hop-by-hop.js'
import { appendVia, viaPseudonymPattern } from '../via.js'
import { ServiceBreaker } from './breaker.js'
import { OutboundAuth, TlsMaterial } from './credentials.js'
import { type Discovery, type DnsResolver, startDiscovery } from './discovery.js'
import { type Endpoint, EndpointSet, type UpstreamPool } from './endpoints.js'
import { Http1Pool } from './http1-pool.js'
import { Http1PoolError } from './http1-types.js'
import { HttpsPool } from './https-pool.js'
import { localShortage, ShortageLog } from './local-shortage.js'
import { type UpstreamMetrics, upstreamMetrics } from './metrics.js'
import { problemDetail, statusFor } from './problems.js'
import { openTunnel } from './tunnel.js'

/** Options of {@link createServiceRuntime} beyond the service's config. */
export interface ServiceRuntimeOptions {
  /**
   * The resolver DNS discovery asks (anything with `resolve4`, `resolve6` with `{ ttl: true }`
   * and `resolveSrv`, such as a `dns.promises.Resolver` given `setServers`). The YAML way to
   * pick servers is `discovery.dns.servers`.
   * @default a new `dns.promises.Resolver`, on `discovery.servers` when given
   */
  readonly dnsResolver?: DnsResolver
  /**
   * Random source for backoff jitter and the least-request choice of two.
   * @default Math.random
   */
  readonly random?: RandomSource
  /**
   * The header that carries the remaining deadline (whole milliseconds) to the upstream: the
   * proxy's configured `deadlineHeader`, so the apps behind speak the same one as its clients.
   * An inbound header of that name is replaced, never passed on.
   * @default 'x-breakwater-deadline-ms'
   */
  readonly deadlineHeader?: string
  /**
   * The pseudonym appended to the `Via` of the responses passed back (`1.1 <via>`, after the
   * upstream's own entries; RFC 9110 §7.6.3): the proxy's configured `via`. The request's
   * entry is the inbound side's (it knows the client's protocol version).
   * @default undefined: no Via is added
   */
  readonly via?: string
}

/**
 * The failures worth another try by whoever called `exchange()`: the endpoints did not connect,
 * answer in time or finish their answer, or there were none yet, and a later call may find them
 * well. `retryable` is what the library's classifier (`classifyFailure`, so `retry()` and
 * `circuitBreaker()`) reads, so the refusals follow the policies' own errors: an open circuit
 * (`BrokenCircuitError`) and a full bulkhead (`BulkheadRejectedError`) are not retryable, since
 * retrying at once only hits the refusal again and adds load to a service already shedding it
 * (a client of the proxy gets the 503 with `Retry-After` and waits); nor are an isolated
 * circuit, a deadline that passed, or a caller that went away (`ABORTED`).
 */
const retryableCodes: ReadonlySet<string> = new Set<ErrorCode>([
  'UPSTREAM_CONNECT_FAILED',
  'UPSTREAM_RESET',
  'UPSTREAM_RESPONSE_INVALID',
  'UPSTREAM_TIMEOUT',
  'UPSTREAM_NO_ENDPOINTS',
])

/**
 * A proxy failure, as `exchange()` rejects with it and as `forward()` answers it: a
 * problem+json response whose `code` is this error's code, with status 502, 503 or 504 (499
 * for `ABORTED`). Retryable only for the upstream's own failures (connect, reset, a malformed
 * response, timeout, no endpoints), never for the proxy's refusals (`BROKEN_CIRCUIT`, `ISOLATED_CIRCUIT`,
 * `BULKHEAD_FULL`, `UPSTREAM_POOL_REFUSED`), `DEADLINE_EXCEEDED` or `ABORTED`, as for the
 * policies' errors.
 */
export class UpstreamError extends BreakwaterError {
  /** The HTTP status the proxy answers with. */
  readonly status: number
  /** The service. */
  readonly service: string

  constructor(code: ErrorCode, status: number, service: string, detail: string) {
    super(code, detail, { retryable: retryableCodes.has(code) })
    this.status = status
    this.service = service
  }
}

/**
 * The upstream answers the circuit breaker and outlier ejection count as a failure of the
 * upstream, as a table indexed by status: the 5xx statuses of `retry.retryOnStatus`, or 502,
 * 503 and 504 when the service has no `retry` (the same default). A 4xx answer is never one,
 * even when it is retried: the upstream answered, and a 429 (or 408) says it is shedding load
 * or the client was slow, not that it is broken; opening the circuit on it would turn a
 * throttled client's excess into an outage for every client (Envoy's outlier detection and
 * resilience4j's HTTP recipes count 5xx too). A 429 or 503 with `Retry-After` is honoured by
 * the retry, whether or not it counts here.
 */
export function breakerFailureStatuses(retryOnStatus: readonly number[] | undefined): Uint8Array {
  const table = new Uint8Array(600)
  for (const status of retryOnStatus ?? [502, 503, 504])
    if (status >= 500 && status < 600) table[status] = 1
  return table
}

/** A running service, with the extras the runtime and tests use. */
export interface UpstreamService extends ServiceRuntime {
  /** Settles once discovery has given its first answer (at once for static endpoints). */
  ready(): Promise<void>
}

/**
 * `ms` as a `grpc-timeout` value: at most 8 digits, so milliseconds up to 99999999 (about 27
 * hours) and whole seconds beyond (an overallMs can reach 24.8 days).
 */
function grpcTimeoutValue(ms: number): string {
  return ms <= 99_999_999 ? `${ms}m` : `${Math.floor(ms / 1_000)}S`
}

/** Request headers the proxy sets itself or must not pass (undici rejects `expect`). */
const replacedRequestHeaders: ReadonlySet<string> = new Set([
  'host',
  'content-length',
  'expect',
  'x-request-id',
])

/**
 * Builds a service's runtime: discovery, one connection pool per endpoint (the proxy's own
 * HTTP/1.1 pool for `http:`, an undici pool for `https:`), load balancing,
 * outlier ejection, TLS origination, outbound credentials and the policies of the forward path.
 *
 * A request goes: deadline check (the sooner of the inbound deadline and `overallMs`), bulkhead
 * (a counter and a FIFO queue), then per attempt: endpoint pick, breaker admission, dispatch on
 * the endpoint's pool with the proxy's own handler (connect and read timeouts on `deps.clock`),
 * and the response streamed to the client as it arrives, without hop-by-hop headers. A
 * connect error, a reset before the response, a read timeout or a status in
 * `retry.retryOnStatus` is retried with full-jitter backoff (or after `Retry-After`, when that
 * fits in the deadline) while attempts, the retry budget and the deadline allow: for
 * idempotent methods and requests with an `Idempotency-Key` always, for other non-idempotent
 * requests only when the attempt failed before any of the request was written (see
 * `ForwardOptions.unsafeRetry`). Every attempt carries the deadline header with the time
 * left.
 *
 * @example
 * ```ts
 * // The proxy runtime does this for each service of the YAML; by hand it looks like:
 * const orders = createServiceRuntime(ordersConfig, { clock: systemClock, logger, metrics })
 * createServer((req, res) => {
 *   const signal = new AbortController().signal
 *   void orders.forward({ method: 'GET', target: req.url ?? '/', headers: {}, host: 'orders',
 *     body: undefined, deadlineAt: undefined, route: 'ambassador', requestId: '1', signal }, res)
 * }).listen(15001)
 * ```
 */
export function createServiceRuntime(
  config: ServiceConfig,
  deps: ProxyDeps,
  options: ServiceRuntimeOptions = {},
): UpstreamService {
  checkObject('createServiceRuntime.options', options)
  if (options.random !== undefined) checkFunction('createServiceRuntime.random', options.random)
  checkTextOption('deadlineHeader', options.deadlineHeader, httpTokenPattern, 'a header name')
  checkTextOption('via', options.via, viaPseudonymPattern, 'a Via pseudonym (a token)')
  return new UpstreamServiceRuntime(config, deps, options)
}

/** Refuses an option that is given but is not a string matching `pattern`. */
function checkTextOption(name: string, value: unknown, pattern: RegExp, expected: string): void {
  if (value !== undefined && (typeof value !== 'string' || !pattern.test(value)))
    throw new InvalidOptionError(`createServiceRuntime.${name}`, expected, value)
}

// ---------------------------------------------------------------------------------------------
// The service: shared state of every call. Fields are plain (not #private) because the call
// and attempt classes below read them on the hot path.
// ---------------------------------------------------------------------------------------------

class Core {
  readonly name: string
  readonly config: ServiceConfig
  readonly clock: Clock
  readonly logger: Logger
  readonly endpoints: EndpointSet
  readonly breaker: ServiceBreaker
  readonly budget: RetryBudget | undefined
  readonly backoff: Backoff | undefined
  /** retryStatus[status] = 1 for the statuses retried (`retry.retryOnStatus`). */
  readonly retryStatus = new Uint8Array(600)
  /**
   * failureStatus[status] = 1 for the answers the breaker and outlier ejection count as a
   * failure of the upstream (see {@link breakerFailureStatuses}).
   */
  readonly failureStatus: Uint8Array
  readonly auth: OutboundAuth | undefined
  readonly tls: TlsMaterial | undefined
  readonly metrics: UpstreamMetrics
  readonly connectMs: number
  readonly readMs: number
  readonly overallMs: number
  readonly maxConcurrent: number
  readonly maxQueue: number
  /** Lower-case name of the deadline header sent upstream. */
  readonly deadlineHeader: string
  /** The proxy's Via pseudonym for responses; undefined: none added. */
  readonly via: string | undefined
  running = 0
  queued = 0
  queueHead: ForwardCall | undefined
  queueTail: ForwardCall | undefined
  /** Pending until discovery's first answer. */
  discovering: Promise<void> | undefined
  closed = false
  /** Stops of the WebSocket handshakes and tunnels under way (tunnel.ts). */
  readonly tunnels = new Set<() => void>()
  // Counted locally and added to the registry's counters at collection: the label lookup is
  // the costly part of a counter, and a scrape every few seconds needs no per-request update.
  readonly statusCounts = new Map<number, number>()
  retryCount = 0
  ejectionCount = 0
  /** Connects that failed for want of the proxy's own descriptors or memory (logged rarely). */
  readonly shortages: ShortageLog
  readonly serviceLabels: { readonly service: string }

  constructor(config: ServiceConfig, deps: ProxyDeps, options: ServiceRuntimeOptions) {
    this.name = config.name
    this.config = config
    this.clock = deps.clock
    this.logger = deps.logger
    this.shortages = new ShortageLog(deps.clock, deps.logger)
    this.metrics = upstreamMetrics(deps.metrics)
    this.serviceLabels = { service: config.name }
    this.connectMs = config.timeouts.connectMs
    this.readMs = config.timeouts.readMs
    this.overallMs = config.timeouts.overallMs
    this.maxConcurrent = config.bulkhead.maxConcurrent
    this.maxQueue = config.bulkhead.maxQueue
    this.deadlineHeader = (options.deadlineHeader ?? DEADLINE_HEADER).toLowerCase()
    this.via = options.via
    const random = options.random ?? Math.random
    this.breaker = new ServiceBreaker(config.breaker, deps.clock)
    const retry = config.retry
    if (retry !== undefined && retry.attempts > 1) {
      this.budget = createRetryBudget({
        ratio: retry.budgetRatio,
        minRetriesPerSecond: retry.budgetMinPerSecond,
        clock: deps.clock,
      })
      this.backoff = exponentialBackoff({
        baseDelayMs: retry.baseDelayMs,
        maxDelayMs: Math.max(retry.baseDelayMs, retry.maxDelayMs),
        jitter: 'full',
        random,
      })
    }
    if (retry !== undefined)
      for (const status of retry.retryOnStatus)
        if (status >= 0 && status < 600) this.retryStatus[status] = 1
    this.failureStatus = breakerFailureStatuses(retry?.retryOnStatus)
    this.tls =
      config.tls.caFile !== undefined ||
      config.tls.certFile !== undefined ||
      config.tls.keyFile !== undefined ||
      !config.tls.verify ||
      config.tls.serverName !== undefined
        ? new TlsMaterial(config.tls, deps.logger, config.name)
        : undefined
    this.auth =
      config.auth === undefined
        ? undefined
        : new OutboundAuth(config.auth, deps.logger, config.name)
    this.endpoints = new EndpointSet({
      loadBalancer: config.loadBalancer,
      outlierEjection: config.outlierEjection,
      clock: deps.clock,
      random,
      open: (endpoint) => {
        endpoint.pool = this.newPool(endpoint)
      },
      retire: (endpoint) => this.retirePool(endpoint.pool),
      onEject: (endpoint, durationMs) => {
        this.ejectionCount++
        this.logger.warn('upstream endpoint ejected', {
          service: this.name,
          endpoint: endpoint.url,
          durationMs,
          ejections: endpoint.ejections,
        })
      },
    })
  }

  // Plain http endpoints get the proxy's own pool (http1-pool.ts: the same dispatch contract
  // at a fraction of undici's CPU per request); https ones keep undici, which brings TLS.
  newPool(endpoint: Endpoint): UpstreamPool {
    if (!endpoint.https) {
      // The pool's own timers (idle sockets, and a connect that never completes, which the
      // attempt's timer has already failed) are about real sockets: real time, not deps.clock.
      return new Http1Pool(endpoint.url, {
        connections: this.config.bulkhead.connectionsPerEndpoint,
        connectTimeoutMs: this.connectMs,
      })
    }
    const tlsOptions =
      this.tls?.connectOptions(endpoint.servername) ??
      (endpoint.servername === undefined ? {} : { servername: endpoint.servername })
    // The connect timeout on the service's clock, as the attempt's own: undici's fires up to a
    // second late, and until then the connect (one the attempt already gave up on included)
    // holds a slot of the endpoint's pool. The TLS options go to undici as they are.
    return new HttpsPool(endpoint.url, {
      connections: this.config.bulkhead.connectionsPerEndpoint,
      connectTimeoutMs: this.connectMs,
      clock: this.clock,
      tls: tlsOptions,
    })
  }

  retirePool(pool: UpstreamPool | undefined): void {
    // close() lets queued and running requests finish, then closes the connections.
    pool?.close().catch((error: unknown) => {
      this.logger.debug('retired pool closed with an error', {
        service: this.name,
        error: (error as Error).message,
      })
    })
  }

  /** Resolved when the last running call ends (close() waits for it). */
  idle: (() => void) | undefined

  /** Frees a bulkhead slot: the next queued call takes it. */
  release(): void {
    const next = this.queueHead
    if (next === undefined) {
      if (--this.running === 0 && this.idle !== undefined) this.idle()
      return
    }
    this.dequeue(next)
    next.admitted()
  }

  enqueue(call: ForwardCall): void {
    this.queued++
    call.inQueue = true
    call.prev = this.queueTail
    if (this.queueTail === undefined) this.queueHead = call
    else this.queueTail.next = call
    this.queueTail = call
  }

  dequeue(call: ForwardCall): void {
    this.queued--
    call.inQueue = false
    const { prev, next } = call
    if (prev === undefined) this.queueHead = next
    else prev.next = next
    if (next === undefined) this.queueTail = prev
    else next.prev = prev
    call.prev = undefined
    call.next = undefined
  }

  count(status: number, startedAt: number): void {
    this.statusCounts.set(status, (this.statusCounts.get(status) ?? 0) + 1)
    this.metrics.duration.observe(this.serviceLabels, (this.clock.now() - startedAt) / 1000)
  }

  /** Adds the locally counted figures to the registry (at collection and at close). */
  flushMetrics(): void {
    const service = this.name
    const metrics = this.metrics
    for (const [status, count] of this.statusCounts) {
      if (count > 0) metrics.requests.inc({ service, status }, count)
      this.statusCounts.set(status, 0)
    }
    if (this.retryCount > 0) metrics.retries.inc(this.serviceLabels, this.retryCount)
    this.retryCount = 0
    if (this.ejectionCount > 0) metrics.ejections.inc(this.serviceLabels, this.ejectionCount)
    this.ejectionCount = 0
    const state = this.breaker.state
    for (const s of ['closed', 'open', 'half-open', 'isolated'] as const)
      metrics.breakerState.set({ service, state: s }, s === state ? 1 : 0)
    metrics.bulkheadRunning.set(this.serviceLabels, this.running)
    metrics.bulkheadQueued.set(this.serviceLabels, this.queued)
    metrics.ejected.set(this.serviceLabels, this.endpoints.ejectedCount)
  }
}

class UpstreamServiceRuntime implements UpstreamService {
  readonly name: string
  readonly config: ServiceConfig
  readonly #core: Core
  readonly #discovery: Discovery
  readonly #stopCollect: () => void

  constructor(config: ServiceConfig, deps: ProxyDeps, options: ServiceRuntimeOptions) {
    this.name = config.name
    this.config = config
    const core = new Core(config, deps, options)
    this.#core = core
    if (core.tls !== undefined) {
      core.tls.onChange = () => {
        // New connections use the new files; the old pool finishes its requests, then closes.
        for (const endpoint of core.endpoints.all) {
          if (!endpoint.https) continue
          const old = endpoint.pool
          endpoint.pool = core.newPool(endpoint)
          core.retirePool(old)
        }
      }
    }
    this.#discovery = startDiscovery(config.discovery, {
      service: config.name,
      clock: deps.clock,
      logger: deps.logger,
      resolver: options.dnsResolver,
      onTargets: (targets) => {
        if (!core.closed) core.endpoints.replace(targets)
      },
    })
    const discovering = this.#discovery.ready.finally(() => {
      core.discovering = undefined
    })
    core.discovering = discovering
    this.#stopCollect = deps.metrics.onCollect(() => core.flushMetrics())
  }

  ready(): Promise<void> {
    return this.#core.discovering ?? Promise.resolve()
  }

  forward(
    req: ForwardRequest,
    res: ProxyResponse,
    options?: ForwardOptions,
  ): Promise<ForwardOutcome> {
    const call = new ForwardCall(this.#core, req, res, options?.captureBytes ?? -1)
    if (options?.unsafeRetry !== undefined) call.unsafeRetry = options.unsafeRetry
    return call.start()
  }

  tunnel(req: TunnelRequest, client: Duplex, head: Buffer): Promise<TunnelOutcome> {
    return openTunnel(this.#core, req, client, head)
  }

  async exchange(
    req: ForwardRequest,
    maxBytes: number,
    options?: ExchangeOptions,
  ): Promise<CapturedResponse> {
    const call = new ForwardCall(this.#core, req, undefined, Math.max(0, maxBytes))
    if (options?.shadow === true) call.shadow = true
    const outcome = await call.start()
    if (outcome.captured !== undefined && outcome.error === undefined) return outcome.captured
    const code = (outcome.error ?? 'UPSTREAM_RESET') as ErrorCode
    // The proxy's status for the code: an answer cut mid-body ends with the upstream's own
    // status (200, say) in the outcome, which is no status for a failure.
    const status = code === 'ABORTED' ? 499 : (statusFor[code] ?? 502)
    throw new UpstreamError(
      code,
      status,
      this.name,
      problemDetail(code, this.name, call.failureReason),
    )
  }

  state(): ServiceState {
    const core = this.#core
    const breaker = core.breaker
    const state = breaker.state
    return {
      name: this.name,
      breaker: breaker.enabled || state === 'isolated' ? state : 'disabled',
      bulkhead: { running: core.running, queued: core.queued, max: core.maxConcurrent },
      retryBudgetLeft: core.budget?.available(),
      endpoints: core.endpoints.all.map((endpoint) => endpoint.state()),
    }
  }

  isolate(): void {
    this.#core.breaker.isolate()
  }

  reset(): void {
    this.#core.breaker.reset()
    this.#core.endpoints.reset()
  }

  async close(): Promise<void> {
    const core = this.#core
    if (core.closed) return
    core.closed = true
    // Its tunnels were opened with the settings being retired (endpoints, credentials, TLS):
    // they end now, and their clients reconnect under the new ones.
    for (const stop of [...core.tunnels]) stop()
    this.#discovery.close()
    core.tls?.close()
    core.auth?.close()
    core.endpoints.dispose()
    // Calls under way finish (each within its deadline); then the pools go. destroy(), not
    // close(): an attempt the proxy gave up on may still wait in a pool for a connection that
    // never comes, and nobody waits for its answer.
    if (core.running > 0) await new Promise<void>((resolve) => (core.idle = resolve))
    core.flushMetrics()
    this.#stopCollect()
    await Promise.all(
      core.endpoints.all.map((endpoint) => endpoint.pool?.destroy().catch(() => undefined)),
    )
  }
}

// ---------------------------------------------------------------------------------------------
// One forwarded request and its attempts
// ---------------------------------------------------------------------------------------------

/**
 * The breaker epoch of a shadow call's attempts: below every epoch the breaker has (they count
 * up from 0) and unlike its refusal (-1), so record() ignores the attempt.
 */
const uncountedEpoch = -2

const phaseConnect = 0
const phaseHead = 1
const phaseBody = 2
const phaseDone = 3

// Why an attempt failed, before the response head reached the client.
const failConnect = 1
const failReset = 2
const failTimeout = 3
const failDeadline = 4
const failRefused = 5
// The response broke HTTP/1.1 (the parser refused it, or its framing cannot be passed on).
const failInvalid = 6
// The proxy could not create the socket: out of descriptors or memory (local-shortage.ts).
const failLocal = 7

/**
 * Whether a pool error is its parser refusing the response (llhttp's `HPE_*` codes, which
 * Http1Pool's parser uses too, and a head past `maxHeaderBytes`): the upstream answered, but
 * not in HTTP/1.1, rather than the connection failing.
 */
function isMalformedResponse(error: Error): boolean {
  const code = (error as { code?: unknown }).code
  return (
    typeof code === 'string' && (code.startsWith('HPE_') || code === 'UND_ERR_HEADERS_OVERFLOW')
  )
}

/** undici's error for a 101 to a request that asked for no upgrade (client-h1.js). */
function isUndiciBadUpgrade(error: Error): boolean {
  return (error as { code?: unknown }).code === 'UND_ERR_SOCKET' && error.message === 'bad upgrade'
}

/**
 * Error codes with which a pool refuses a request before writing any of it (undici's names,
 * which Http1Pool uses too): the pool was closed or destroyed (a TLS reload, a discovery change
 * or the service's close retired it), or it cannot send the request as given (a header value
 * with a NUL). The proxy's own doing, not the upstream's: see {@link ForwardCall.failAttempt}.
 */
const poolRefusalCodes: ReadonlySet<string> = new Set([
  'UND_ERR_CLOSED',
  'UND_ERR_DESTROYED',
  'UND_ERR_INVALID_ARG',
])

/**
 * Whether every socket `pool` may open (`connections`) is connected and serving a request, so
 * that a request still waiting for one waits for the proxy's own pool, not for a connect.
 * undici's `Pool` says it through its stats: connected clients, and those free among them.
 */
function poolSaturated(pool: UpstreamPool, connections: number): boolean {
  if (pool instanceof Http1Pool) return pool.saturated
  const stats = (pool as HttpsPool).stats
  return stats.connected >= connections && stats.free === 0
}

/**
 * A step of the wall clock smaller than this is not told from the delay of a timer: the call
 * follows larger steps only (see {@link ForwardCall.now}).
 */
const stepToleranceMs = 10

/**
 * One attempt: the undici dispatch handler (undici's own callback interface, which its pools
 * call directly; the newer controller interface is wrapped per request by undici) and the
 * attempt's timer. A separate object per attempt so that the late callbacks of an abandoned
 * attempt cannot be taken for the current one's.
 */
class Attempt {
  readonly call: ForwardCall
  readonly endpoint: Endpoint
  /** The pool it was dispatched on (the endpoint's may be replaced meanwhile). */
  readonly pool: UpstreamPool
  readonly epoch: number
  phase = phaseConnect
  /**
   * connectMs ran out (or the deadline came) while it waited for a socket of a pool whose
   * every socket was connected and busy: the wait is the proxy's own congestion.
   */
  poolWait = false
  abort: ((reason?: Error) => void) | undefined
  abandonReason: Error | undefined
  resume: (() => void) | undefined
  status = 0
  statusFailed = false
  /** The current phase's due time (connect, head, or body idle). */
  dueAt: number
  /** The clock's reading `dueAt` was taken from. */
  dueFrom: number
  /**
   * `dueAt` was taken since the timer was armed (see timerFired). Kept apart from `dueFrom`: a
   * step back that no reading showed leaves a later reading no higher than the timer's own.
   */
  dueMovedSinceArm = false
  /** The due time the timer is armed for, the clock's reading then, and the timer's delay. */
  armedAt = Number.POSITIVE_INFINITY
  armedNow = 0
  armedDelay = 0
  timer: TimerHandle | undefined
  readonly onTimer = (): void => this.timerFired()

  constructor(
    call: ForwardCall,
    endpoint: Endpoint,
    pool: UpstreamPool,
    epoch: number,
    now: number,
  ) {
    this.call = call
    this.endpoint = endpoint
    this.pool = pool
    this.epoch = epoch
    this.dueAt = now + call.core.connectMs
    this.dueFrom = now
    this.arm(Math.min(this.dueAt, call.deadlineAt), now)
  }

  arm(due: number, now: number): void {
    const clock = this.call.core.clock
    if (this.timer !== undefined) clock.clearTimeout(this.timer)
    this.armedAt = due
    this.armedNow = now
    this.armedDelay = Math.max(0, due - now)
    this.dueMovedSinceArm = false
    this.timer = clock.setTimeout(this.onTimer, this.armedDelay)
  }

  /** Moves the phase's due time to `ms` from now, and returns now. */
  due(ms: number): number {
    const now = this.call.now()
    this.dueAt = now + ms
    this.dueFrom = now
    this.dueMovedSinceArm = true
    return now
  }

  onConnect(abort: (reason?: Error) => void): void {
    if (this.phase === phaseDone) {
      abort(this.abandonReason)
      return
    }
    this.abort = abort
    this.phase = phaseHead
    // undici writes the request right after this call: from here on it may reach the app.
    this.call.written = true
    // readMs from here bounds a request written in one go. A large body is written in slices,
    // and readMs then runs from each step of the write (onBodySent) and from its end
    // (onRequestSent): time the upstream spends reading a big upload steadily is not time it
    // keeps the response waiting, while a send that stalls for readMs still fails.
    this.setDue(this.call.core.readMs)
  }

  onBodySent(): void {
    // Moves the due time on; the timer, armed for the earlier one, re-arms when it fires.
    if (this.phase === phaseHead) this.due(this.call.core.readMs)
  }

  onRequestSent(): void {
    this.onBodySent()
  }

  // Http1Pool only: the request waits for a socket. An attempt given up on now (the client went
  // away, a retry) takes it out of the queue, and the connect opened for it goes too.
  onQueued(abort: (reason?: Error) => void): void {
    this.abort = abort
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, statusText: string): boolean {
    if (this.phase === phaseDone) return false
    // 1xx interim responses: the final one follows.
    if (status < 200) return true
    this.resume = resume
    return this.call.onResponse(this, status, raw, statusText)
  }

  onData(chunk: Buffer): boolean {
    if (this.phase === phaseDone) return false
    return this.call.onData(this, chunk)
  }

  onComplete(): void {
    if (this.phase === phaseDone) return
    this.call.onComplete(this)
  }

  onError(error: Error): void {
    if (this.phase === phaseDone) return
    // undici (https: endpoints) reports that 101 as a socket error, "bad upgrade".
    if (isUndiciBadUpgrade(error)) this.onUpgrade()
    else this.call.onAttemptError(this, error, 0)
  }

  // A 101 to a request that asked for no upgrade is the upstream answering wrongly, not a
  // connection that closed: reported as a malformed response naming it (502
  // UPSTREAM_RESPONSE_INVALID), where it was a reset whose detail said the connection closed.
  onUpgrade(): void {
    if (this.phase === phaseDone) return
    this.call.onAttemptError(
      this,
      new Http1PoolError(
        'UNEXPECTED_UPGRADE',
        '101 Switching Protocols to a request that asked for no upgrade',
      ),
      failInvalid,
    )
  }

  /** Moves the phase's due time to `ms` from now, re-arming the timer if that is earlier. */
  setDue(ms: number): void {
    const now = this.due(ms)
    const due = Math.min(this.dueAt, this.call.deadlineAt)
    if (due < this.armedAt) this.arm(due, now)
  }

  /**
   * The clock stepped back, the call's times have moved (see {@link ForwardCall.clockStepped}),
   * and the phase's due time moves by `dueStepMs` (negative: back; what of the step surely came
   * after it was read). The timer is armed again from `now` when it is running.
   */
  clockStepped(dueStepMs: number, now: number): void {
    if (dueStepMs !== 0) {
      this.dueAt += dueStepMs
      this.dueFrom += dueStepMs
    }
    if (this.timer !== undefined) this.arm(Math.min(this.dueAt, this.call.deadlineAt), now)
  }

  // The timer is armed for the earliest due time known when it was set; later phases move
  // the due time on without touching the timer (a body chunk just writes `dueAt`), and the
  // timer, when it fires, re-arms for what is left.
  //
  // The times are wall-clock times, but the timer counts elapsed time (Node's timers are
  // monotonic): when the clock stepped back (an NTP correction) after the timer was armed, the
  // clock reads less than the time the timer was armed for, which has truly passed. Compared
  // with the stepped clock, the due times held the attempt back by the size of the step (a
  // readMs of 500 with the clock stepped back 5 s ran out after 5.5 s); they move by the step
  // instead. Those read before the timer was armed (the call's deadline and start, a due time
  // the timer was armed for) surely were read before the step and move by all of it. A due time
  // moved on since (a body chunk) may have been read before the step, after it or between two
  // steps (moving one read after a step by that step would make it run out early): it moves by
  // what is sure, its reading less now, late by at most the timer's delay and never early.
  // (It used to move by the whole step when the call's latest reading lay above now, but a due
  // time read after a first step lies above now after a second, and ran out early by the first.)
  // See also ForwardCall.now.
  timerFired(): void {
    this.timer = undefined
    if (this.phase === phaseDone) return
    const call = this.call
    const core = call.core
    const clock = core.clock
    let now = clock.now()
    const expected = this.armedNow + this.armedDelay
    const stepMs = expected - now
    if (stepMs > stepToleranceMs) {
      const dueStepMs = !this.dueMovedSinceArm
        ? stepMs
        : Math.min(stepMs, Math.max(0, this.dueFrom - now))
      call.clockStepped(-stepMs, -dueStepMs, now)
    } else now = call.now()
    const deadlineAt = this.call.deadlineAt
    if (
      this.phase === phaseConnect &&
      !this.poolWait &&
      now >= Math.min(this.dueAt, deadlineAt) &&
      poolSaturated(this.pool, core.config.bulkhead.connectionsPerEndpoint)
    ) {
      // Not connected yet because every socket of the endpoint's pool is serving another
      // request: the proxy's own congestion, like its bulkhead queue, not a slow connect.
      // connectMs stops timing it (counted, it opened the circuit of a healthy upstream that
      // was merely slower than connectMs); the deadline bounds the wait, and a socket the
      // pool opens for it later has the pool's own connect timeout (connectMs too).
      this.poolWait = true
      this.dueAt = Number.POSITIVE_INFINITY
    }
    const due = Math.min(this.dueAt, deadlineAt)
    if (now < due) {
      this.arm(due, now)
      return
    }
    this.call.onAttemptError(
      this,
      new Error(now >= deadlineAt ? 'deadline exceeded' : 'upstream timeout'),
      now >= deadlineAt ? failDeadline : failTimeout,
    )
  }

  /** Ends the attempt on the proxy's side: no more callbacks count, undici drops the request. */
  finish(reason: Error | undefined): void {
    if (this.phase === phaseDone) return
    this.phase = phaseDone
    this.endpoint.inFlight--
    if (this.timer !== undefined) {
      this.call.core.clock.clearTimeout(this.timer)
      this.timer = undefined
    }
    if (reason !== undefined) {
      this.abandonReason = reason
      // Before onConnect (or, on an Http1Pool, onQueued) there is nothing to abort yet;
      // onConnect aborts it when it comes.
      this.abort?.(reason)
    }
  }
}

const callOfResponse: unique symbol = Symbol('breakwater.forwardCall')
type ResponseWithCall = ProxyResponse & { [callOfResponse]?: ForwardCall }

// 'close' also comes after a response that finished normally; the call has ended by then.
function onResponseClose(this: ProxyResponse): void {
  ;(this as ResponseWithCall)[callOfResponse]?.clientGone()
}

class ForwardCall {
  readonly core: Core
  readonly req: ForwardRequest
  readonly res: ProxyResponse | undefined
  /** Bytes of the body captured for the outcome; negative: no capture. */
  readonly captureMax: number
  // Both moved only when the clock steps back (see now()).
  startedAt: number
  deadlineAt: number
  /** The latest reading of the clock the call has taken (see now()). */
  seenMs: number
  resolve!: (outcome: ForwardOutcome) => void
  // Bulkhead queue links.
  prev: ForwardCall | undefined
  next: ForwardCall | undefined
  headers: string[] | undefined
  hostIndex = -1
  deadlineIndex = -1
  // Where the rewritten grpc-timeout goes; -1 when the request came without one.
  grpcTimeoutIndex = -1
  retryable = false
  unsafeRetry: NonNullable<ForwardOptions['unsafeRetry']> = 'with-key'
  /** Outside the service's accounting (ExchangeOptions.shadow): no slot, retry or record. */
  shadow = false
  // A non-idempotent request under unsafeRetry 'unsent-only', or 'with-key' without a key:
  // retried only when the failed attempt never reached onConnect (nothing is written before it).
  unsentOnly = false
  attempts = 0
  /** Whether an attempt got past its connect (see ForwardOutcome.written). */
  written = false
  attempt: Attempt | undefined
  /**
   * What the problem detail adds: why the last attempt's response was malformed (`<code>:
   * <message>`), or that the deadline passed while it waited for the proxy's pool.
   */
  failureReason: string | undefined
  lastEndpoint: Endpoint | undefined
  holdsSlot = false
  inQueue = false
  listening = false
  finished = false
  waitTimer: TimerHandle | undefined
  // A retry's backoff is under way: its budget token was taken, its attempt not yet made.
  inBackoff = false
  dispatchOptions:
    | {
        path: string
        method: string
        headers: string[]
        body: Buffer | null
      }
    | undefined
  // The response as sent (capture mode).
  capturedHeaders: Record<string, string | string[]> | undefined
  chunks: Buffer[] | undefined
  capturedBytes = 0
  truncated = false
  onDrain: (() => void) | undefined

  constructor(core: Core, req: ForwardRequest, res: ProxyResponse | undefined, captureMax: number) {
    this.core = core
    this.req = req
    this.res = res
    this.captureMax = captureMax
    const now = core.clock.now()
    this.startedAt = now
    this.seenMs = now
    const overall = now + core.overallMs
    this.deadlineAt =
      req.deadlineAt !== undefined && req.deadlineAt < overall ? req.deadlineAt : overall
  }

  start(): Promise<ForwardOutcome> {
    const promise = new Promise<ForwardOutcome>((resolve) => {
      this.resolve = resolve
    })
    const core = this.core
    if (this.res === undefined ? this.req.signal.aborted : this.res.destroyed)
      this.end(499, 'ABORTED')
    else if (core.closed) this.fail('UPSTREAM_NO_ENDPOINTS')
    else if (this.deadlineAt <= this.startedAt) this.fail('DEADLINE_EXCEEDED')
    else {
      this.listen()
      if (core.endpoints.all.length === 0 && core.discovering !== undefined) {
        // The first DNS answer is not in yet: wait for it, within the deadline (a resolver
        // that does not answer gives up only after tens of seconds), and while the client
        // stays.
        this.waitTimer = core.clock.setTimeout(() => {
          this.waitTimer = undefined
          this.fail('DEADLINE_EXCEEDED')
        }, this.deadlineAt - this.startedAt)
        core.discovering.then(() => {
          if (this.waitTimer !== undefined) {
            core.clock.clearTimeout(this.waitTimer)
            this.waitTimer = undefined
          }
          this.admit()
        })
      } else this.admit()
    }
    return promise
  }

  admit(): void {
    const core = this.core
    if (this.finished) return
    if (core.endpoints.all.length === 0) {
      this.fail('UPSTREAM_NO_ENDPOINTS')
      return
    }
    if (this.shadow) {
      // The shadow runner caps its own calls; a real request must never wait for a shadow.
      this.begin()
    } else if (core.running < core.maxConcurrent) {
      core.running++
      this.holdsSlot = true
      this.begin()
    } else if (core.queued < core.maxQueue) {
      core.enqueue(this)
      this.waitTimer = core.clock.setTimeout(() => {
        this.waitTimer = undefined
        if (!this.holdsSlot) this.fail('DEADLINE_EXCEEDED')
      }, this.deadlineAt - this.now())
    } else {
      this.fail('BULKHEAD_FULL')
    }
  }

  /** A queued call got a slot (the releasing call handed its slot over). */
  admitted(): void {
    this.holdsSlot = true
    if (this.waitTimer !== undefined) {
      this.core.clock.clearTimeout(this.waitTimer)
      this.waitTimer = undefined
    }
    if (this.finished) {
      this.core.release()
      return
    }
    this.begin()
  }

  begin(): void {
    const core = this.core
    const req = this.req
    const method = req.method
    if (!this.shadow) core.budget?.recordRequest()
    // The upstream request head, built once for every attempt: the inbound headers as given
    // (hop-by-hop ones are gone already; names the proxy sets are replaced), then host,
    // request id, deadline, credentials and the Idempotency-Key.
    const auth = core.auth
    const headers: string[] = []
    let hasKey = false
    let hadGrpcTimeout = false
    const source = req.headers
    const safe = idempotentMethods.has(method)
    const addKey = core.config.retry?.addIdempotencyKey === true && !safe
    for (const name in source) {
      if (
        replacedRequestHeaders.has(name) ||
        HOP_BY_HOP_HEADERS.has(name) ||
        name === core.deadlineHeader
      )
        continue
      // The caller's grpc-timeout is its whole budget as sent (days, if it likes): passed on as
      // is, an upstream that reads it would work on long after the proxy gave up. It is counted
      // in deadlineAt and rewritten per attempt, like the deadline header.
      if (name === GRPC_TIMEOUT_HEADER) {
        hadGrpcTimeout = true
        continue
      }
      if (auth !== undefined && name === auth.header) continue
      const value = source[name] as string | string[]
      if (name === 'idempotency-key') {
        // An empty key names no operation: an upstream that skips deduplication without a
        // usable key would run a retried POST twice. It does not make the request retryable,
        // and one the proxy adds replaces it (two keys would be joined into one odd value).
        if (!blankKey(value)) hasKey = true
        else if (addKey) continue
      }
      if (typeof value === 'string') headers.push(name, value)
      else for (const item of value) headers.push(name, item)
    }
    this.hostIndex = headers.length + 1
    headers.push('host', req.host)
    headers.push('x-request-id', req.requestId)
    this.deadlineIndex = headers.length + 1
    headers.push(core.deadlineHeader, '')
    if (hadGrpcTimeout) {
      this.grpcTimeoutIndex = headers.length + 1
      headers.push(GRPC_TIMEOUT_HEADER, '')
    }
    if (auth?.value !== undefined) headers.push(auth.header, auth.value)
    if (!hasKey && addKey) {
      headers.push('idempotency-key', randomUUID())
      hasKey = true
    }
    // A non-idempotent request the app cannot dedupe (no key, or keys only the proxy enforces)
    // is still retried after a failure that proves none of it was written (the connect was
    // refused, timed out or failed its TLS handshake): it never reached an upstream, as nginx's
    // proxy_next_upstream and Envoy's connect-failure retry it. Without that, one dead endpoint
    // of two failed every second POST.
    const unsafeRetry = this.unsafeRetry
    this.retryable = core.backoff !== undefined && (safe || unsafeRetry !== 'never')
    this.unsentOnly =
      !safe && (unsafeRetry === 'unsent-only' || (unsafeRetry === 'with-key' && !hasKey))
    this.headers = headers
    this.dispatchOptions = { path: req.target, method, headers, body: req.body ?? null }
    this.dispatch()
  }

  /**
   * Reads the clock. A reading below the latest one means the clock stepped back (an NTP
   * correction) since, and every time of the call and its attempt was read before the step:
   * they move by the difference, so that the deadline and the attempt's due time still end
   * after the time they had left, not after that and the step. (The attempt's timer tells a
   * step that comes while nothing reads the clock: see Attempt.timerFired.)
   */
  now(): number {
    const now = this.core.clock.now()
    const seenMs = this.seenMs
    if (now < seenMs - stepToleranceMs) this.clockStepped(now - seenMs, now - seenMs, now)
    else if (now > seenMs) this.seenMs = now
    return now
  }

  /**
   * The clock stepped by `stepMs` (negative: back) after the call's start and deadline were
   * read, and now reads `now`: they move by as much, and the running attempt's due time by
   * `dueStepMs` (see Attempt.timerFired).
   */
  clockStepped(stepMs: number, dueStepMs: number, now: number): void {
    this.startedAt += stepMs
    this.deadlineAt += stepMs
    this.seenMs = now
    const attempt = this.attempt
    if (attempt !== undefined && attempt.phase !== phaseDone) attempt.clockStepped(dueStepMs, now)
  }

  dispatch(): void {
    const core = this.core
    const now = this.now()
    // A retry timer (or a slot) that came too late: no attempt without time left.
    if (now >= this.deadlineAt) {
      this.fail('DEADLINE_EXCEEDED')
      return
    }
    const endpoint = core.endpoints.pick(this.lastEndpoint)
    if (endpoint === undefined) {
      this.fail('UPSTREAM_NO_ENDPOINTS')
      return
    }
    // A shadow goes only through a closed breaker, and with an epoch the breaker never has,
    // so that its every record() is ignored.
    const epoch = this.shadow
      ? core.breaker.state === 'closed'
        ? uncountedEpoch
        : -1
      : core.breaker.admit()
    if (epoch < 0 && epoch !== uncountedEpoch) {
      this.fail(core.breaker.state === 'isolated' ? 'ISOLATED_CIRCUIT' : 'BROKEN_CIRCUIT')
      return
    }
    const headers = this.headers as string[]
    if (core.config.rewriteHost) headers[this.hostIndex] = endpoint.hostHeader
    const leftMs = Math.max(0, Math.floor(this.deadlineAt - now))
    headers[this.deadlineIndex] = String(leftMs)
    if (this.grpcTimeoutIndex >= 0) headers[this.grpcTimeoutIndex] = grpcTimeoutValue(leftMs)
    this.attempts++
    this.lastEndpoint = endpoint
    endpoint.inFlight++
    const pool = endpoint.pool as UpstreamPool
    const attempt = new Attempt(this, endpoint, pool, epoch, now)
    this.attempt = attempt
    try {
      pool.dispatch(this.dispatchOptions as NonNullable<ForwardCall['dispatchOptions']>, attempt)
    } catch (error) {
      // A pool closed by a TLS reload or discovery change between pick and dispatch.
      attempt.onError(error as Error)
    }
  }

  /** The response head of the current attempt arrived; false pauses the upstream. */
  onResponse(attempt: Attempt, status: number, raw: Buffer[], statusText: string): boolean {
    const core = this.core
    attempt.status = status
    attempt.statusFailed = core.failureStatus[status] === 1
    if (core.retryStatus[status] === 1) {
      if (this.retryable && !this.unsentOnly && this.canRetry()) {
        const retryAfterMs =
          status === 429 || status === 503 ? retryAfterOf(raw, core.clock) : undefined
        if (this.retryLater(attempt, retryAfterMs)) return false
      }
    }
    const res = this.res
    // A cap of 0 still captures: the head, with an empty body marked truncated when it had one.
    const capture = this.captureMax >= 0
    let record: Record<string, string | string[]> | undefined
    if (capture) {
      record = emptyHeaderRecord()
      this.capturedHeaders = record
      this.chunks = []
    }
    const flat = responseHeaders(raw, record, core.via, status)
    if (flat === undefined) {
      // A transfer coding besides chunked (`gzip, chunked`): the pool de-chunks but decodes
      // nothing else, and Transfer-Encoding is hop-by-hop, so the client would take the coded
      // bytes for the body. 502, as nginx answers it ("unknown Transfer-Encoding").
      this.failAttempt(
        attempt,
        new Http1PoolError('HPE_INVALID_TRANSFER_ENCODING', 'Transfer coding other than chunked'),
        failInvalid,
      )
      return false
    }
    if (res !== undefined) {
      if (res.headersSent || res.destroyed) {
        this.clientGone()
        return false
      }
      try {
        if (statusText === '') res.writeHead(status, flat)
        else res.writeHead(status, statusText, flat)
      } catch (error) {
        this.failAttempt(attempt, error as Error, failReset)
        return false
      }
    }
    attempt.phase = phaseBody
    attempt.setDue(core.readMs)
    return true
  }

  onData(attempt: Attempt, chunk: Buffer): boolean {
    attempt.due(this.core.readMs)
    if (this.chunks !== undefined && !this.truncated) {
      const room = this.captureMax - this.capturedBytes
      if (chunk.length <= room) {
        this.chunks.push(chunk)
        this.capturedBytes += chunk.length
      } else {
        if (room > 0) this.chunks.push(chunk.subarray(0, room))
        this.capturedBytes += Math.max(0, room)
        this.truncated = true
      }
    }
    const res = this.res
    if (res === undefined || res.write(chunk)) return true
    // The client is slow, not the upstream: no read timeout while the upstream is paused for
    // it (the deadline still holds); readMs starts again when the client has drained.
    attempt.dueAt = Number.POSITIVE_INFINITY
    this.onDrain ??= () => {
      const current = this.attempt
      if (current === undefined || current.phase !== phaseBody) return
      current.setDue(this.core.readMs)
      current.resume?.()
    }
    res.once('drain', this.onDrain)
    return false
  }

  onComplete(attempt: Attempt): void {
    attempt.finish(undefined)
    this.recordAttempt(attempt, attempt.statusFailed)
    this.res?.end()
    this.end(attempt.status, undefined)
  }

  /** undici reported an error, or the attempt's timer ran out (`kind` says which). */
  onAttemptError(attempt: Attempt, error: Error, kind: number): void {
    // Before onConnect the request has not been written: whatever failed (refused, TLS
    // handshake or verification, a reset during it) failed to connect.
    const reason =
      kind !== 0
        ? kind
        : attempt.phase !== phaseConnect
          ? isMalformedResponse(error)
            ? failInvalid
            : failReset
          : poolRefusalCodes.has((error as { code?: unknown }).code as string)
            ? failRefused
            : localShortage(error) !== undefined
              ? failLocal
              : failConnect
    this.failAttempt(attempt, error, reason)
  }

  failAttempt(attempt: Attempt, error: Error, reason: number): void {
    const streaming = attempt.phase === phaseBody
    const unsent = attempt.phase === phaseConnect
    attempt.finish(error)
    if (reason === failInvalid) this.malformed(attempt, error)
    else if (reason === failLocal) {
      this.failureReason = localShortage(error)
      this.core.shortages.note(this.core.name, attempt.endpoint.url, error)
    } else if (reason === failDeadline && unsent && attempt.poolWait)
      this.failureReason = `it was still waiting for one of the proxy's ${this.core.config.bulkhead.connectionsPerEndpoint} connections to ${attempt.endpoint.url}, all busy (bulkhead.connectionsPerEndpoint)`
    // A request the pool refused never reached the upstream: it says nothing of its health,
    // so neither the breaker (a half-open probe slot is given back) nor outlier ejection
    // counts it. Counting it let local trouble (a pool being retired, a request that cannot
    // be sent) open the circuit of a healthy upstream. Nor does a deadline that ended the
    // attempt before the service's own connectMs or readMs ran out: the deadline is the
    // client's (its header, on a gateway sent from anywhere), and a client asking for less
    // than the upstream's usual latency would otherwise open the circuit for every client.
    // Nor a socket the proxy could not create (out of descriptors or memory): under a
    // connection flood every connect fails so, and the breaker then refused the healthy
    // upstream for its whole cooldown after the flood had passed.
    if (
      reason === failRefused ||
      reason === failLocal ||
      (reason === failDeadline && this.now() < attempt.dueAt)
    )
      this.core.breaker.record(attempt.epoch, undefined)
    else this.recordAttempt(attempt, true)
    if (streaming) {
      // Part of the response is out: the client must see a broken connection, never a body
      // that ends early and looks complete.
      this.res?.destroy()
      this.end(
        attempt.status,
        reason === failTimeout
          ? 'UPSTREAM_TIMEOUT'
          : reason === failDeadline
            ? 'DEADLINE_EXCEEDED'
            : reason === failInvalid
              ? 'UPSTREAM_RESPONSE_INVALID'
              : 'UPSTREAM_RESET',
      )
      return
    }
    // Not retried after a local shortage either: the retry budget is for the upstream's
    // failures, and a retry would hold the client's descriptor through its backoff.
    if (
      reason !== failDeadline &&
      reason !== failLocal &&
      this.retryable &&
      (unsent || !this.unsentOnly) &&
      this.canRetry() &&
      this.retryLater(attempt, undefined)
    )
      return
    this.fail(
      reason === failConnect
        ? 'UPSTREAM_CONNECT_FAILED'
        : reason === failRefused || reason === failLocal
          ? 'UPSTREAM_POOL_REFUSED'
          : reason === failTimeout
            ? 'UPSTREAM_TIMEOUT'
            : reason === failDeadline
              ? 'DEADLINE_EXCEEDED'
              : reason === failInvalid
                ? 'UPSTREAM_RESPONSE_INVALID'
                : 'UPSTREAM_RESET',
    )
  }

  /**
   * Notes and logs why an attempt's response was malformed: the parser's code says what the
   * upstream got wrong (obs-fold, conflicting framing...), which nothing else records. Like a
   * 502 answer, it is counted against the upstream and retried only when the request may be.
   */
  malformed(attempt: Attempt, error: Error): void {
    const code = (error as { code?: unknown }).code
    this.failureReason = typeof code === 'string' ? `${code}: ${error.message}` : error.message
    this.core.logger.warn('upstream response malformed', {
      service: this.core.name,
      endpoint: attempt.endpoint.url,
      reason: code,
      detail: error.message,
      method: this.req.method,
      requestId: this.req.requestId,
    })
  }

  recordAttempt(attempt: Attempt, failed: boolean): void {
    if (this.shadow) return
    const core = this.core
    core.breaker.record(attempt.epoch, failed)
    if (failed || attempt.status >= 500) core.endpoints.failure(attempt.endpoint)
    else core.endpoints.success(attempt.endpoint)
  }

  canRetry(): boolean {
    const core = this.core
    return (
      this.retryable &&
      !this.shadow &&
      this.attempts < (core.config.retry?.attempts ?? 1) &&
      !this.finished &&
      core.breaker.state === 'closed'
    )
  }

  /**
   * Schedules the next attempt after full-jitter backoff (or `retryAfterMs`, when longer) if
   * it can start before the deadline and the budget has a token; false otherwise. A response
   * that is retried is abandoned (its connection closed) rather than read to the end.
   */
  retryLater(attempt: Attempt, retryAfterMs: number | undefined): boolean {
    const core = this.core
    const backoff = core.backoff as Backoff
    let delayMs = backoff.delayMs(this.attempts - 1)
    if (retryAfterMs !== undefined && retryAfterMs > delayMs) delayMs = retryAfterMs
    const now = this.now()
    if (now + delayMs >= this.deadlineAt) return false
    if (core.budget !== undefined && !core.budget.tryWithdraw()) return false
    if (attempt.phase !== phaseDone) {
      // A retried answer (the only attempt still open here): counted as its status says.
      attempt.finish(new Error('retrying'))
      this.recordAttempt(attempt, attempt.statusFailed)
    }
    core.retryCount++
    this.inBackoff = true
    this.waitTimer = core.clock.setTimeout(() => {
      this.waitTimer = undefined
      this.inBackoff = false
      if (this.finished) return
      // The backoff has truly passed, whatever the clock reads: a reading short of its end
      // means the clock stepped back meanwhile, when nothing of the call read it.
      const ended = core.clock.now()
      if (now + delayMs - ended > stepToleranceMs)
        this.clockStepped(ended - (now + delayMs), 0, ended)
      this.dispatch()
    }, delayMs)
    return true
  }

  // How the call learns that its client went away. With a response to write, from the
  // response's 'close' (an EventEmitter listener shared by every call, which finds its call
  // on the response: no closure, no EventTarget bookkeeping, and the inbound side's signal is
  // never read, so it may be created lazily); without one (exchange), from the signal.
  listen(): void {
    const res = this.res
    if (res !== undefined) {
      ;(res as ResponseWithCall)[callOfResponse] = this
      res.on('close', onResponseClose)
      return
    }
    this.req.signal.addEventListener('abort', this)
    this.listening = true
  }

  /** The client went away (the request's signal aborted). */
  handleEvent(): void {
    this.clientGone()
  }

  clientGone(): void {
    if (this.finished) return
    const attempt = this.attempt
    if (attempt !== undefined && attempt.phase !== phaseDone) {
      attempt.finish(new Error('client went away'))
      this.core.breaker.record(attempt.epoch, undefined)
    }
    const res = this.res
    if (res !== undefined && !res.writableEnded) res.destroy()
    // The listener's drain cut the connection when its time was up: not the client's doing.
    if (res !== undefined && cutByDrain(res)) this.end(503, 'DRAIN_TIMEOUT')
    else this.end(499, 'ABORTED')
  }

  /** Answers with the proxy's own problem response. */
  fail(code: ErrorCode): void {
    if (this.finished) return
    const status = statusFor[code] ?? 502
    const res = this.res
    if (res !== undefined) {
      if (res.headersSent) res.destroy()
      else if (!res.destroyed) {
        const body = JSON.stringify({
          type: 'about:blank',
          title:
            status === 503
              ? 'Service Unavailable'
              : status === 504
                ? 'Gateway Timeout'
                : 'Bad Gateway',
          status,
          code,
          detail: problemDetail(code, this.core.name, this.failureReason),
          service: this.core.name,
        })
        const headers: Record<string, string | number> = {
          'content-type': 'application/problem+json',
          'content-length': Buffer.byteLength(body),
          'cache-control': 'no-store',
        }
        // When the breaker lets a probe through, as the tunnel's refusal says it (tunnel.ts).
        if (code === 'BROKEN_CIRCUIT')
          headers['retry-after'] = this.core.breaker.retryAfterSeconds()
        res.writeHead(status, headers)
        res.end(body)
      }
    }
    this.end(status, code)
  }

  end(status: number, error: string | undefined): void {
    if (this.finished) return
    this.finished = true
    const core = this.core
    if (this.waitTimer !== undefined) {
      core.clock.clearTimeout(this.waitTimer)
      this.waitTimer = undefined
    }
    if (this.inBackoff) {
      // Ended during a retry's backoff (client gone, proxy closing): no retry was made, so the
      // budget gets its token back, as the retry policy's does.
      this.inBackoff = false
      core.budget?.refund?.()
    }
    if (this.listening) this.req.signal.removeEventListener('abort', this)
    // A queued call that ends (its client went away) gives its queue place back at once.
    if (this.inQueue) core.dequeue(this)
    if (this.holdsSlot) {
      this.holdsSlot = false
      core.release()
    }
    core.count(status, this.startedAt)
    let captured: CapturedResponse | undefined
    if (this.chunks !== undefined && error === undefined) {
      captured = {
        status,
        headers: this.capturedHeaders ?? {},
        body: Buffer.concat(this.chunks, Math.min(this.capturedBytes, this.captureMax)),
        truncated: this.truncated,
      }
    }
    this.resolve({
      status,
      attempts: this.attempts,
      written: this.written,
      endpoint: this.lastEndpoint?.url,
      error,
      captured,
    })
  }
}

function isConnectionName(name: Buffer): boolean {
  return name.length === 10 && name.toString('latin1').toLowerCase() === 'connection'
}

/**
 * The response headers to send on: undici's raw list (Buffers) without hop-by-hop headers and
 * without the headers the upstream named in `Connection`, as the flat name/value list
 * `writeHead` takes (no header object, no per-header `setHeader`); also fills `record` (lower-case
 * names) when the response is captured. With a `via` pseudonym, the upstream's Via lines become
 * one, with `1.1 <via>` appended (the proxy speaks HTTP/1.1 upstream). Undefined when a
 * `Transfer-Encoding` names a coding other than chunked, which cannot be passed on. A 204
 * loses `Content-Length` and `Transfer-Encoding` whatever their values: a sender must not send
 * them in one (RFC 9110 §8.6, RFC 9112 §6.1), and the body they announce was never read.
 * Repeated `Content-Length` lines (the parser took them only when all name one length) go on
 * as the first alone, as RFC 9110 §8.6 has a recipient replace them: passed on as they came,
 * a strict client (node's own llhttp) refuses the answer the proxy read as well-formed.
 */
function responseHeaders(
  raw: Buffer[],
  record: Record<string, string | string[]> | undefined,
  via: string | undefined,
  status: number,
): string[] | undefined {
  let named: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if (!isConnectionName(raw[i] as Buffer)) continue
    for (const token of (raw[i + 1] as Buffer).toString('latin1').split(',')) {
      const name = token.trim().toLowerCase()
      if (name === '' || name === 'close' || HOP_BY_HOP_HEADERS.has(name)) continue
      named ??= new Set()
      named.add(name)
    }
  }
  const flat: string[] = []
  let upstreamVia: string[] | undefined
  let hasLength = false
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1')
    const lower = name.toLowerCase()
    if (status === 204 && (lower === 'content-length' || lower === 'transfer-encoding')) continue
    if (lower === 'content-length') {
      if (hasLength) continue
      hasLength = true
    }
    if (HOP_BY_HOP_HEADERS.has(lower) || named?.has(lower) === true) {
      if (
        lower === 'transfer-encoding' &&
        !isPlainChunked((raw[i + 1] as Buffer).toString('latin1'))
      )
        return undefined
      continue
    }
    const value = (raw[i + 1] as Buffer).toString('latin1')
    if (via !== undefined && lower === 'via') {
      upstreamVia ??= []
      upstreamVia.push(value)
      continue
    }
    pushHeader(flat, record, name, lower, value)
  }
  if (via !== undefined) pushHeader(flat, record, 'via', 'via', appendVia(upstreamVia, '1.1', via))
  return flat
}

/** Adds one header to the flat list and, when the response is captured, to `record`. */
function pushHeader(
  flat: string[],
  record: Record<string, string | string[]> | undefined,
  name: string,
  lower: string,
  value: string,
): void {
  flat.push(name, value)
  if (record === undefined) return
  const existing = record[lower]
  if (existing === undefined) record[lower] = value
  else if (typeof existing === 'string') record[lower] = [existing, value]
  else existing.push(value)
}

function retryAfterOf(raw: Buffer[], clock: Clock): number | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as Buffer
    if (name.length === 11 && name.toString('latin1').toLowerCase() === 'retry-after')
      return parseRetryAfter((raw[i + 1] as Buffer).toString('latin1'), clock.now())
  }
  return undefined
}

/** Whether a request's Idempotency-Key (once or repeated) holds nothing but whitespace. */
function blankKey(value: string | readonly string[]): boolean {
  return typeof value === 'string' ? value.trim() === '' : value.every((v) => v.trim() === '')
}
