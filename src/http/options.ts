import type { Clock } from '../core/clock.js'
import type {
  BulkheadOptions,
  CircuitBreakerOptions,
  RetryBudget,
  RetryBudgetOptions,
  RetryOptions,
} from '../index.js'
import type { QueryParams } from './request-target.js'

/** Retry settings of a service: `retry()`'s options; the budget and clock come from the service. */
export type HttpRetryOptions = Omit<RetryOptions, 'budget' | 'clock'>

/** Circuit breaker settings of a service; the name defaults to the service's, the clock is the service's. */
export type HttpCircuitBreakerOptions = Omit<CircuitBreakerOptions, 'clock'>

/**
 * Bulkhead settings of a service; `maxConcurrent` also sizes the service's connection pool. Every
 * option may be left out or undefined (`maxConcurrent` too: the service's 32).
 */
export type HttpBulkheadOptions = {
  readonly [K in keyof Omit<BulkheadOptions, 'clock'>]?: BulkheadOptions[K] | undefined
}

/** Retry budget settings of a service, or a budget to share with other clients. */
export type HttpRetryBudgetOptions = Omit<RetryBudgetOptions, 'clock'> | RetryBudget

/** One downstream service of an HTTP client. */
export interface HttpServiceOptions {
  /**
   * Where the service lives: an absolute `http:` or `https:` URL, optionally with a base path
   * (`http://inventory:8080/api/v1`) that every request path is appended to. No credentials,
   * query or fragment. Required.
   */
  readonly baseUrl: string
  /**
   * How long opening a connection (TCP and TLS) may take, timed on the service's `clock`; a
   * connect not done in time fails with undici's `ConnectTimeoutError`
   * (`UND_ERR_CONNECT_TIMEOUT`) and its socket is closed. `Infinity` disables it.
   * @default 5_000
   */
  readonly connectTimeoutMs?: number | undefined
  /**
   * How long the response headers may take once the request went out on a connection.
   * `Infinity` disables it.
   * @default 10_000
   */
  readonly headersTimeoutMs?: number | undefined
  /**
   * How long the response body may go without receiving data (an idle timeout, not a total).
   * `Infinity` disables it.
   * @default 10_000
   */
  readonly bodyTimeoutMs?: number | undefined
  /**
   * The time limit of one attempt, bulkhead queueing, headers and body included. Clipped to the
   * current deadline. `Infinity` leaves only the deadline.
   * @default 10_000
   */
  readonly attemptTimeoutMs?: number | undefined
  /**
   * The time limit of a whole call, every attempt and backoff included: what the caller waits
   * at most. Clipped to the current deadline. `Infinity` leaves only the deadline.
   * @default 30_000
   */
  readonly overallTimeoutMs?: number | undefined
  /**
   * Retry of transient failures (timeouts, refused or reset connections, 408/429/502/503/504,
   * honouring `Retry-After`), or `false` for none. Only requests that are safe to repeat are
   * retried: idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and requests carrying an
   * idempotency key.
   * @default {} (3 attempts, full jitter from 100 ms)
   */
  readonly retry?: HttpRetryOptions | false | undefined
  /**
   * The service's circuit breaker, or `false` for none. It counts transient failures and 5xx
   * answers, not 4xx answers, nor answers below 500 whose body was over `maxResponseBytes`
   * (unless an `isFailure` given here decides otherwise).
   * @default {} (opens after 5 consecutive failures, 30 s cooldown)
   */
  readonly circuitBreaker?: HttpCircuitBreakerOptions | false | undefined
  /**
   * The service's bulkhead, or `false` for none. Its `maxConcurrent` is also the number of
   * connections of the service's own pool, so a slow service can tie up only its own.
   * @default { maxConcurrent: 32, maxQueued: 64 }
   */
  readonly bulkhead?: HttpBulkheadOptions | false | undefined
  /**
   * The connection pool's size when `bulkhead` is `false` (with a bulkhead, its
   * `maxConcurrent` sizes the pool and this must be left out).
   * @default 32
   */
  readonly connections?: number | undefined
  /**
   * The retry budget of the service (see `createRetryBudget`): retries may add at most this
   * share of the traffic, so a fleet of clients cannot turn an outage into a retry storm. Pass
   * a `RetryBudget` to share one between clients, or `false` for none. Unused (and left
   * undefined) when `retry` is `false`.
   * @default {} (20% of requests plus 10 retries per second)
   */
  readonly retryBudget?: HttpRetryBudgetOptions | false | undefined
  /**
   * Whether mutating requests (POST, PATCH, PUT, DELETE) without a caller-supplied key get an
   * `Idempotency-Key` (a random UUID, generated once per call and sent with every attempt).
   * With `false`, POST and PATCH are only retried when the caller supplies a key.
   * @default true
   */
  readonly idempotencyKeys?: boolean | undefined
  /**
   * Whether every status >= 400 rejects with `HttpStatusError`. By default only the transient
   * statuses reject (after retries); other statuses resolve as responses.
   * @default false
   */
  readonly throwOnErrorStatus?: boolean | undefined
  /**
   * Whether to send the remaining time budget downstream in the `x-breakwater-deadline-ms`
   * header: the least of the current deadline, the overall timeout left and the attempt
   * timeout left, less `deadlineMarginMs`, as of the moment undici writes the request on its
   * connection (a wait in the bulkhead queue, for a pooled connection or for a connect uses
   * part of it). While on, the header is the client's: a value given for it in `headers` is
   * replaced by that budget, or dropped when no budget is known (no deadline and both timeouts
   * `Infinity`); off, a value given is sent as given.
   * @default true
   */
  readonly propagateDeadline?: boolean | undefined
  /**
   * Subtracted from the budget sent downstream, to cover the time the request takes to arrive
   * once written (the wait for a connection is already taken off): the downstream starts its own clock on arrival, so without a
   * margin each hop would stretch the chain's deadline by its transit time. A call whose
   * deadline leaves less than this plus 1 ms is not sent (`DeadlineExceededError`).
   * @default 5
   */
  readonly deadlineMarginMs?: number | undefined
  /**
   * Headers sent with every request to the service (a request's own headers win). An
   * `Idempotency-Key` is refused: a key belongs to one call (`request.idempotencyKey`). So is
   * an empty array as a value, which would send nothing.
   * @default {}
   */
  readonly headers?: Readonly<Record<string, string | readonly string[]>> | undefined
  /**
   * The largest response body accepted, in bytes; a larger one fails the attempt with undici's
   * `ResponseExceededMaxSizeError` (code `UND_ERR_RES_EXCEEDED_MAX_SIZE`, its message naming the
   * service and this limit; not retried, and not counted by the circuit breaker when the status
   * is below 500: the downstream answered, the limit is this client's).
   * @default 16_777_216 (16 MiB)
   */
  readonly maxResponseBytes?: number | undefined
  /**
   * The clock of the service's policies and of the connect, headers and body timeouts.
   * @default the client's clock
   */
  readonly clock?: Clock | undefined
}

/**
 * Options of {@link createHttpClient}. `S` is the union of the service names: inferred from a
 * literal `services` object, so that a request to a name not declared there does not compile;
 * `string` when the services are built at run time.
 */
export interface HttpClientOptions<S extends string = string> {
  /** The downstream services by name (letters, digits, `.`, `_`, `-`). At least one. Required. */
  readonly services: Readonly<Record<S, HttpServiceOptions>>
  /**
   * The clock of every service that sets none.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/**
 * One request, as passed to `client.request(service, options)`: the common options and at most
 * one of `body` and `json` (both is refused at compile time, and with `INVALID_OPTION` naming
 * `request.body` at run time).
 */
export type HttpRequestOptions = HttpRequestBaseOptions & HttpRequestBody

/**
 * The request's body: raw `body` or a `json` value, not both (the other is absent or
 * `undefined`). Neither sends no body. GET, HEAD and TRACE take no body: one given (even empty,
 * or `json: null`) is refused with `InvalidOptionError` naming the option and the method, as
 * `fetch()` refuses it (RFC 9110 forbids content in TRACE and gives it no meaning in GET or
 * HEAD); send such a query with POST.
 */
export type HttpRequestBody =
  | {
      /**
       * The request body. Bodies are buffered so that every attempt can send them again; a
       * `Uint8Array` is not copied: leave it unchanged until the call settles, or a retry sends
       * what it holds then.
       * @default undefined
       */
      readonly body?: string | Uint8Array | undefined
      /** Not together with `body`. */
      readonly json?: undefined | undefined
    }
  | {
      /** Not together with `json`. */
      readonly body?: undefined | undefined
      /**
       * A value to send as JSON (sets `content-type: application/json` unless this call's
       * `headers` give one; a service's default content-type does not apply to it). Not
       * together with `body`. A value `JSON.stringify` cannot serialize (a function, a symbol, a
       * BigInt, a cycle) is refused with `InvalidOptionError`.
       * @default undefined
       */
      readonly json?: unknown | undefined
    }

/** The options of one request other than its body; see {@link HttpRequestOptions}. */
export interface HttpRequestBaseOptions {
  /**
   * The HTTP method (an HTTP token; upper-cased).
   * @default 'GET'
   */
  readonly method?: string | undefined
  /**
   * The path under the service's base URL: starts with one `/`, may carry a query string.
   * Absolute and protocol-relative URLs, `\`, `#`, `.`/`..` segments (also percent-encoded,
   * between encoded slashes `%2F`/`%5C`, or with path parameters `..;`), spaces and non-ASCII characters are refused with
   * `InvalidOptionError`. Required.
   */
  readonly path: string
  /**
   * Query parameters appended to the path (arrays repeat the name).
   * @default undefined
   */
  readonly query?: QueryParams | undefined
  /**
   * Request headers. Connection-level headers (`host`, `connection`, `content-length`,
   * `transfer-encoding`, ...) are refused, and so is a name given twice in different cases
   * (`{ 'X-A': '1', 'x-a': '2' }`; several values go in an array). A header of the service's
   * `headers` given here replaces the default; `undefined` leaves the default in place, and an
   * empty array is refused (it would silently send no such header at all).
   * @default undefined
   */
  readonly headers?: Readonly<Record<string, string | readonly string[] | undefined>> | undefined
  /**
   * The idempotency key to send as `Idempotency-Key` with every attempt (1 to 255 visible
   * ASCII characters), or `false` to send none. A saga step passes its deterministic key here.
   * @default a random UUID for POST, PATCH, PUT and DELETE when the service's `idempotencyKeys` is on
   */
  readonly idempotencyKey?: string | false | undefined
  /**
   * Overrides whether the call may be retried. By default: idempotent methods and requests
   * carrying an idempotency key.
   * @default undefined
   */
  readonly retry?: boolean | undefined
  /**
   * Overrides the service's `throwOnErrorStatus` for this call.
   * @default the service's setting
   */
  readonly throwOnErrorStatus?: boolean | undefined
  /**
   * Aborts the call: a running attempt's request is aborted and the call rejects with
   * `AbortedError`.
   * @default undefined
   */
  readonly signal?: AbortSignal | undefined
}
