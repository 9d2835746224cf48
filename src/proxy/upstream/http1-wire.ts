// The bytes and strings of HTTP/1.1 for Http1Pool: the tables and case-folding matchers the
// response parser (http1-response-parser.ts) reads header bytes with, and the other direction,
// the request head built (and refused when it could smuggle anything) from a dispatch's method,
// path and headers, plus the origin the pool connects to.

import { InvalidOptionError } from '../../core/errors.js'
import { tokenChar } from '../../http/token.js'
import { type Http1DispatchOptions, Http1PoolError } from './http1-types.js'

/** hexValue[c] = the digit's value, 255 when c is no hex digit. */
export const hexValue = new Uint8Array(256).fill(255)
for (let i = 0; i < 16; i++) {
  hexValue['0123456789abcdef'.charCodeAt(i)] = i
  hexValue['0123456789ABCDEF'.charCodeAt(i)] = i
}

// The lower-case names and tokens the parser looks for, as bytes for equalsLower.
/** `connection`, the header name. */
export const connectionBytes = Buffer.from('connection', 'latin1')
/** `keep-alive`, the header name and the Connection token. */
export const keepAliveBytes = Buffer.from('keep-alive', 'latin1')
/** `content-length`, the header name. */
export const contentLengthBytes = Buffer.from('content-length', 'latin1')
/** `transfer-encoding`, the header name. */
export const transferEncodingBytes = Buffer.from('transfer-encoding', 'latin1')
/** `chunked`, the transfer coding. */
export const chunkedBytes = Buffer.from('chunked', 'latin1')
/** `close`, the Connection token. */
export const closeBytes = Buffer.from('close', 'latin1')
const timeoutBytes = Buffer.from('timeout', 'latin1')

/**
 * Whether `b` at `start` spells `lower` (lower-case letters and `-`) in any case. OR-ing 0x20
 * folds ASCII case; the other bytes it could fold onto `-` are control characters, which the
 * callers have already refused.
 */
export function equalsLower(b: Buffer, start: number, lower: Buffer): boolean {
  for (let i = 0; i < lower.length; i++)
    if (((b[start + i] as number) | 0x20) !== lower[i]) return false
  return true
}

/** Whether the last comma-separated item of `b[start, end)` is `lower` (any case). */
export function lastTokenIs(b: Buffer, start: number, end: number, lower: Buffer): boolean {
  let e = end
  while (e > start && (b[e - 1] === 32 || b[e - 1] === 9)) e--
  let s = e
  while (s > start && b[s - 1] !== 44) s--
  while (s < e && (b[s] === 32 || b[s] === 9)) s++
  return e - s === lower.length && equalsLower(b, s, lower)
}

/** The `timeout=N` of a Keep-Alive header value, in seconds; -1 when absent or malformed. */
export function keepAliveTimeoutSeconds(b: Buffer, start: number, end: number): number {
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
export function buildHead(
  options: Http1DispatchOptions,
  hostLine: string,
): string | Http1PoolError {
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

/** Where a pool connects, from {@link parseOrigin}. */
export interface Origin {
  readonly host: string
  readonly port: number
  /** `host: <host[:port]>\r\n`, added to requests that bring no Host header. */
  readonly hostLine: string
}

/**
 * The origin a pool connects to, from its `http://host[:port]` URL; throws InvalidOptionError for
 * anything else (https, a path, a query, credentials...).
 */
export function parseOrigin(origin: unknown): Origin {
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
