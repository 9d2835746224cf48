// The contract of `Http1Pool` (http1-pool.ts): its options, the request it takes, the handler
// that hears how the request goes (the subset of undici's dispatch-handler interface that
// service-runtime uses), and the error the pool raises itself.

import type { Clock } from '../../core/clock.js'

/** Options of `Http1Pool`. */
export interface Http1PoolOptions {
  /** Most sockets open (connected or connecting) at once; more requests wait in a FIFO queue. */
  readonly connections: number
  /**
   * An idle socket is closed after this long. A response's `Keep-Alive: timeout=N` hint lowers
   * it to N s minus 1 s (so the pool closes first and never writes to a socket the server is
   * closing); a hint of 1 s or less means the socket is not reused at all.
   * @default 4000
   */
  readonly keepAliveTimeoutMs?: number
  /** Largest response head (status line and headers), and largest trailer section. @default 16384 */
  readonly maxHeaderBytes?: number
  /**
   * A socket that has not connected after this long is destroyed and fails the request at the
   * head of the queue with code `UND_ERR_CONNECT_TIMEOUT`. Without it a black-holed upstream
   * would hold its slots for the operating system's connect timeout (minutes) when no handler
   * gives up on its request (see `onQueued`, which lets one).
   * @default 10000
   */
  readonly connectTimeoutMs?: number
  /** Clock for the idle and connect timers (tests pass a `ManualClock`). @default systemClock */
  readonly clock?: Clock
}

/** One request, as service-runtime hands it to undici's `Pool.dispatch`. */
export interface Http1DispatchOptions {
  /** Request target: origin-form (`/a?b`), or `*`. */
  readonly path: string
  /** Method token, as sent. */
  readonly method: string
  /**
   * Flat `[name, value, name, value, ...]`. `content-length`, `transfer-encoding` and
   * `connection` are dropped (the pool frames the message itself); `host` defaults to the
   * origin's.
   */
  readonly headers: readonly string[]
  /** The whole body, or null for none. */
  readonly body: Buffer | null
}

/**
 * The callbacks of one dispatched request: undici's legacy dispatch-handler interface, the part
 * service-runtime's `Attempt` implements. Exactly one of `onComplete`, `onError` and
 * `onUpgrade` ends each dispatch, and nothing is called after it.
 */
export interface Http1Handler {
  /**
   * A connected socket was assigned; the request is written right after this returns, so from
   * here on it may have reached the server. `abort(reason)` (now or later) destroys the socket
   * and ends the request with `onError(reason)`.
   */
  onConnect(abort: (reason?: Error) => void): void
  /**
   * No socket was free: the request waits in the pool's queue (and a socket may be opening for
   * it). `abort(reason)` takes it out of the queue, drops a connect no other waiting request
   * needs, and ends it with `onError(reason)`; nothing of it was written. Without this, a
   * request given up on while a connect hangs (a blackholed upstream) could only be dropped in
   * its `onConnect`, so the connect ran on to `connectTimeoutMs`. Called during `dispatch`.
   */
  onQueued?(abort: (reason?: Error) => void): void
  /**
   * Part of a large request body left the proxy (handed to the operating system): the send is
   * making progress. Called for bodies the pool writes in slices (64 KiB and more) each time
   * the socket takes more, so that a handler can tell a slow but steady reader from a stall.
   * undici calls it too, as it queues each chunk.
   */
  onBodySent?(chunk: Buffer): void
  /**
   * The whole request has been handed to the operating system: what follows is the server's
   * turn. Called for bodies the pool writes in slices; for a smaller request (written in one
   * go with its head) `onConnect` is the last word. undici calls it too, once it queued the
   * request.
   */
  onRequestSent?(): void
  /**
   * A response head: interim 1xx ones (their return value is ignored) and then the final one.
   * `rawHeaders` is flat `[name, value, ...]`, names in their original case. Returning false
   * pauses the socket until `resume()` is called.
   */
  onHeaders(
    statusCode: number,
    rawHeaders: Buffer[],
    resume: () => void,
    statusText: string,
  ): boolean
  /** Body bytes (de-chunked). Returning false pauses until `resume()`. */
  onData(chunk: Buffer): boolean
  /** The response is complete; `trailers` is flat like the headers, or null when none came. */
  onComplete(trailers: Buffer[] | null): void
  /**
   * The request failed: connect error (node's error, with `code` such as `ECONNREFUSED`),
   * socket error or close before the response completed, parse error (`code` `HPE_*`), abort,
   * or the pool's destruction (`UND_ERR_DESTROYED`).
   */
  onError(error: Error): void
  /**
   * A `101 Switching Protocols` came back, which this pool does not support: called instead of
   * `onError` when present; the socket is destroyed either way.
   */
  onUpgrade?(statusCode: number, rawHeaders: Buffer[]): void
}

/**
 * An error the pool raises itself. `code` follows undici's and llhttp's names where one exists
 * (`UND_ERR_SOCKET`, `UND_ERR_DESTROYED`, `HPE_INVALID_CHUNK_SIZE`...), so code that reads the
 * codes of undici's errors keeps working.
 */
export class Http1PoolError extends Error {
  /** What failed, e.g. `UND_ERR_SOCKET` or `HPE_INVALID_CONTENT_LENGTH`. */
  readonly code: string

  constructor(code: string, message: string) {
    super(message)
    this.name = 'Http1PoolError'
    this.code = code
  }
}
