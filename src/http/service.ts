import { randomUUID } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { Pool } from 'undici'
import { type Clock, maxTimerDelayMs } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkInteger,
  checkNumber,
  checkObject,
  checkOptionKeys,
  checkSignal,
  isDroppedPromise,
  optionKeys,
  signalRefusal,
  withOptionPrefix,
} from '../core/validate.js'
import {
  type Bulkhead,
  bulkhead,
  type CircuitBreaker,
  type CircuitState,
  createRetryBudget,
  currentDeadline,
  DEADLINE_HEADER,
  DeadlineExceededError,
  isTransientFailure,
  type Policy,
  type PolicyContext,
  pipeline,
  type RetryBudget,
  type RetryPolicy,
  TimeoutError,
  timeout,
  type Unsubscribe,
} from '../index.js'
import { type AbortListener, listenToSignal, unlistenToSignal } from '../policies/cancel-scope.js'
import { circuitBreakerAt, countsAsFailure } from '../policies/circuit-breaker.js'
import { MAX_DEADLINE_HEADER_MS } from '../policies/deadline.js'
import { timeoutEndOf } from '../policies/fused.js'
import { retryWithDeadlineReserve } from '../policies/retry.js'
import { type ClockedConnector, clockedConnector } from './connector.js'
import { HttpClientClosedError, HttpStatusError } from './errors.js'
import { type HttpEvents, ServiceEvents } from './events.js'
import {
  Exchange,
  type ExchangePlan,
  type ExchangeSettings,
  isOverLimitAnswer,
  type WriteTimeHeader,
} from './exchange.js'
import { bodylessMethods, idempotentMethods } from './methods.js'
import type { HttpRequestOptions, HttpServiceOptions } from './options.js'
import {
  addHeaders,
  appendQuery,
  type BaseTarget,
  checkIdempotencyKey,
  checkPath,
  isToken,
  parseBaseUrl,
} from './request-target.js'
import type { BufferedResponse, HttpResponse } from './response.js'

/** Connection pool figures of a service (undici's `PoolStats`). */
export interface HttpPoolStats {
  /** Open connections. */
  readonly connected: number
  /** Open connections without a request. */
  readonly free: number
  /** Requests waiting for a connection. */
  readonly pending: number
  /** Requests queued on connections. */
  readonly queued: number
  /** Requests in flight. */
  readonly running: number
  /** Pending, queued and running requests. */
  readonly size: number
}

/** A snapshot of a service's resilience state, for metrics and admin endpoints. */
export interface HttpServiceState {
  /** The circuit breaker's state, or undefined without a breaker. */
  readonly breaker: CircuitState | undefined
  /** Calls holding and waiting for a bulkhead slot, or undefined without a bulkhead. */
  readonly bulkhead: { readonly running: number; readonly queued: number } | undefined
  /** The service's own connection pool. */
  readonly pool: HttpPoolStats
  /** Retry tokens left in the budget, or undefined without a budget. */
  readonly retryBudget: number | undefined
}

/** Options of {@link HttpService.execute}. */
export interface HttpExecuteOptions {
  /**
   * Whether failed attempts may be retried (only when the service has retry on). Say `true`
   * only for work that is safe to repeat.
   * @default false
   */
  readonly retry?: boolean | undefined
  /**
   * Aborts the call.
   * @default undefined
   */
  readonly signal?: AbortSignal | undefined
}

/**
 * One downstream service of an HTTP client: its own connection pool and policy stack. Most
 * code only needs `client.request()`; this handle is for metrics, admin operations (isolate or
 * reset the breaker) and for callers that stream through the pool themselves (the proxy).
 */
export interface HttpService {
  /** The service's name. */
  readonly name: string
  /** The base URL as normalized (origin and base path). */
  readonly baseUrl: string
  /** The service's own undici `Pool`, bound to its origin. Closed by `client.close()`. */
  readonly dispatcher: Pool
  /** The circuit breaker, or undefined when disabled. */
  readonly breaker: CircuitBreaker | undefined
  /** The bulkhead, or undefined when disabled. */
  readonly bulkhead: Bulkhead | undefined
  /** The retry budget, or undefined when disabled. */
  readonly retryBudget: RetryBudget | undefined
  /** The service's events. */
  readonly events: HttpEvents
  /** A snapshot of breaker, bulkhead, pool and budget. */
  state(): HttpServiceState
  /**
   * Runs `fn` through the service's policy stack (overall timeout, retry when asked, circuit
   * breaker, attempt timeout, bulkhead), for work that talks to the service's `dispatcher`
   * itself. `fn` must honour `ctx.signal`. Once the client is closing, attempts reject with
   * `HttpClientClosedError` without calling `fn`. A bad `fn` or option rejects with
   * `InvalidOptionError`.
   */
  execute<T>(
    fn: (ctx: PolicyContext) => PromiseLike<T> | T,
    options?: HttpExecuteOptions,
  ): Promise<T>
}

// undici's channels for a request answered in full and one that failed.
const requestEndChannels = ['undici:request:trailers', 'undici:request:error'] as const

/** The keys HttpServiceOptions takes (internal: not exported from the package root). */
export const serviceOptions = optionKeys<HttpServiceOptions>({
  baseUrl: true,
  connectTimeoutMs: true,
  headersTimeoutMs: true,
  bodyTimeoutMs: true,
  attemptTimeoutMs: true,
  overallTimeoutMs: true,
  retry: true,
  circuitBreaker: true,
  bulkhead: true,
  connections: true,
  retryBudget: true,
  idempotencyKeys: true,
  throwOnErrorStatus: true,
  propagateDeadline: true,
  deadlineMarginMs: true,
  headers: true,
  maxResponseBytes: true,
  clock: true,
})
/** The keys HttpRequestOptions takes (internal: not exported from the package root). */
export const requestOptions = optionKeys<HttpRequestOptions>({
  method: true,
  path: true,
  query: true,
  headers: true,
  body: true,
  json: true,
  idempotencyKey: true,
  retry: true,
  throwOnErrorStatus: true,
  signal: true,
})
/** The request options holding the caller's data, where null is a value. */
const requestData = { data: new Set(['json']) }
/** The keys HttpExecuteOptions takes (internal: not exported from the package root). */
export const executeOptions = optionKeys<HttpExecuteOptions>({ retry: true, signal: true })

const keyedMethods = new Set(['POST', 'PATCH', 'PUT', 'DELETE'])
const defaultBulkhead = { maxConcurrent: 32, maxQueued: 64 }

/** The plan of one call plus what its attempts need. */
interface CallPlan extends ExchangePlan {
  readonly headers: Record<string, string | string[]>
  readonly startMs: number
}

// One call's link to close(): a call that waits (retry backoff, bulkhead queue) when the client
// closes could only ever be refused, so close() aborts it at once instead of letting the wait run
// out (a Retry-After of up to maxRetryAfterMs, with a timer that holds the process open).
class CallLink implements AbortListener {
  readonly controller = new AbortController()
  /** An attempt of the call is running: it finishes, close() leaves it alone. */
  attempting = false
  /** An attempt succeeded: the result is on its way out, nothing may abort it now. */
  answered = false
  /** The close (not the caller) aborted the call. */
  closed = false
  /** Settles when the call has (for close(), which waits for the calls in flight). */
  readonly settled: Promise<void>
  readonly #settle: () => void

  constructor() {
    let settle: () => void = () => {}
    this.settled = new Promise<void>((resolve) => {
      settle = resolve
    })
    this.#settle = settle
  }

  /** The caller's signal aborted: so does the call. */
  parentAborted(reason: unknown): void {
    this.controller.abort(reason)
  }

  /** The call has settled. */
  end(): void {
    this.#settle()
  }

  /** Ends the call for the close, unless the caller's abort came first. */
  close(): void {
    if (this.controller.signal.aborted) return
    this.closed = true
    this.controller.abort(new HttpClientClosedError())
  }
}

/** A service as built by the client. Internal: callers see {@link HttpService}. */
export class ServiceRuntime implements HttpService, ExchangeSettings {
  readonly name: string
  readonly baseUrl: string
  readonly dispatcher: Pool
  readonly breaker: CircuitBreaker | undefined
  readonly bulkhead: Bulkhead | undefined
  readonly retryBudget: RetryBudget | undefined
  readonly events: ServiceEvents
  readonly clock: Clock
  readonly headersTimeoutMs: number
  readonly bodyTimeoutMs: number
  readonly maxResponseBytes: number
  readonly unsent = new Set<Exchange>()
  readonly #base: BaseTarget
  readonly #retry: RetryPolicy | undefined
  // Two stacks sharing one breaker and one bulkhead: calls that may be repeated go through
  // the one with retry, the others (a POST without a key) through the one without.
  readonly #retrying: Policy
  readonly #single: Policy
  readonly #attemptTimeoutMs: number
  readonly #overallTimeoutMs: number
  readonly #idempotencyKeys: boolean
  readonly #throwOnErrorStatus: boolean
  readonly #propagateDeadline: boolean
  readonly #deadlineMarginMs: number
  readonly #defaultHeaders: Record<string, string | string[]>
  readonly #shouldRetry: (error: unknown, attempt: number) => boolean
  readonly #maxAttempts: number
  readonly #calls = new Set<CallLink>()
  #closed = false
  // The pool's connector: close() ends the connects it still has under way (see close()).
  readonly #connector: ClockedConnector

  constructor(name: string, options: HttpServiceOptions, clientClock: Clock) {
    const prefix = `services.${name}`
    checkObject(prefix, options)
    // The policies' own bags (retry, circuitBreaker, ...) are checked by the policies.
    checkOptionKeys(prefix, options, serviceOptions)
    this.name = name
    this.#base = parseBaseUrl(`${prefix}.baseUrl`, options.baseUrl)
    this.baseUrl = this.#base.href
    const clock =
      options.clock === undefined ? clientClock : checkClock(`${prefix}.clock`, options.clock)
    this.clock = clock
    const connectTimeoutMs = timeoutOption(prefix, 'connectTimeoutMs', options, 5_000)
    this.headersTimeoutMs = timeoutOption(prefix, 'headersTimeoutMs', options, 10_000)
    this.bodyTimeoutMs = timeoutOption(prefix, 'bodyTimeoutMs', options, 10_000)
    this.#attemptTimeoutMs = timeoutOption(prefix, 'attemptTimeoutMs', options, 10_000)
    this.#overallTimeoutMs = timeoutOption(prefix, 'overallTimeoutMs', options, 30_000)
    this.#idempotencyKeys = booleanOption(prefix, 'idempotencyKeys', options, true)
    this.#throwOnErrorStatus = booleanOption(prefix, 'throwOnErrorStatus', options, false)
    this.#propagateDeadline = booleanOption(prefix, 'propagateDeadline', options, true)
    this.#deadlineMarginMs = checkNumber(
      `${prefix}.deadlineMarginMs`,
      options.deadlineMarginMs ?? 5,
      0,
      60_000,
    )
    this.#defaultHeaders = {}
    addHeaders(this.#defaultHeaders, `${prefix}.headers`, options.headers)
    // A key belongs to one call: sent with every request, it would make the downstream answer
    // each later POST with the first one's stored response (and make every POST retryable).
    if (this.#defaultHeaders['idempotency-key'] !== undefined) {
      const raw = Object.keys(options.headers ?? {}).find(
        (name) => name.toLowerCase() === 'idempotency-key',
      )
      throw new InvalidOptionError(
        `${prefix}.headers.${raw}`,
        'no Idempotency-Key (give each request its own: request.idempotencyKey)',
        this.#defaultHeaders['idempotency-key'],
      )
    }
    this.maxResponseBytes = checkInteger(
      `${prefix}.maxResponseBytes`,
      options.maxResponseBytes ?? 16 * 1024 * 1024,
      0,
    )

    // A budget limits retries; without retry there is nothing for it to do.
    this.retryBudget =
      options.retry === false
        ? undefined
        : withOptionPrefix(prefix, () => makeBudget(options.retryBudget, clock))
    // What the retry policy will decide, for a call whose attempt fails after close() (see
    // #linkedAttempt); the defaults are retry()'s. Validated by retry() below.
    const retryOptions = options.retry === false ? undefined : options.retry
    const shouldRetry = retryOptions?.shouldRetry
    this.#shouldRetry =
      typeof shouldRetry === 'function' ? shouldRetry : (error) => isTransientFailure(error)
    this.#maxAttempts = retryOptions?.maxAttempts ?? 3
    this.#retry =
      options.retry === false
        ? undefined
        : withOptionPrefix(prefix, () =>
            // An attempt needs the margin plus 1 ms of the deadline to be sent (see #budget):
            // a backoff leaving less must give up with the last failure instead.
            retryWithDeadlineReserve(
              {
                ...serviceManaged(`${prefix}.retry`, options.retry, ['budget', 'clock']),
                ...(this.retryBudget === undefined ? {} : { budget: this.retryBudget }),
                clock,
              },
              this.#deadlineMarginMs + 1,
              `${prefix}.retry`,
            ),
          )
    this.breaker =
      options.circuitBreaker === false
        ? undefined
        : withOptionPrefix(prefix, () =>
            circuitBreakerAt(`${prefix}.circuitBreaker`, {
              name,
              // A body over maxResponseBytes below 500 is an answer, not the downstream's failure:
              // counted, one endpoint with large bodies opened the circuit for every call.
              isFailure: (error) => !isOverLimitAnswer(error) && countsAsFailure(error),
              ...serviceManaged(`${prefix}.circuitBreaker`, options.circuitBreaker, ['clock']),
              clock,
            }),
          )
    this.bulkhead =
      options.bulkhead === false
        ? undefined
        : withOptionPrefix(prefix, () =>
            bulkhead({
              ...defaultBulkhead,
              name,
              ...serviceManaged(`${prefix}.bulkhead`, options.bulkhead, ['clock']),
              clock,
            }),
          )
    let connections: number
    if (this.bulkhead === undefined) {
      connections = checkInteger(`${prefix}.connections`, options.connections ?? 32, 1)
    } else {
      if (options.connections !== undefined)
        throw new InvalidOptionError(
          `${prefix}.connections`,
          'undefined while the bulkhead is on (its maxConcurrent sizes the pool)',
          options.connections,
        )
      connections =
        (options.bulkhead as { maxConcurrent?: number } | undefined)?.maxConcurrent ??
        defaultBulkhead.maxConcurrent
    }

    const overall = timeout(this.#overallTimeoutMs, { clock })
    const perTry = timeout(this.#attemptTimeoutMs, { clock })
    const inner: Policy[] = []
    if (this.breaker !== undefined) inner.push(this.breaker)
    inner.push(perTry)
    if (this.bulkhead !== undefined) inner.push(this.bulkhead)
    this.#single = pipeline(overall, ...inner)
    this.#retrying =
      this.#retry === undefined ? this.#single : pipeline(overall, this.#retry, ...inner)

    this.events = new ServiceEvents((events) => this.#attachEvents(events))
    this.#connector = clockedConnector(clock, connectTimeoutMs)
    this.dispatcher = new Pool(this.#base.origin, {
      connections,
      pipelining: 1,
      // The connect timeout runs on the service's clock too (see clockedConnector): undici's
      // fired up to a second late.
      connect: this.#connector.connect,
      // The headers and body timeouts run on the service's clock (see Exchange).
      headersTimeout: 0,
      bodyTimeout: 0,
      maxResponseSize: this.maxResponseBytes,
    })
  }

  state(): HttpServiceState {
    const stats = this.dispatcher.stats
    return {
      breaker: this.breaker?.state,
      bulkhead:
        this.bulkhead === undefined
          ? undefined
          : { running: this.bulkhead.running, queued: this.bulkhead.queued },
      pool: {
        connected: stats.connected,
        free: stats.free,
        pending: stats.pending,
        queued: stats.queued,
        running: stats.running,
        size: stats.size,
      },
      retryBudget: this.retryBudget?.available(),
    }
  }

  execute<T>(
    fn: (ctx: PolicyContext) => PromiseLike<T> | T,
    options: HttpExecuteOptions = {},
  ): Promise<T> {
    // Checked before anything runs: a non-boolean retry would silently mean false, and a bad
    // signal would fail deep in the policies with a bare TypeError.
    if (typeof fn !== 'function')
      return Promise.reject(new InvalidOptionError('execute.fn', 'a function', fn))
    if (typeof options !== 'object' || options === null)
      return Promise.reject(new InvalidOptionError('execute.options', 'an object', options))
    try {
      checkOptionKeys('execute', options, executeOptions)
    } catch (error) {
      return Promise.reject(error)
    }
    if (options.retry !== undefined && typeof options.retry !== 'boolean')
      return Promise.reject(new InvalidOptionError('execute.retry', 'a boolean', options.retry))
    const refused = signalRefusal('execute.signal', options.signal)
    if (refused !== undefined) return refused
    const stack = options.retry === true ? this.#retrying : this.#single
    if (stack === this.#single && this.#retry !== undefined) this.retryBudget?.recordRequest()
    // As for request(): nothing runs on the closed pool, neither a new call nor the attempt of
    // one that was in backoff or queued when the client closed (undici's UND_ERR_CLOSED is
    // transient and would spend every attempt).
    return this.#run(stack, fn, options.signal)
  }

  // Runs one call through `stack`, linked to close(): attempts after the close are refused, a
  // call waiting when it happens is aborted, and one whose attempt fails afterwards (and would be
  // retried) ends at once rather than after a backoff. Such a call rejects with
  // HttpClientClosedError. An attempt in flight is left to finish.
  async #run<T>(
    stack: Policy,
    fn: (ctx: PolicyContext) => PromiseLike<T> | T,
    callerSignal: AbortSignal | undefined,
  ): Promise<T> {
    const link = new CallLink()
    const own = link.controller
    // The caller's signal is forwarded by a listener removed at the end, not AbortSignal.any(),
    // whose composite signals a long-lived caller signal keeps until a garbage collection. The
    // listener is shared with every other call under the same signal (listenToSignal): a
    // fan-out of more than 10 calls would otherwise make Node warn of a listener leak.
    let listening = false
    if (callerSignal !== undefined) {
      if (callerSignal.aborted) own.abort(callerSignal.reason)
      else {
        listenToSignal(callerSignal, link)
        listening = true
      }
    }
    this.#calls.add(link)
    const startMs = this.clock.now()
    try {
      return await stack.execute((ctx) => this.#linkedAttempt(link, stack, fn, ctx), own.signal)
    } catch (error) {
      // The policies report the abort as ABORTED (or a timeout); the caller is told why.
      if (link.closed) throw own.signal.reason
      throw this.#namedTimeout(error, startMs)
    } finally {
      this.#calls.delete(link)
      link.end()
      if (listening) unlistenToSignal(callerSignal!, link)
    }
  }

  // A timeout policy's TimeoutError says only "The operation timed out after 300 ms"; this
  // client has two such limits, so the message says which one ran out, and for which service
  // (class, code and timeoutMs unchanged). The overall timeout is the one whose time has passed
  // since the call began: it starts first, so when the attempt timeout is as long it also ends
  // first. (The propagated deadline ends a call with DeadlineExceededError instead.) Only this
  // call's own error is renamed: a nested call's was named by its own #run.
  #namedTimeout(error: unknown, startMs: number): unknown {
    if (!(error instanceof TimeoutError) || namedTimeouts.has(error)) return error
    const ms = error.timeoutMs
    let what: string
    if (ms === this.#overallTimeoutMs && this.clock.now() - startMs >= ms)
      what = `the call timed out after ${ms} ms, retries included (overallTimeoutMs)`
    else if (ms === this.#attemptTimeoutMs)
      what = `the attempt timed out after ${ms} ms (attemptTimeoutMs)`
    else return error
    namedTimeouts.add(error)
    const before = `${error.name}: ${error.message}`
    error.message = `Service "${this.name}": ${what}`
    // The stack's first line was written from the old message.
    if (error.stack?.startsWith(before))
      error.stack = `${error.name}: ${error.message}${error.stack.slice(before.length)}`
    return error
  }

  async #linkedAttempt<T>(
    link: CallLink,
    stack: Policy,
    fn: (ctx: PolicyContext) => PromiseLike<T> | T,
    ctx: PolicyContext,
  ): Promise<T> {
    // A call that waited (bulkhead queue, backoff) while the client closed: nothing runs on the
    // closed pool (undici's UND_ERR_CLOSED is transient and would spend every attempt).
    if (this.#closed) throw new HttpClientClosedError()
    link.attempting = true
    try {
      const result = await fn(ctx)
      link.answered = true
      return result
    } catch (error) {
      // Closed during the attempt: a retry would be refused, so do not sleep for it. A failure
      // that will not be retried (the last attempt's, a 500 resolved as a response, a 4xx)
      // still reaches the caller.
      if (
        this.#closed &&
        this.#retry !== undefined &&
        stack === this.#retrying &&
        ctx.attempt < this.#maxAttempts &&
        this.#wouldRetry(error, ctx.attempt)
      )
        link.close()
      throw error
    } finally {
      link.attempting = false
    }
  }

  // What the retry policy's shouldRetry will answer. A promise (an async shouldRetry) is
  // truthy, but the retry refuses it (INVALID_OPTION, see predicateAnswer): no retry follows,
  // so the call is not ended for the close, which would put HttpClientClosedError in place of
  // that refusal. Its outcome is dropped: a rejection would otherwise be unhandled.
  #wouldRetry(error: unknown, attempt: number): boolean {
    const answer: unknown = this.#shouldRetry(error, attempt)
    return !isDroppedPromise(answer) && Boolean(answer)
  }

  /** Runs one call. */
  async request(options: HttpRequestOptions): Promise<HttpResponse> {
    const plan = this.#plan(options)
    const deadline = currentDeadline()
    // Nothing is sent for work whose caller has given up, or will have before the request can
    // arrive (the margin; a whole millisecond is the least a downstream can be told). Checked
    // here, before the breaker, which must not hold the caller's lateness against the service.
    if (deadline !== undefined && deadline.remainingMs() - this.#deadlineMarginMs < 1) {
      const error = new DeadlineExceededError(deadline.atMs, { started: false })
      // Still a call that failed for good: monitoring on the events must see it.
      if (this.events.hasListeners) this.#emitFailure(plan, error)
      throw error
    }
    const stack =
      this.#retry !== undefined && this.#mayRetry(plan, options) ? this.#retrying : this.#single
    // Calls that may not be retried are traffic too: they fund the budget like the others.
    if (stack === this.#single && this.#retry !== undefined) this.retryBudget?.recordRequest()
    const events = this.events
    try {
      const response = await this.#run(stack, (ctx) => this.#attempt(plan, ctx), options.signal)
      if (events.hasListeners) this.#emitResponse(plan, response)
      return response
    } catch (error) {
      // Non-transient 5xx went through the policies as failures (so the breaker counts them)
      // but are answers the caller gets as responses unless asked otherwise.
      if (
        error instanceof HttpStatusError &&
        !error.retryable &&
        !plan.throwOnErrorStatus &&
        error.service === this.name
      ) {
        if (events.hasListeners) this.#emitResponse(plan, error.response)
        return error.response
      }
      if (events.hasListeners) this.#emitFailure(plan, error)
      throw error
    }
  }

  #mayRetry(plan: CallPlan, options: HttpRequestOptions): boolean {
    if (options.retry !== undefined) return options.retry
    return plan.idempotent
  }

  #plan(options: HttpRequestOptions): CallPlan {
    if (typeof options !== 'object' || options === null)
      throw new InvalidOptionError('request', 'an object', options)
    // json is the caller's data: json: null sends the JSON body null.
    checkOptionKeys('request', options, requestOptions, requestData)
    const rawMethod = options.method ?? 'GET'
    if (
      typeof rawMethod !== 'string' ||
      !isToken(rawMethod) ||
      rawMethod.toUpperCase() === 'CONNECT'
    )
      throw new InvalidOptionError('request.method', 'an HTTP method other than CONNECT', rawMethod)
    const method = rawMethod.toUpperCase()
    const path = checkPath(options.path)
    const target = this.#base.basePath + appendQuery(options.path, options.query)
    const callHeaders: Record<string, string | string[]> = {}
    addHeaders(callHeaders, 'request.headers', options.headers)
    const headers: Record<string, string | string[]> = { ...this.#defaultHeaders, ...callHeaders }
    // With propagation on, the deadline header is the client's: each attempt sends the budget
    // it knows as of the write, or none when it knows none (as deadlineHeaderValue() gives none).
    // A caller's value (inbound headers forwarded as they came, a service default) is dropped
    // here, and replaced per attempt when a budget is known: a fixed value cannot follow the time
    // spent queueing, connecting or between retries, so every hop would stretch the chain's
    // deadline by it. A budget of the caller's own goes through withDeadline or adoptDeadline.
    if (this.#propagateDeadline) delete headers[DEADLINE_HEADER]

    let body: string | Uint8Array | undefined
    // Read as unknown: the type refuses both at once, an untyped caller may still pass both.
    const raw: { readonly body?: unknown; readonly json?: unknown } = options
    if (raw.json !== undefined) {
      if (raw.body !== undefined)
        throw new InvalidOptionError('request.body', 'undefined when json is given', raw.body)
      refuseBodyFor(method, 'request.json', raw.json)
      body = jsonBody(raw.json)
      // A service's default content-type is for bodies given as they are; JSON is JSON unless
      // the call itself names another type (application/merge-patch+json, ...).
      if (callHeaders['content-type'] === undefined) headers['content-type'] = 'application/json'
    } else if (options.body !== undefined) {
      refuseBodyFor(method, 'request.body', options.body)
      if (typeof options.body !== 'string' && !(options.body instanceof Uint8Array))
        throw new InvalidOptionError('request.body', 'a string or Uint8Array', options.body)
      body = options.body
    }

    // The key: the caller's (option or header), else a fresh one for a mutating method.
    let key: string | undefined
    const headerKey = headers['idempotency-key']
    if (headerKey !== undefined)
      key = checkIdempotencyKey('request.headers.idempotency-key', headerKey)
    const keyOption = options.idempotencyKey
    if (keyOption === false) {
      if (key !== undefined)
        throw new InvalidOptionError(
          'request.idempotencyKey',
          'not false when the headers carry a key',
          keyOption,
        )
    } else if (keyOption !== undefined) {
      const given = checkIdempotencyKey('request.idempotencyKey', keyOption)
      if (key !== undefined && key !== given)
        throw new InvalidOptionError(
          'request.idempotencyKey',
          'the same key as the Idempotency-Key header',
          keyOption,
        )
      key = given
    } else if (key === undefined && this.#idempotencyKeys && keyedMethods.has(method)) {
      key = randomUUID()
    }
    if (key !== undefined) headers['idempotency-key'] = key

    const throwOnErrorStatus = options.throwOnErrorStatus ?? this.#throwOnErrorStatus
    if (typeof throwOnErrorStatus !== 'boolean')
      throw new InvalidOptionError('request.throwOnErrorStatus', 'a boolean', throwOnErrorStatus)
    if (options.retry !== undefined && typeof options.retry !== 'boolean')
      throw new InvalidOptionError('request.retry', 'a boolean', options.retry)
    checkSignal('request.signal', options.signal)
    return {
      service: this.name,
      method,
      path,
      target,
      body,
      idempotent: idempotentMethods.has(method) || key !== undefined,
      throwOnErrorStatus,
      headers,
      startMs: this.clock.now(),
    }
  }

  #attempt(plan: CallPlan, ctx: PolicyContext): Promise<BufferedResponse> {
    const attempt = ctx.attempt
    let headers = plan.headers
    let late: WriteTimeHeader | undefined
    if (this.#propagateDeadline) {
      const budgetMs = this.#budget(plan, ctx)
      const budget = budgetMs()
      if (budget instanceof DeadlineExceededError) return Promise.reject(budget)
      if (budget !== Number.POSITIVE_INFINITY) {
        headers = { ...headers, [DEADLINE_HEADER]: String(budget) }
        // Told again when the request is written: a wait for a pooled connection or a slow
        // connect comes off the budget too.
        late = {
          name: DEADLINE_HEADER,
          value: () => {
            const left = budgetMs()
            return left instanceof DeadlineExceededError ? left : String(left)
          },
        }
      }
    }
    // Only now: an attempt the deadline ended before it was sent is no attempt to count.
    if (this.events.hasListeners)
      this.events.emit({
        type: 'attempt',
        service: this.name,
        method: plan.method,
        path: plan.path,
        attempt,
      })
    const signal = ctx.signal
    return new Promise<BufferedResponse>((resolve, reject) => {
      new Exchange(this, plan, attempt, signal, resolve, reject).start(headers, late)
    })
  }

  // The budget to announce downstream, in whole milliseconds, as of the moment it is asked
  // (first when the attempt starts, again when undici writes the request): the least of the
  // deadline left, the overall timeout left and the attempt timeout left, less the margin. The
  // downstream starts counting when the request arrives, so without the margin every hop would
  // add its transit time to the chain's deadline. Infinity: no budget is known. When the
  // deadline leaves nothing to announce, the attempt ends before it is sent (only after a
  // retry's backoff, a bulkhead wait or a wait for a connection: request() checks first). What
  // the budget depends on is read here, in the call's async context (the deadline), because
  // undici writes the request from its own.
  #budget(plan: CallPlan, ctx: PolicyContext): () => number | DeadlineExceededError {
    const margin = this.#deadlineMarginMs
    const clock = this.clock
    const deadline = currentDeadline()
    const overallEndMs = plan.startMs + this.#overallTimeoutMs
    // The attempt timeout started before the bulkhead: a wait in its queue used part of it, so
    // announce what is left (ctx is the attempt timeout's context), not the whole timeout.
    const attemptEndMs = timeoutEndOf(ctx) ?? clock.now() + this.#attemptTimeoutMs
    return () => {
      let budget = Number.POSITIVE_INFINITY
      if (deadline !== undefined) {
        budget = Math.floor(deadline.remainingMs() - margin)
        // Not sent: the circuit breaker, around this attempt, does not count it (see started).
        if (budget < 1) return new DeadlineExceededError(deadline.atMs, { started: false })
      }
      const now = clock.now()
      for (const endMs of [overallEndMs, attemptEndMs]) {
        if (endMs !== Number.POSITIVE_INFINITY)
          budget = Math.min(budget, Math.max(1, Math.floor(endMs - now - margin)))
      }
      // A huge finite budget (withDeadline(1e300)) would be written "1e+300", which no hop
      // parses; Infinity stays Infinity: no header, as deadlineHeaderValue() sends none.
      return budget === Number.POSITIVE_INFINITY ? budget : Math.min(budget, MAX_DEADLINE_HEADER_MS)
    }
  }

  #emitFailure(plan: CallPlan, error: unknown): void {
    this.events.emit({
      type: 'failure',
      service: this.name,
      method: plan.method,
      path: plan.path,
      error,
      durationMs: this.clock.now() - plan.startMs,
    })
  }

  #emitResponse(plan: CallPlan, response: HttpResponse): void {
    this.events.emit({
      type: 'response',
      service: this.name,
      method: plan.method,
      path: plan.path,
      status: response.status,
      attempts: response.attempts,
      durationMs: this.clock.now() - plan.startMs,
    })
  }

  #attachEvents(events: ServiceEvents): Unsubscribe {
    const service = this.name
    const offs: Unsubscribe[] = []
    if (this.#retry !== undefined)
      offs.push(
        this.#retry.events.on((e) => {
          if (e.type === 'retry')
            events.emit({
              type: 'retry',
              service,
              attempt: e.attempt,
              delayMs: e.delayMs,
              error: e.error,
            })
          else
            events.emit({
              type: 'giveUp',
              service,
              attempt: e.attempt,
              reason: e.reason,
              error: e.error,
            })
        }),
      )
    if (this.breaker !== undefined)
      offs.push(
        this.breaker.events.on((e) => {
          if (e.type === 'stateChange')
            events.emit({ type: 'stateChange', service, from: e.from, to: e.to })
          else if (e.type === 'rejected')
            events.emit({
              type: 'rejected',
              service,
              by: 'breaker',
              state: e.state,
              retryAfterMs: e.retryAfterMs,
            })
        }),
      )
    if (this.bulkhead !== undefined)
      offs.push(
        this.bulkhead.events.on((e) => {
          if (e.type === 'rejected')
            events.emit({ type: 'rejected', service, by: 'bulkhead', reason: e.reason })
        }),
      )
    return () => {
      for (const off of offs) off()
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    for (const link of this.#calls) if (!link.attempting && !link.answered) link.close()
    this.breaker?.dispose()
    const closing = this.dispatcher.close()
    try {
      await Promise.all([...this.#calls].map((link) => link.settled))
      await this.#destroyWhenOnlyUnsent(closing)
      await closing
    } finally {
      // The pool is closed or destroyed, but undici lets a connect it no longer needs (one a
      // call stopped waiting for) run on to connectTimeoutMs, or for good without one, and
      // its socket keeps the process alive: end them now.
      this.#connector.abort()
    }
  }

  // The calls are over. Requests whose attempts ended while they waited for a connection (a
  // connect that hangs: a blackholed host) are waited for by nobody, but undici drops such a
  // request only once it has a connection: closing would wait for the connect to give up, for
  // good without a connect timeout. Anything else in the pool (a response body still streaming
  // to an execute() caller) is let finish; once only those requests are left, the pool is
  // destroyed. Every request ending in undici (answered or failed) is a moment to look again.
  async #destroyWhenOnlyUnsent(closing: Promise<void>): Promise<void> {
    // No new attempt starts once closed, so the set only shrinks: empty, the close needs no help.
    if (this.unsent.size === 0) return
    const onlyUnsent = () => this.unsent.size > 0 && this.dispatcher.stats.size <= this.unsent.size
    if (!onlyUnsent()) {
      let wake: (alone: boolean) => void = () => {}
      const woken = new Promise<boolean>((resolve) => {
        wake = resolve
      })
      // undici counts the request as done only after it publishes, so look once it has.
      const look = () => {
        setImmediate(() => {
          if (onlyUnsent()) wake(true)
        })
      }
      subscribe(requestEndChannels[0], look)
      subscribe(requestEndChannels[1], look)
      try {
        const closed = closing.then(
          () => false,
          () => false,
        )
        if (!(await Promise.race([woken, closed]))) return
      } finally {
        unsubscribe(requestEndChannels[0], look)
        unsubscribe(requestEndChannels[1], look)
      }
    }
    await this.dispatcher.destroy()
  }
}

// TimeoutErrors whose message already names the service's limit.
const namedTimeouts = new WeakSet<TimeoutError>()

type TimeoutName =
  | 'connectTimeoutMs'
  | 'headersTimeoutMs'
  | 'bodyTimeoutMs'
  | 'attemptTimeoutMs'
  | 'overallTimeoutMs'

function timeoutOption(
  prefix: string,
  name: TimeoutName,
  options: HttpServiceOptions,
  fallback: number,
): number {
  const value = options[name] ?? fallback
  if (value === Number.POSITIVE_INFINITY) return value
  return checkNumber(`${prefix}.${name}`, value, 1, maxTimerDelayMs)
}

// JSON.stringify throws a bare TypeError (BigInt, a cycle) or returns undefined (a function, a
// symbol): the first has no code, the second would send an empty body labelled JSON.
// A body (any given `body` or `json`, an empty one included) on a method that takes none: see
// bodylessMethods. Named by the option that carries it and by the method.
function refuseBodyFor(method: string, option: string, value: unknown): void {
  if (bodylessMethods.has(method))
    throw new InvalidOptionError(option, `no body for a ${method} request`, value)
}

function jsonBody(value: unknown): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch {
    text = undefined
  }
  if (typeof text !== 'string')
    throw new InvalidOptionError('request.json', 'a value JSON.stringify can serialize', value)
  return text
}

function booleanOption(
  prefix: string,
  name: 'idempotencyKeys' | 'throwOnErrorStatus' | 'propagateDeadline',
  options: HttpServiceOptions,
  fallback: boolean,
): boolean {
  const value = options[name] ?? fallback
  if (typeof value !== 'boolean')
    throw new InvalidOptionError(`${prefix}.${name}`, 'a boolean', value)
  return value
}

// The policies' options minus what the service sets itself. Given anyway (a variable typed as
// the policy's own options passes the Omit<> types), the service's value silently replaced
// them, or, for a retry budget next to `retryBudget: false`, was used although turned off.
// Options given as undefined are left out of the copy returned: spread over the service's
// defaults, `bulkhead: { maxQueued: undefined }` would replace its 64 (the bulkhead's own 0
// applied) and `name: undefined` the service's name, where undefined means "left out".
function serviceManaged(option: string, value: unknown, managed: readonly string[]): object {
  const options = checkObject(option, value ?? {}) as Record<string, unknown>
  for (const name of managed) {
    if (options[name] !== undefined)
      throw new InvalidOptionError(
        `${option}.${name}`,
        name === 'budget'
          ? 'undefined (the service sets the budget: give it as retryBudget)'
          : 'undefined (the service sets the clock: give it as the service or client clock)',
        options[name],
      )
  }
  const given: Record<string, unknown> = {}
  for (const [name, v] of Object.entries(options)) if (v !== undefined) given[name] = v
  return given
}

function makeBudget(
  option: HttpServiceOptions['retryBudget'],
  clock: Clock,
): RetryBudget | undefined {
  if (option === false) return undefined
  if (typeof (option as Partial<RetryBudget> | null | undefined)?.tryWithdraw === 'function')
    return option as RetryBudget
  return createRetryBudget({ ...serviceManaged('retryBudget', option, ['clock']), clock })
}
