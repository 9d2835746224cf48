import { InvalidOptionError } from '../core/errors.js'
import { isSecretKey, REDACTED } from '../observability/redact.js'

// Where a request goes and what it carries, checked before anything is sent. A request can
// only ever reach its own service: the undici Pool is bound to the service's origin, and the
// path is appended to the base path as a string, never resolved as a URL (resolving
// `//other-host/x` against a base changes the host; `/../admin` leaves the base path).

/** A service's base URL, split into what the pool and the paths need. */
export interface BaseTarget {
  /** `http(s)://host:port`, what the pool connects to. */
  readonly origin: string
  /** The path prefix without a trailing slash (`''` for the root). */
  readonly basePath: string
  /** The normalized base URL, for display. */
  readonly href: string
}

/** Parses and checks a service's `baseUrl`. */
export function parseBaseUrl(option: string, value: unknown): BaseTarget {
  const expected = 'an absolute http(s) URL without credentials, query or fragment'
  if (typeof value !== 'string') throw new InvalidOptionError(option, expected, value)
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new InvalidOptionError(option, expected, value)
  }
  if (
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.username !== '' ||
    url.password !== '' ||
    url.search !== '' ||
    url.hash !== '' ||
    value.includes('?') ||
    value.includes('#')
  ) {
    throw new InvalidOptionError(option, expected, value)
  }
  // Port 0 parses, but no server listens there: every call would fail to connect.
  if (url.port === '0')
    throw new InvalidOptionError(option, `${expected}, whose port is from 1 to 65535`, value)
  const basePath = url.pathname.replace(/\/+$/, '')
  return { origin: url.origin, basePath, href: `${url.origin}${basePath}` }
}

// Origin-form only: a slash, not two (protocol-relative), then visible ASCII without `\`
// (WHATWG parsers read it as `/`) and `#` (a fragment is never sent). Anything else, including
// absolute URLs, spaces, control and non-ASCII characters (percent-encode them), is refused.
const pathPattern = /^\/(?!\/)[\x21\x22\x24-\x5b\x5d-\x7e]*$/
// `.` and `..` segments, also percent-encoded, which servers normalize away from the base path.
// An encoded `/` or `\` separates segments too for a server or proxy (nginx) that decodes the
// path before it resolves dot segments: `/x/..%2f..%2fadmin` would leave the base path there.
// Path parameters after the dots (`..;/`) are dropped by Tomcat and Jetty before resolving.
const dotSegment = /(?:^|\/|%2f|%5c)(?:\.|%2e){1,2}(?:;[^/]*)?(?:\/|%2f|%5c|$)/i

/**
 * Checks a request path and returns the path without its query string (for events and
 * errors). Throws `InvalidOptionError` for anything that could leave the service.
 */
export function checkPath(path: unknown): string {
  if (typeof path !== 'string' || !pathPattern.test(path)) {
    throw new InvalidOptionError(
      'request.path',
      "a path starting with a single '/' (visible ASCII, no '\\' or '#')",
      path,
    )
  }
  const q = path.indexOf('?')
  const pathOnly = q === -1 ? path : path.slice(0, q)
  if (dotSegment.test(pathOnly)) {
    throw new InvalidOptionError('request.path', "a path without '.' or '..' segments", path)
  }
  return pathOnly
}

/** A query parameter value. */
export type QueryValue = string | number | boolean

/**
 * Query parameters; arrays repeat the name, undefined values are left out. A number must be
 * finite (`NaN` and the infinities are refused with `InvalidOptionError`).
 */
export type QueryParams = Readonly<Record<string, QueryValue | readonly QueryValue[] | undefined>>

// A Headers, Map or URLSearchParams is an object whose Object.entries() is empty: accepted, every
// header or parameter in it would be dropped without a word. Only plain objects are read: a
// stricter rule than isObjectRecord's (a class instance is refused here too), but the refusal
// names what was given the same way (describeValue: `got a Headers`, `got a URLSearchParams`).
function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false
  const proto = Object.getPrototypeOf(value) as unknown
  return proto === Object.prototype || proto === null
}

/** Appends `query` to `path` (which may already have a query string). */
export function appendQuery(path: string, query: unknown): string {
  if (query === undefined) return path
  if (!isPlainObject(query)) {
    throw new InvalidOptionError('request.query', 'a plain object', query)
  }
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query as Record<string, unknown>)) {
    if (value === undefined) continue
    const values: readonly unknown[] = Array.isArray(value) ? value : [value]
    for (const v of values) {
      // A NaN or an infinity is a number, but would go out as `NaN` or `Infinity`: a bug
      // upstream (a failed parse, a division by zero) that no downstream reads as a number.
      if (
        typeof v !== 'string' &&
        typeof v !== 'boolean' &&
        (typeof v !== 'number' || !Number.isFinite(v))
      ) {
        throw new InvalidOptionError(
          `request.query.${name}`,
          'a string, finite number or boolean',
          v,
        )
      }
      params.append(name, String(v))
    }
  }
  const search = params.toString()
  if (search === '') return path
  return `${path}${path.includes('?') ? '&' : '?'}${search}`
}

const tokenPattern = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const headerValuePattern = /^[\t\x20-\x7e\x80-\xff]*$/
// Connection management and framing belong to the client; a caller-chosen Host could steer
// a downstream that serves several virtual hosts.
const reservedHeaders = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'content-length',
  'expect',
])

/** True when `method` is an HTTP token. */
export function isToken(value: string): boolean {
  return tokenPattern.test(value)
}

/**
 * Copies `headers` into `into` with lower-case names, checking names and values (undici would
 * otherwise fail the attempt, and the failure would be held against the downstream). A name
 * given twice in `headers` (in different cases) is refused; one already in `into` is replaced.
 * An empty array is refused: it would send nothing, and on a request drop the service's default.
 */
export function addHeaders(
  into: Record<string, string | string[]>,
  option: string,
  headers: unknown,
): void {
  if (headers === undefined) return
  if (!isPlainObject(headers)) {
    throw new InvalidOptionError(option, 'a plain object of header names to values', headers)
  }
  // The raw name each lower-case name was given as, in this bag: `{ 'X-A': '1', 'x-a': '2' }`
  // names one header twice, and the copy below would keep the last value without a word.
  const given = new Map<string, string>()
  for (const [rawName, value] of Object.entries(headers as Record<string, unknown>)) {
    if (value === undefined) continue
    const name = rawName.toLowerCase()
    // Each refusal says what is wrong: a name that is no token is not one the client manages.
    if (!tokenPattern.test(name)) {
      throw new InvalidOptionError(`${option}.${rawName}`, tokenName, rawName)
    }
    const first = given.get(name)
    if (first !== undefined) {
      throw new InvalidOptionError(
        `${option}.${rawName}`,
        `a header named once (names are case-insensitive: also given as "${first}"; give several values as an array)`,
        rawName,
      )
    }
    given.set(name, rawName)
    if (reservedHeaders.has(name)) {
      throw new InvalidOptionError(
        `${option}.${rawName}`,
        'a header name the client does not manage itself',
        rawName,
      )
    }
    const secret = isSecretKey(name)
    if (Array.isArray(value)) {
      // undici sends no header for []: on a request it would silently drop the service's
      // default of that name (a request's headers replace the defaults by name), on a service
      // it would send nothing. Leaving a header out is `undefined`, which keeps the default.
      if (value.length === 0)
        throw new InvalidOptionError(
          `${option}.${rawName}`,
          'a string or a non-empty array of strings',
          value,
        )
      for (const v of value) checkHeaderValue(`${option}.${rawName}`, v, secret)
      into[name] = [...(value as string[])]
    } else {
      checkHeaderValue(`${option}.${rawName}`, value, secret)
      into[name] = value as string
    }
  }
}

const tokenName = "a header name that is an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"

// The value of a secret header (authorization, x-api-key, cookie) is not put in the error: the
// usual bad value is a token read from a file with its newline, which the message would carry
// into logs that do not mask it.
function checkHeaderValue(option: string, value: unknown, secret: boolean): void {
  if (typeof value !== 'string') {
    throw new InvalidOptionError(
      option,
      'a string or an array of strings',
      secret ? REDACTED : value,
    )
  }
  if (!headerValuePattern.test(value)) {
    throw new InvalidOptionError(
      option,
      // What headerValuePattern takes: tab, 0x20-0x7e and 0x80-0xff.
      'a header value of tabs, printable ASCII and U+0080 to U+00FF only (no CR, LF, NUL or other ASCII control character)',
      secret ? REDACTED : value,
    )
  }
}

const keyPattern = /^[\x21-\x7e]{1,255}$/

/** Checks a caller-supplied idempotency key: 1 to 255 visible ASCII characters. */
export function checkIdempotencyKey(option: string, value: unknown): string {
  if (typeof value !== 'string' || !keyPattern.test(value)) {
    throw new InvalidOptionError(option, '1 to 255 visible ASCII characters', value)
  }
  return value
}
