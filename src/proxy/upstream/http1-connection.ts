// One socket of Http1Pool and the request it serves. A `Connection` connects, takes one request
// at a time from the pool (`Core`, http1-core.ts), writes it in a single write where it can,
// reads the response through the parser it extends (http1-response-parser.ts) and passes the
// socket's flow control and failures on to the request's handler. A `PendingRequest` is the
// one object the pool allocates per request.

import { connect, type Socket } from 'node:net'
import type { TimerHandle } from '../../core/clock.js'
import type { Core } from './http1-core.js'
import { ResponseParser } from './http1-response-parser.js'
import { type Http1Handler, Http1PoolError } from './http1-types.js'

/** One dispatched request: its head (built at dispatch), body, handler and queue link. */
export class PendingRequest {
  readonly head: string
  readonly body: Buffer | null
  readonly handler: Http1Handler
  readonly isHead: boolean
  next: PendingRequest | undefined
  prev: PendingRequest | undefined
  /** In the pool's queue (linked by `next` and `prev`). */
  queued = false
  /** The pool, for an abort while queued. */
  core: Core | undefined
  /** The socket serving it, from assignment until it ends. */
  conn: Connection | undefined

  constructor(head: string, body: Buffer | null, handler: Http1Handler, isHead: boolean) {
    this.head = head
    this.body = body
    this.handler = handler
    this.isHead = isHead
  }

  // Per request, not per socket: a handler may call a stale abort or resume after its request
  // ended, and that must not touch the next request on the same socket.
  readonly abort = (reason?: Error): void => {
    if (this.queued) {
      // Still waiting for a socket: nothing of it was written.
      this.core?.cancel(this, reason ?? new Http1PoolError('UND_ERR_ABORTED', 'Request aborted'))
      return
    }
    const conn = this.conn
    if (conn === undefined || conn.req !== this) return
    // From its own onConnect (a request given up on while it waited in the queue) nothing of
    // it has been written: the socket is as good as before and serves the next request.
    conn.failRequest(
      reason ?? new Http1PoolError('UND_ERR_ABORTED', 'Request aborted'),
      conn.inOnConnect,
    )
  }

  readonly resume = (): void => {
    const conn = this.conn
    if (conn !== undefined && conn.req === this) conn.resume()
  }
}

/**
 * Bodies up to this size are copied behind the head for a single write; bigger ones are
 * written in slices of this size, each once the socket took the one before (see `sendBody`).
 */
const copyBodyBelow = 65_536

const emptyBuffer = Buffer.alloc(0)

/**
 * One socket of the pool, from connect to destroy. It serves one request at a time: `assign`
 * writes it, the inherited parser reads its response, and the pool hears when the socket is
 * free again (`usable`) or gone (`removed`).
 */
export class Connection extends ResponseParser {
  readonly core: Core
  readonly socket: Socket
  override req: PendingRequest | undefined
  connected = false
  dead = false
  isIdle = false
  reffed = true
  expiresAt = 0
  /** Idle lifetime after the last response (the pool's, or the server's hint when lower). */
  idleMs: number
  connectTimer: TimerHandle | undefined
  /** True while the current request's onConnect runs: nothing of it is written yet. */
  inOnConnect = false
  /** The request whose large body is still being written in slices (see `sendBody`). */
  sending: PendingRequest | undefined
  /** Where the next slice of `sending`'s body starts. */
  sendOffset = 0

  // Flow control: the handler paused the response (see Http1Handler.onHeaders and onData).
  override paused = false
  /** The server's end of the stream arrived while paused. */
  ended = false
  /** The unparsed rest of a read, kept while paused. */
  override stash: Buffer | undefined

  constructor(core: Core) {
    super(core.maxHeaderBytes)
    this.core = core
    this.idleMs = core.keepAliveMs
    const { host, port } = core.origin
    this.socket = connect({
      host,
      port,
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: 60_000,
    })
    this.socket.on('connect', this.onSocketConnect)
    this.socket.on('data', this.onSocketData)
    this.socket.on('end', this.onSocketEnd)
    this.socket.on('error', this.onSocketError)
    this.socket.on('close', this.onSocketClose)
    this.connectTimer = core.clock.setTimeout(this.onConnectTimeout, core.connectTimeoutMs)
  }

  // --- socket events ---

  readonly onSocketConnect = (): void => {
    if (this.dead) return
    this.clearConnectTimer()
    this.connected = true
    const core = this.core
    core.connecting--
    core.connected++
    core.usable(this)
  }

  readonly onConnectTimeout = (): void => {
    this.connectTimer = undefined
    if (this.dead || this.connected) return
    this.connectFailed(
      new Http1PoolError(
        'UND_ERR_CONNECT_TIMEOUT',
        `Connect timeout after ${this.core.connectTimeoutMs} ms`,
      ),
    )
  }

  readonly onSocketData = (chunk: Buffer): void => {
    const req = this.req
    if (req === undefined) {
      // Bytes on an idle socket: the server sent more than its response. Never reuse it.
      this.kill()
      return
    }
    if (this.paused) {
      // pause() stops 'data' events; this only guards against a read already on its way.
      this.stash = this.stash === undefined ? chunk : Buffer.concat([this.stash, chunk])
      return
    }
    this.run(req, chunk)
  }

  readonly onSocketEnd = (): void => {
    if (this.dead) return
    if (this.req === undefined) {
      // The server closed an idle socket (its keep-alive timeout): just forget it.
      this.kill()
      return
    }
    if (this.paused) {
      // A paused stream holds 'end' back until resumed, so this should not happen; if it
      // does, the bytes kept while paused go first and resume() comes back here.
      this.ended = true
      return
    }
    // The end of a read-until-close body, or of a response that was complete but paused.
    if (this.serverEnded()) this.run(this.req, emptyBuffer)
    else this.failRequest(new Http1PoolError('UND_ERR_SOCKET', 'other side closed'))
  }

  readonly onSocketError = (error: Error): void => {
    if (this.dead) return
    if (!this.connected) this.connectFailed(error)
    else if (this.req !== undefined) this.failRequest(error)
    else this.kill()
  }

  readonly onSocketClose = (): void => {
    if (this.dead) return
    const error = new Http1PoolError('UND_ERR_SOCKET', 'other side closed')
    if (!this.connected) this.connectFailed(error)
    else if (this.req !== undefined) this.failRequest(error)
    else this.kill()
  }

  // --- lifecycle ---

  clearConnectTimer(): void {
    if (this.connectTimer !== undefined) {
      this.core.clock.clearTimeout(this.connectTimer)
      this.connectTimer = undefined
    }
  }

  /** Destroys the socket and takes it out of the pool. The request must be detached first. */
  kill(): void {
    if (this.dead) return
    this.dead = true
    this.clearConnectTimer()
    this.socket.destroy()
    this.core.removed(this)
  }

  /**
   * The socket never connected: the request at the head of the queue fails with the error
   * (one request per failed connect, as undici does, so a dead upstream drains the queue
   * instead of being retried forever).
   */
  connectFailed(error: Error): void {
    const req = this.core.shift()
    this.kill()
    if (req !== undefined) req.handler.onError(error)
  }

  /**
   * Starts `req` on this connected, free socket: onConnect, then the one write. False when
   * the request was aborted in its onConnect: nothing was written and the socket, unless dead,
   * is free again for the caller to hand on (see Core.usable).
   */
  assign(req: PendingRequest): boolean {
    this.req = req
    req.conn = this
    this.core.busy++
    if (!this.reffed) {
      this.socket.ref()
      this.reffed = true
    }
    this.resetHead()
    this.isHead = req.isHead
    this.inOnConnect = true
    try {
      req.handler.onConnect(req.abort)
    } catch (error) {
      req.abort(error as Error)
    }
    this.inOnConnect = false
    if (this.req !== req) return false // aborted in onConnect: nothing was written
    const body = req.body
    const socket = this.socket
    if (body === null || body.length === 0) socket.write(req.head, 'latin1')
    else if (body.length < copyBodyBelow) {
      const headLength = req.head.length
      const out = Buffer.allocUnsafe(headLength + body.length)
      out.write(req.head, 0, headLength, 'latin1')
      body.copy(out, headLength)
      socket.write(out)
    } else {
      // The head and the first slice go out in one write, as before the slicing.
      socket.cork()
      socket.write(req.head, 'latin1')
      this.sending = req
      this.sendOffset = 0
      this.sendBody()
      socket.uncork()
    }
    return true
  }

  /**
   * Writes the slices of the current large body, one after the other as the socket takes them
   * ('drain'), rather than all in one write: the handler hears of each step (`onBodySent`) and
   * of the end (`onRequestSent`, once the last slice left), so its read timeout can tell an
   * upstream reading slowly but steadily from one that stopped (one write says nothing until
   * all of it has gone). Slices are views of the body: nothing is copied.
   */
  sendBody(): void {
    const req = this.sending as PendingRequest
    const body = req.body as Buffer
    const socket = this.socket
    let offset = this.sendOffset
    while (offset < body.length) {
      const end = Math.min(offset + copyBodyBelow, body.length)
      const slice = body.subarray(offset, end)
      offset = end
      if (end === body.length) {
        this.sending = undefined
        socket.write(slice, () => {
          if (this.req === req && !this.dead) req.handler.onRequestSent?.()
        })
        return
      }
      if (!socket.write(slice)) {
        this.sendOffset = offset
        socket.once('drain', this.onBodyDrain)
        return
      }
    }
  }

  readonly onBodyDrain = (): void => {
    const req = this.sending
    // The request ended meanwhile (an early answer, a failure): nothing more of it is sent.
    if (req === undefined || this.req !== req || this.dead) {
      this.sending = undefined
      return
    }
    const sent = this.sendOffset
    req.handler.onBodySent?.((req.body as Buffer).subarray(sent - copyBodyBelow, sent))
    if (this.req === req && !this.dead) this.sendBody()
  }

  /** Ends the current request on this socket (its callbacks stop reaching the handler). */
  detach(): PendingRequest {
    const req = this.req as PendingRequest
    this.req = undefined
    req.conn = undefined
    this.sending = undefined
    this.core.busy--
    return req
  }

  /**
   * Fails the current request: the socket is destroyed first, so the slot is free in onError;
   * `keepSocket` (an abort in onConnect, before any write) leaves it to `assign`'s caller.
   */
  override failRequest(error: Error, keepSocket = false): void {
    if (this.req === undefined) return
    const req = this.detach()
    if (!keepSocket) this.kill()
    req.handler.onError(error)
  }

  /** The response is complete: free (or destroy) the socket, then tell the handler. */
  override complete(extraBytes: boolean): void {
    const trailers = this.trailers
    // Unsent request bytes mean the server answered before reading the whole body: what it
    // would read next is the rest of that body, not the next request.
    const reuse =
      this.keepAlive &&
      !extraBytes &&
      !this.dead &&
      !this.ended &&
      this.sending === undefined &&
      this.socket.writableLength === 0
    this.idleMs =
      this.hasHint && this.hintMs < this.core.keepAliveMs ? this.hintMs : this.core.keepAliveMs
    const req = this.detach()
    // Freed before onComplete, so a request the handler dispatches from there (the next call
    // taking the bulkhead slot) finds this warm socket instead of opening another.
    if (reuse) this.core.usable(this)
    else this.kill()
    req.handler.onComplete(trailers)
  }

  resume(): void {
    if (!this.paused) return
    this.paused = false
    const stash = this.stash ?? emptyBuffer
    this.stash = undefined
    const req = this.req as PendingRequest
    this.run(req, stash)
    if (this.paused || this.dead) return
    if (this.ended && this.req === req) this.onSocketEnd()
    else this.socket.resume()
  }

  override pause(): void {
    this.paused = true
    this.socket.pause()
  }

  /** Parses `buf`; a handler that throws fails its request (once), as undici does. */
  run(req: PendingRequest, buf: Buffer): void {
    try {
      this.execute(req, buf)
    } catch (error) {
      if (this.req !== req) throw error
      this.failRequest(error as Error)
    }
  }

  /** The socket goes (this pool speaks no other protocol); the handler hears of it. */
  override upgrade(raw: Buffer[]): void {
    const req = this.detach()
    this.kill()
    const handler = req.handler
    if (handler.onUpgrade !== undefined) handler.onUpgrade(101, raw)
    else handler.onError(new Http1PoolError('UND_ERR_SOCKET', 'Unexpected upgrade (101)'))
  }
}
