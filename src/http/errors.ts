import { BreakwaterError } from '../core/errors.js'
import { isTransientStatus } from '../index.js'
import type { HttpResponse } from './response.js'

// The errors of the HTTP client. Network failures (refused, reset, connect/headers/body
// timeouts) keep undici's own error classes and codes, which the shared classifier knows.

/**
 * A downstream answered with a status the caller treats as a failure (code `HTTP_STATUS`):
 * always one of the transient statuses 408, 429, 502, 503, 504 once retries and the circuit
 * breaker have given up, and any status >= 400 when the request or service sets
 * `throwOnErrorStatus`. Retryable exactly for the transient statuses. The whole response,
 * body included, is on `response`; its body was read to the end, so the connection was reused.
 *
 * @example
 * ```ts
 * import { HttpStatusError } from 'breakwater/http'
 * try {
 *   await client.request('payments', { method: 'GET', path: '/health' })
 * } catch (error) {
 *   if (error instanceof HttpStatusError && error.status === 503) console.warn(error.retryAfterMs)
 * }
 * ```
 */
export class HttpStatusError extends BreakwaterError {
  /** The HTTP status code. */
  readonly status: number
  /** The response headers (lower-case names). */
  readonly headers: HttpResponse['headers']
  /**
   * The wait the server asked for with `Retry-After` (seconds or HTTP date), in milliseconds
   * from when the response arrived; undefined without a valid header. Retry honours it.
   */
  readonly retryAfterMs: number | undefined
  /** The name of the service that answered. */
  readonly service: string
  /** The request method. */
  readonly method: string
  /** The request path as the caller gave it (without the service's base path). */
  readonly path: string
  /** The full response, with its body. */
  readonly response: HttpResponse

  constructor(
    service: string,
    method: string,
    path: string,
    response: HttpResponse,
    retryAfterMs: number | undefined,
  ) {
    super('HTTP_STATUS', `${service}: ${method} ${path} answered ${response.status}`, {
      retryable: isTransientStatus(response.status),
    })
    this.status = response.status
    this.headers = response.headers
    this.retryAfterMs = retryAfterMs
    this.service = service
    this.method = method
    this.path = path
    this.response = response
  }
}

/**
 * A request was made through an HTTP client after its `close()` was called (code
 * `HTTP_CLIENT_CLOSED`, not retryable).
 */
export class HttpClientClosedError extends BreakwaterError {
  constructor() {
    super('HTTP_CLIENT_CLOSED', 'The HTTP client is closed')
  }
}
