/** Response headers: lower-case names; repeated headers (such as `set-cookie`) as arrays. */
export type HttpResponseHeaders = Readonly<Record<string, string | string[] | undefined>>

/**
 * A response read to the end. The body is held in memory (up to the service's
 * `maxResponseBytes`), so reading it again is free and the connection went back to the pool.
 */
export interface HttpResponse {
  /** The HTTP status code. */
  readonly status: number
  /** The response headers (lower-case names). */
  readonly headers: HttpResponseHeaders
  /** The body bytes (empty for HEAD, 204 and 304). */
  readonly body: Uint8Array
  /** How many attempts the call took (1 when the first one succeeded). */
  readonly attempts: number
  /** The body decoded as UTF-8. */
  text(): string
  /** The body parsed as JSON; throws a `SyntaxError` when it is not JSON. */
  json<T = unknown>(): T
}

const decoder = new TextDecoder()

/** The response object handed to callers. */
export class BufferedResponse implements HttpResponse {
  readonly status: number
  readonly headers: HttpResponseHeaders
  readonly body: Uint8Array
  attempts: number

  constructor(status: number, headers: HttpResponseHeaders, body: Uint8Array, attempts: number) {
    this.status = status
    this.headers = headers
    this.body = body
    this.attempts = attempts
  }

  text(): string {
    return decoder.decode(this.body)
  }

  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T
  }
}
