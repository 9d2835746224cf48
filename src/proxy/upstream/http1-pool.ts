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
// Shape: `Http1Pool` is the public face; `Core` holds the pool's state in plain fields (read on
// every request, so no #private indirection); one `Connection` per socket holds the parser state
// and the request it serves, so the per-request path allocates one small `PendingRequest` and
// the two callbacks the handler interface needs (abort and resume), nothing else.

import { connect, type Socket } from 'node:net'
import type { Clock, TimerHandle } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import { checkClock, checkInteger, checkNumber, checkObject } from '../../core/validate.js'

/** Options of {@link Http1Pool}. */
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
   * would hold its slots for the operating system's connect timeout (minutes), since a handler
   * cannot abort a request before `onConnect`.
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
}

// ---------------------------------------------------------------------------------------------
// The pool's state
// ---------------------------------------------------------------------------------------------

interface Origin {
  readonly host: string
  readonly port: number
  /** `host: <host[:port]>\r\n`, added to requests that bring no Host header. */
  readonly hostLine: string
}

interface CoreOptions {
  readonly connections: number
  readonly keepAliveTimeoutMs: number
  readonly maxHeaderBytes: number
  readonly connectTimeoutMs: number
  readonly clock: Clock
}

const stateOpen = 0
const stateClosing = 1
const stateDestroyed = 2

class Core {
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

  constructor(origin: Origin, options: CoreOptions) {
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
      conn.assign(req)
      return
    }
    this.enqueue(req)
    this.fill()
  }

  enqueue(req: PendingRequest): void {
    this.pending++
    if (this.queueTail === undefined) this.queueHead = req
    else this.queueTail.next = req
    this.queueTail = req
  }

  shift(): PendingRequest | undefined {
    const req = this.queueHead
    if (req === undefined) return undefined
    this.pending--
    this.queueHead = req.next
    if (this.queueHead === undefined) this.queueTail = undefined
    req.next = undefined
    return req
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

  /** A socket that just connected or finished a response: it serves the queue or goes idle. */
  usable(conn: Connection): void {
    const req = this.shift()
    if (req !== undefined) conn.assign(req)
    else this.goIdle(conn)
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

/** One dispatched request: its head (built at dispatch), body, handler and queue link. */
class PendingRequest {
  readonly head: string
  readonly body: Buffer | null
  readonly handler: Http1Handler
  readonly isHead: boolean
  next: PendingRequest | undefined
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
    const conn = this.conn
    if (conn === undefined || conn.req !== this) return
    conn.failRequest(reason ?? new Http1PoolError('UND_ERR_ABORTED', 'Request aborted'))
  }

  readonly resume = (): void => {
    const conn = this.conn
    if (conn !== undefined && conn.req === this) conn.resume()
  }
}

// ---------------------------------------------------------------------------------------------
// One socket and its response parser
// ---------------------------------------------------------------------------------------------

// Parser states.
const sIdle = 0
const sHead = 1
const sBody = 2
const sChunkSize = 3
const sChunkEnd = 4
const sTrailers = 5
const sUntilClose = 6
/** The response is complete: the next step calls onComplete. */
const sEnd = 7

// Sub-states of a chunk-size line.
const csDigits = 0
const csExtension = 1
const csLf = 2

/** Bodies up to this size are copied behind the head for a single write; bigger ones are not. */
const copyBodyBelow = 65_536

const emptyBuffer = Buffer.alloc(0)

class Connection {
  readonly core: Core
  readonly socket: Socket
  req: PendingRequest | undefined
  connected = false
  dead = false
  isIdle = false
  reffed = true
  expiresAt = 0
  /** Idle lifetime after the last response (the pool's, or the server's hint when lower). */
  idleMs: number
  connectTimer: TimerHandle | undefined

  // Parser state of the current response.
  state = sIdle
  isHead = false
  gotStatus = false
  status = 0
  statusText = ''
  minor = 1
  raw: Buffer[] = []
  trailers: Buffer[] | null = null
  /** Bytes of the head (or trailer section) so far, against maxHeaderBytes. */
  headBytes = 0
  /** A head or trailer line split across reads: its pieces so far. */
  partial: Buffer[] | undefined
  contentLength = -1
  hasTransferEncoding = false
  chunked = false
  connectionClose = false
  connectionKeepAlive = false
  hintMs = 0
  hasHint = false
  keepAlive = false
  /** Body bytes left: of the Content-Length body, or of the current chunk. */
  remaining = 0
  /** State after the counted bytes: sEnd for a Content-Length body, sChunkEnd in a chunk. */
  afterBody = sEnd
  chunkSub = csDigits
  chunkSize = 0
  chunkDigits = 0
  lineBytes = 0
  paused = false
  /** The server's end of the stream arrived while paused. */
  ended = false
  /** The unparsed rest of a read, kept while paused. */
  stash: Buffer | undefined

  constructor(core: Core) {
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
    if (this.state === sUntilClose || this.state === sEnd) {
      this.keepAlive = false
      this.state = sEnd
      this.run(this.req, emptyBuffer)
    } else this.failRequest(new Http1PoolError('UND_ERR_SOCKET', 'other side closed'))
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

  /** Starts `req` on this connected, free socket: onConnect, then the one write. */
  assign(req: PendingRequest): void {
    this.req = req
    req.conn = this
    this.core.busy++
    if (!this.reffed) {
      this.socket.ref()
      this.reffed = true
    }
    this.resetHead()
    this.isHead = req.isHead
    try {
      req.handler.onConnect(req.abort)
    } catch (error) {
      req.abort(error as Error)
    }
    if (this.req !== req) return // aborted in onConnect: nothing was written
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
      socket.cork()
      socket.write(req.head, 'latin1')
      socket.write(body)
      socket.uncork()
    }
  }

  /** Ends the current request on this socket (its callbacks stop reaching the handler). */
  detach(): PendingRequest {
    const req = this.req as PendingRequest
    this.req = undefined
    req.conn = undefined
    this.core.busy--
    return req
  }

  /** Fails the current request: the socket is destroyed first, so the slot is free in onError. */
  failRequest(error: Error): void {
    if (this.req === undefined) return
    const req = this.detach()
    this.kill()
    req.handler.onError(error)
  }

  /** The response is complete: free (or destroy) the socket, then tell the handler. */
  complete(extraBytes: boolean): void {
    const trailers = this.trailers
    // Unsent request bytes mean the server answered before reading the whole body: what it
    // would read next is the rest of that body, not the next request.
    const reuse =
      this.keepAlive && !extraBytes && !this.dead && !this.ended && this.socket.writableLength === 0
    this.idleMs =
      this.hasHint && this.hintMs < this.core.keepAliveMs ? this.hintMs : this.core.keepAliveMs
    const req = this.detach()
    this.state = sIdle
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

  pause(): void {
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

  // --- the parser ---

  execute(req: PendingRequest, buf: Buffer): void {
    const len = buf.length
    let pos = 0
    for (;;) {
      const state = this.state
      if (state === sEnd) {
        this.complete(pos < len)
        return
      }
      if (pos >= len) return
      switch (state) {
        case sHead:
        case sTrailers:
          pos = this.readLines(req, buf, pos)
          break
        case sBody:
          pos = this.readBody(buf, pos)
          break
        case sChunkSize:
          pos = this.readChunkSize(buf, pos)
          break
        case sChunkEnd:
          pos = this.readChunkEnd(buf, pos)
          break
        case sUntilClose:
          this.deliver(pos === 0 ? buf : buf.subarray(pos))
          pos = len
          break
        default:
          this.parseError('HPE_INTERNAL', 'Parser in no reading state')
          return
      }
      if (this.req !== req) return
      if (this.paused) {
        if (pos < len) this.stash = buf.subarray(pos)
        return
      }
    }
  }

  deliver(chunk: Buffer): void {
    const req = this.req as PendingRequest
    if (req.handler.onData(chunk) === false && this.req === req) this.pause()
  }

  parseError(code: string, message: string): number {
    this.failRequest(new Http1PoolError(code, message))
    return -2
  }

  resetHead(): void {
    this.state = sHead
    this.gotStatus = false
    this.raw = []
    this.trailers = null
    this.headBytes = 0
    this.partial = undefined
    this.contentLength = -1
    this.hasTransferEncoding = false
    this.chunked = false
    this.connectionClose = false
    this.connectionKeepAlive = false
    this.hasHint = false
  }

  /** Head or trailer lines, from `start`; returns where it stopped. */
  readLines(req: PendingRequest, buf: Buffer, start: number): number {
    const len = buf.length
    const lineState = this.state
    const max = this.core.maxHeaderBytes
    let pos = start
    while (pos < len) {
      const partial = this.partial
      let next: number
      if (partial === undefined) {
        // Scan no further than the section may still grow, so an endless line costs no more
        // than maxHeaderBytes of work.
        const room = max - this.headBytes
        const limit = len - pos > room ? pos + room : len
        next = this.parseLine(buf, pos, limit)
        if (next === -1) {
          if (limit < len) return this.headerOverflow()
          // The line goes on in the next read.
          this.partial = [buf.subarray(pos)]
          this.headBytes += len - pos
          return len
        }
        if (next < 0) return len
        // Not after the blank line of a 1xx head: the next head starts its own count.
        if (this.gotStatus) this.headBytes += next - pos
      } else {
        // Only when a line was split: join its pieces once its end is here.
        const lf = buf.indexOf(10, pos)
        this.headBytes += (lf === -1 ? len : lf + 1) - pos
        if (this.headBytes > max) return this.headerOverflow()
        if (lf === -1) {
          partial.push(pos === 0 ? buf : buf.subarray(pos))
          return len
        }
        partial.push(buf.subarray(pos, lf + 1))
        this.partial = undefined
        const line = Buffer.concat(partial)
        const end = this.parseLine(line, 0, line.length)
        if (end === -1) return this.parseError('HPE_LF_EXPECTED', 'Malformed line ending')
        if (end < 0) return len
        next = lf + 1
      }
      pos = next
      if (this.req !== req || this.state !== lineState || this.paused) return pos
    }
    return pos
  }

  headerOverflow(): number {
    return this.parseError(
      'UND_ERR_HEADERS_OVERFLOW',
      `Response header section larger than ${this.core.maxHeaderBytes} bytes`,
    )
  }

  /**
   * One line of a head or trailer section, from `start` up to `end`. Returns the index after
   * its LF; -1 when the line does not end before `end` (nothing is recorded then); -2 after
   * a parse error (the request has failed).
   */
  parseLine(b: Buffer, start: number, end: number): number {
    if (!this.gotStatus && this.state === sHead) return this.parseStatusLine(b, start, end)
    let i = start
    let c = 0
    while (i < end) {
      c = b[i] as number
      if (tokenChar[c] !== 1) break
      i++
    }
    if (i === end) return -1
    if (i === start) {
      if (c === 13) {
        if (i + 1 === end) return -1
        if (b[i + 1] !== 10) return this.parseError('HPE_LF_EXPECTED', 'Missing LF after CR')
        this.endOfSection()
        return i + 2
      }
      if (c === 32 || c === 9)
        return this.parseError('HPE_INVALID_HEADER_TOKEN', 'Obsolete line folding in header')
      if (c === 10) return this.parseError('HPE_CR_EXPECTED', 'Bare LF line ending')
      return this.parseError('HPE_INVALID_HEADER_TOKEN', 'Invalid header name')
    }
    if (c !== 58) return this.parseError('HPE_INVALID_HEADER_TOKEN', 'Invalid header name')
    const nameEnd = i
    i++
    while (i < end && (b[i] === 32 || b[i] === 9)) i++
    const valueStart = i
    let valueEnd = i
    while (i < end) {
      c = b[i] as number
      if (c === 13) break
      i++
      if (c === 32 || c === 9) continue
      if (c < 32 || c === 127) {
        return c === 10
          ? this.parseError('HPE_CR_EXPECTED', 'Bare LF line ending')
          : this.parseError('HPE_INVALID_HEADER_TOKEN', 'Invalid character in header value')
      }
      valueEnd = i
    }
    if (i + 1 >= end) return -1
    if (b[i + 1] !== 10) return this.parseError('HPE_LF_EXPECTED', 'Missing LF after CR')
    if (!this.field(b, start, nameEnd, valueStart, valueEnd)) return -2
    return i + 2
  }

  parseStatusLine(b: Buffer, start: number, end: number): number {
    let cr = start
    while (cr < end) {
      const c = b[cr]
      if (c === 13) break
      if (c === 10) return this.parseError('HPE_CR_EXPECTED', 'Bare LF line ending')
      cr++
    }
    if (cr + 1 >= end) return -1
    if (b[cr + 1] !== 10) return this.parseError('HPE_LF_EXPECTED', 'Missing LF after CR')
    if (
      cr - start < 12 ||
      b[start] !== 72 || // H
      b[start + 1] !== 84 || // T
      b[start + 2] !== 84 || // T
      b[start + 3] !== 80 || // P
      b[start + 4] !== 47 || // /
      b[start + 5] !== 49 || // 1
      b[start + 6] !== 46 || // .
      b[start + 8] !== 32
    )
      return this.parseError('HPE_INVALID_CONSTANT', 'Malformed status line')
    const minor = (b[start + 7] as number) - 48
    if (minor !== 0 && minor !== 1)
      return this.parseError('HPE_INVALID_VERSION', 'Unsupported HTTP version')
    const d0 = (b[start + 9] as number) - 48
    const d1 = (b[start + 10] as number) - 48
    const d2 = (b[start + 11] as number) - 48
    if (d0 < 1 || d0 > 9 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9)
      return this.parseError('HPE_INVALID_STATUS', 'Malformed status code')
    let text = ''
    if (cr > start + 12) {
      if (b[start + 12] !== 32)
        return this.parseError('HPE_INVALID_STATUS', 'Malformed status code')
      for (let i = start + 13; i < cr; i++) {
        const c = b[i] as number
        if ((c < 32 && c !== 9) || c === 127)
          return this.parseError('HPE_INVALID_STATUS', 'Invalid character in reason phrase')
      }
      text =
        cr - start === 15 && b[start + 13] === 79 && b[start + 14] === 75
          ? 'OK'
          : b.toString('latin1', start + 13, cr)
    }
    this.minor = minor
    this.status = d0 * 100 + d1 * 10 + d2
    this.statusText = text
    this.gotStatus = true
    return cr + 2
  }

  /** Records one header (or trailer) field; false after a parse error. */
  field(
    b: Buffer,
    nameStart: number,
    nameEnd: number,
    valueStart: number,
    valueEnd: number,
  ): boolean {
    const name = b.subarray(nameStart, nameEnd)
    const value = b.subarray(valueStart, valueEnd)
    if (this.state === sTrailers) {
      if (this.trailers === null) this.trailers = [name, value]
      else this.trailers.push(name, value)
      return true
    }
    this.raw.push(name, value)
    switch (nameEnd - nameStart) {
      case 10:
        if (equalsLower(b, nameStart, connectionBytes))
          this.connectionTokens(b, valueStart, valueEnd)
        else if (equalsLower(b, nameStart, keepAliveBytes))
          this.keepAliveHint(b, valueStart, valueEnd)
        return true
      case 14:
        if (equalsLower(b, nameStart, contentLengthBytes))
          return this.contentLengthValue(b, valueStart, valueEnd)
        return true
      case 17:
        if (equalsLower(b, nameStart, transferEncodingBytes)) {
          this.hasTransferEncoding = true
          // The last line's last coding is the final one.
          this.chunked = lastTokenIs(b, valueStart, valueEnd, chunkedBytes)
        }
        return true
      default:
        return true
    }
  }

  contentLengthValue(b: Buffer, start: number, end: number): boolean {
    // Digits only (no sign, no list), and few enough to stay an exact integer.
    if (start === end || end - start > 15) {
      this.parseError('HPE_INVALID_CONTENT_LENGTH', 'Invalid Content-Length')
      return false
    }
    let n = 0
    for (let i = start; i < end; i++) {
      const d = (b[i] as number) - 48
      if (d < 0 || d > 9) {
        this.parseError('HPE_INVALID_CONTENT_LENGTH', 'Invalid Content-Length')
        return false
      }
      n = n * 10 + d
    }
    if (this.contentLength !== -1 && this.contentLength !== n) {
      this.parseError('HPE_INVALID_CONTENT_LENGTH', 'Differing Content-Length values')
      return false
    }
    this.contentLength = n
    return true
  }

  connectionTokens(b: Buffer, start: number, end: number): void {
    let i = start
    while (i < end) {
      while (i < end && (b[i] === 32 || b[i] === 9 || b[i] === 44)) i++
      const tokenStart = i
      while (i < end && b[i] !== 44) i++
      let tokenEnd = i
      while (tokenEnd > tokenStart && (b[tokenEnd - 1] === 32 || b[tokenEnd - 1] === 9)) tokenEnd--
      const n = tokenEnd - tokenStart
      if (n === 5 && equalsLower(b, tokenStart, closeBytes)) this.connectionClose = true
      else if (n === 10 && equalsLower(b, tokenStart, keepAliveBytes))
        this.connectionKeepAlive = true
    }
  }

  keepAliveHint(b: Buffer, start: number, end: number): void {
    const seconds = keepAliveTimeoutSeconds(b, start, end)
    if (seconds < 0) return
    this.hasHint = true
    this.hintMs = seconds * 1000 - 1000
  }

  /** The blank line that ends a head or the trailers. */
  endOfSection(): void {
    if (this.state === sTrailers) this.state = sEnd
    else this.headComplete()
  }

  headComplete(): void {
    const req = this.req as PendingRequest
    const status = this.status
    const raw = this.raw
    const text = this.statusText
    if (status < 200) {
      if (status === 101) {
        this.upgrade(raw)
        return
      }
      // An interim response: deliver it, then read the next head from scratch.
      this.resetHead()
      req.handler.onHeaders(status, raw, req.resume, text)
      return
    }
    if (this.hasTransferEncoding && this.contentLength !== -1) {
      this.parseError('HPE_UNEXPECTED_CONTENT_LENGTH', 'Both Transfer-Encoding and Content-Length')
      return
    }
    // RFC 9112 §9.3: 1.1 persists unless `close`; 1.0 only with `keep-alive`. A server hint of
    // 1 s or less leaves no safe time to reuse the socket. After HEAD the socket closes, as
    // undici does, in case a misbehaving server sends a body anyway.
    let keepAlive =
      (this.minor === 1
        ? !this.connectionClose
        : this.connectionKeepAlive && !this.connectionClose) &&
      !(this.hasHint && this.hintMs <= 0) &&
      !this.isHead
    // RFC 9112 §6.3: the order of these checks is the order of precedence.
    if (this.isHead || status === 204 || status === 304) this.state = sEnd
    else if (this.hasTransferEncoding) {
      if (this.minor === 0) keepAlive = false
      if (this.chunked) {
        this.state = sChunkSize
        this.chunkSub = csDigits
        this.chunkSize = 0
        this.chunkDigits = 0
        this.lineBytes = 0
      } else {
        this.state = sUntilClose
        keepAlive = false
      }
    } else if (this.contentLength > 0) {
      this.state = sBody
      this.remaining = this.contentLength
      this.afterBody = sEnd
    } else if (this.contentLength === 0) this.state = sEnd
    else {
      this.state = sUntilClose
      keepAlive = false
    }
    this.keepAlive = keepAlive
    if (req.handler.onHeaders(status, raw, req.resume, text) === false && this.req === req)
      this.pause()
  }

  upgrade(raw: Buffer[]): void {
    const req = this.detach()
    this.kill()
    const handler = req.handler
    if (handler.onUpgrade !== undefined) handler.onUpgrade(101, raw)
    else handler.onError(new Http1PoolError('UND_ERR_SOCKET', 'Unexpected upgrade (101)'))
  }

  /** Counted body bytes: the Content-Length body, or the data of one chunk. */
  readBody(buf: Buffer, pos: number): number {
    const len = buf.length
    const remaining = this.remaining
    if (len - pos <= remaining) {
      this.remaining = remaining - (len - pos)
      if (this.remaining === 0) this.state = this.afterBody
      // The common case, a whole body in one read: the read itself, no copy and no subarray.
      this.deliver(pos === 0 ? buf : buf.subarray(pos))
      return len
    }
    const end = pos + remaining
    this.remaining = 0
    this.state = this.afterBody
    this.deliver(buf.subarray(pos, end))
    return end
  }

  /** `size[;extensions]\r\n`; a zero size starts the trailers. */
  readChunkSize(b: Buffer, start: number): number {
    const len = b.length
    const max = this.core.maxHeaderBytes
    let pos = start
    while (pos < len) {
      const c = b[pos++] as number
      if (++this.lineBytes > max)
        return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Chunk size line too long')
      if (this.chunkSub === csDigits) {
        const digit = hexValue[c] as number
        if (digit !== 255) {
          // 13 hex digits stay below 2^53.
          if (++this.chunkDigits > 13)
            return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Chunk size too large')
          this.chunkSize = this.chunkSize * 16 + digit
          continue
        }
        if (this.chunkDigits === 0)
          return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Invalid chunk size')
        if (c === 13) this.chunkSub = csLf
        else if (c === 59 || c === 32 || c === 9) this.chunkSub = csExtension
        else return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Invalid chunk size')
      } else if (this.chunkSub === csExtension) {
        if (c === 13) this.chunkSub = csLf
        else if ((c < 32 && c !== 9) || c === 127)
          return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Invalid chunk extension')
      } else {
        if (c !== 10) return this.parseError('HPE_LF_EXPECTED', 'Missing LF after chunk size')
        const size = this.chunkSize
        this.chunkSub = csDigits
        this.chunkSize = 0
        this.chunkDigits = 0
        this.lineBytes = 0
        if (size === 0) {
          this.state = sTrailers
          this.headBytes = 0
          this.partial = undefined
        } else {
          this.state = sBody
          this.remaining = size
          this.afterBody = sChunkEnd
        }
        return pos
      }
    }
    return pos
  }

  /** The CRLF after a chunk's data. */
  readChunkEnd(b: Buffer, start: number): number {
    const len = b.length
    let pos = start
    while (pos < len) {
      const c = b[pos++]
      if (this.chunkSub === csDigits) {
        if (c !== 13) return this.parseError('HPE_CR_EXPECTED', 'Missing CRLF after chunk data')
        this.chunkSub = csLf
      } else {
        if (c !== 10) return this.parseError('HPE_LF_EXPECTED', 'Missing CRLF after chunk data')
        this.chunkSub = csDigits
        this.state = sChunkSize
        return pos
      }
    }
    return pos
  }
}

// ---------------------------------------------------------------------------------------------
// Bytes and strings
// ---------------------------------------------------------------------------------------------

/** tokenChar[c] = 1 for RFC 9110 tchar. */
const tokenChar = new Uint8Array(256)
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  tokenChar[c.charCodeAt(0)] = 1

/** hexValue[c] = the digit's value, 255 when c is no hex digit. */
const hexValue = new Uint8Array(256).fill(255)
for (let i = 0; i < 16; i++) {
  hexValue['0123456789abcdef'.charCodeAt(i)] = i
  hexValue['0123456789ABCDEF'.charCodeAt(i)] = i
}

const connectionBytes = Buffer.from('connection', 'latin1')
const keepAliveBytes = Buffer.from('keep-alive', 'latin1')
const contentLengthBytes = Buffer.from('content-length', 'latin1')
const transferEncodingBytes = Buffer.from('transfer-encoding', 'latin1')
const chunkedBytes = Buffer.from('chunked', 'latin1')
const closeBytes = Buffer.from('close', 'latin1')
const timeoutBytes = Buffer.from('timeout', 'latin1')

/**
 * Whether `b` at `start` spells `lower` (lower-case letters and `-`) in any case. OR-ing 0x20
 * folds ASCII case; the other bytes it could fold onto `-` are control characters, which the
 * callers have already refused.
 */
function equalsLower(b: Buffer, start: number, lower: Buffer): boolean {
  for (let i = 0; i < lower.length; i++)
    if (((b[start + i] as number) | 0x20) !== lower[i]) return false
  return true
}

/** Whether the last comma-separated item of `b[start, end)` is `lower` (any case). */
function lastTokenIs(b: Buffer, start: number, end: number, lower: Buffer): boolean {
  let e = end
  while (e > start && (b[e - 1] === 32 || b[e - 1] === 9)) e--
  let s = e
  while (s > start && b[s - 1] !== 44) s--
  while (s < e && (b[s] === 32 || b[s] === 9)) s++
  return e - s === lower.length && equalsLower(b, s, lower)
}

/** The `timeout=N` of a Keep-Alive header value, in seconds; -1 when absent or malformed. */
function keepAliveTimeoutSeconds(b: Buffer, start: number, end: number): number {
  let i = start
  while (i < end) {
    while (i < end && (b[i] === 32 || b[i] === 9 || b[i] === 44)) i++
    if (end - i > 7 && equalsLower(b, i, timeoutBytes)) {
      let j = i + 7
      while (j < end && (b[j] === 32 || b[j] === 9)) j++
      if (b[j] === 61) {
        j++
        while (j < end && (b[j] === 32 || b[j] === 9)) j++
        let seconds = 0
        let digits = 0
        for (; j < end; j++) {
          const d = (b[j] as number) - 48
          if (d < 0 || d > 9) break
          seconds = seconds * 10 + d
          digits++
        }
        if (digits > 0 && digits < 10) return seconds
      }
    }
    while (i < end && b[i] !== 44) i++
  }
  return -1
}

/**
 * The request head, `METHOD path HTTP/1.1\r\n`, the caller's headers (without the framing
 * ones), Host when missing, Content-Length and the blank line; or the error that refuses it.
 * Nothing with CR, LF or NUL gets through: such a header would let the caller smuggle a
 * second request or header past the proxy.
 */
function buildHead(options: Http1DispatchOptions, hostLine: string): string | Http1PoolError {
  const { method, path, headers, body } = options
  if (!isToken(method)) return invalidArgument(`invalid method ${JSON.stringify(method)}`)
  if (!isRequestTarget(path)) return invalidArgument(`invalid path ${JSON.stringify(path)}`)
  let head = `${method} ${path} HTTP/1.1\r\n`
  let hasHost = false
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]
    const value = headers[i + 1]
    if (typeof name !== 'string' || !isToken(name))
      return invalidArgument(`invalid header name ${JSON.stringify(name)}`)
    if (typeof value !== 'string' || !isFieldValue(value))
      return invalidArgument(`invalid value of header ${name}`)
    switch (name.length) {
      case 4:
        if (name.toLowerCase() === 'host') hasHost = true
        break
      case 10:
        if (name.toLowerCase() === 'connection') continue
        break
      case 14:
        if (name.toLowerCase() === 'content-length') continue
        break
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') continue
        break
    }
    head += `${name}: ${value}\r\n`
  }
  if (!hasHost) head += hostLine
  // Content-Length when there is a body, and also for an empty one where the method expects
  // one (undici sends `content-length: 0` for POST/PUT/PATCH, and some servers insist on it).
  if (body !== null && body.length > 0) head += `content-length: ${body.length}\r\n\r\n`
  else if (
    method === 'POST' ||
    method === 'PUT' ||
    method === 'PATCH' ||
    (body !== null && method !== 'GET' && method !== 'HEAD')
  )
    head += 'content-length: 0\r\n\r\n'
  else head += '\r\n'
  return head
}

function invalidArgument(message: string): Http1PoolError {
  return new Http1PoolError('UND_ERR_INVALID_ARG', message)
}

function isToken(s: string): boolean {
  if (s.length === 0) return false
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c > 127 || tokenChar[c] !== 1) return false
  }
  return true
}

/** No CR, LF or NUL (the smuggling guard), and nothing latin1 cannot carry. */
function isFieldValue(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c === 13 || c === 10 || c === 0 || c > 255) return false
  }
  return true
}

/** Visible latin1 characters only: a space or control character would break the request line. */
function isRequestTarget(s: string): boolean {
  if (s.length === 0) return false
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c <= 32 || c === 127 || c > 255) return false
  }
  return true
}

function parseOrigin(origin: unknown): Origin {
  let url: URL | undefined
  try {
    if (typeof origin === 'string') url = new URL(origin)
  } catch {
    url = undefined
  }
  if (
    url === undefined ||
    url.protocol !== 'http:' ||
    url.hostname === '' ||
    url.username !== '' ||
    url.password !== '' ||
    (url.pathname !== '/' && url.pathname !== '') ||
    url.search !== '' ||
    url.hash !== ''
  )
    throw new InvalidOptionError('Http1Pool.origin', 'an http:// origin (http://host:port)', origin)
  // net.connect takes an IPv6 address without its URL brackets.
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
  return { host, port: url.port === '' ? 80 : Number(url.port), hostLine: `host: ${url.host}\r\n` }
}
