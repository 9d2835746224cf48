// Sticky assignment for weighted route splits: a user's header or cookie value is hashed to a
// point in [0, 1), and the route's cumulative weights map that point to a target. The hash is
// fixed (FNV-1a 32-bit with a murmur3 finalizer) so every worker process, and every restart,
// puts one user at the same point.

import type { RouteConfig } from '../contracts.js'
import { headerValueOf } from './header-value.js'

const fnvOffset = 0x811c9dc5
const fnvPrime = 0x01000193
const twoPow32 = 4_294_967_296

/**
 * The 32-bit hash of a string's UTF-8 bytes: FNV-1a, then murmur3's `fmix32` finalizer, which
 * spreads FNV's weak low bits over the whole word (user ids such as `u-1`, `u-2` differ only in
 * their last byte). Stable across processes, platforms and restarts.
 *
 * @example
 * ```ts
 * stickyHash('user-42') === stickyHash('user-42') // always, in every process
 * ```
 */
export function stickyHash(value: string): number {
  let hash = fnvOffset
  const bytes = Buffer.from(value, 'utf8')
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i] as number
    hash = Math.imul(hash, fnvPrime)
  }
  hash ^= hash >>> 16
  hash = Math.imul(hash, 0x85ebca6b)
  hash ^= hash >>> 13
  hash = Math.imul(hash, 0xc2b2ae35)
  hash ^= hash >>> 16
  return hash >>> 0
}

/** The point in [0, 1) a sticky value is assigned to. */
export function stickyPoint(value: string): number {
  return stickyHash(value) / twoPow32
}

/**
 * Reads one cookie from `Cookie` header value(s) (`a=1; b=2`, RFC 6265 §4.2.1). The first
 * occurrence wins; a value in double quotes is unquoted; no percent-decoding (the raw value is
 * what gets hashed, so it is stable whatever encoding the client used). Undefined when absent.
 */
export function readCookie(
  cookieHeader: string | readonly string[] | undefined,
  name: string,
): string | undefined {
  if (cookieHeader === undefined) return undefined
  const headers = typeof cookieHeader === 'string' ? [cookieHeader] : cookieHeader
  for (const header of headers) {
    let start = 0
    while (start < header.length) {
      let end = header.indexOf(';', start)
      if (end === -1) end = header.length
      const eq = header.indexOf('=', start)
      if (eq !== -1 && eq < end && header.slice(start, eq).trim() === name) {
        let value = header.slice(eq + 1, end).trim()
        if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
          value = value.slice(1, -1)
        }
        return value
      }
      start = end + 1
    }
  }
  return undefined
}

/**
 * The value a route's sticky setting names in a request's headers (lower-case names), or
 * undefined when the route is not sticky or the request lacks the header or cookie (such a
 * request is assigned at random). A repeated header is joined with `, `; an empty value counts
 * as absent.
 */
export function stickyValueOf(
  sticky: RouteConfig['sticky'],
  headers: Readonly<Record<string, string | string[]>>,
): string | undefined {
  if (sticky === undefined) return undefined
  const value =
    'header' in sticky
      ? headerValueOf(headers, sticky.header.toLowerCase())
      : readCookie(headers.cookie, sticky.cookie)
  return value === '' ? undefined : value
}
