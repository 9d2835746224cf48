// The pool of an https endpoint: undici's Pool (TLS origination, session cache), its connects
// timed on the service's clock by the HTTP client's connector, and its close and destroy also
// ending the connects still under way, which undici's own leave running.

import type { buildConnector, Dispatcher } from 'undici'
import { Pool } from 'undici'
import type { Clock } from '../../core/clock.js'
import { type ClockedConnector, clockedConnector } from '../../http/connector.js'
import type { UpstreamDispatch, UpstreamPool } from './endpoints.js'
import type { Http1Handler } from './http1-pool.js'

/** What an {@link HttpsPool} is built with. */
export interface HttpsPoolOptions {
  /** Sockets at most. */
  readonly connections: number
  /** The connect timeout (TCP and TLS handshake), on `clock`. */
  readonly connectTimeoutMs: number
  /** The service's clock, which the proxy's attempt timers run on too. */
  readonly clock: Clock
  /** TLS options for undici's connector (`ca`, `cert`, `key`, `servername`, ...), as they are. */
  readonly tls: buildConnector.BuildOptions
}

/**
 * undici's `Pool` for an https origin with one request per connection and undici's own
 * headers and body timeouts off (the proxy times them on its clock). Its connect timeout runs
 * on `clock` (see `clockedConnector`: undici's fires up to a second late). `close()` and
 * `destroy()` end, once undici's have, the connects still under way: undici leaves a connect it
 * no longer needs (one whose attempt the proxy gave up on) running to its timeout, its socket
 * keeping the process alive.
 */
export class HttpsPool implements UpstreamPool {
  readonly #pool: Pool
  readonly #connector: ClockedConnector

  constructor(origin: string, options: HttpsPoolOptions) {
    this.#connector = clockedConnector(options.clock, options.connectTimeoutMs, options.tls)
    this.#pool = new Pool(origin, {
      connections: options.connections,
      pipelining: 1,
      connect: this.#connector.connect,
      headersTimeout: 0,
      bodyTimeout: 0,
    })
  }

  /** Hands the request to undici's pool; `handler` hears how it goes. */
  dispatch(options: UpstreamDispatch, handler: Http1Handler): boolean {
    // The proxy's handler is undici's legacy dispatch handler too; only the trailers' element
    // type differs (strings there, Buffers in Http1Handler), and the proxy ignores trailers.
    return this.#pool.dispatch(
      options as Dispatcher.DispatchOptions,
      handler as unknown as Dispatcher.DispatchHandler,
    )
  }

  /** undici's pool statistics (connected, free, pending, ...). */
  get stats(): Pool['stats'] {
    return this.#pool.stats
  }

  /** Lets queued and running requests finish, closes the connections and ends the connects. */
  async close(): Promise<void> {
    try {
      await this.#pool.close()
    } finally {
      this.#connector.abort()
    }
  }

  /** Fails queued and running requests, closes the connections and ends the connects now. */
  async destroy(): Promise<void> {
    try {
      await this.#pool.destroy()
    } finally {
      this.#connector.abort()
    }
  }
}
