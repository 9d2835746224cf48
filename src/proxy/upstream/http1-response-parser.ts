// The response parser of Http1Pool's sockets: a strict, incremental HTTP/1.1 response reader
// that works on the socket's Buffers as they arrive and hands the handler subarrays of them. It
// reads a status line and headers (interim 1xx heads too), then a body framed by
// Content-Length, by chunks (extensions and trailers included) or by the end of the stream, and
// fails a malformed response with llhttp's error codes (`HPE_*`).
//
// It is the base class of `Connection` (http1-connection.ts), not an object of its own: the
// parser's state lives in the connection's own fields and its steps call the connection's
// methods directly, so a read costs no extra object, call layer or pointer hop. What it needs
// of the connection is the abstract members at the top of the class.

import { tokenChar } from '../../http/token.js'
import type { PendingRequest } from './http1-connection.js'
import { Http1PoolError } from './http1-types.js'
import {
  chunkedBytes,
  closeBytes,
  connectionBytes,
  contentLengthBytes,
  equalsLower,
  hexValue,
  keepAliveBytes,
  keepAliveTimeoutSeconds,
  lastTokenIs,
  transferEncodingBytes,
} from './http1-wire.js'

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
// Whitespace after the size: only more of it or `;` may follow (BWS before an extension).
const csSpace = 3

/**
 * The parser state of the response a socket is reading, and the steps that advance it. The
 * subclass (`Connection`) owns the socket and the request, and implements the abstract members:
 * what the parser reads of them, and what it calls when the response pauses, completes, fails
 * or upgrades. All of a response's bytes go through {@link ResponseParser.execute}.
 */
export abstract class ResponseParser {
  /** Largest head, and largest trailer section (the pool's `maxHeaderBytes`). */
  readonly maxHeaderBytes: number

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

  /** The request whose response this is; undefined once it has ended (completed or failed). */
  abstract req: PendingRequest | undefined
  /** Whether the handler paused the response: the parser stops at the next step boundary. */
  abstract paused: boolean
  /** The unparsed rest of a read, kept while paused. */
  abstract stash: Buffer | undefined

  constructor(maxHeaderBytes: number) {
    this.maxHeaderBytes = maxHeaderBytes
  }

  /**
   * The response is complete (the parser is back to idle): free or destroy the socket, then
   * call `onComplete`. `extraBytes` says the read held bytes after the response.
   */
  abstract complete(extraBytes: boolean): void
  /** Ends the current request with `onError(error)` and destroys the socket. */
  abstract failRequest(error: Error): void
  /** Stops reading from the socket until the handler resumes. */
  abstract pause(): void
  /** A `101 Switching Protocols` head came back (`raw` its headers), which is not supported. */
  abstract upgrade(raw: Buffer[]): void

  /**
   * The server ended its side of the stream: true when that ends the response (a body read
   * until close, or a response that was already complete but paused), which is then complete
   * and its socket not reused; false when it cuts the response short.
   */
  serverEnded(): boolean {
    if (this.state !== sUntilClose && this.state !== sEnd) return false
    this.keepAlive = false
    this.state = sEnd
    return true
  }

  /**
   * Parses one read of `req`'s response, from its start. Stops early when the request ends
   * (completed, failed or upgraded) or the handler pauses (the unread rest goes to `stash`).
   */
  execute(req: PendingRequest, buf: Buffer): void {
    const len = buf.length
    let pos = 0
    for (;;) {
      const state = this.state
      if (state === sEnd) {
        this.state = sIdle
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
    const max = this.maxHeaderBytes
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
      `Response header section larger than ${this.maxHeaderBytes} bytes`,
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

  /**
   * `size[;extensions]\r\n`; a zero size starts the trailers. Whitespace after the size is the
   * BWS that RFC 9112 §7.1.1 allows before a `;`, and nothing else: `5 6` or `5 \r\n` is an
   * invalid chunk size, as llhttp has it, rather than a 5-byte chunk with an odd extension.
   */
  readChunkSize(b: Buffer, start: number): number {
    const len = b.length
    const max = this.maxHeaderBytes
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
        else if (c === 59) this.chunkSub = csExtension
        else if (c === 32 || c === 9) this.chunkSub = csSpace
        else return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Invalid chunk size')
      } else if (this.chunkSub === csSpace) {
        if (c === 59) this.chunkSub = csExtension
        else if (c !== 32 && c !== 9)
          return this.parseError('HPE_INVALID_CHUNK_SIZE', 'Invalid chunk size')
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
