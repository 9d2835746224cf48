// Sticky assignment for weighted route splits: weighted rendezvous hashing (highest random
// weight). Each target draws a fixed pseudo-random u in (0, 1) from the hash of (sticky value,
// service name) and scores weight / -ln(u); the highest score wins. Each target's score depends
// on its own weight and name only, so raising one weight can only move users to that target,
// lowering it only moves users away from it, and adding or removing a target moves only that
// target's users; and P(target wins) = weight / total weights. The hash is fixed (FNV-1a 32-bit
// with a murmur3 finalizer, no seed) so every worker process, and every restart, puts one user
// on the same target.

import type { RouteConfig, RouteTargetConfig } from '../contracts.js'
import { headerValueOf } from './header-value.js'

const fnvOffset = 0x811c9dc5
const fnvPrime = 0x01000193
const twoPow32 = 4_294_967_296
// Between the value's bytes and the service's: 0xff never occurs in UTF-8, so the pair
// (value, service) is read back unambiguously from the hashed bytes.
const separator = 0xff

function fnv1a(hash: number, bytes: Uint8Array): number {
  let h = hash
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i] as number
    h = Math.imul(h, fnvPrime)
  }
  return h
}

// murmur3's fmix32: spreads FNV's weak low bits over the whole word (user ids such as `u-1`,
// `u-2` differ only in their last byte).
function fmix32(hash: number): number {
  let h = hash
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

// The 32-bit hash of the bytes value ‖ 0xff ‖ service, continuing from the value's FNV state
// (so the value is hashed once per request, not once per target).
function pairUnit(valueState: number, serviceBytes: Uint8Array): number {
  const h = fmix32(fnv1a(Math.imul(valueState ^ separator, fnvPrime), serviceBytes))
  // The middle of one of 2^32 equal cells: never 0 (-ln would be infinite) nor 1 (zero).
  return (h + 0.5) / twoPow32
}

/**
 * The fixed pseudo-random number in (0, 1) that rendezvous hashing draws for a (sticky value,
 * service) pair: the FNV-1a + `fmix32` hash of the UTF-8 bytes of `value`, a 0xff byte and
 * `service`, as the middle of one of 2^32 equal cells.
 *
 * @example
 * ```ts
 * stickyUnit('user-42', 'legacy') // the same number in every process
 * ```
 */
export function stickyUnit(value: string, service: string): number {
  return pairUnit(fnv1a(fnvOffset, Buffer.from(value, 'utf8')), Buffer.from(service, 'utf8'))
}

/**
 * Builds the sticky choice for one set of targets: weighted rendezvous hashing, where target
 * `t` scores `t.weight / -ln(stickyUnit(value, t.service))` and the highest score wins.
 * Targets of weight 0 are never chosen; a tie (one in billions) goes to the service name that
 * sorts first, so the list's order never matters. Undefined when no weight is above 0.
 *
 * @example
 * ```ts
 * const choose = stickyChooser([{ service: 'legacy', weight: 90 }, { service: 'new', weight: 10 }])
 * choose?.('user-42') // 'legacy' for about 90% of values, always the same for one value
 * ```
 */
export function stickyChooser(
  targets: readonly RouteTargetConfig[],
): ((value: string) => string) | undefined {
  const candidates = targets
    .filter((t) => t.weight > 0)
    .map((t) => ({ service: t.service, weight: t.weight, bytes: Buffer.from(t.service, 'utf8') }))
    .sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : 0))
  if (candidates.length === 0) return undefined
  const only = candidates.length === 1 ? (candidates[0] as { service: string }).service : undefined
  if (only !== undefined) return () => only
  return (value) => {
    const state = fnv1a(fnvOffset, Buffer.from(value, 'utf8'))
    let best = ''
    let bestScore = -1
    for (const c of candidates) {
      // Math.log is V8's port of fdlibm's log: the same bits on every platform, so every
      // worker scores alike. Strictly greater: on a tie the name sorted first stays.
      const score = c.weight / -Math.log(pairUnit(state, c.bytes))
      if (score > bestScore) {
        bestScore = score
        best = c.service
      }
    }
    return best
  }
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
