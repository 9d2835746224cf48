import type { StoredPlace } from '../stores/errors.js'
import type { SqlDialect, SqlTransaction, SqlWrite } from '../stores/index.js'
import type { JsonValue } from './types.js'

// The narrow backend interface of the idempotency capability. The SQL store (SQLite and
// PostgreSQL) and the in-memory store implement it, and both pass one conformance suite.

/** The outcome recorded for a key: an HTTP response, or the JSON result of `idempotent()`. */
export interface StoredResult {
  /** The HTTP status, or undefined for the result of `idempotent()`. */
  readonly status: number | undefined
  /** The headers selected for replay (lower-case names). Empty for `idempotent()`. */
  readonly headers: Readonly<Record<string, string | readonly string[]>>
  /** The body bytes (for `idempotent()`: the UTF-8 JSON of the result, empty for undefined). */
  readonly body: Uint8Array
  /**
   * Where a store read the body from, for the error a replay of `idempotent()` reports when it
   * is no longer JSON (a record changed outside breakwater). Called only then. Optional: without
   * it the error names the key and `result body` in `idempotency store`.
   */
  readonly bodyPlace?: () => StoredPlace
}

/** One key's record. */
export interface IdempotencyRecord {
  readonly scope: string
  readonly key: string
  /** What the request looked like (method, route, body hash by default). */
  readonly fingerprint: string
  /** `in_progress` while a holder runs the work, `completed` once the result is recorded. */
  readonly state: 'in_progress' | 'completed'
  /** The current holder's token; every claim or takeover writes a new one (fencing). */
  readonly leaseToken: string
  /** When the holder's lease ends (epoch ms); undefined once completed. */
  readonly leaseExpiresAtMs: number | undefined
  /** 1 for the first holder, incremented by each takeover. */
  readonly attempt: number
  /** The last committed phase, if any. */
  readonly recoveryPoint: string | undefined
  /** The results of the committed phases, by name (each wrapped as `{ v: result }`, `{}` for undefined). */
  readonly phases: Readonly<Record<string, JsonValue>>
  /** The recorded result, once completed. */
  readonly result: StoredResult | undefined
  readonly createdAtMs: number
  readonly updatedAtMs: number
  /** When the record may be deleted (epoch ms): retention after completion. */
  readonly expiresAtMs: number
}

/** Names one key and the lease its holder owns: every write of a holder is fenced by it. */
export interface LeaseRef {
  readonly scope: string
  readonly key: string
  readonly leaseToken: string
}

/** A new claim. */
export interface ClaimInput extends LeaseRef {
  readonly fingerprint: string
  readonly nowMs: number
  readonly leaseExpiresAtMs: number
  readonly expiresAtMs: number
}

/** What {@link IdempotencyStore.claim} found. */
export type ClaimOutcome =
  | { readonly claimed: true }
  | {
      readonly claimed: false
      /** The record that holds the key (undefined if it vanished since: claim again). */
      readonly existing: IdempotencyRecord | undefined
    }

/** A takeover of a record whose lease expired, or a reuse of a record past its retention. */
export interface TakeoverInput extends ClaimInput {
  /** The token the caller saw; the takeover succeeds only if it is still the current one. */
  readonly previousLeaseToken: string
}

/**
 * The claim steps of {@link IdempotencyStore}, run as statements of a transaction the caller
 * holds open (for `claim: 'in-transaction'`). Same contracts as the store's methods of the same
 * names, except that nothing is committed: the caller's transaction commits the claim together
 * with the handler's business writes and the result, or rolls all of it back.
 */
export interface IdempotencyClaimSteps {
  /**
   * Inserts an in-progress record unless one exists, returning the existing record otherwise.
   * A concurrent claim of the same key in another open transaction makes this wait until that
   * transaction ends (PostgreSQL: the primary key's unique index; SQLite: the single writer).
   */
  claim(input: ClaimInput): Promise<ClaimOutcome>
  /** Reads a record (what the transaction sees). */
  get(scope: string, key: string): Promise<IdempotencyRecord | undefined>
  /** As {@link IdempotencyStore.takeOver}, in the transaction. */
  takeOver(input: TakeoverInput): Promise<boolean>
  /** As {@link IdempotencyStore.recycle}, in the transaction. */
  recycle(input: TakeoverInput): Promise<boolean>
}

/**
 * Storage for idempotency records. Every method is one atomic step; `complete` and `savePhase`
 * run inside a transaction opened with `transaction`, together with the caller's business
 * writes, and are fenced by the lease token.
 */
export interface IdempotencyStore {
  /** The SQL dialect of the store's database; undefined for stores without SQL. */
  readonly dialect?: SqlDialect
  /**
   * Inserts an in-progress record for the key unless one exists, in one atomic statement: of
   * any number of concurrent claims exactly one gets `claimed: true`. Otherwise returns the
   * existing record.
   */
  claim(input: ClaimInput): Promise<ClaimOutcome>
  /** Reads a record. */
  get(scope: string, key: string): Promise<IdempotencyRecord | undefined>
  /**
   * Compare-and-set: gives an in-progress record whose lease has expired (at `nowMs`) to a new
   * holder, keeping its fingerprint, phases and recovery point and incrementing `attempt`.
   * False when the record changed since `previousLeaseToken` was read or the lease is live.
   */
  takeOver(input: TakeoverInput): Promise<boolean>
  /**
   * Compare-and-set: replaces a record past its retention (`expiresAtMs <= nowMs`, not yet
   * swept) with a fresh in-progress claim. False when it changed or has not expired.
   */
  recycle(input: TakeoverInput): Promise<boolean>
  /** Runs `fn` in one transaction of the store's database. */
  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T>
  /**
   * Whether a {@link IdempotencyStore.transaction} that rejected with `error` may have committed
   * all the same: its commit was sent and the connection was lost before the answer came.
   * After a phase whose save is in doubt the key is kept for the retry that takes it over once
   * the lease ends (releasing it could drop the saved phase, and the retry would run it again).
   * Optional: without it, a store whose `dialect` is `'postgres'` is in doubt unless the server
   * answered with an error, and any other store never is.
   */
  commitInDoubt?(error: unknown): boolean
  /**
   * The claim steps as statements of `tx`, a transaction opened with `transaction`. Needed for
   * `claim: 'in-transaction'`; stores without it (the in-memory store) support only the
   * default, leased claim.
   */
  inTransaction?(tx: SqlTransaction): IdempotencyClaimSteps
  /**
   * In `tx`: records the result and marks the key completed, only if `lease` still holds it.
   * False (and nothing written) when the lease was taken over. It is the transaction's last
   * statement, so a store may commit `tx` with it (`tx.finish`, one round trip on PostgreSQL).
   *
   * What becomes of the transaction when it returns false depends on the store:
   * - SQL store on PostgreSQL, in a transaction opened with `transaction`: the result was sent
   *   with the `COMMIT`, so the whole transaction (the callback's other writes included) has
   *   been rolled back, and `transaction` rejects with `IdempotencyInProgressError`
   *   (`IDEMPOTENCY_IN_PROGRESS`, reason `lease-lost`) whatever the callback returns; a callback
   *   that throws its own error instead gets that error.
   * - SQL store on SQLite (or PostgreSQL in a transaction without `finish`, a savepoint or a
   *   wrapped one): `tx` is still open, and it commits the callback's other writes if the
   *   callback returns; throw to roll them back (the built-in protocol throws its lease-lost
   *   error).
   * - In-memory and Redis stores: nothing is staged for the result; the transaction commits
   *   the callback's other staged writes (phases) if the callback returns, or rejects with
   *   the same lease-lost error if one of them lost its lease too.
   */
  complete(
    tx: SqlTransaction,
    lease: LeaseRef,
    result: StoredResult,
    nowMs: number,
    expiresAtMs: number,
  ): Promise<boolean>
  /**
   * Without a transaction of the caller's: writes `writes` (the handler's deferred writes, in
   * order) and the result as one atomic unit, only if `lease` still holds the key; false (and
   * nothing written) when it does not. Present where the store's database has
   * {@link SqlDriver.writeAtomically} (SQLite), whose group commit lets many requests' results
   * share one `COMMIT`; the protocol uses it for a leased claim whose handler opened no
   * transaction (it wrote only with `ctx.deferWrite`, or not at all).
   */
  completeAtomically?(
    writes: readonly SqlWrite[],
    lease: LeaseRef,
    result: StoredResult,
    nowMs: number,
    expiresAtMs: number,
  ): Promise<boolean>
  /**
   * In `tx`: records a committed phase (`point` becomes the recovery point; `phases` replaces
   * the phase results) and renews the lease, only if `lease` still holds the key.
   */
  savePhase(
    tx: SqlTransaction,
    lease: LeaseRef,
    point: string,
    phases: Readonly<Record<string, JsonValue>>,
    nowMs: number,
    leaseExpiresAtMs: number,
  ): Promise<boolean>
  /**
   * Deletes the in-progress record if `lease` still holds it, so a retry can run the work
   * again. Never deletes a completed record.
   */
  release(lease: LeaseRef): Promise<boolean>
  /**
   * Deletes at most `limit` records whose retention ended (`expiresAtMs <= nowMs`), in one
   * short statement. Returns how many it deleted.
   */
  sweep(nowMs: number, limit: number): Promise<number>
}
