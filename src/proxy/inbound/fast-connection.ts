// A plain-HTTP connection served by the fast path: requests read by fast-request.ts, answered
// through fast-response.ts, one at a time (pipelined requests wait in the buffer, as node:http
// makes them wait). The first request outside the fast path's subset, or one the handler
// declines, hands the connection to node:http for the rest of its life: the unread bytes are
// put back on the socket and node's own connection listener takes it, so every refusal,
// timeout and edge case of HTTP/1.x stays node:http's (see listener.ts).

import type { Socket } from 'node:net'
import { type FastRequest, type FastRequestLimits, parseFastRequest } from './fast-request.js'
import { FastResponse, type FastResponseOwner } from './fast-response.js'

/**
 * Serves one fast-path request: true when it took the request (it then answers through `res`),
 * false to hand the connection to node:http with the request unread.
 */
export type FastRequestHandler = (req: FastRequest, res: FastResponse) => boolean

/** What a connection needs from its listener. */
export interface FastConnectionOptions {
  readonly limits: FastRequestLimits & { readonly keepAliveTimeoutMs: number }
  /** The handler for the requests (looked up per request: a reload may replace it). */
  readonly handler: () => FastRequestHandler | undefined
  /** Gives the socket to node:http (its own connection listener). */
  readonly handOver: (socket: Socket) => void
  /** Whether the listener is draining: responses then close their connection. */
  readonly draining: () => boolean
  /** The connection ended (closed, or handed to node:http). */
  readonly onEnd: (connection: FastConnection) => void
}

/** One client connection on the fast path; see the module comment. */
export class FastConnection implements FastResponseOwner {
  readonly socket: Socket
  readonly keepAliveTimeoutMs: number
  readonly #options: FastConnectionOptions
  #buffer: Buffer | undefined
  #current: FastResponse | undefined
  #pumping = false
  #ended = false
  // A response announced `Connection: close` (or the client half-closed): nothing more is read.
  #closing = false
  #closeAfterCurrent = false
  #paused = false
  readonly #onData = (chunk: Buffer): void => this.#received(chunk)
  readonly #onDrain = (): void => this.#current?.drained()
  readonly #onClose = (): void => this.#closed()
  readonly #onEnd = (): void => this.#clientFinished()
  readonly #onTimeout = (): void => this.#idleTimeout()
  readonly #onError = (): void => {
    // 'close' follows; a reset client is not the proxy's error to log.
  }

  constructor(socket: Socket, options: FastConnectionOptions) {
    this.socket = socket
    this.#options = options
    this.keepAliveTimeoutMs = options.limits.keepAliveTimeoutMs
    socket.setNoDelay(true)
    // Idle connections close after the keep-alive timeout. The timer restarts on every read
    // and write, so one armed per connection costs nothing per request; while a response is
    // pending it is ignored (see #idleTimeout).
    socket.setTimeout(this.keepAliveTimeoutMs)
    socket.on('data', this.#onData)
    socket.on('drain', this.#onDrain)
    socket.on('end', this.#onEnd)
    socket.on('timeout', this.#onTimeout)
    socket.on('error', this.#onError)
    socket.on('close', this.#onClose)
  }

  /** True while a response is under way. */
  get busy(): boolean {
    return this.#current !== undefined
  }

  closesAfter(_response: FastResponse): boolean {
    return this.#closeAfterCurrent || this.#options.draining()
  }

  /** Draining: an idle connection closes now, a busy one after its response. */
  drain(): void {
    if (this.#current === undefined) this.socket.destroy()
  }

  responseDone(response: FastResponse, destroyed: boolean): void {
    if (response !== this.#current) return
    this.#current = undefined
    if (destroyed) return
    if (response.closeAfter || this.#options.draining()) {
      this.#closing = true
      this.#buffer = undefined
      this.socket.end()
      return
    }
    if (this.#paused) {
      this.#paused = false
      this.socket.resume()
    }
    this.#pump()
  }

  #received(chunk: Buffer): void {
    const buffered = this.#buffer
    this.#buffer = buffered === undefined ? chunk : Buffer.concat([buffered, chunk])
    if (this.#current !== undefined) {
      // Pipelined bytes wait; past what one request may take, stop reading until the
      // response is out.
      const limits = this.#options.limits
      if (!this.#paused && this.#buffer.length > limits.maxHeaderBytes + limits.maxBodyBytes) {
        this.#paused = true
        this.socket.pause()
      }
      return
    }
    this.#pump()
  }

  // Serves buffered requests until one is under way, the buffer is empty, or the connection
  // went to node:http. A loop, not recursion: a response may end inside the handler.
  #pump(): void {
    if (this.#pumping) return
    this.#pumping = true
    try {
      while (this.#current === undefined && !this.#ended && !this.#closing) {
        const buffer = this.#buffer
        if (buffer === undefined) return
        const request = parseFastRequest(buffer, this.socket, this.#options.limits)
        const handler = request === undefined ? undefined : this.#options.handler()
        if (request === undefined || handler === undefined) {
          this.#handOver()
          return
        }
        const response = new FastResponse(this, this.socket, request.method)
        this.#closeAfterCurrent = !request.keepAlive
        this.#current = response
        this.#buffer =
          request.length === buffer.length ? undefined : buffer.subarray(request.length)
        let taken: boolean
        try {
          taken = handler(request, response)
        } catch {
          // Handlers answer their own failures; one that throws anyway leaves a broken socket.
          this.socket.destroy()
          return
        }
        if (!taken) {
          this.#current = undefined
          this.#buffer = buffer
          this.#handOver()
          return
        }
      }
    } finally {
      this.#pumping = false
    }
  }

  #handOver(): void {
    if (this.#ended) return
    this.#detach()
    const socket = this.socket
    socket.setTimeout(0)
    if (this.#paused) socket.resume()
    if (this.#buffer !== undefined) socket.unshift(this.#buffer)
    this.#buffer = undefined
    this.#options.handOver(socket)
  }

  #detach(): void {
    this.#ended = true
    const socket = this.socket
    socket.off('data', this.#onData)
    socket.off('drain', this.#onDrain)
    socket.off('end', this.#onEnd)
    socket.off('timeout', this.#onTimeout)
    socket.off('error', this.#onError)
    socket.off('close', this.#onClose)
    this.#options.onEnd(this)
  }

  // As node:http does (its httpAllowHalfOpen is off): a client that half-closes is gone, its
  // request under way abandoned and the connection ended.
  #clientFinished(): void {
    this.#closing = true
    this.#buffer = undefined
    const current = this.#current
    this.#current = undefined
    current?.clientGone()
    this.socket.end()
  }

  #idleTimeout(): void {
    if (this.#current === undefined) this.socket.destroy()
  }

  #closed(): void {
    const current = this.#current
    this.#current = undefined
    this.#buffer = undefined
    if (!this.#ended) this.#detach()
    current?.clientGone()
  }
}
