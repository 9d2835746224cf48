import type { Dispatcher } from 'undici'
import { errors } from 'undici'
import type { Clock, TimerHandle } from '../core/clock.js'
import { isTransientStatus, neverAbortedSignal, parseRetryAfter } from '../index.js'
import { HttpStatusError } from './errors.js'
import { BufferedResponse, type HttpResponseHeaders } from './response.js'
import { claimingHeaders, rewriteHeader, type UndiciRequest } from './write-time-header.js'

/** What one attempt sends, fixed for the whole call. */
export interface ExchangePlan {
  readonly service: string
  readonly method: string
  /** The caller's path without the query string, for errors and events. */
  readonly path: string
  /** Base path + path + query: the request target. */
  readonly target: string
  readonly body: string | Uint8Array | undefined
  readonly idempotent: boolean
  /** Throw `HttpStatusError` for every status >= 400 (not only the transient ones and 5xx). */
  readonly throwOnErrorStatus: boolean
}

/** The per-service settings an attempt needs. */
export interface ExchangeSettings {
  readonly dispatcher: Dispatcher
  readonly clock: Clock
  readonly headersTimeoutMs: number
  readonly bodyTimeoutMs: number
  /** The limit undici enforces on a body (its `maxResponseSize`), named in its error. */
  readonly maxResponseBytes: number
  /**
   * Attempts that ended while their request still waited for a connection: undici keeps such a
   * request until it gets one (see {@link Exchange.onRequestStart}), so close() must know that
   * nobody waits for it.
   */
  readonly unsent: Set<Exchange>
}

/**
 * A header whose value is computed again when the request is written (see
 * write-time-header.ts): `value()` gives the value, or an error that ends the attempt unsent.
 */
export interface WriteTimeHeader {
  /** The header's name, lower case; `start()`'s headers carry its value as of the dispatch. */
  readonly name: string
  value(): string | Error
}

const headersPhase = 1
const bodyPhase = 2

// Errors of attempts whose downstream answered below 500 with a body over maxResponseBytes.
const overLimitAnswers = new WeakSet<Error>()

/**
 * True for undici's `ResponseExceededMaxSizeError` of an attempt the downstream answered with a
 * status below 500: the body was over this client's own limit, the downstream did its job, so
 * the service's breaker does not count it (as it does not count a 4xx). A 5xx stays a failure.
 */
export function isOverLimitAnswer(error: unknown): boolean {
  return error instanceof Error && overLimitAnswers.has(error)
}

/**
 * One attempt: an undici dispatch handler that buffers the response. It replaces undici's
 * `request()` so that an attempt needs no stream, no AbortController of its own and no undici
 * timer: the headers and body timeouts run on the service's clock (undici's coarse timers
 * cannot time a few hundred milliseconds, and tests can drive this clock), and the attempt's
 * signal aborts the exchange through undici's controller.
 *
 * Settles with a response, or rejects with `HttpStatusError` (transient statuses, other 5xx,
 * and every status >= 400 when asked), undici's error, or the signal's reason.
 */
export class Exchange implements Dispatcher.DispatchHandler {
  readonly #settings: ExchangeSettings
  readonly #plan: ExchangePlan
  readonly #attempt: number
  readonly #signal: AbortSignal
  readonly #resolve: (response: BufferedResponse) => void
  readonly #reject: (error: unknown) => void
  #controller: Dispatcher.DispatchController | undefined
  #late: WriteTimeHeader | undefined
  #request: UndiciRequest | undefined
  #dispatched = false
  #done = false
  #reason: Error | undefined
  #status = 0
  #headers: HttpResponseHeaders = {}
  #chunks: Buffer[] = []
  #bytes = 0
  #timer: TimerHandle | undefined
  #phase = 0
  #lastDataMs = 0

  constructor(
    settings: ExchangeSettings,
    plan: ExchangePlan,
    attempt: number,
    signal: AbortSignal,
    resolve: (response: BufferedResponse) => void,
    reject: (error: unknown) => void,
  ) {
    this.#settings = settings
    this.#plan = plan
    this.#attempt = attempt
    this.#signal = signal
    this.#resolve = resolve
    this.#reject = reject
  }

  /**
   * Dispatches the request. `late` names a header of `headers` whose value is replaced, when
   * the request is written on its connection, by what `late.value()` says then.
   */
  start(headers: Record<string, string | string[]>, late?: WriteTimeHeader): void {
    const signal = this.#signal
    if (signal.aborted) {
      this.#fail(signal.reason)
      return
    }
    if (signal !== neverAbortedSignal) signal.addEventListener('abort', this)
    const plan = this.#plan
    this.#dispatched = true
    this.#late = late
    this.#settings.dispatcher.dispatch(
      {
        path: plan.target,
        method: plan.method,
        headers: late === undefined ? headers : claimingHeaders(headers, this.#claim),
        body: plan.body ?? null,
        idempotent: plan.idempotent,
      },
      this,
    )
  }

  // undici built its request from this exchange's headers (see claimingHeaders).
  readonly #claim = (request: UndiciRequest): void => {
    if (!this.#done) this.#request = request
  }

  /** The attempt's signal aborted (a timeout, the deadline, or the caller). */
  handleEvent(): void {
    const reason = this.#signal.reason as Error
    this.#reason = reason
    // Without a controller the request is still waiting for a connection; onRequestStart
    // drops it when it gets one. Either way the attempt ends now.
    if (this.#controller !== undefined) this.#controller.abort(reason)
    else if (this.#dispatched && !this.#done) this.#settings.unsent.add(this)
    this.#fail(reason)
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    if (this.#done) {
      this.#settings.unsent.delete(this)
      // The attempt ended while its request waited for a connection, and nothing of it was
      // written yet. Throwing makes undici drop the request and keep the connection;
      // controller.abort() would destroy the socket, a healthy keep-alive one or one that took
      // longer to open than the attempt had (so no later attempt could use it either).
      throw this.#reason ?? new errors.RequestAbortedError()
    }
    // The last moment before undici writes the header lines: what is spent waiting for a
    // pooled connection or connecting is not the downstream's to spend.
    if (this.#late !== undefined && this.#request !== undefined) {
      const value = this.#late.value()
      // Like a deadline passing while queued: undici drops the request, keeps the connection,
      // and the attempt ends (onResponseError) with this error, nothing sent.
      if (value instanceof Error) throw value
      rewriteHeader(this.#request, this.#late.name, value)
    }
    this.#controller = controller
    // undici calls this again when it re-sends a request whose connection failed first.
    this.#arm(headersPhase, this.#settings.headersTimeoutMs)
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: HttpResponseHeaders,
  ): void {
    // 1xx interim responses: the final one follows.
    if (statusCode < 200 || this.#done) return
    this.#status = statusCode
    this.#headers = headers
    this.#arm(bodyPhase, this.#settings.bodyTimeoutMs)
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#done) return
    this.#chunks.push(chunk)
    this.#bytes += chunk.length
    if (this.#timer !== undefined) this.#lastDataMs = this.#settings.clock.now()
  }

  onResponseEnd(): void {
    if (this.#done) return
    this.#finish()
    const chunks = this.#chunks
    const body =
      chunks.length === 0
        ? new Uint8Array(0)
        : chunks.length === 1
          ? chunks[0]!
          : Buffer.concat(chunks, this.#bytes)
    const status = this.#status
    const response = new BufferedResponse(status, this.#headers, body, this.#attempt)
    const plan = this.#plan
    if (
      status >= 500 ||
      (status >= 400 && (plan.throwOnErrorStatus || isTransientStatus(status)))
    ) {
      const retryAfter = this.#headers['retry-after']
      this.#reject(
        new HttpStatusError(
          plan.service,
          plan.method,
          plan.path,
          response,
          parseRetryAfter(
            Array.isArray(retryAfter) ? retryAfter[0] : retryAfter,
            this.#settings.clock.now(),
          ),
        ),
      )
    } else {
      this.#resolve(response)
    }
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    // Also how undici gives up a request that never got a connection (refused, timed out).
    this.#settings.unsent.delete(this)
    // undici checks the size as the body arrives, after the status (onResponseStart).
    if (error instanceof errors.ResponseExceededMaxSizeError) {
      // Its own message ('Response content exceeded max size') names neither the service nor
      // the limit, which the timeouts' messages do; class and code stay undici's.
      error.message = `Service "${this.#plan.service}": the response body exceeded maxResponseBytes (${this.#settings.maxResponseBytes} bytes)`
      if (this.#status > 0 && this.#status < 500) overLimitAnswers.add(error)
    }
    this.#fail(error)
  }

  #fail(error: unknown): void {
    if (this.#done) return
    this.#finish()
    this.#reject(error)
  }

  #finish(): void {
    this.#done = true
    this.#request = undefined
    if (this.#timer !== undefined) {
      this.#settings.clock.clearTimeout(this.#timer)
      this.#timer = undefined
    }
    if (this.#signal !== neverAbortedSignal) this.#signal.removeEventListener('abort', this)
  }

  // One clock timer per attempt at a time: the headers timeout, then the body's idle timeout.
  #arm(phase: number, timeoutMs: number): void {
    const clock = this.#settings.clock
    if (this.#timer !== undefined) {
      clock.clearTimeout(this.#timer)
      this.#timer = undefined
    }
    this.#phase = phase
    if (timeoutMs === Number.POSITIVE_INFINITY) return
    const now = clock.now()
    this.#lastDataMs = now
    this.#timer = clock.setTimeout(this.#onTimer, timeoutMs)
  }

  // The body timeout counts from the last chunk; rather than resetting a timer per chunk, the
  // timer checks on expiry and re-arms for what is left.
  readonly #onTimer = (): void => {
    this.#timer = undefined
    if (this.#done) return
    const clock = this.#settings.clock
    if (this.#phase === headersPhase) {
      this.#timeOut(
        new errors.HeadersTimeoutError(
          `Service "${this.#plan.service}": the response headers timed out after ${this.#settings.headersTimeoutMs} ms (headersTimeoutMs)`,
        ),
      )
      return
    }
    const idleMs = clock.now() - this.#lastDataMs
    const leftMs = this.#settings.bodyTimeoutMs - idleMs
    if (leftMs > 0) {
      this.#timer = clock.setTimeout(this.#onTimer, leftMs)
      return
    }
    this.#timeOut(
      new errors.BodyTimeoutError(
        `Service "${this.#plan.service}": the response body timed out after ${this.#settings.bodyTimeoutMs} ms without data (bodyTimeoutMs)`,
      ),
    )
  }

  // undici's own classes and codes (documented, known to the classifier), with a message that
  // names the limit and the service as the client's TimeoutErrors do: undici's says only
  // "Headers Timeout Error".
  #timeOut(error: Error): void {
    this.#reason = error
    this.#controller?.abort(error)
    this.#fail(error)
  }
}
