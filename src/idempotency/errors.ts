import { BreakwaterError } from '../core/errors.js'

// The errors of the idempotency capability. Each carries the HTTP status the middleware answers
// with, so the framework-free core and the adapters map them to problem+json the same way.

/**
 * A request to a route that requires an `Idempotency-Key` came without one (code
 * `IDEMPOTENCY_KEY_MISSING`, HTTP 400).
 */
export class IdempotencyKeyMissingError extends BreakwaterError {
  /** The HTTP status the middleware answers with. */
  readonly status = 400

  constructor() {
    super('IDEMPOTENCY_KEY_MISSING', 'The Idempotency-Key header is required for this request')
  }
}

/**
 * Which rule an invalid key broke: `repeated` is an `Idempotency-Key` header sent on more than
 * one line, which names no single key.
 */
export type IdempotencyKeyRule = 'empty' | 'too-long' | 'characters' | 'syntax' | 'repeated'

/**
 * An idempotency key is empty, longer than 255 characters, uses a character outside the
 * allowed set, is a malformed quoted string, or came in a header sent more than once (code
 * `IDEMPOTENCY_KEY_INVALID`, HTTP 400).
 */
export class IdempotencyKeyInvalidError extends BreakwaterError {
  /** The HTTP status the middleware answers with. */
  readonly status = 400
  /** The rule the key broke. */
  readonly rule: IdempotencyKeyRule

  constructor(rule: IdempotencyKeyRule, message: string) {
    super('IDEMPOTENCY_KEY_INVALID', message)
    this.rule = rule
  }
}

/**
 * The key was already used for a different request: another method, route or body, or, for
 * `idempotent()`, another fingerprint (code `IDEMPOTENCY_MISMATCH`, HTTP 422). Not retryable:
 * the client must use a new key for a new request.
 */
export class IdempotencyMismatchError extends BreakwaterError {
  /** The HTTP status the middleware answers with. */
  readonly status = 422
  /** The key that was reused. */
  readonly key: string

  constructor(key: string) {
    super(
      'IDEMPOTENCY_MISMATCH',
      `The idempotency key ${JSON.stringify(key)} was already used for a different request`,
    )
    this.key = key
  }
}

/** Why an {@link IdempotencyInProgressError} was raised. */
export type InProgressReason = 'in-flight' | 'wait-timeout' | 'lease-lost'

/**
 * Another request or call holds the key and has not finished (code `IDEMPOTENCY_IN_PROGRESS`,
 * HTTP 409 with `Retry-After`). Retryable: once the holder finishes, a retry replays its result.
 *
 * `reason` says which case: `in-flight` (rejected at once), `wait-timeout` (waited in
 * `onConcurrent: 'wait'` mode and gave up), or `lease-lost` (this call ran past its lease, so
 * its writes were rolled back instead of recorded, and another call may have taken the key
 * over).
 */
export class IdempotencyInProgressError extends BreakwaterError {
  /** The HTTP status the middleware answers with. */
  readonly status = 409
  /** The key that is busy. */
  readonly key: string
  /** Which case this is. */
  readonly reason: InProgressReason
  /** How long the caller should wait before retrying, in milliseconds. */
  readonly retryAfterMs: number

  constructor(key: string, reason: InProgressReason, retryAfterMs: number) {
    super(
      'IDEMPOTENCY_IN_PROGRESS',
      reason === 'lease-lost'
        ? `The lease on idempotency key ${JSON.stringify(key)} expired before the result was recorded (another request may take the key over); this attempt was rolled back`
        : `A request with idempotency key ${JSON.stringify(key)} is still in progress`,
      { retryable: true },
    )
    this.key = key
    this.reason = reason
    this.retryAfterMs = retryAfterMs
  }
}

/**
 * An adapter got a request whose body it cannot fingerprint (code `IDEMPOTENCY_BODY_UNAVAILABLE`,
 * HTTP 500): on node:http or Express, an earlier layer had already read it without leaving it in
 * `req.body`; on Fastify, the route's content-type parser left it unparsed (`request.body`
 * undefined, as a streaming multipart parser does) and the fingerprint reads it. Hashing it as
 * empty would replay a stored response to the same key with another body. A server
 * misconfiguration, so it is not among the errors answered as problem+json to the client.
 */
export class IdempotencyBodyUnavailableError extends BreakwaterError {
  /** The HTTP status the adapter answers with. */
  readonly status = 500

  /** @param message - What left the body unreadable, and the fix (node:http and Express's by default). */
  constructor(
    message = 'The request body was already read by an earlier handler or middleware and is not in req.body, so it cannot be fingerprinted; mount the idempotency adapter before that layer, or after a body parser',
  ) {
    super('IDEMPOTENCY_BODY_UNAVAILABLE', message)
  }
}

/**
 * Which rule an {@link IdempotencyResponseUnsupportedError} names: `trailers`, a node:http or
 * Express response that declares a `Trailer` header or calls `res.addTrailers()`; `raw-reply`,
 * a Fastify handler that writes to `reply.raw` or calls `reply.hijack()`.
 */
export type UnsupportedResponseRule = 'trailers' | 'raw-reply'

const unsupportedMessages: Record<UnsupportedResponseRule, string> = {
  trailers:
    'Trailers are not supported under idempotency: a recorded response is sent whole, with a Content-Length; drop the Trailer header and res.addTrailers()',
  'raw-reply':
    'reply.raw and reply.hijack() bypass idempotency: answer with reply.send (or return the payload)',
}

/**
 * A keyed request's handler answered in a way its adapter cannot record and replay (code
 * `IDEMPOTENCY_RESPONSE_UNSUPPORTED`, HTTP 500); `rule` says which. Raised before anything is
 * committed or sent: `ctx.tx` is rolled back, the key released, and the client answered 500, so
 * a success never goes out with its writes rolled back, nor a 500 with them committed. A
 * server bug (the handler must answer another way), so it is not among the errors answered as
 * problem+json to the client.
 */
export class IdempotencyResponseUnsupportedError extends BreakwaterError {
  /** The HTTP status the adapter answers with. */
  readonly status = 500
  /** The rule the handler's response broke. */
  readonly rule: UnsupportedResponseRule

  constructor(rule: UnsupportedResponseRule) {
    super('IDEMPOTENCY_RESPONSE_UNSUPPORTED', unsupportedMessages[rule])
    this.rule = rule
  }
}

/**
 * A holder could not give its key back (code `IDEMPOTENCY_RELEASE_FAILED`): the store failed
 * (down, pool exhausted) when the key of a failed handler, or of a result that is not recorded,
 * was to be released. `cause` holds the store's error. The in-progress record stays until its
 * lease ends (unless the release was applied and only its answer lost: a connection cut after
 * the statement was sent), so a retry meanwhile gets {@link IdempotencyInProgressError} (409 with
 * `Retry-After`) and a later one takes the key over and runs again. Retryable, after the lease.
 * Not answered as problem+json: a server-side failure (the adapters answer 500 and report it).
 */
export class IdempotencyReleaseError extends BreakwaterError {
  /** The key that stays held. */
  readonly key: string
  /** The key's scope. */
  readonly scope: string

  constructor(scope: string, key: string, cause: unknown) {
    super(
      'IDEMPOTENCY_RELEASE_FAILED',
      `The idempotency key ${JSON.stringify(key)} could not be released (the store failed); unless the release reached the store before the failure, it stays in progress until its lease ends, and a retry meanwhile gets IDEMPOTENCY_IN_PROGRESS`,
      { retryable: true, cause },
    )
    this.key = key
    this.scope = scope
  }
}

/**
 * A request to an idempotency adapter (node:http, Express, Hono) had a body larger than the
 * adapter's `maxBodyBytes` (code `IDEMPOTENCY_BODY_TOO_LARGE`, HTTP 413). Answered as
 * problem+json before any key is claimed or the handler runs, with `Connection: close`, since
 * the rest of the body is not read. Not retryable as sent.
 */
export class IdempotencyBodyTooLargeError extends BreakwaterError {
  /** The HTTP status the adapter answers with. */
  readonly status = 413
  /** The adapter's `maxBodyBytes`. */
  readonly limitBytes: number

  constructor(limitBytes: number) {
    super(
      'IDEMPOTENCY_BODY_TOO_LARGE',
      `The request body exceeds ${limitBytes} bytes (the idempotency adapter's maxBodyBytes)`,
    )
    this.limitBytes = limitBytes
  }
}

/** Any of the errors above: the ones the middleware turns into problem+json responses. */
export type IdempotencyError =
  | IdempotencyKeyMissingError
  | IdempotencyKeyInvalidError
  | IdempotencyMismatchError
  | IdempotencyBodyTooLargeError
  | IdempotencyInProgressError
