// The fast path's request reader: a strict HTTP/1.1 head parser for the plain requests that
// make up nearly all of an ambassador's traffic, so the proxy does not pay for node:http's
// IncomingMessage, header objects and stream machinery on each of them.
//
// It accepts a strict subset of what Node's own (llhttp) parser accepts and never refuses
// anything itself: whatever falls outside the subset makes `parseFastRequest` return undefined
// and the connection is handed to node:http, which parses the same bytes again and answers
// exactly as it does without the fast path (400, 413, 431, ...). The subset:
// - the whole head and the whole body are already in the buffer (a request that arrives in
//   pieces goes to node:http, whose header and request timeouts then apply to it);
// - request line `METHOD SP origin-form-target SP HTTP/1.1`, the method one of GET, HEAD,
//   POST, PUT, PATCH, DELETE, OPTIONS, the target made only of the characters RFC 3986 allows
//   in a path and query (no `#`, no space, no byte above 0x7e);
// - header lines `token ":" OWS value OWS` ending in CRLF, values of HTAB, visible ASCII,
//   space and obs-text (0x80-0xff), no obs-fold, at most `maxHeaders` of them, the head at
//   most `maxHeaderBytes`;
// - no `Transfer-Encoding`, `Expect` or `Upgrade`; at most one `Content-Length`, digits only,
//   at most `maxBodyBytes`, and 0 on a HEAD.

import type { Socket } from 'node:net'
import { tokenChar } from '../../http/token.js'
import { HeaderRecord } from '../hop-by-hop.js'

/** A request read whole by {@link parseFastRequest}. */
export interface FastRequest {
  /** Upper-case method as sent. */
  readonly method: string
  /** The request target (origin-form). */
  readonly url: string
  readonly httpVersionMajor: 1
  readonly httpVersionMinor: 1
  /** `[name, value, name, value, ...]`, names as sent (like IncomingMessage.rawHeaders). */
  readonly rawHeaders: string[]
  /**
   * Lower-case names to values, repeated names joined with `", "` (what IncomingMessage.headers
   * gives for the names the proxy reads from it: the deadline headers and `x-request-id`).
   */
  readonly headers: Record<string, string>
  /** The body, undefined when there is none. */
  readonly body: Buffer | undefined
  /** False when the client sent `Connection: close`. */
  readonly keepAlive: boolean
  /** The connection. */
  readonly socket: Socket
  /** Bytes the request took in the buffer, head and body. */
  readonly length: number
}

/** The listener limits the parser enforces by handing over to node:http. */
export interface FastRequestLimits {
  readonly maxHeaderBytes: number
  readonly maxHeaders: number
  readonly maxBodyBytes: number
}

const headEnd = Buffer.from('\r\n\r\n', 'latin1')

// targetChar[c] = 1 for the characters RFC 3986 allows in a path and query:
// unreserved, sub-delims, ":", "@", "/", "?" and "%" (of a percent-encoding).
const targetChar = new Uint8Array(256)
for (const c of "-._~!$&'()*+,;=:@/?%") targetChar[c.charCodeAt(0)] = 1
for (let c = 0x30; c <= 0x39; c++) targetChar[c] = 1
for (let c = 0x41; c <= 0x5a; c++) targetChar[c] = 1
for (let c = 0x61; c <= 0x7a; c++) targetChar[c] = 1

const fastMethods: ReadonlySet<string> = new Set([
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'PATCH',
  'DELETE',
  'OPTIONS',
])

/**
 * Reads the request at the start of `buffer`, or returns undefined when the request is not
 * (or not yet wholly) in the fast path's subset: the caller then hands the connection, with
 * these bytes, to node:http. Never throws on any input.
 *
 * @example
 * ```ts
 * const request = parseFastRequest(buffer, socket, listener.limits)
 * if (request === undefined) handOver(socket, buffer)
 * else serve(request) // then buffer = buffer.subarray(request.length)
 * ```
 */
export function parseFastRequest(
  buffer: Buffer,
  socket: Socket,
  limits: FastRequestLimits,
): FastRequest | undefined {
  const end = buffer.indexOf(headEnd)
  if (end < 0 || end + 4 > limits.maxHeaderBytes) return undefined
  const head = buffer.toString('latin1', 0, end)

  // Request line.
  const lineEnd = head.indexOf('\r\n')
  const requestLine = lineEnd < 0 ? head : head.slice(0, lineEnd)
  const space = requestLine.indexOf(' ')
  if (space < 0) return undefined
  const method = requestLine.slice(0, space)
  if (!fastMethods.has(method)) return undefined
  const versionAt = requestLine.length - 9
  if (versionAt <= space + 1 || requestLine.slice(versionAt) !== ' HTTP/1.1') return undefined
  if (requestLine.charCodeAt(space + 1) !== 0x2f) return undefined
  for (let i = space + 1; i < versionAt; i++) {
    if (targetChar[requestLine.charCodeAt(i)] !== 1) return undefined
  }
  const url = requestLine.slice(space + 1, versionAt)

  // Header lines.
  const rawHeaders: string[] = []
  // No prototype, as IncomingMessage.headers: a header named `constructor` is only a header.
  const headers: Record<string, string> = new HeaderRecord()
  let contentLength = -1
  let keepAlive = true
  let at = lineEnd < 0 ? head.length : lineEnd + 2
  while (at < head.length) {
    let next = head.indexOf('\r\n', at)
    if (next < 0) next = head.length
    const colon = head.indexOf(':', at)
    if (colon <= at || colon > next) return undefined
    for (let i = at; i < colon; i++) {
      if (tokenChar[head.charCodeAt(i)] !== 1) return undefined
    }
    let valueStart = colon + 1
    let valueEnd = next
    for (let i = valueStart; i < valueEnd; i++) {
      const c = head.charCodeAt(i)
      // HTAB, SP..~, obs-text; anything else (CR, LF, NUL, DEL, other controls) is out.
      if (c < 0x20 ? c !== 0x09 : c === 0x7f) return undefined
    }
    while (valueStart < valueEnd && isOws(head.charCodeAt(valueStart))) valueStart++
    while (valueEnd > valueStart && isOws(head.charCodeAt(valueEnd - 1))) valueEnd--
    const name = head.slice(at, colon)
    const value = head.slice(valueStart, valueEnd)
    rawHeaders.push(name, value)
    if (rawHeaders.length > limits.maxHeaders * 2) return undefined
    const lower = name.toLowerCase()
    switch (lower) {
      case 'content-length':
        if (contentLength >= 0 || !/^\d{1,15}$/.test(value)) return undefined
        contentLength = Number(value)
        break
      case 'transfer-encoding':
      case 'expect':
      case 'upgrade':
        return undefined
      case 'connection':
        if (hasCloseToken(value)) keepAlive = false
        break
    }
    const existing = headers[lower]
    headers[lower] = existing === undefined ? value : `${existing}, ${value}`
    at = next + 2
  }

  let length = end + 4
  let body: Buffer | undefined
  if (contentLength > 0) {
    // A HEAD with a body is refused by node:http's path (readInbound), as every refusal is.
    if (
      method === 'HEAD' ||
      contentLength > limits.maxBodyBytes ||
      buffer.length < length + contentLength
    )
      return undefined
    body = buffer.subarray(length, length + contentLength)
    length += contentLength
  }
  return {
    method,
    url,
    httpVersionMajor: 1,
    httpVersionMinor: 1,
    rawHeaders,
    headers,
    body,
    keepAlive,
    socket,
    length,
  }
}

function isOws(c: number): boolean {
  return c === 0x20 || c === 0x09
}

/** Whether a `Connection` header value lists the `close` option (case-insensitive). */
export function hasCloseToken(value: string): boolean {
  for (const token of value.split(',')) if (token.trim().toLowerCase() === 'close') return true
  return false
}
