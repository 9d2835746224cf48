import { Socket } from 'node:net'
import type { Clock } from '../core/clock.js'

/** The two pg-pool events this module follows. */
export interface PoolConnectionEvents {
  on(event: 'connect' | 'remove', listener: (client: object) => void): unknown
}

/**
 * The connections of a pg pool that are open, so that the driver's `close()` can wait until
 * their sockets have closed. pg-pool's `end()` sends every connection its Terminate and resolves
 * without waiting for the sockets to close: the server may still list those sessions (and count
 * them against `max_connections`) after `close()` returned. pg-pool emits `remove` once a
 * connection's socket has closed (`client.end()`'s callback), for every way a connection leaves
 * the pool: idle timeout, error, release with an error, and `end()`.
 */
export class OpenPoolConnections {
  readonly #open = new Set<object>()
  #settled: (() => void) | undefined

  constructor(pool: PoolConnectionEvents) {
    pool.on('connect', (client) => {
      this.#open.add(client)
    })
    pool.on('remove', (client) => {
      this.#open.delete(client)
      if (this.#open.size === 0) this.#settled?.()
    })
  }

  /** How many connections are open now. */
  get size(): number {
    return this.#open.size
  }

  /**
   * Resolves once every connection has closed, or after `limitMs` on `clock` (a socket whose
   * peer never answers the close must not hang shutdown for good): true when all closed.
   */
  allClosed(clock: Clock, limitMs: number): Promise<boolean> {
    if (this.#open.size === 0) return Promise.resolve(true)
    return new Promise((resolve) => {
      const timer = clock.setTimeout(() => {
        this.#settled = undefined
        resolve(false)
      }, limitMs)
      this.#settled = () => {
        this.#settled = undefined
        clock.clearTimeout(timer)
        resolve(true)
      }
    })
  }
}

/**
 * The sockets a driver's connections open (given to pg as its `stream` option), so that the
 * driver's `close()` can destroy those no server has answered yet. pg-pool's `end()` waits for a
 * connection still being opened: to a server that accepted it and never answers (a hung server,
 * a half-up failover) that is until `connectionTimeoutMs` gives up (never, with 0), the socket
 * holding the process open all the while. Such a socket has carried nothing back: no session
 * exists on it to end, and whoever waited for it was refused by `close()` already.
 */
export class PgSockets {
  readonly #open = new Set<Socket>()

  /** pg's `stream` option: a new socket, followed until it closes. */
  readonly stream = (): Socket => {
    const socket = new Socket()
    this.#open.add(socket)
    socket.once('close', () => this.#open.delete(socket))
    return socket
  }

  /**
   * Destroys every socket still open; for `close()`, once the pool has ended and its
   * connections have closed. One left then belongs to a connection that failed while it was
   * opened, after the server had answered: pg leaves that socket open when it gives up on the
   * authentication itself (a password the server asks for and nobody gave), and the server
   * closes it only at its `authentication_timeout` (60 s by default), the socket holding the
   * process open all the while (`breakwater saga list` printed its error, then hung a minute).
   */
  destroyLeftOpen(): void {
    for (const socket of this.#open) socket.destroy()
  }

  /** Destroys the open sockets that have read nothing: connects still under way. */
  destroyUnanswered(): void {
    for (const socket of this.#open)
      if (socket.bytesRead === 0)
        socket.destroy(new Error('connection abandoned: the driver was closed while it was opened'))
  }
}
