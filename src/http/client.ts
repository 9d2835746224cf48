import { InvalidOptionError } from '../core/errors.js'
import { checkClock, checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { HttpClientClosedError } from './errors.js'
import { ClientEvents, type HttpEvents } from './events.js'
import type { HttpClientOptions, HttpRequestOptions } from './options.js'
import type { HttpResponse } from './response.js'
import { type HttpService, type HttpServiceState, ServiceRuntime } from './service.js'

/**
 * A resilient HTTP client for a fixed set of downstream services; see {@link createHttpClient}.
 * `S` is the union of their names (`string` when they were not known at compile time).
 */
export interface HttpClient<S extends string = string> {
  /** The names of the declared services. */
  readonly services: readonly S[]
  /** The events of every service (each event names its service). */
  readonly events: HttpEvents
  /**
   * Sends a request to `service` through its policies and resolves with the response read to
   * the end. Rejects with `HttpStatusError` for a transient status (408, 429, 502, 503, 504)
   * once the policies give up, and for every status >= 400 with `throwOnErrorStatus`; other
   * statuses resolve. Network failures reject with undici's errors (codes such as
   * `ECONNREFUSED`, `UND_ERR_SOCKET`, `UND_ERR_HEADERS_TIMEOUT`), and the policies add
   * `TimeoutError`, `DeadlineExceededError`, `BrokenCircuitError`, `BulkheadRejectedError`,
   * `RetryBudgetExhaustedError` and `AbortedError`.
   */
  request(service: S, options: HttpRequestOptions): Promise<HttpResponse>
  /** The handle of one service; throws `InvalidOptionError` naming `service` for an unknown name. */
  service(name: S): HttpService
  /** A snapshot of every service's breaker, bulkhead, pool and retry budget. */
  state(): Readonly<Record<S, HttpServiceState>>
  /**
   * Refuses new requests (`HttpClientClosedError`), lets requests in flight finish, then
   * closes every connection pool and stops the breakers' timers. A call waiting in a retry
   * backoff or a bulkhead queue, or whose attempt fails after the close and would be retried,
   * rejects at once with `HttpClientClosedError`. A request whose attempt ended while it still
   * waited for a connection (a deadline or timeout during a connect that hangs) is not waited
   * for: once the calls are over and whatever else the pool holds has finished (a response
   * body an `execute()` caller still reads is let finish), the pool is destroyed rather than
   * left to wait for the connect to give up, and such connects are ended (their sockets
   * closed, their timers cleared), so the process can exit once `close()` resolves.
   */
  close(): Promise<void>
}

const serviceName = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

/** The keys HttpClientOptions takes (internal: not exported from the package root). */
export const httpClientOptions = optionKeys<HttpClientOptions>({ services: true, clock: true })

class HttpClientImpl implements HttpClient {
  readonly services: readonly string[]
  readonly events: HttpEvents
  readonly #runtimes: Map<string, ServiceRuntime>
  #closed: Promise<void> | undefined

  constructor(runtimes: Map<string, ServiceRuntime>) {
    this.#runtimes = runtimes
    this.services = Object.freeze([...runtimes.keys()])
    this.events = new ClientEvents([...runtimes.values()].map((r) => r.events))
  }

  request(service: string, options: HttpRequestOptions): Promise<HttpResponse> {
    if (this.#closed !== undefined) return Promise.reject(new HttpClientClosedError())
    const runtime = this.#runtimes.get(service)
    if (runtime === undefined) return Promise.reject(this.#unknown('request.service', service))
    return runtime.request(options)
  }

  service(name: string): HttpService {
    const runtime = this.#runtimes.get(name)
    if (runtime === undefined) throw this.#unknown('service', name)
    return runtime
  }

  state(): Readonly<Record<string, HttpServiceState>> {
    const state: Record<string, HttpServiceState> = {}
    for (const [name, runtime] of this.#runtimes) state[name] = runtime.state()
    return state
  }

  close(): Promise<void> {
    this.#closed ??= Promise.all([...this.#runtimes.values()].map((r) => r.close())).then(
      () => undefined,
    )
    return this.#closed
  }

  #unknown(option: string, name: unknown): InvalidOptionError {
    return new InvalidOptionError(
      option,
      `one of ${this.services.map((s) => `"${s}"`).join(', ')}`,
      name,
    )
  }
}

/**
 * Creates a resilient HTTP client (on undici 7) for a set of downstream services. Each service
 * gets its own connection pool (sized by its bulkhead, so a slow service can only tie up its own
 * connections) and one policy stack, built once in the recommended order: overall timeout,
 * retry (with a per-service retry budget), circuit breaker, attempt timeout, bulkhead.
 *
 * Every call:
 * - joins its path onto the service's base URL as a string (never resolving URLs), refusing
 *   absolute and protocol-relative paths and `.`/`..` segments, so it cannot leave the service;
 * - gives mutating requests (POST, PATCH, PUT, DELETE) an `Idempotency-Key`, generated once and
 *   sent with every attempt, unless the caller supplies one or turns it off; only idempotent
 *   methods and keyed requests are retried;
 * - sends the remaining time budget (the current deadline of `withDeadline`/`adoptDeadline`,
 *   clipped by the timeouts, less `deadlineMarginMs` for the transit, as of when the request is
 *   written on its connection) as `x-breakwater-deadline-ms`, and sends nothing when the deadline has passed or leaves less
 *   than the margin (`DeadlineExceededError`);
 * - reads the response body to the end, failed attempts included, so connections are reused;
 * - turns transient statuses (408, 429, 502, 503, 504) into `HttpStatusError` inside the policies,
 *   so retry (honouring `Retry-After`) and the breaker see them; other 5xx count as breaker
 *   failures but still resolve as responses, as do 4xx, unless `throwOnErrorStatus` is set.
 *
 * Options are checked here, once: a bad or unknown (misspelt) option, of the client, of a
 * service or of a service's `retry`, `circuitBreaker`, `bulkhead` or `retryBudget`, is refused
 * with `InvalidOptionError` (code `INVALID_OPTION`) naming it (`services.payments.retry.maxAttemps`).
 * A request's and an `execute()`'s options are checked the same way when they are made.
 * The client is typed by the names of `services` (`S`): a request to a name not declared there
 * does not compile when `services` is a literal (it is refused at run time with
 * `INVALID_OPTION` naming `request.service` otherwise).
 *
 * @example
 * ```ts
 * import { createHttpClient } from 'breakwater/http'
 * const client = createHttpClient({
 *   services: {
 *     inventory: { baseUrl: 'http://127.0.0.1:8081/api', bulkhead: { maxConcurrent: 30 } },
 *     payments: { baseUrl: 'http://127.0.0.1:8082', attemptTimeoutMs: 500, retry: { maxAttempts: 4 } },
 *   },
 * })
 * const stock = await client.request('inventory', { path: '/items/42' })
 * console.log(stock.status, stock.json())
 * // POST: an Idempotency-Key is generated once and reused by every retry.
 * await client.request('payments', { method: 'POST', path: '/charges', json: { amount: 1200 } })
 * await client.close()
 * ```
 */
export function createHttpClient<const S extends string>(
  options: HttpClientOptions<S>,
): HttpClient<S> {
  checkObject('httpClient', options)
  checkOptionKeys('httpClient', options, httpClientOptions, { bareNames: true })
  const services = options.services
  if (typeof services !== 'object' || services === null || Array.isArray(services))
    throw new InvalidOptionError('services', 'an object of service names to options', services)
  const names = Object.keys(services)
  if (names.length === 0) throw new InvalidOptionError('services', 'at least one service', services)
  const clock = checkClock('clock', options.clock)
  const runtimes = new Map<string, ServiceRuntime>()
  try {
    for (const name of names) {
      if (!serviceName.test(name))
        throw new InvalidOptionError(
          `services.${name}`,
          'a name of letters, digits, ".", "_" and "-"',
          name,
        )
      runtimes.set(name, new ServiceRuntime(name, services[name as S], clock))
    }
  } catch (error) {
    // The services built before the bad one hold pools (without connections yet).
    for (const runtime of runtimes.values()) void runtime.close()
    throw error
  }
  // The runtimes are keyed by exactly the names of `services`, which are S.
  return new HttpClientImpl(runtimes) as HttpClient<string> as HttpClient<S>
}
