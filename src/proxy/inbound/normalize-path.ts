// Path normalization shared by routing and forwarding. The proxy matches routes on the string
// this module returns AND forwards exactly that string, so no upstream can see a path that
// resolves differently from the one the route table judged (`/api/%2e%2e/admin`,
// `/api\..\admin`, `//admin`, `%252e%252e`, Tomcat's `..;`). `new URL(path, base)` is never
// used: `new URL('//other-host/x', base)` changes the host.
//
// The decisions, in the order they are applied to the path part of the target (before `?`):
// 1. Only visible ASCII (0x21..0x7E) is allowed raw; control characters, NUL, space, DEL and
//    raw bytes >= 0x80 are rejected (clients must percent-encode them), and so is `#` (a
//    fragment has no business in a request target) and `?` (the caller passes the part before
//    the query; a `?` here would let `new URL` or an upstream read a shorter path than the
//    route table saw).
// 2. A raw backslash is rejected, not read as `/`: RFC 3986 does not allow it in a path, no
//    correct client sends it, and servers disagree on what it means (IIS and WHATWG URL read
//    `/`, most others a literal byte). Rejecting removes the ambiguity.
// 3. Percent-encodings must be `%` and two hex digits. Encoded unreserved characters
//    (ALPHA DIGIT `-` `.` `_` `~`, so `%2e`/`%2E` is a dot) are decoded, once. Every other
//    encoding is kept, with upper-case hex, except:
//    - `%2F` (slash) and `%5C` (backslash) are rejected: decoded they would change the
//      segment structure for an upstream that decodes them, kept they would let a segment
//      hide a separator from the route table.
//    - encoded control characters (`%00`..`%1F`, `%7F`) are rejected.
//    - double encoding of a character that matters to the structure, `%25` followed by the
//      hex of `.`, `/`, `\`, `%` or a control character (`%252e`, `%252f`, `%255c`, `%2525`),
//      is rejected: an upstream that decodes twice would see a dot segment or a separator.
//      It is judged after the decoding above, so hex digits that arrive encoded count too
//      (`%25%32%65` is `%252e`). Other `%25XX` (a literal `%` followed by two hex-looking
//      characters) is kept as is.
//    - encoded bytes >= 0x80 must spell well-formed UTF-8 (RFC 3629): overlong forms such as
//      `%C0%AE` (a dot) and `%C0%AF` (a slash), surrogates and stray continuation bytes are
//      rejected, since a lenient decoder (old IIS, some Java servers) reads them as `.` or `/`.
//      Well-formed UTF-8 is kept encoded (`%C3%A9`); it is not NFKC-folded, so `%EF%BC%8E`
//      (a fullwidth full stop) stays a literal character, never a dot.
// 4. Empty segments are dropped (`//` becomes `/`).
// 5. Dot segments are resolved: `.` is dropped, `..` removes the previous segment; a `..` with
//    nothing left to remove (above the root) is rejected, not clamped, because a client that
//    sends it is probing. A segment whose part before `;` is `.` or `..` (`..;x`) is rejected:
//    Tomcat and Jetty treat it as a dot segment.
// 6. A trailing slash is kept (`/a/` stays `/a/`), and a path that ended in a dot segment ends
//    in `/` (`/a/b/..` is `/a/`), as RFC 3986's remove_dot_segments does.
//
// The result is idempotent: normalizing a normalized path returns it unchanged.

/** Result of {@link normalizePath}: the normalized path, or why the path was refused. */
export type NormalizedPath =
  | { readonly ok: true; readonly path: string }
  | { readonly ok: false; readonly reason: string }

const hexDigit = /^[0-9A-Fa-f]{2}$/
// Bytes whose double encoding (`%25` + their hex) is refused.
const structuralBytes = new Set([0x2e, 0x2f, 0x5c, 0x25])

function isUnreserved(code: number): boolean {
  return (
    (code >= 0x41 && code <= 0x5a) ||
    (code >= 0x61 && code <= 0x7a) ||
    (code >= 0x30 && code <= 0x39) ||
    code === 0x2d ||
    code === 0x2e ||
    code === 0x5f ||
    code === 0x7e
  )
}

// In a decoded segment every `%` starts an encoding, so `%25` is always an encoded `%`, and the
// two characters after it are what an upstream that decodes twice reads as a byte.
const doubleEncoding = /%25([0-9A-Fa-f]{2})/g

function hasStructuralDoubleEncoding(segment: string): boolean {
  for (const match of segment.matchAll(doubleEncoding)) {
    const innerByte = Number.parseInt(match[1] as string, 16)
    if (structuralBytes.has(innerByte) || innerByte < 0x20 || innerByte === 0x7f) return true
  }
  return false
}

// A path without `%`, `\`, `#`, `?`, `//`, `/.` and with only visible ASCII needs no work; most do.
const needsWork = /[%\\#?]|\/\/|\/\.|[^\x21-\x7e]/

/**
 * Normalizes the path part of a request target (what comes before `?`, starting with `/`) by
 * the rules documented at the top of this module. Returns `{ ok: false, reason }` for a path
 * the proxy refuses (answered with 400).
 *
 * @example
 * ```ts
 * normalizePath('/api/%2e%2e/admin') // { ok: true, path: '/admin' }
 * normalizePath('/api/%2fadmin') // { ok: false, reason: 'encoded slash or backslash' }
 * ```
 */
export function normalizePath(raw: string): NormalizedPath {
  if (raw.length === 0 || raw.charCodeAt(0) !== 0x2f) {
    return { ok: false, reason: 'path does not start with /' }
  }
  if (!needsWork.test(raw)) return { ok: true, path: raw }

  // Pass 1: characters and percent-encodings, segment by segment.
  const segments: string[] = []
  let current = ''
  let highBytes = false
  for (let i = 1; i < raw.length; i++) {
    const code = raw.charCodeAt(i)
    if (code === 0x2f) {
      segments.push(current)
      current = ''
      continue
    }
    if (code < 0x21 || code > 0x7e) return { ok: false, reason: 'control or non-ASCII character' }
    if (code === 0x5c) return { ok: false, reason: 'backslash' }
    if (code === 0x23) return { ok: false, reason: 'fragment in target' }
    if (code === 0x3f) return { ok: false, reason: 'query separator in path' }
    if (code !== 0x25) {
      current += raw[i]
      continue
    }
    const hex = raw.slice(i + 1, i + 3)
    if (!hexDigit.test(hex)) return { ok: false, reason: 'malformed percent-encoding' }
    const byte = Number.parseInt(hex, 16)
    i += 2
    if (byte === 0x2f || byte === 0x5c) return { ok: false, reason: 'encoded slash or backslash' }
    if (byte < 0x20 || byte === 0x7f) return { ok: false, reason: 'encoded control character' }
    if (isUnreserved(byte)) {
      current += String.fromCharCode(byte)
      continue
    }
    if (byte >= 0x80) highBytes = true
    current += `%${hex.toUpperCase()}`
  }
  segments.push(current)
  // Double encoding is judged on the decoded segments, not on the raw characters after `%25`:
  // the hex digits may themselves arrive encoded (`%25%32%65` decodes to `%252e`), and the
  // output must pass this same rule when normalized again.
  for (const segment of segments) {
    if (segment.includes('%25') && hasStructuralDoubleEncoding(segment)) {
      return { ok: false, reason: 'double percent-encoding' }
    }
  }
  if (highBytes) {
    for (const segment of segments) {
      // Only `%XX` of ASCII other than these high bytes remain, which decode without error, so
      // a throw means the high bytes are not well-formed UTF-8.
      try {
        decodeURIComponent(segment)
      } catch {
        return { ok: false, reason: 'percent-encoded bytes that are not UTF-8' }
      }
    }
  }

  // Pass 2: empty and dot segments.
  const out: string[] = []
  const last = segments.length - 1
  let trailingSlash = false
  for (let s = 0; s <= last; s++) {
    const segment = segments[s] as string
    const semicolon = segment.indexOf(';')
    const bare = semicolon === -1 ? segment : segment.slice(0, semicolon)
    if (semicolon !== -1 && (bare === '.' || bare === '..')) {
      return { ok: false, reason: 'dot segment with parameters' }
    }
    if (segment === '' || segment === '.') {
      if (s === last) trailingSlash = true
      continue
    }
    if (segment === '..') {
      if (out.length === 0) return { ok: false, reason: 'dot-dot segment above the root' }
      out.pop()
      if (s === last) trailingSlash = true
      continue
    }
    out.push(segment)
  }
  if (out.length === 0) return { ok: true, path: '/' }
  return { ok: true, path: `/${out.join('/')}${trailingSlash ? '/' : ''}` }
}

/**
 * Whether `path` (normalized) is `prefix` or lies below it at a segment boundary: `/orders`
 * matches `/orders`, `/orders/` and `/orders/1`, not `/ordersx`. A prefix of `/` matches
 * every path.
 *
 * @example
 * ```ts
 * pathHasPrefix('/orders/1', '/orders') // true
 * pathHasPrefix('/ordersx', '/orders') // false
 * ```
 */
export function pathHasPrefix(path: string, prefix: string): boolean {
  if (prefix === '/' || prefix === '') return true
  const bare = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix
  if (!path.startsWith(bare)) return false
  return path.length === bare.length || path.charCodeAt(bare.length) === 0x2f
}
