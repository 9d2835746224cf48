import { randomUUID } from 'node:crypto'
import { type Clock, sleep } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import type { Jsonified } from '../core/jsonified.js'
import { isStorableText } from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOneOf,
  checkOptionKeys,
  checkSignal,
  optionKeys,
} from '../core/validate.js'
import { parseStoredJson, type StoredPlace } from '../stores/errors.js'
import type { SqlDriver } from '../stores/index.js'
import { DeferredTransaction } from './deferred-tx.js'
import {
  type IdempotencyError,
  IdempotencyInProgressError,
  IdempotencyKeyInvalidError,
  IdempotencyKeyMissingError,
  IdempotencyMismatchError,
  type InProgressReason,
} from './errors.js'
import { publish } from './events.js'
import { Execution, type ExecutionSettings } from './execution.js'
import {
  defaultFingerprint,
  type FingerprintFunction,
  matchesEarlierFingerprint,
} from './fingerprint.js'
import { isHeaderName, replayableHeaders, unreplayableHeaders } from './header-name.js'
import { recordableJson } from './json-result.js'
import { checkOperationKey, parseIdempotencyKey } from './key.js'
import { checkMethods, defaultMethods } from './methods.js'
import {
  checkProblemTypeBase,
  defaultProblemTypeBase,
  isIdempotencyError,
  problemResponse,
} from './problem.js'
import { type ReplayCache, type ReplayCacheOptions, replayCacheOf } from './replay-cache.js'
import {
  credentialScope,
  isStorableScope,
  maxScopeBytes,
  type ScopeFunction,
  type ScopeOption,
  scopeResolver,
} from './scope.js'
import { createSqlIdempotencyStore } from './sql-store.js'
import type {
  ClaimInput,
  ClaimOutcome,
  IdempotencyClaimSteps,
  IdempotencyRecord,
  IdempotencyStore,
  StoredResult,
} from './store.js'
import type {
  IdempotencyContext,
  IdempotencyRequest,
  IdempotencyResponse,
  JsonValue,
} from './types.js'

/**
 * The response headers stored and replayed by default (besides status and body): the content's
 * own headers, and those RFC 9110 requires beside a status that is recorded by default
 * (`www-authenticate` with 401, `allow` with 405, `proxy-authenticate` with 407,
 * `content-range` with 206 and 416), so that no replay is a response HTTP forbids.
 */
export const defaultReplayHeaders: readonly string[] = [
  'content-type',
  'content-language',
  'content-encoding',
  'content-disposition',
  'location',
  'etag',
  'last-modified',
  'link',
  'cache-control',
  'www-authenticate',
  'allow',
  'proxy-authenticate',
  'content-range',
]

/**
 * The default `storeResponse`: records every status below 500 except 408 (Request Timeout),
 * 425 (Too Early) and 429 (Too Many Requests). Like a 5xx, those say the request was not
 * processed and ask the client to send it again (a 429 after its `Retry-After`); recorded,
 * every retry with the key got the refusal back for the key's whole retention, never the
 * processing it was told to retry for (Stripe saves no result for a request that was rate
 * limited either). Other 4xx are answers about the request itself and are recorded.
 */
export function defaultStoreResponse(status: number): boolean {
  return status < 500 && status !== 429 && status !== 408 && status !== 425
}

/** The header added to every replayed response. */
export const replayedHeader = 'idempotent-replayed'

/**
 * Where a key is claimed (see {@link IdempotencyOptions.claim}):
 * - `'leased'`: in a record committed on its own before the handler runs, with a lease.
 * - `'in-transaction'`: as the first statement of the handler's own transaction, committed
 *   with its business writes and its result.
 */
export type IdempotencyClaimMode = 'leased' | 'in-transaction'

/** Options of {@link createIdempotency}. */
export interface IdempotencyOptions {
  /**
   * Where records live: an {@link IdempotencyStore} (`createSqlIdempotencyStore(db)`,
   * `createMemoryIdempotencyStore()`), or a `SqlDriver` from `breakwater/stores`, which is
   * wrapped in the SQL store. Run the migrations first (`migrateIdempotency(db)`).
   */
  readonly store: IdempotencyStore | SqlDriver
  /**
   * Where the key is claimed.
   *
   * `'leased'` (the default) commits an in-progress record with a lease before the handler
   * runs. It suits every handler: a concurrent duplicate is answered 409 at once (or waits, by
   * `onConcurrent`), a crashed holder's key is taken over once its lease expires, and a handler
   * may call other systems (in atomic phases) before it touches `ctx.tx`. It costs a second
   * transaction per new key.
   *
   * `'in-transaction'` claims the key with the first statement of the handler's own
   * transaction, which also records the result: one transaction per new key, a crash rolls
   * claim and effects back together (no lease to wait out), and a concurrent duplicate waits
   * for that transaction (PostgreSQL: on the key's unique index; SQLite: behind the single
   * writer) and then replays its result, so `onConcurrent` must be `'wait'` (its default in
   * this mode). Use it for handlers whose effects are all in the database (CRUD, ledgers):
   * `ctx.tx` is open from the start, so `ctx.phase()` is refused and a call to another system
   * would be made while the key is locked. Needs a SQL store.
   * @default 'leased'
   */
  readonly claim?: IdempotencyClaimMode | undefined
  /**
   * The scope keys live in: `'credential'` (hash of `Authorization`, else `X-API-Key`, else
   * `anonymous`), `{ tenantHeader }` (an HTTP token, matched case-insensitively; else
   * `INVALID_OPTION` here), or a function of the request. Never global across
   * clients that send a credential. A function must return a non-empty string without NUL
   * characters or lone surrogates, of at most `maxScopeBytes` (1,024) UTF-8 bytes, as must a
   * tenant header's value; else the request fails (500) with `INVALID_OPTION`.
   * @default 'credential'
   */
  readonly scope?: ScopeOption | undefined
  /**
   * What a request looks like, stored with its key; a reuse of the key with another
   * fingerprint is answered 422. Return `''` to disable the check. A string without NUL
   * characters or lone surrogates; else the request fails (500) with `INVALID_OPTION`.
   * @default SHA-256 of method, route (path and query) and the SHA-256 of the body
   */
  readonly fingerprint?: FingerprintFunction | undefined
  /**
   * The HTTP methods the middleware guards; other methods pass through untouched. `HEAD` is
   * refused: it is safe by definition (RFC 9110 section 9.2.1) and its response has no body to
   * record, so a replay could not restore the Content-Length of the body it stands for. A HEAD
   * to a guarded GET route passes through unguarded. Names are matched case-insensitively
   * (`'post'` guards POST). Each must be an HTTP method (an RFC 9110 token: no spaces, one
   * method per entry), and the list must name one at least; else `INVALID_OPTION` names the
   * entry (`methods[0]`) or the list.
   * @default ['POST', 'PATCH']
   */
  readonly methods?: readonly string[] | undefined
  /**
   * Whether a guarded request without `Idempotency-Key` is refused with 400. When false, such
   * requests run without idempotency.
   * @default true
   */
  readonly required?: boolean | undefined
  /**
   * How long a holder owns a key before another request may take it over and run again. The
   * handler (or each atomic phase) must finish within it: when it runs out, the handler's
   * transaction is rolled back and its result is not recorded. With `claim: 'in-transaction'`
   * it bounds how long the handler may hold its transaction (and the key's lock).
   * @default 60000
   */
  readonly leaseMs?: number | undefined
  /**
   * How long a completed key is kept (and replayed) after its result was recorded.
   * @default 86400000 (24 hours)
   */
  readonly retentionMs?: number | undefined
  /**
   * What a request does while another holds its key: `'reject'` answers 409 with
   * `Retry-After` at once; `'wait'` polls (10 ms doubling to 500 ms, on the clock) until the
   * holder finishes, then replays its response, or takes over an expired lease. With `claim:
   * 'in-transaction'` only `'wait'` is possible: the database makes the duplicate wait.
   * @default 'reject' ('wait' with claim: 'in-transaction')
   */
  readonly onConcurrent?: 'reject' | 'wait' | undefined
  /**
   * In `'wait'` mode, how long to wait before answering 409. With `claim: 'in-transaction'`
   * it applies to holders that committed a leased claim; waiting for another transaction's
   * claim is bounded by that holder's `leaseMs` instead.
   * @default 10000
   */
  readonly waitTimeoutMs?: number | undefined
  /**
   * The `Retry-After` sent with 409 (rounded up to whole seconds) and the `retryAfterMs` of
   * `IdempotencyInProgressError`.
   * @default 1000
   */
  readonly retryAfterMs?: number | undefined
  /**
   * Which results are recorded and replayed. A result that is not recorded releases the key:
   * its transaction is rolled back and the record deleted, so the client's retry runs again.
   * A handler that throws always releases. It decides at once: a promise it returns (an
   * `async` function) fails the request (500, key released) with `INVALID_OPTION` naming it.
   * @default {@link defaultStoreResponse}: 4xx are recorded, except 408, 425 and 429; those and
   * 5xx release
   */
  readonly storeResponse?: ((status: number) => boolean) | undefined
  /**
   * Response headers stored and replayed with status and body. Names are matched
   * case-insensitively (names differing only in case count once) and must be HTTP tokens.
   * `set-cookie` is left out by default on purpose.
   *
   * The hop-by-hop and framing headers `connection`, `keep-alive`, `proxy-connection`, `te`,
   * `trailer`, `transfer-encoding`, `upgrade` and `content-length` are refused with
   * `InvalidOptionError`: they describe one response's connection or framing, not its content
   * (a replayed `connection: close` would close the client's connection on every replay), and
   * each adapter sets `content-length` from the recorded body itself.
   * @default defaultReplayHeaders (content-type, content-language, content-encoding,
   * content-disposition, location, etag, last-modified, link, cache-control, www-authenticate,
   * allow, proxy-authenticate, content-range)
   */
  readonly replayHeaders?: readonly string[] | undefined
  /**
   * The base of the problem type URIs in error responses: a problem's `type` is this base
   * followed by its name (`idempotency-key-missing`). It must be an absolute http or https URL
   * ending in `/` (the name becomes its last path segment) or `#` (the name becomes its
   * fragment), without a query, of URI characters only (RFC 3986: percent-encode anything
   * else); anything else is refused with `InvalidOptionError` naming `problemTypeBase` and what
   * is wrong. Decided: `urn:` and `tag:` bases, which RFC 9457 allows for types that are not
   * meant to be looked up, are refused too: the type is meant to lead to the problem's
   * documentation, and such a prefix has no separator that could be checked. Every adapter
   * renders the base of the `Idempotency` it is given; none takes one of its own.
   * @default 'https://breakwater.dev/problems/'
   */
  readonly problemTypeBase?: string | undefined
  /**
   * Keeps completed results in this process's memory, so that a replay answers without
   * reading the store (the fingerprint is still checked: a different request with the key is
   * still 422). A result is kept once this process has recorded it, or a replay has read it
   * from the store, for `maxAgeMs` at most and never past its retention. Safe with several processes on one store: a completed
   * record does not change while its retention runs (see docs/idempotency.md, "Replays from
   * memory"). `false` reads the store for every replay. `true` or `{}` takes the defaults.
   * @default { maxEntries: 1000, maxAgeMs: 60000, maxBodyBytes: 16384 }
   */
  readonly replayCache?: boolean | ReplayCacheOptions | undefined
  /**
   * The clock for leases, retention and waits.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Options of {@link Idempotency.run} (and `idempotent()`). */
export interface RunOptions {
  /**
   * The scope the key lives in (e.g. the consumer or saga name): a non-empty, well-formed
   * string without NUL, of at most `maxScopeBytes` (1,024) UTF-8 bytes (else `INVALID_OPTION`).
   * @default 'default'
   */
  readonly scope?: string | undefined
  /**
   * What the call looks like (e.g. a hash of its input); a second call with the same key and
   * another fingerprint throws `IdempotencyMismatchError`. Like `scope`, a well-formed string
   * without NUL (else `INVALID_OPTION`). Left out, it is `''`, which is compared like any
   * other: calls that all leave it out never mismatch, but a call with a fingerprint and one
   * without do (decided: the key's first use fixed what the call looks like, and a caller that
   * starts sending fingerprints must not replay results recorded without one unnoticed).
   * @default ''
   */
  readonly fingerprint?: string | undefined
  /** Aborts a wait in `onConcurrent: 'wait'` mode. */
  readonly signal?: AbortSignal | undefined
}

/** Options of {@link IdempotentExecution.abort}. */
export interface IdempotentAbortOptions {
  /**
   * Whether the key is given back at once. `false` when the outcome is unknown (the work may
   * have happened: a call to another system timed out or broke after it was sent): `ctx.tx`
   * is still rolled back, but the key stays in progress until its lease expires, so duplicates
   * meanwhile get 409 (or wait) instead of running the work a second time; after that a
   * duplicate takes the key over and runs again. With `claim: 'in-transaction'` the claim is
   * a statement of `ctx.tx` and rolls back with it: the key is free at once (every effect of
   * such a handler was in that transaction, so nothing happened).
   * @default true
   */
  readonly release?: boolean | undefined
}

/**
 * One guarded request, started by {@link Idempotency.begin}, that this process must execute.
 * Call exactly one of `complete` or `abort`.
 */
export interface IdempotentExecution {
  /** What the handler receives: key, scope, `tx`, phases. */
  readonly context: IdempotencyContext
  /**
   * Records the handler's response (in `context.tx`, which then commits) and returns the
   * response to send: the same one, or a 409 problem if the lease was lost meanwhile (then the
   * handler's writes were rolled back). A response that `storeResponse` rejects releases the
   * key instead and is returned as is, or, if the store fails to release it, rejects with
   * `IdempotencyReleaseError` (`IDEMPOTENCY_RELEASE_FAILED`: the key stays held until its lease
   * ends). Rejects on a database error, and with `INVALID_OPTION` (`option: 'status'`) for a
   * status outside 100-599, which no response can be sent with; either way the key is released
   * (or, if that fails too, the `release-failed` event is published).
   */
  complete(response: IdempotencyResponse): Promise<IdempotencyResponse>
  /**
   * The handler failed: rolls `context.tx` back and releases the key (or, with `release:
   * false`, leaves it held until its lease expires). Rejects with `IdempotencyReleaseError`
   * (`IDEMPOTENCY_RELEASE_FAILED`, the store's error as `cause`) when the store fails to
   * release the key, which then stays held until its lease ends: report it, or the client's
   * 409s until then go unexplained. Rejects with `INVALID_OPTION` for options it cannot take (an unknown key, a non-boolean `release`), after rolling back and
   * leaving the key held until its lease expires: of the two outcomes, the one that cannot run
   * the work twice.
   */
  abort(options?: IdempotentAbortOptions): Promise<void>
  /**
   * Calls `listener` if the lease runs out before `complete` or `abort` was called: `context.tx`
   * has then been rolled back, `complete` can only answer the lease-lost 409, and a retry may
   * take the key over. An adapter whose handler may never finish uses it to answer its client
   * at the lease's end instead of leaving it waiting (every HTTP adapter of this module does).
   * Called at once if the lease has already run out; a later call replaces the listener.
   */
  onLeaseLost(listener: (error: IdempotencyInProgressError) => void): void
}

/** What {@link Idempotency.begin} decided. */
export type IdempotencyBegin =
  | {
      /** The request is not guarded (method, or no key where keys are optional): just run it. */
      readonly kind: 'bypass'
    }
  | {
      /** Send `response` without running the handler: a replay or a problem. */
      readonly kind: 'respond'
      readonly response: IdempotencyResponse
      /** True when `response` is a replay of a recorded result. */
      readonly replayed: boolean
      /** The error behind a problem response. */
      readonly error: IdempotencyError | undefined
    }
  | {
      /** This request holds the key: run the handler, then complete or abort. */
      readonly kind: 'execute'
      readonly execution: IdempotentExecution
    }

/**
 * The framework-free Idempotency-Key protocol. Adapters for node:http, Express, Fastify and
 * Hono, and the proxy, are thin layers over {@link Idempotency.begin}.
 */
export interface Idempotency {
  /** The store records live in. */
  readonly store: IdempotencyStore
  /** Whether requests with this method are guarded. */
  appliesTo(method: string): boolean
  /** The problem+json response for an idempotency error, with the configured type base. */
  problem(error: IdempotencyError): IdempotencyResponse
  /**
   * Validates the key, resolves scope and fingerprint, and claims the key: decides whether to
   * run the handler, replay, or answer with a problem (400, 409, 422).
   */
  begin(request: IdempotencyRequest): Promise<IdempotencyBegin>
  /**
   * The whole protocol around a handler that returns a response: claim, run, record or
   * release. Unguarded requests call the handler with `undefined`.
   */
  handle(
    request: IdempotencyRequest,
    handler: (context: IdempotencyContext | undefined) => Promise<IdempotencyResponse>,
  ): Promise<IdempotencyResponse>
  /**
   * Runs `fn` at most once per key (non-HTTP work: message consumers, saga steps) and returns
   * its result; a later call with the same key returns the recorded result (as JSON round trip,
   * typed {@link Jsonified}; the first call gets the round trip too) without running `fn`. `fn` may write in `ctx.tx`, which commits with the result. If `fn`
   * throws, its writes roll back, the key is released and the error is rethrown (if the release
   * fails, the key stays held until its lease ends and the `release-failed` event is published).
   *
   * @throws IdempotencyInProgressError while another call holds the key (or waits, by option)
   * @throws IdempotencyMismatchError when the key was used with another fingerprint
   * @throws InvalidOptionError (`result`) when JSON would not give the result back (a Map, a
   *   function, a BigInt, NaN, an object with only `#private` fields): `fn`'s writes roll back
   */
  run<T>(
    key: string,
    fn: (context: IdempotencyContext) => Promise<T> | T,
    options?: RunOptions,
  ): Promise<Jsonified<T>>
}

type Acquired =
  | { readonly kind: 'execute'; readonly execution: Execution }
  | { readonly kind: 'completed'; readonly record: IdempotencyRecord }
  | { readonly kind: 'mismatch' }
  | { readonly kind: 'busy'; readonly reason: InProgressReason }

// What one pass of the claim protocol found.
type ClaimStep =
  | {
      readonly kind: 'execute'
      readonly attempt: number
      /** The record taken over, whose committed phases the new holder resumes after. */
      readonly from: IdempotencyRecord | undefined
    }
  | { readonly kind: 'completed'; readonly record: IdempotencyRecord }
  | { readonly kind: 'mismatch' }
  /** Another holder's lease is live: wait (at most until it ends) or refuse. */
  | { readonly kind: 'poll'; readonly untilLeaseEndsMs: number }
  /** The record changed between two statements: claim again at once. */
  | { readonly kind: 'retry' }

// The phases of a fresh holder (never changed in place: a committed phase replaces them).
const noPhases: Readonly<Record<string, JsonValue>> = Object.freeze({})

// A claim that found the key free.
const claimedStep: ClaimStep = { kind: 'execute', attempt: 1, from: undefined }

// Claims that lose a race (a record vanished or changed between two statements) are retried at
// once; a bound keeps a pathological store from spinning forever.
const maxImmediateRetries = 32
const firstPollMs = 10
const maxPollMs = 500

const storeCache = new WeakMap<SqlDriver, IdempotencyStore>()

/** The keys IdempotencyOptions takes (internal: not exported from the package root). */
export const idempotencyOptions = optionKeys<IdempotencyOptions>({
  store: true,
  claim: true,
  scope: true,
  fingerprint: true,
  methods: true,
  required: true,
  leaseMs: true,
  retentionMs: true,
  onConcurrent: true,
  waitTimeoutMs: true,
  retryAfterMs: true,
  storeResponse: true,
  replayHeaders: true,
  problemTypeBase: true,
  replayCache: true,
  clock: true,
})

/** The keys RunOptions takes (internal: not exported from the package root). */
export const runOptions = optionKeys<RunOptions>({ scope: true, fingerprint: true, signal: true })

/** The keys IdempotentAbortOptions takes (internal: not exported from the package root). */
export const abortOptions = optionKeys<IdempotentAbortOptions>({ release: true })

/** Why `abort(options)` cannot be taken as written, or undefined when it can. */
function abortOptionsRefusal(options: unknown): InvalidOptionError | undefined {
  try {
    const given = checkObject('options', options)
    checkOptionKeys('options', given, abortOptions, { bareNames: true })
    if (given.release !== undefined && typeof given.release !== 'boolean') {
      return new InvalidOptionError('release', 'a boolean', given.release)
    }
    return undefined
  } catch (error) {
    return error as InvalidOptionError
  }
}

function resolveStore(value: unknown): IdempotencyStore {
  const candidate = checkObject('store', value)
  if (typeof candidate.claim === 'function' && typeof candidate.complete === 'function') {
    return candidate as unknown as IdempotencyStore
  }
  if (typeof candidate.transaction === 'function' && typeof candidate.query === 'function') {
    const db = candidate as unknown as SqlDriver
    let store = storeCache.get(db)
    if (store === undefined) {
      store = createSqlIdempotencyStore(db)
      storeCache.set(db, store)
    }
    return store
  }
  throw new InvalidOptionError('store', 'an IdempotencyStore or a SqlDriver', value)
}

/**
 * Whether a stored fingerprint is the request's: the same string, or (`earlier` given) the `v1:`
 * fingerprint an earlier release stored for the same parsed body.
 */
function sameFingerprint(
  stored: string,
  fingerprint: string,
  earlier: IdempotencyRequest | undefined,
): boolean {
  return (
    stored === fingerprint || (earlier !== undefined && matchesEarlierFingerprint(stored, earlier))
  )
}

/**
 * What a scope or fingerprint function resolved to, when that was not at once a string known to
 * be storable. Anything but a string (a non-empty one for a scope) is refused: the database would
 * store a number as text (`42.0` on SQLite), a missing tenant as a NOT NULL error, or a Buffer
 * digest as a value that never equals the next request's, answering every retry 422. So is a
 * string that the database cannot store as given ({@link isStorableText}): half of a surrogate
 * pair is stored as U+FFFD and PostgreSQL refuses NUL, so the request's own retry would be
 * answered 422, or the claim would fail after the key was parsed; and a scope over
 * {@link maxScopeBytes}, which PostgreSQL cannot index beside the key. It is a programming error of
 * the server, not the client's: the adapters answer it 500 and pass the error to `onError`.
 *
 * @internal Also used by the adapters for what their own `scope` option returned: there,
 * undefined is refused too rather than read as "no scope given" (which would fall back to the
 * core's scope, where requests without a credential share `anonymous`).
 */
export function computedString(option: 'scope' | 'fingerprint', value: unknown): string {
  if (
    typeof value === 'string' &&
    (option === 'fingerprint' ? isStorableText(value) : isStorableScope(value))
  ) {
    return value
  }
  throw new InvalidOptionError(
    option,
    option === 'scope'
      ? `a non-empty string of at most ${maxScopeBytes} UTF-8 bytes without NUL characters or lone surrogates from the scope function`
      : 'a string without NUL characters or lone surrogates from the fingerprint function',
    value,
  )
}

function checkReplayHeaders(value: unknown): ReadonlySet<string> {
  if (!Array.isArray(value) || value.some((h) => typeof h !== 'string')) {
    throw new InvalidOptionError('replayHeaders', 'an array of header names', value)
  }
  const names = new Set<string>()
  for (const name of value as string[]) {
    if (!isHeaderName(name)) {
      throw new InvalidOptionError(
        'replayHeaders',
        'header names made of HTTP token characters (RFC 9110 section 5.6.2)',
        name,
      )
    }
    const lower = name.toLowerCase()
    if (unreplayableHeaders.has(lower)) {
      throw new InvalidOptionError(
        'replayHeaders',
        `header names other than the hop-by-hop and framing headers (${[...unreplayableHeaders].join(', ')}), which each response sets for itself`,
        name,
      )
    }
    // Names differing only in case are one header: they collapse rather than fail, so that
    // [...defaultReplayHeaders, 'Content-Type'] is accepted.
    names.add(lower)
  }
  return names
}

function toStored(response: IdempotencyResponse, replayHeaders: ReadonlySet<string>): StoredResult {
  const headers: Record<string, string | readonly string[]> = {}
  for (const [name, value] of Object.entries(response.headers)) {
    const lower = name.toLowerCase()
    if (replayHeaders.has(lower)) headers[lower] = value
  }
  return { status: response.status, headers, body: response.body }
}

function replayOf(record: IdempotencyRecord): IdempotencyResponse {
  const result = record.result!
  const headers = replayableHeaders(result.headers)
  headers[replayedHeader] = 'true'
  return { status: result.status ?? 200, headers, body: result.body }
}

/**
 * The result `idempotent()` recorded, from its JSON text. A body that is no longer JSON (a record
 * changed outside breakwater) fails with StoredDataError naming the key, not a bare SyntaxError;
 * the place is built only then, so a replay words nothing.
 */
function decodeResult<T>(record: IdempotencyRecord): T {
  const result = record.result
  const body = result?.body
  if (body === undefined || body.byteLength === 0) return undefined as T
  const text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8')
  return parseStoredJson(text, result!.bodyPlace ?? (() => unnamedBodyPlace(record))) as T
}

/**
 * The body's place for a store that does not say where it keeps it. The key, not the scope: a
 * scope may be derived from a caller's credential.
 */
function unnamedBodyPlace(record: IdempotencyRecord): StoredPlace {
  return {
    table: 'idempotency store',
    row: `record of key ${JSON.stringify(record.key)}`,
    column: 'result body',
  }
}

/** {@link IdempotentExecution} over an {@link Execution}: one object per request, no closures. */
class HttpExecution implements IdempotentExecution {
  readonly context: IdempotencyContext
  readonly #execution: Execution
  readonly #storeResponse: (status: number) => boolean
  readonly #replayHeaders: ReadonlySet<string>
  readonly #problemTypeBase: string

  constructor(
    execution: Execution,
    storeResponse: (status: number) => boolean,
    replayHeaders: ReadonlySet<string>,
    problemTypeBase: string,
  ) {
    this.context = execution.context
    this.#execution = execution
    this.#storeResponse = storeResponse
    this.#replayHeaders = replayHeaders
    this.#problemTypeBase = problemTypeBase
  }

  async complete(response: IdempotencyResponse): Promise<IdempotencyResponse> {
    const { status } = response
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      // No response can be sent with it (node's writeHead throws, a fetch Response refuses it),
      // so a recorded one would fail every replay until its retention ends: a handler failure.
      // The handler's bug is the error to fix; a failed release is published (release-failed).
      await this.#execution.release().catch(() => {})
      throw new InvalidOptionError('status', 'an HTTP status code from 100 to 599', status)
    }
    let store: boolean
    try {
      store = this.#storeResponse(response.status)
      // A promise is truthy: an async storeResponse recorded every result, 5xx included, and
      // the client's retry was replayed a 503 instead of running again.
      if (typeof (store as unknown as PromiseLike<unknown> | null)?.then === 'function') {
        throw new InvalidOptionError(
          'storeResponse',
          'a function that decides at once (it returned a promise, which is always truthy)',
          store,
        )
      }
    } catch (error) {
      // The user's function failed: settle anyway, or ctx.tx stays open (on SQLite blocking
      // every other statement) and the key held until the lease runs out.
      await this.#execution.release().catch(() => {})
      throw error
    }
    if (!store) {
      await this.#execution.release()
      return response
    }
    try {
      await this.#execution.record(toStored(response, this.#replayHeaders))
      return response
    } catch (error) {
      if (error instanceof IdempotencyInProgressError) {
        return problemResponse(error, this.#problemTypeBase)
      }
      throw error
    }
  }

  abort(options?: IdempotentAbortOptions): Promise<void> {
    if (options === undefined) return this.#execution.release()
    const refusal = abortOptionsRefusal(options)
    if (refusal === undefined) {
      return options.release === false ? this.#execution.abandon() : this.#execution.release()
    }
    // Not understood: the key stays held until its lease expires, the outcome that can never
    // run the work twice (a release given by mistake could), and the caller learns why.
    return this.#execution.abandon().then(() => Promise.reject(refusal))
  }

  onLeaseLost(listener: (error: IdempotencyInProgressError) => void): void {
    this.#execution.onLeaseLost(listener)
  }
}

class IdempotencyCore implements Idempotency {
  readonly store: IdempotencyStore
  readonly #settings: ExecutionSettings
  readonly #scope: ScopeFunction
  readonly #fingerprint: FingerprintFunction
  // Whether #scope and #fingerprint are the built-in functions, whose strings are always
  // storable (so begin() skips the check on the default path).
  readonly #scopeIsDefault: boolean
  readonly #fingerprintIsDefault: boolean
  readonly #methods: ReadonlySet<string>
  readonly #required: boolean
  readonly #claimInTx: boolean
  readonly #onConcurrent: 'reject' | 'wait'
  readonly #waitTimeoutMs: number
  readonly #storeResponse: (status: number) => boolean
  readonly #replayHeaders: ReadonlySet<string>
  readonly #problemTypeBase: string
  // How long a new claim's record is kept: its retention, but never less than its lease, so
  // that neither the sweeper nor a duplicate (recycling a record past its retention) frees a
  // key whose holder is still running. Completion sets the real retention.
  readonly #claimRetentionMs: number
  /** Completed results replayed from memory; undefined with `replayCache: false`. */
  readonly #replays: ReplayCache | undefined

  constructor(options: IdempotencyOptions) {
    checkObject('options', options)
    // A misspelt option (`leaseMS`) was dropped without a word and its default used instead.
    checkOptionKeys('options', options, idempotencyOptions, { bareNames: true })
    this.store = resolveStore(options.store)
    const clock = checkClock('clock', options.clock)
    this.#settings = {
      store: this.store,
      clock,
      leaseMs: checkInteger('leaseMs', options.leaseMs ?? 60_000, 1),
      retentionMs: checkInteger('retentionMs', options.retentionMs ?? 86_400_000, 1),
      retryAfterMs: checkInteger('retryAfterMs', options.retryAfterMs ?? 1_000, 0),
    }
    this.#claimRetentionMs = Math.max(this.#settings.retentionMs, this.#settings.leaseMs)
    this.#scope = scopeResolver(options.scope)
    this.#fingerprint =
      options.fingerprint === undefined
        ? defaultFingerprint
        : checkFunction<FingerprintFunction>('fingerprint', options.fingerprint)
    this.#scopeIsDefault = this.#scope === credentialScope
    this.#fingerprintIsDefault = this.#fingerprint === defaultFingerprint
    this.#methods = checkMethods(options.methods ?? defaultMethods)
    const required = options.required ?? true
    if (typeof required !== 'boolean') {
      throw new InvalidOptionError('required', 'a boolean', required)
    }
    this.#required = required
    const claim = checkOneOf('claim', options.claim ?? 'leased', ['leased', 'in-transaction'])
    this.#claimInTx = claim === 'in-transaction'
    if (this.#claimInTx && typeof this.store.inTransaction !== 'function') {
      throw new InvalidOptionError(
        'store',
        "a store that can claim in a transaction (createSqlIdempotencyStore or a SqlDriver) for claim: 'in-transaction'",
        options.store,
      )
    }
    this.#onConcurrent = checkOneOf(
      'onConcurrent',
      options.onConcurrent ?? (this.#claimInTx ? 'wait' : 'reject'),
      ['reject', 'wait'],
    )
    if (this.#claimInTx && this.#onConcurrent === 'reject') {
      // The duplicate's claim waits inside the database for the first transaction to end;
      // answering 409 instead would need a lock timeout, i.e. one more statement per request.
      throw new InvalidOptionError(
        'onConcurrent',
        "'wait' with claim: 'in-transaction' (a concurrent duplicate waits for the first request's transaction)",
        options.onConcurrent,
      )
    }
    this.#waitTimeoutMs = checkInteger('waitTimeoutMs', options.waitTimeoutMs ?? 10_000, 0)
    this.#storeResponse =
      options.storeResponse === undefined
        ? defaultStoreResponse
        : checkFunction<(status: number) => boolean>('storeResponse', options.storeResponse)
    this.#replayHeaders = checkReplayHeaders(options.replayHeaders ?? defaultReplayHeaders)
    this.#problemTypeBase =
      options.problemTypeBase === undefined
        ? defaultProblemTypeBase
        : checkProblemTypeBase(options.problemTypeBase)
    this.#replays = replayCacheOf(options.replayCache)
  }

  appliesTo(method: string): boolean {
    // Methods usually arrive in upper case already (node:http always sends them so).
    return this.#methods.has(method) || this.#methods.has(method.toUpperCase())
  }

  problem(error: IdempotencyError): IdempotencyResponse {
    return problemResponse(error, this.#problemTypeBase)
  }

  #problem(error: IdempotencyError): IdempotencyBegin {
    if (
      error instanceof IdempotencyKeyMissingError ||
      error instanceof IdempotencyKeyInvalidError
    ) {
      publish('key-rejected', { code: error.code })
    }
    return {
      kind: 'respond',
      response: problemResponse(error, this.#problemTypeBase),
      replayed: false,
      error,
    }
  }

  async begin(request: IdempotencyRequest): Promise<IdempotencyBegin> {
    if (!this.appliesTo(request.method)) return { kind: 'bypass' }
    const raw = request.header('idempotency-key')
    if (raw === undefined) {
      return this.#required ? this.#problem(new IdempotencyKeyMissingError()) : { kind: 'bypass' }
    }
    let key: string
    try {
      // Only a value with a comma can hide two lines; counting them may cost the framework a
      // pass over all the headers (Node builds headersDistinct on first read).
      key = parseIdempotencyKey(
        raw,
        raw.includes(',') ? request.headerRepeated?.('idempotency-key') : undefined,
      )
    } catch (error) {
      if (error instanceof IdempotencyKeyInvalidError) return this.#problem(error)
      throw error
    }
    // Scope and fingerprint are usually computed synchronously: awaited only when they are
    // promises (each await is one more turn of the microtask queue for every request). The
    // default functions return hex digests and fixed ASCII, so only other functions' strings
    // are checked for what the database cannot store.
    const given = request.scope
    let scope = given ?? this.#scope(request)
    if (
      typeof scope !== 'string' ||
      scope === '' ||
      ((given !== undefined || !this.#scopeIsDefault) && !isStorableScope(scope))
    ) {
      scope = computedString('scope', await scope)
    }
    let fingerprint = this.#fingerprint(request)
    if (
      typeof fingerprint !== 'string' ||
      (!this.#fingerprintIsDefault && !isStorableText(fingerprint))
    ) {
      fingerprint = computedString('fingerprint', await fingerprint)
    }
    // A parsed body's request may match a record stored before fingerprint v2 (see
    // matchesEarlierFingerprint); only the default fingerprint knows that encoding.
    const earlier =
      this.#fingerprintIsDefault && request.earlierBody !== undefined ? request : undefined
    const acquired = await this.#acquire(scope, key, fingerprint, request, earlier)
    switch (acquired.kind) {
      case 'completed':
        return {
          kind: 'respond',
          response: replayOf(acquired.record),
          replayed: true,
          error: undefined,
        }
      case 'mismatch':
        return this.#problem(new IdempotencyMismatchError(key))
      case 'busy':
        return this.#problem(
          new IdempotencyInProgressError(key, acquired.reason, this.#settings.retryAfterMs),
        )
      case 'execute':
        return { kind: 'execute', execution: this.#httpExecution(acquired.execution) }
    }
  }

  #httpExecution(execution: Execution): IdempotentExecution {
    return new HttpExecution(
      execution,
      this.#storeResponse,
      this.#replayHeaders,
      this.#problemTypeBase,
    )
  }

  async handle(
    request: IdempotencyRequest,
    handler: (context: IdempotencyContext | undefined) => Promise<IdempotencyResponse>,
  ): Promise<IdempotencyResponse> {
    const begun = await this.begin(request)
    if (begun.kind === 'respond') return begun.response
    if (begun.kind === 'bypass') return handler(undefined)
    const { execution } = begun
    let response: IdempotencyResponse
    try {
      response = await handler(execution.context)
    } catch (error) {
      await execution.abort()
      // A handler that ran past its lease learns it from ctx.phase(): answer as for a 409.
      if (isIdempotencyError(error)) return this.problem(error)
      throw error
    }
    return execution.complete(response)
  }

  async run<T>(
    key: string,
    fn: (context: IdempotencyContext) => Promise<T> | T,
    options: RunOptions = {},
  ): Promise<Jsonified<T>> {
    checkOperationKey(key)
    checkFunction('fn', fn)
    checkObject('options', options)
    // A misspelt `scope` would put the key in the default scope, shared with other callers.
    checkOptionKeys('options', options, runOptions, { bareNames: true })
    // Read only when the call waits for another holder: checked now, or a wrong value would
    // fail (with a bare TypeError) only in the one call that had to wait.
    checkSignal('signal', options.signal)
    const scope = options.scope ?? 'default'
    if (typeof scope !== 'string' || !isStorableScope(scope)) {
      throw new InvalidOptionError(
        'scope',
        `a non-empty, well-formed string without NUL, of at most ${maxScopeBytes} UTF-8 bytes`,
        scope,
      )
    }
    const fingerprint = options.fingerprint ?? ''
    if (typeof fingerprint !== 'string' || !isStorableText(fingerprint)) {
      // Stored as given or not at all: a changed fingerprint would answer the retry of the same
      // call with IdempotencyMismatchError.
      throw new InvalidOptionError('fingerprint', 'a well-formed string without NUL', fingerprint)
    }
    const acquired = await this.#acquire(scope, key, fingerprint, options, undefined)
    switch (acquired.kind) {
      case 'completed':
        return decodeResult<Jsonified<T>>(acquired.record)
      case 'mismatch':
        throw new IdempotencyMismatchError(key)
      case 'busy':
        throw new IdempotencyInProgressError(key, acquired.reason, this.#settings.retryAfterMs)
      case 'execute':
        break
    }
    const { execution } = acquired
    let json: string | undefined
    try {
      const result = await fn(execution.context)
      // Refused (INVALID_OPTION) rather than stored as something else: JSON writes NaN as
      // null, a Map as {} and drops functions, so no later call would get what the first
      // returned. Thrown here, so the key is released and ctx.tx rolled back.
      json = result === undefined ? undefined : recordableJson('result', result)
    } catch (error) {
      // fn's error is what the caller acts on; a failed release (the key then stays held until
      // its lease ends) is published as release-failed.
      await execution.release().catch(() => {})
      throw error
    }
    const body = json === undefined ? new Uint8Array(0) : Buffer.from(json)
    await execution.record({ status: undefined, headers: {}, body })
    return (json === undefined ? undefined : JSON.parse(json)) as Jsonified<T>
  }

  async #acquire(
    scope: string,
    key: string,
    fingerprint: string,
    // Read only when waiting: an adapter may create the signal on first access.
    abortable: { readonly signal?: AbortSignal | undefined },
    // The request, when a stored v1 fingerprint may match it through its earlierBody.
    earlier: IdempotencyRequest | undefined,
  ): Promise<Acquired> {
    const { store, clock, leaseMs } = this.#settings
    const claimRetentionMs = this.#claimRetentionMs
    const startedAt = clock.now()
    const kept = this.#replays?.get(scope, key, startedAt)
    if (kept !== undefined) {
      const settled = this.#settledAlready(kept, scope, key, fingerprint, earlier, startedAt, true)
      if (settled !== undefined) return settled
    }
    if (store.dialect === 'sqlite') {
      const record = await store.get(scope, key)
      const settled = this.#settledAlready(record, scope, key, fingerprint, earlier, startedAt)
      if (settled !== undefined) return settled
    }
    let pollMs = firstPollMs
    let immediate = 0
    for (;;) {
      const nowMs = clock.now()
      const claim: ClaimInput = {
        scope,
        key,
        fingerprint,
        leaseToken: randomUUID(),
        nowMs,
        leaseExpiresAtMs: nowMs + leaseMs,
        expiresAtMs: nowMs + claimRetentionMs,
      }
      // claim: 'in-transaction': every step below is a statement of the transaction that will
      // become ctx.tx; nothing of it commits unless the handler's result does.
      const tx = this.#claimInTx
        ? new DeferredTransaction(store, store.dialect ?? 'sqlite')
        : undefined
      let step: ClaimStep
      try {
        const steps = tx === undefined ? store : store.inTransaction!(tx)
        const outcome = await steps.claim(claim)
        // The common case (the key was free) without one more async call.
        step = outcome.claimed ? claimedStep : await this.#claimStep(steps, claim, outcome, earlier)
      } catch (error) {
        await tx?.rollback()
        throw error
      }
      if (step.kind === 'execute') {
        publish('claimed', { scope, key, attempt: step.attempt })
        return { kind: 'execute', execution: this.#execution(claim, step, tx) }
      }
      if (tx !== undefined) {
        if (step.kind === 'poll' || step.kind === 'retry') {
          // Before waiting: an open transaction would hold SQLite's only writer meanwhile.
          await tx.rollback()
        } else {
          // A replay or a refusal has kept nothing: it need not wait for the ROLLBACK.
          void tx.rollback()
        }
      }
      switch (step.kind) {
        case 'completed':
          publish('replayed', { scope, key })
          return step
        case 'mismatch':
          publish('mismatch', { scope, key })
          return step
        case 'poll': {
          if (this.#onConcurrent === 'reject') return this.#busy(scope, key, 'in-flight')
          const waitedMs = nowMs - startedAt
          if (waitedMs >= this.#waitTimeoutMs) return this.#busy(scope, key, 'wait-timeout')
          // Checked here, where it is first read: an adapter may create it only on access, and
          // run() has checked its own (as `signal`). A custom adapter's bad value would
          // otherwise fail inside sleep() as `sleep.signal`, a name the caller never wrote.
          const signal = checkSignal('request.signal', abortable.signal)
          await sleep(
            clock,
            Math.max(1, Math.min(pollMs, this.#waitTimeoutMs - waitedMs, step.untilLeaseEndsMs)),
            signal,
          )
          pollMs = Math.min(pollMs * 2, maxPollMs)
          continue
        }
        case 'retry':
          // Lost a race between two statements (released, recycled or taken over meanwhile).
          if (++immediate > maxImmediateRetries) return this.#busy(scope, key, 'in-flight')
      }
    }
  }

  /**
   * What `record`, read plainly before the claim, decides on its own. SQLite only, where a read
   * costs no round trip: a replay (or a fingerprint mismatch) then needs neither the claim's
   * write nor, with `claim: 'in-transaction'`, a write transaction (`BEGIN IMMEDIATE` would
   * queue behind every writer of the file, in every process). A record within its retention
   * decides as the claim would: a completed record is final until it expires, and a different
   * fingerprint is a mismatch in any state. Anything else (no record, in progress, expired)
   * goes through the claim.
   */
  #settledAlready(
    record: IdempotencyRecord | undefined,
    scope: string,
    key: string,
    fingerprint: string,
    earlier: IdempotencyRequest | undefined,
    nowMs: number,
    fromMemory = false,
  ): Acquired | undefined {
    if (record === undefined || record.expiresAtMs <= nowMs) return undefined
    if (!sameFingerprint(record.fingerprint, fingerprint, earlier)) {
      publish('mismatch', { scope, key })
      return { kind: 'mismatch' }
    }
    if (record.state !== 'completed') return undefined
    // Kept from when it was read from the store: replays from memory do not extend that.
    if (!fromMemory) this.#replays?.keep(record, nowMs)
    publish('replayed', { scope, key })
    return { kind: 'completed', record }
  }

  /** The rest of one pass of the claim protocol: act on the record that holds the key. */
  async #claimStep(
    steps: IdempotencyClaimSteps,
    claim: ClaimInput,
    outcome: ClaimOutcome,
    earlier: IdempotencyRequest | undefined,
  ): Promise<ClaimStep> {
    if (outcome.claimed) return claimedStep
    const record = outcome.existing
    if (record === undefined) return { kind: 'retry' }
    const { nowMs, fingerprint } = claim
    if (record.expiresAtMs <= nowMs) {
      // Past retention but not swept yet: the key is free again.
      const recycled = await steps.recycle({ ...claim, previousLeaseToken: record.leaseToken })
      return recycled ? { kind: 'execute', attempt: 1, from: undefined } : { kind: 'retry' }
    }
    if (!sameFingerprint(record.fingerprint, fingerprint, earlier)) return { kind: 'mismatch' }
    if (record.state === 'completed') {
      this.#replays?.keep(record, nowMs)
      return { kind: 'completed', record }
    }
    if ((record.leaseExpiresAtMs ?? 0) <= nowMs) {
      // The holder crashed or hung past its lease: take over, resuming after its phases.
      const taken = await steps.takeOver({ ...claim, previousLeaseToken: record.leaseToken })
      return taken
        ? { kind: 'execute', attempt: record.attempt + 1, from: record }
        : { kind: 'retry' }
    }
    return { kind: 'poll', untilLeaseEndsMs: (record.leaseExpiresAtMs ?? nowMs) - nowMs }
  }

  #busy(scope: string, key: string, reason: InProgressReason): Acquired {
    publish('in-progress', { scope, key, reason })
    return { kind: 'busy', reason }
  }

  #execution(
    claim: ClaimInput,
    { attempt, from }: { attempt: number; from: IdempotencyRecord | undefined },
    tx: DeferredTransaction | undefined,
  ): Execution {
    return new Execution(this.#settings, {
      lease: { scope: claim.scope, key: claim.key, leaseToken: claim.leaseToken },
      // A claim in a transaction may have waited for the key's lock (or SQLite's writer) for a
      // while: its time limit starts now, when the handler can start.
      leaseExpiresAtMs:
        tx === undefined
          ? claim.leaseExpiresAtMs
          : this.#settings.clock.now() + this.#settings.leaseMs,
      attempt,
      recoveryPoint: from?.recoveryPoint,
      phases: from?.phases ?? noPhases,
      tx,
      onRecorded: this.#replays === undefined ? undefined : this.#keepRecorded(claim, attempt),
    })
  }

  // The result this process recorded, kept for replays as the store would return it.
  #keepRecorded(
    claim: ClaimInput,
    attempt: number,
  ): (result: StoredResult, nowMs: number, expiresAtMs: number) => void {
    return (result, nowMs, expiresAtMs) => {
      this.#replays?.keep(
        {
          scope: claim.scope,
          key: claim.key,
          fingerprint: claim.fingerprint,
          state: 'completed',
          leaseToken: claim.leaseToken,
          leaseExpiresAtMs: undefined,
          attempt,
          recoveryPoint: undefined,
          phases: noPhases,
          result,
          createdAtMs: nowMs,
          updatedAtMs: nowMs,
          expiresAtMs,
        },
        nowMs,
        // The response's buffer is the adapter's.
        true,
      )
    }
  }
}

/**
 * Creates the Idempotency-Key protocol over a store. Hand the result to an adapter
 * (`idempotentHandler`, `expressIdempotency`, `fastifyIdempotency`, `honoIdempotency`) or use
 * `begin`/`handle`/`run` directly. Options are checked here, once: a bad value, or an unknown
 * (misspelt) option, is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const db = await openDatabase('sqlite:./.breakwater/app.db')
 * await migrateIdempotency(db)
 * const idempotency = createIdempotency({ store: db, scope: { tenantHeader: 'x-tenant-id' } })
 * const server = http.createServer(
 *   idempotentHandler({ idempotency }, async (req, res, { idempotency: ctx }) => {
 *     await ctx?.tx.execute('INSERT INTO charges (id) VALUES ($1)', [ctx.key])
 *     res.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}')
 *   }),
 * )
 * ```
 */
export function createIdempotency(options: IdempotencyOptions): Idempotency {
  return new IdempotencyCore(options)
}
