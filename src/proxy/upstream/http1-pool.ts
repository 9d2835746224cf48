// An HTTP/1.1 connection pool for plain `http://` upstreams, written on `node:net` sockets.
//
// It stands in for undici's `Pool` on the proxy's forward path, with the same dispatch-handler
// contract (the subset service-runtime uses), because undici spends about 6 µs of CPU per
// request there and most of it buys features the proxy does not use (pipelining, streaming
// request bodies, interceptors, TLS, the controller API). What is left is small: one request per
// socket at a time, a FIFO queue when every socket is busy, the most recently idle socket
// reused first, and a strict incremental response parser that reads straight from the socket's
// Buffers and hands out subarrays.
//
// Shape: `Http1Pool` (this file) is the public face; `Core` (http1-core.ts) holds the pool's
// state in plain fields (read on every request, so no #private indirection); one `Connection`
// per socket (http1-connection.ts) holds the parser state and the request it serves, so the
// per-request path allocates one small `PendingRequest` and the two callbacks the handler
// interface needs (abort and resume), nothing else. The parser is the class `Connection`
// extends (http1-response-parser.ts), so reading a response costs no object or call layer of
// its own. http1-wire.ts builds request heads and holds the byte tables; http1-types.ts holds
// the options, handler and error types, re-exported here with the pool.

import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'
import { Core } from './http1-core.js'
import type { Http1DispatchOptions, Http1Handler, Http1PoolOptions } from './http1-types.js'
import { parseOrigin } from './http1-wire.js'

export type { Http1DispatchOptions, Http1Handler, Http1PoolOptions } from './http1-types.js'
export { Http1PoolError } from './http1-types.js'

/**
 * A drop-in for undici's `Pool` on plain `http://` origins, for what service-runtime uses:
 * `dispatch(options, handler)`, `close()` and `destroy()`. One request per socket at a time (no
 * pipelining), at most `connections` sockets, a FIFO queue beyond that, the most recently idle
 * socket reused first. It sets no timeout on requests (the handler runs its own and calls
 * `abort`); idle sockets close after the keep-alive timeout.
 *
 * @example
 * ```ts
 * const pool = new Http1Pool('http://127.0.0.1:8080', { connections: 16 })
 * pool.dispatch({ path: '/items', method: 'GET', headers: ['accept', 'application/json'], body: null }, {
 *   onConnect() {},
 *   onHeaders(status) { console.log(status); return true },
 *   onData() { return true },
 *   onComplete() {},
 *   onError(error) { console.error(error) },
 * })
 * await pool.close()
 * ```
 */
export class Http1Pool {
  readonly #core: Core

  constructor(origin: string, options: Http1PoolOptions) {
    checkObject('Http1Pool.options', options)
    this.#core = new Core(parseOrigin(origin), {
      connections: checkInteger('Http1Pool.connections', options.connections, 1),
      keepAliveTimeoutMs: checkNumber(
        'Http1Pool.keepAliveTimeoutMs',
        options.keepAliveTimeoutMs ?? 4_000,
        1,
      ),
      maxHeaderBytes: checkInteger(
        'Http1Pool.maxHeaderBytes',
        options.maxHeaderBytes ?? 16_384,
        64,
      ),
      connectTimeoutMs: checkNumber(
        'Http1Pool.connectTimeoutMs',
        options.connectTimeoutMs ?? 10_000,
        1,
      ),
      clock: checkClock('Http1Pool.clock', options.clock),
    })
  }

  /**
   * Sends a request; `handler` hears how it goes. Throws (code `UND_ERR_CLOSED` or
   * `UND_ERR_DESTROYED`) only when the pool is closed; a request that cannot be sent as given
   * (a CR, LF or NUL in a header, a malformed method or path) fails through
   * `handler.onError` with code `UND_ERR_INVALID_ARG`, before anything is written.
   */
  dispatch(options: Http1DispatchOptions, handler: Http1Handler): void {
    this.#core.dispatch(options, handler)
  }

  /**
   * Takes no new requests (dispatch throws); lets queued and running ones finish, then closes
   * every socket. Resolves when the last one is gone.
   */
  close(): Promise<void> {
    return this.#core.close()
  }

  /**
   * Fails every queued and running request (`onError` with code `UND_ERR_DESTROYED`), destroys
   * every socket, and resolves.
   */
  destroy(): Promise<void> {
    return this.#core.destroy()
  }

  /** Sockets connected and open (idle or busy; not the ones still connecting). */
  get connected(): number {
    return this.#core.connected
  }

  /** Sockets serving a request. */
  get busy(): number {
    return this.#core.busy
  }

  /** Requests waiting for a socket. */
  get pending(): number {
    return this.#core.pending
  }

  /**
   * Every socket the pool may open is connected and serving a request, none connecting or
   * idle: a request waiting now waits for one of them to finish, which is the pool's own
   * congestion and says nothing of the server.
   */
  get saturated(): boolean {
    const core = this.#core
    return core.conns.size >= core.max && core.connecting === 0 && core.idle.length === 0
  }
}
