import type { Clock } from '../core/clock.js'
import type { Jsonified } from '../core/jsonified.js'
import { checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import type { SqlDriver } from '../stores/index.js'
import { createIdempotency, type IdempotencyClaimMode } from './core.js'
import type { IdempotencyStore } from './store.js'
import type { IdempotencyContext } from './types.js'

/** Options of {@link idempotent}. */
export interface IdempotentOptions {
  /** Where records live: an idempotency store or a `SqlDriver` (wrapped in the SQL store). */
  readonly store: IdempotencyStore | SqlDriver
  /**
   * Where the key is claimed: `'leased'` commits a leased in-progress record before `fn`
   * runs; `'in-transaction'` claims it in `ctx.tx` itself (one transaction per call, a
   * concurrent call waits for it; for `fn` whose effects are all in the database). See
   * `IdempotencyOptions.claim`.
   * @default 'leased'
   */
  readonly claim?: IdempotencyClaimMode | undefined
  /**
   * The scope the key lives in, e.g. the consumer or saga name: a non-empty, well-formed string
   * without NUL, of at most `maxScopeBytes` (1,024) UTF-8 bytes (else `INVALID_OPTION`).
   * @default 'default'
   */
  readonly scope?: string | undefined
  /**
   * What the call looks like (e.g. a hash of its input); a later call with the same key and
   * another fingerprint throws `IdempotencyMismatchError`. Like `scope`, a well-formed string
   * without NUL (else `INVALID_OPTION`). Left out, it is `''`, which is compared like any
   * other: calls that all leave it out never mismatch, but a call with a fingerprint and one
   * without do (decided: the key's first use fixed what the call looks like, and a caller that
   * starts sending fingerprints must not replay results recorded without one unnoticed).
   * @default ''
   */
  readonly fingerprint?: string | undefined
  /**
   * What a call does while another holds the key: `'reject'` throws
   * `IdempotencyInProgressError`; `'wait'` waits for the holder and returns its result
   * (the only choice with `claim: 'in-transaction'`).
   * @default 'reject' ('wait' with claim: 'in-transaction')
   */
  readonly onConcurrent?: 'reject' | 'wait' | undefined
  /**
   * In `'wait'` mode, how long to wait before throwing `IdempotencyInProgressError`.
   * @default 10000
   */
  readonly waitTimeoutMs?: number | undefined
  /**
   * How long a call owns the key before another may take over (after a crash). `fn` must
   * finish within it, or its writes are rolled back.
   * @default 60000
   */
  readonly leaseMs?: number | undefined
  /**
   * How long a recorded result is kept.
   * @default 86400000 (24 hours)
   */
  readonly retentionMs?: number | undefined
  /**
   * The `retryAfterMs` carried by `IdempotencyInProgressError`.
   * @default 1000
   */
  readonly retryAfterMs?: number | undefined
  /** Aborts a wait in `'wait'` mode. */
  readonly signal?: AbortSignal | undefined
  /**
   * The clock for leases, retention and waits.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys IdempotentOptions takes (internal: not exported from the package root). */
export const idempotentOptions = optionKeys<IdempotentOptions>({
  store: true,
  claim: true,
  scope: true,
  fingerprint: true,
  onConcurrent: true,
  waitTimeoutMs: true,
  leaseMs: true,
  retentionMs: true,
  retryAfterMs: true,
  signal: true,
  clock: true,
})

/**
 * Runs `fn` at most once per key, for work that is not an HTTP request: message consumers,
 * saga steps (key = saga id + step). `fn` gets `ctx.tx`, a transaction on the store's database
 * for its business writes; its JSON-serializable result is recorded in that same transaction,
 * so both commit or neither does. A later call with the same key returns the recorded result
 * (as a JSON round trip, also on the first call, so both calls see equal values, typed
 * {@link Jsonified}: a `Date` comes back as a string, an instance without its methods) without
 * running `fn`. If `fn` throws, its writes roll back, the key is released, and the error is
 * rethrown, so a retry runs `fn` again. A result JSON would not give back (a Map, a Set, a
 * function, a BigInt, NaN, an object with only `#private` fields) is refused the same way,
 * with `INVALID_OPTION` naming `result` and the path of the bad part; a class instance with
 * own fields comes back as a plain object of them.
 *
 * Creating an {@link Idempotency} once and calling its `run` avoids validating options on
 * every call. An unknown (misspelt) option, or one of `createIdempotency` that only HTTP uses
 * (`methods`), is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @throws IdempotencyInProgressError while another call holds the key (retryable)
 * @throws IdempotencyMismatchError when the key was used with another fingerprint
 * @example
 * ```ts
 * const shipment = await idempotent(`${sagaId}:create-shipment`, async (ctx) => {
 *   await ctx.tx.execute('INSERT INTO shipments (order_id) VALUES ($1)', [orderId])
 *   return { shipmentId: orderId }
 * }, { store: db, scope: 'order-saga' })
 * ```
 */
export async function idempotent<T>(
  key: string,
  fn: (context: IdempotencyContext) => Promise<T> | T,
  options: IdempotentOptions,
): Promise<Jsonified<T>> {
  checkObject('options', options)
  // The rest goes to createIdempotency, which would take its HTTP-only options without a word.
  checkOptionKeys('options', options, idempotentOptions, { bareNames: true })
  const { scope, fingerprint, signal, ...rest } = options
  const core = createIdempotency(rest)
  return core.run(key, fn, {
    ...(scope === undefined ? {} : { scope }),
    ...(fingerprint === undefined ? {} : { fingerprint }),
    ...(signal === undefined ? {} : { signal }),
  })
}
