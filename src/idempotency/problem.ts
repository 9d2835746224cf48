import { InvalidOptionError } from '../core/errors.js'
import {
  IdempotencyBodyTooLargeError,
  type IdempotencyError,
  IdempotencyInProgressError,
  IdempotencyKeyInvalidError,
  IdempotencyKeyMissingError,
  IdempotencyMismatchError,
} from './errors.js'
import type { IdempotencyResponse } from './types.js'

/**
 * The default base of the problem type URIs: a problem's `type` is this base followed by the
 * rule's name, e.g. `https://breakwater.dev/problems/idempotency-key-missing`.
 */
export const defaultProblemTypeBase = 'https://breakwater.dev/problems/'

/** RFC 3986 text: unreserved and reserved characters, and `%` only as `%XX`. */
const uriText = /^(?:[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*$/
/** `http://` or `https://` followed by a non-empty authority. */
const absoluteHttp = /^https?:\/\/[^/?#]/i
const takes = "an absolute http or https URL ending in '/' or '#'"

/**
 * Checks `createIdempotency`'s `problemTypeBase` once, at construction, and returns it
 * (internal: not exported from the package root). A
 * problem's `type` is this base followed by its name, unchecked, so the base must make every
 * such concatenation an absolute URI that names the problem: an http or https URL (RFC 9457
 * asks for an absolute type URI, which when dereferenced documents the problem; decided:
 * `urn:` and `tag:` bases are refused, as nothing in breakwater renders them and a prefix
 * of theirs has no separator to check) ending in `/` (the name becomes its last path segment)
 * or `#` (the name becomes its fragment), without a query. Before, any string was taken and
 * a relative base, or one without its trailing `/` (`.../problemsidempotency-key-missing`),
 * went out in every problem answer.
 *
 * @throws InvalidOptionError naming `problemTypeBase` and what is wrong with it
 */
export function checkProblemTypeBase(value: unknown): string {
  if (typeof value !== 'string') throw new InvalidOptionError('problemTypeBase', takes, value)
  const refuse = (what: string): never => {
    throw new InvalidOptionError('problemTypeBase', what, value)
  }
  if (!uriText.test(value)) {
    refuse(
      `${takes}, of URI characters only (RFC 3986): no spaces, quotes, control characters or non-ASCII letters (percent-encode them), and '%' only before two hex digits`,
    )
  }
  // The WHATWG parser would take 'https:/host/' and 'https:host/' as https://host/: the two
  // slashes are checked on the text, the rest (a port out of range, an empty host) by URL.
  if (!absoluteHttp.test(value) || !URL.canParse(value)) {
    refuse(
      `${takes} (https://host/path/): relative URIs and other schemes (urn:, tag:) are not taken`,
    )
  }
  if (value.includes('?')) {
    refuse(`${takes}, without a query: the problem's name is appended to it`)
  }
  const hash = value.indexOf('#')
  if (hash !== -1 && hash !== value.length - 1) {
    refuse(
      `${takes}, with '#' only as its last character (the problem's name becomes the fragment)`,
    )
  }
  if (!value.endsWith('/') && hash === -1) {
    refuse(
      `${takes}: a problem's type is this base followed by its name, so ${JSON.stringify(value)} would give ${JSON.stringify(`${value}idempotency-key-missing`)}`,
    )
  }
  return value
}

/**
 * An RFC 9457 problem details object, as sent with `Content-Type: application/problem+json`.
 * `code` (breakwater's stable error code) and `rule` are extension members.
 */
export interface ProblemDetails {
  /** A URI naming the rule broken. */
  readonly type: string
  /** A short summary of the problem type. */
  readonly title: string
  /** The HTTP status code. */
  readonly status: number
  /** What went wrong with this request. */
  readonly detail: string
  /** breakwater's stable error code, when the problem comes from a breakwater error. */
  readonly code?: string
  /** For invalid keys: which rule the key broke. */
  readonly rule?: string
}

interface ProblemShape {
  readonly name: string
  readonly title: string
}

function shapeOf(error: IdempotencyError): ProblemShape {
  if (error instanceof IdempotencyKeyMissingError) {
    return { name: 'idempotency-key-missing', title: 'Idempotency-Key header missing' }
  }
  if (error instanceof IdempotencyKeyInvalidError) {
    if (error.rule === 'too-long') {
      return { name: 'idempotency-key-too-long', title: 'Idempotency-Key too long' }
    }
    if (error.rule === 'repeated') {
      return { name: 'idempotency-key-repeated', title: 'Idempotency-Key sent more than once' }
    }
    return { name: 'idempotency-key-malformed', title: 'Idempotency-Key malformed' }
  }
  if (error instanceof IdempotencyBodyTooLargeError) {
    return { name: 'request-body-too-large', title: 'Request body too large' }
  }
  if (error instanceof IdempotencyMismatchError) {
    return {
      name: 'idempotency-key-mismatch',
      title: 'Idempotency-Key reused for a different request',
    }
  }
  return {
    name: 'idempotency-key-in-progress',
    title: 'Request with this Idempotency-Key in progress',
  }
}

/**
 * Builds the problem details object for an idempotency error. `typeBase` is prefixed to the
 * problem's name as given: unlike the middleware's `problemTypeBase`, it is not validated here
 * (a caller composing its own responses may want a `urn:` or `tag:` base), so end it with `/`,
 * `#` or `:` as the scheme needs.
 */
export function problemDetailsOf(
  error: IdempotencyError,
  typeBase: string = defaultProblemTypeBase,
): ProblemDetails {
  const shape = shapeOf(error)
  const problem: ProblemDetails = {
    type: `${typeBase}${shape.name}`,
    title: shape.title,
    status: error.status,
    detail: error.message,
    code: error.code,
  }
  return error instanceof IdempotencyKeyInvalidError ? { ...problem, rule: error.rule } : problem
}

/**
 * Builds the whole HTTP response for an idempotency error: the status, `Content-Type:
 * application/problem+json`, `Retry-After` (whole seconds, at least 1) for a 409, and the body.
 *
 * @example
 * ```ts
 * const response = problemResponse(new IdempotencyKeyMissingError())
 * // response.status === 400, JSON.parse(body).type ends with 'idempotency-key-missing'
 * ```
 *
 * `typeBase` is taken as given, as by {@link problemDetailsOf}.
 */
export function problemResponse(
  error: IdempotencyError,
  typeBase: string = defaultProblemTypeBase,
): IdempotencyResponse {
  const headers: Record<string, string> = {
    'content-type': 'application/problem+json',
    'cache-control': 'no-store',
  }
  if (error instanceof IdempotencyInProgressError) {
    headers['retry-after'] = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)))
  }
  const body = Buffer.from(JSON.stringify(problemDetailsOf(error, typeBase)))
  return { status: error.status, headers, body }
}

/**
 * A generic problem response for failures that are not the client's (HTTP 500). Its type is
 * `about:blank` and it carries no `code` on purpose: RFC 9457 uses `about:blank` for a problem
 * with no meaning beyond its status, and a server failure breaks no rule the client could
 * mend; what failed is reported to the server's own logs, not sent to the client.
 */
export function genericProblem(status: number, title: string, detail: string): IdempotencyResponse {
  return {
    status,
    headers: { 'content-type': 'application/problem+json', 'cache-control': 'no-store' },
    body: Buffer.from(JSON.stringify({ type: 'about:blank', title, status, detail })),
  }
}

/** True for the errors {@link problemResponse} knows how to render. */
export function isIdempotencyError(error: unknown): error is IdempotencyError {
  return (
    error instanceof IdempotencyKeyMissingError ||
    error instanceof IdempotencyKeyInvalidError ||
    error instanceof IdempotencyMismatchError ||
    error instanceof IdempotencyBodyTooLargeError ||
    error instanceof IdempotencyInProgressError
  )
}
