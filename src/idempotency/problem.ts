import {
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

/** Builds the problem details object for an idempotency error. */
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

/** A generic problem response for failures that are not the client's (HTTP 500 or 413). */
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
    error instanceof IdempotencyInProgressError
  )
}
