// The state of one Http1Pool (http1-pool.ts): its sockets (connecting, idle, busy), the FIFO
// queue of requests waiting for one, the single idle timer, and closing and destroying. The
// public class only checks options and forwards here; the fields are plain (not #private) since
// the per-request path reads them.

import type { Clock, TimerHandle } from '../../core/clock.js'
import { Connection, PendingRequest } from './http1-connection.js'
import {
  type Http1DispatchOptions,
  type Http1Handler,
  Http1PoolError,
  type Http1PoolOptions,
} from './http1-types.js'
import { buildHead, type Origin } from './http1-wire.js'

const stateOpen = 0
const stateClosing = 1
const stateDestroyed = 2

/**
 * The pool behind an `Http1Pool`: hands each request to the most recently idle socket, or
 * queues it and opens sockets up to the limit; closes idle sockets after their keep-alive
 * time; fails or drains everything on destroy and close. Connections report back to it
 * (`usable`, `removed`, `shift`) and update its counters.
 */
export class Core {
  readonly origin: Origin
  readonly max: number
  readonly keepAliveMs: number
  readonly maxHeaderBytes: number
  readonly connectTimeoutMs: number
  readonly clock: Clock
  /** Every socket not yet destroyed, connecting or connected. */
  readonly conns = new Set<Connection>()
  /** Idle sockets, most recently idle last (popped first: warm sockets stay warm). */
  readonly idle: Connection[] = []
  queueHead: PendingRequest | undefined
  queueTail: PendingRequest | undefined
  pending = 0
  connecting = 0
  connected = 0
  busy = 0
  state = stateOpen
  /** close() and destroy() callers waiting for the last socket to go. */
  waiters: Array<() => void> = []
  /** While close or destroy kill sockets in bulk, each removal must not re-check the end. */
  killingAll = false
  // One timer for the whole pool closes idle sockets: armed for the earliest expiry, and left
  // alone when a socket goes idle later than that, so a busy pool touches no timer per request.
  timer: TimerHandle | undefined
  timerAt = 0

  /** `options` are the pool's, checked, with the defaults filled in. */
  constructor(origin: Origin, options: Required<Http1PoolOptions>) {
    this.origin = origin
    this.max = options.connections
    this.keepAliveMs = options.keepAliveTimeoutMs
    this.maxHeaderBytes = options.maxHeaderBytes
    this.connectTimeoutMs = options.connectTimeoutMs
    this.clock = options.clock
  }

  dispatch(options: Http1DispatchOptions, handler: Http1Handler): void {
    if (this.state !== stateOpen) {
      throw this.state === stateDestroyed
        ? new Http1PoolError('UND_ERR_DESTROYED', 'The pool was destroyed')
        : new Http1PoolError('UND_ERR_CLOSED', 'The pool is closed')
    }
    // The head is built (and checked) now, as undici does: a bad header fails before a socket
    // is taken, and later changes to the caller's header array do not reach this request.
    const head = buildHead(options, this.origin.hostLine)
    if (typeof head !== 'string') {
      handler.onError(head)
      return
    }
    const req = new PendingRequest(head, options.body, handler, options.method === 'HEAD')
    const conn = this.idle.pop()
    if (conn !== undefined) {
      conn.isIdle = false
      if (!conn.assign(req) && !conn.dead) this.usable(conn)
      return
    }
    this.enqueue(req)
    this.fill()
    if (handler.onQueued !== undefined && req.queued) {
      req.core = this
      handler.onQueued(req.abort)
    }
  }

  enqueue(req: PendingRequest): void {
    this.pending++
    req.queued = true
    req.prev = this.queueTail
    if (this.queueTail === undefined) this.queueHead = req
    else this.queueTail.next = req
    this.queueTail = req
  }

  shift(): PendingRequest | undefined {
    const req = this.queueHead
    if (req === undefined) return undefined
    this.unlink(req)
    return req
  }

  unlink(req: PendingRequest): void {
    this.pending--
    req.queued = false
    if (req.prev === undefined) this.queueHead = req.next
    else req.prev.next = req.next
    if (req.next === undefined) this.queueTail = req.prev
    else req.next.prev = req.prev
    req.next = undefined
    req.prev = undefined
  }

  /**
   * A queued request was aborted: it leaves the queue and ends with `error`. A socket opening
   * that no waiting request needs any more is destroyed now, so a connect that hangs (a
   * blackholed upstream) does not hold its slot until the connect timeout.
   */
  cancel(req: PendingRequest, error: Error): void {
    this.unlink(req)
    if (this.connecting > this.pending) {
      let newest: Connection | undefined
      // The most recently opened is the one furthest from connecting; the set keeps that order.
      for (const conn of this.conns) if (!conn.connected && !conn.dead) newest = conn
      newest?.kill()
    } else if (this.state !== stateOpen) this.checkClosed()
    req.handler.onError(error)
  }

  /** Opens sockets for waiting requests, one per request not already waiting on a connect. */
  fill(): void {
    while (
      this.state !== stateDestroyed &&
      this.pending > this.connecting &&
      this.conns.size < this.max
    ) {
      this.connecting++
      this.conns.add(new Connection(this))
    }
  }

  /**
   * A socket that just connected or finished a response: it serves the queue or goes idle.
   * Requests aborted in their onConnect (given up on while queued) left it unwritten, so it
   * goes on down the queue rather than being destroyed for each of them (a loop, not
   * recursion: the queue may hold many such requests).
   */
  usable(conn: Connection): void {
    for (let req = this.shift(); req !== undefined; req = this.shift())
      if (conn.assign(req) || conn.dead) return
    this.goIdle(conn)
  }

  goIdle(conn: Connection): void {
    if (this.state !== stateOpen) {
      conn.kill()
      return
    }
    const now = this.clock.now()
    const expiresAt = now + conn.idleMs
    conn.expiresAt = expiresAt
    conn.isIdle = true
    this.idle.push(conn)
    // An idle socket must not keep the process alive.
    if (conn.reffed) {
      conn.socket.unref()
      conn.reffed = false
    }
    if (this.timer === undefined || expiresAt < this.timerAt) this.arm(expiresAt, now)
  }

  arm(at: number, now: number): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timerAt = at
    this.timer = this.clock.setTimeout(this.sweep, at - now)
  }

  readonly sweep = (): void => {
    this.timer = undefined
    const now = this.clock.now()
    let next = Number.POSITIVE_INFINITY
    const expired: Connection[] = []
    for (const conn of this.idle) {
      if (conn.expiresAt <= now) expired.push(conn)
      else if (conn.expiresAt < next) next = conn.expiresAt
    }
    for (const conn of expired) conn.kill()
    if (next !== Number.POSITIVE_INFINITY && this.timer === undefined) this.arm(next, now)
  }

  /** A socket was destroyed: forget it, and open another if requests still wait. */
  removed(conn: Connection): void {
    this.conns.delete(conn)
    if (conn.connected) this.connected--
    else this.connecting--
    if (conn.isIdle) {
      conn.isIdle = false
      const index = this.idle.lastIndexOf(conn)
      if (index !== -1) this.idle.splice(index, 1)
    }
    this.fill()
    if (this.state !== stateOpen) this.checkClosed()
  }

  close(): Promise<void> {
    if (this.state === stateOpen) this.state = stateClosing
    return new Promise<void>((resolve) => {
      this.waiters.push(resolve)
      this.checkClosed()
    })
  }

  destroy(): Promise<void> {
    if (this.state !== stateDestroyed) {
      this.state = stateDestroyed
      const error = new Http1PoolError('UND_ERR_DESTROYED', 'The pool was destroyed')
      for (let req = this.shift(); req !== undefined; req = this.shift()) req.handler.onError(error)
      this.killingAll = true
      for (const conn of Array.from(this.conns)) {
        if (conn.req !== undefined) conn.failRequest(error)
        else conn.kill()
      }
      this.killingAll = false
    }
    return this.close()
  }

  /** While closing: sockets with nothing left to do go; the waiters resolve once none is left. */
  checkClosed(): void {
    if (this.killingAll) return
    if (this.pending === 0) {
      // Idle sockets, and sockets still connecting for requests that found another socket.
      this.killingAll = true
      for (const conn of Array.from(this.conns)) if (conn.req === undefined) conn.kill()
      this.killingAll = false
    }
    if (this.conns.size > 0 || this.pending > 0) return
    if (this.timer !== undefined) {
      this.clock.clearTimeout(this.timer)
      this.timer = undefined
    }
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }
}
