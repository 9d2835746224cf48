// The fast path's response: the part of node:http's ServerResponse that the proxy's forward
// path, its problem answers and the test services use, written straight to the socket. The
// head is built as one latin1 string and leaves with the first body chunk in a single write,
// so a small response costs one syscall and no per-header objects.

import { type OutgoingHttpHeader, type OutgoingHttpHeaders, STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import { httpTokenPattern } from '../../http/token.js'
import { hasCloseToken } from './fast-request.js'

/** What a {@link FastResponse} needs from its connection. */
export interface FastResponseOwner {
  /** Whether the connection closes after this response (client asked, or draining). */
  closesAfter(response: FastResponse): boolean
  /** The keep-alive timeout announced in `Keep-Alive: timeout=N` (ms). */
  readonly keepAliveTimeoutMs: number
  /** The response ended (or was destroyed): the connection may read its next request. */
  responseDone(response: FastResponse, destroyed: boolean): void
}

type HeaderValue = OutgoingHttpHeader | readonly string[]
type HeaderInput = OutgoingHttpHeaders | OutgoingHttpHeader[]

const crlf = Buffer.from('\r\n', 'latin1')
const lastChunk = Buffer.from('0\r\n\r\n', 'latin1')
const badValue = /[^\t\x20-\x7e\x80-\xff]/
// Lengths of the names writeHead looks at (date, connection, content-length, transfer-encoding):
// other names are never lower-cased.
const framingNameLengths: ReadonlySet<number> = new Set([4, 10, 14, 17])
// Bodies above this are written after the head rather than copied next to it.
const copyLimit = 64 * 1024

let dateSecond = -1
let dateText = ''
/** The `Date` header value, formatted once per second. */
function httpDate(): string {
  const now = Date.now()
  const second = Math.floor(now / 1000)
  if (second !== dateSecond) {
    dateSecond = second
    dateText = new Date(second * 1000).toUTCString()
  }
  return dateText
}

// The head writeHead is building. Module state, not a closure per call: writeHead runs to the
// end synchronously and calls nothing that could start another.
const scratch = {
  head: '',
  hasLength: false,
  hasDate: false,
  userChunked: false,
  closeAsked: false,
}

function addHeader(name: string, value: HeaderValue): void {
  if (!httpTokenPattern.test(name)) throw new TypeError(`Invalid header name: "${name}"`)
  if (typeof value === 'object') {
    for (const item of value) addHeader(name, item)
    return
  }
  const text = typeof value === 'number' ? String(value) : value
  if (badValue.test(text)) throw new TypeError(`Invalid character in header "${name}"`)
  const lower = framingNameLengths.has(name.length) ? name.toLowerCase() : ''
  if (lower === 'content-length') scratch.hasLength = true
  else if (lower === 'date') scratch.hasDate = true
  else if (lower === 'transfer-encoding') {
    scratch.userChunked = /(?:^|,)\s*chunked\s*$/i.test(text)
  } else if (lower === 'connection') {
    if (hasCloseToken(text)) scratch.closeAsked = true
    return // the connection's own Connection header is written by writeHead
  }
  scratch.head += `${name}: ${text}\r\n`
}

/**
 * A response on a fast-path connection. Shaped like the ServerResponse members the proxy uses
 * (`writeHead`, `write` with `drain`, `end`, `destroy`, `setHeader`, `headersSent`,
 * `destroyed`, `writableEnded`, `writableFinished`, `socket`, and the `close` event), with the
 * same framing rules: `Content-Length` when the head names one, chunked otherwise, no body for
 * HEAD, 1xx, 204 and 304.
 */
export class FastResponse {
  statusCode = 200
  headersSent = false
  destroyed = false
  writableEnded = false
  writableFinished = false
  /** There is no IncomingMessage on the fast path (its body is always read whole). */
  readonly req: undefined = undefined
  readonly socket: Socket
  readonly #owner: FastResponseOwner
  readonly #headRequest: boolean
  #extraHeaders: Record<string, HeaderValue> | undefined
  #pendingHead: string | undefined
  #chunked = false
  #noBody = false
  #closeListeners: ((this: FastResponse) => void)[] | undefined
  #drainListeners: ((this: FastResponse) => void)[] | undefined
  #closeEmitted = false
  #closeAfter = false

  constructor(owner: FastResponseOwner, socket: Socket, method: string) {
    this.#owner = owner
    this.socket = socket
    this.#headRequest = method === 'HEAD'
  }

  /** Sets a header for the head not yet written (like ServerResponse.setHeader). */
  setHeader(name: string, value: HeaderValue): this {
    if (this.headersSent) throw new Error('Cannot set headers after they are sent to the client')
    this.#extraHeaders ??= {}
    this.#extraHeaders[name.toLowerCase()] = value
    return this
  }

  /**
   * Builds the head (sent with the first body bytes, or at `end`). Throws, as node:http does,
   * on a header name that is not a token or a value with CR, LF or another control character.
   */
  writeHead(status: number, text?: string | HeaderInput, headers?: HeaderInput): this {
    if (this.headersSent) throw new Error('Cannot write headers after they are sent to the client')
    let statusText: string | undefined
    if (typeof text === 'string') statusText = text
    else headers = text
    if (!Number.isInteger(status) || status < 100 || status > 999)
      throw new RangeError(`Invalid status code: ${status}`)
    if (statusText !== undefined && badValue.test(statusText))
      throw new TypeError('Invalid character in statusMessage')
    this.statusCode = status
    const built = scratch
    built.head = `HTTP/1.1 ${status} ${statusText ?? STATUS_CODES[status] ?? 'unknown'}\r\n`
    built.hasLength = false
    built.hasDate = false
    built.userChunked = false
    built.closeAsked = false
    if (this.#extraHeaders !== undefined) {
      for (const name in this.#extraHeaders)
        addHeader(name, this.#extraHeaders[name] as HeaderValue)
    }
    if (headers !== undefined) {
      if (Array.isArray(headers)) {
        // node:http's flat form: [name, value, name, value, ...].
        for (let i = 0; i < headers.length; i += 2)
          addHeader(String(headers[i]), headers[i + 1] as HeaderValue)
      } else {
        const record = headers as Record<string, HeaderValue | undefined>
        for (const name in record) {
          const value = record[name]
          if (value !== undefined) addHeader(name, value)
        }
      }
    }
    let head = built.head
    const { hasLength, hasDate, userChunked, closeAsked } = built
    built.head = ''
    if (!hasDate) head += `date: ${httpDate()}\r\n`
    if (closeAsked || this.#owner.closesAfter(this)) {
      head += 'connection: close\r\n'
      this.#closeAfter = true
    } else {
      head += `connection: keep-alive\r\nkeep-alive: timeout=${Math.floor(this.#owner.keepAliveTimeoutMs / 1000)}\r\n`
    }
    this.#noBody = this.#headRequest || status < 200 || status === 204 || status === 304
    if (userChunked) this.#chunked = !this.#noBody
    else if (!hasLength && !this.#noBody) {
      head += 'transfer-encoding: chunked\r\n'
      this.#chunked = true
    }
    this.#pendingHead = `${head}\r\n`
    this.headersSent = true
    return this
  }

  /** Whether the connection must close once this response is out. */
  get closeAfter(): boolean {
    return this.#closeAfter
  }

  /** Writes body bytes; false when the socket's buffer is full (wait for `drain`). */
  write(chunk: Buffer | string): boolean {
    if (this.writableEnded || this.destroyed) return false
    if (!this.headersSent) this.writeHead(this.statusCode)
    const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    if (this.#noBody || data.length === 0) return this.#flushHead()
    let head = this.#pendingHead ?? ''
    this.#pendingHead = undefined
    const tail = this.#chunked ? crlf : undefined
    if (this.#chunked) head += `${data.length.toString(16)}\r\n`
    const socket = this.socket
    if (head === '' && tail === undefined) return socket.write(data)
    if (data.length <= copyLimit) return socket.write(withHead(head, data, tail))
    socket.cork()
    socket.write(head, 'latin1')
    let room = socket.write(data)
    if (tail !== undefined) room = socket.write(tail)
    socket.uncork()
    return room
  }

  /** Ends the response, after `chunk` when given. */
  end(chunk?: Buffer | string): this {
    if (this.writableEnded || this.destroyed) return this
    if (chunk !== undefined && chunk.length > 0) this.write(chunk)
    else if (!this.headersSent) this.writeHead(this.statusCode)
    if (this.#pendingHead !== undefined) {
      const head = this.#pendingHead
      this.#pendingHead = undefined
      if (this.#chunked) this.socket.write(withHead(head, lastChunk, undefined))
      else this.socket.write(head, 'latin1')
    } else if (this.#chunked) {
      this.socket.write(lastChunk)
    }
    this.writableEnded = true
    this.writableFinished = true
    this.#owner.responseDone(this, false)
    this.#emitCloseSoon()
    return this
  }

  /** Abandons the response: the connection is destroyed, so the client sees it broken. */
  destroy(): this {
    if (this.destroyed) return this
    this.destroyed = true
    if (!this.writableEnded) {
      this.socket.destroy()
      this.#owner.responseDone(this, true)
    }
    this.#emitCloseSoon()
    return this
  }

  /** `close` (once, after the response ended or the client went away) and `drain`. */
  on(event: string, listener: (this: FastResponse) => void): this {
    if (event === 'close') {
      this.#closeListeners ??= []
      this.#closeListeners.push(listener)
    } else if (event === 'drain') {
      this.#drainListeners ??= []
      this.#drainListeners.push(listener)
    }
    return this
  }

  /** Like {@link FastResponse.on}: `close` fires once anyway and `drain` listeners are one-shot. */
  once(event: string, listener: (this: FastResponse) => void): this {
    return this.on(event, listener)
  }

  /** Removes a listener added with on/once. */
  off(event: string, listener: (this: FastResponse) => void): this {
    const list = event === 'close' ? this.#closeListeners : this.#drainListeners
    const at = list?.indexOf(listener) ?? -1
    if (at >= 0) list?.splice(at, 1)
    return this
  }

  /** The connection's socket drained: one-shot `drain` listeners run. */
  drained(): void {
    const listeners = this.#drainListeners
    if (listeners === undefined || listeners.length === 0) return
    this.#drainListeners = undefined
    for (const listener of listeners) listener.call(this)
  }

  /** The client went away before the response ended. */
  clientGone(): void {
    if (this.writableEnded || this.destroyed) return
    this.destroyed = true
    this.#emitCloseSoon()
  }

  #flushHead(): boolean {
    const head = this.#pendingHead
    if (head === undefined) return true
    this.#pendingHead = undefined
    return this.socket.write(head, 'latin1')
  }

  // After the current call stack, as node:http does: the forward path ends its call right
  // after `end()` and must not take this `close` for a client that went away.
  #emitCloseSoon(): void {
    if (this.#closeEmitted) return
    this.#closeEmitted = true
    const listeners = this.#closeListeners
    if (listeners === undefined || listeners.length === 0) return
    this.#closeListeners = undefined
    queueMicrotask(() => {
      for (const listener of listeners) listener.call(this)
    })
  }
}

/** One buffer: the head (latin1), the data and an optional tail, for a single socket write. */
function withHead(head: string, data: Buffer, tail: Buffer | undefined): Buffer {
  const headBytes = head.length
  const out = Buffer.allocUnsafe(headBytes + data.length + (tail?.length ?? 0))
  out.write(head, 0, 'latin1')
  data.copy(out, headBytes)
  if (tail !== undefined) tail.copy(out, headBytes + data.length)
  return out
}
