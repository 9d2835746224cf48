import type { Clock, TimerHandle } from '../core/clock.js'
import type { Jsonified } from '../core/jsonified.js'
import { checkStoredName } from '../core/text.js'
import { committedNothing } from '../stores/errors.js'
import { type SqlTransaction, TransactionMisuseError } from '../stores/index.js'
import { DeferredTransaction } from './deferred-tx.js'
import { IdempotencyInProgressError, IdempotencyReleaseError } from './errors.js'
import { publish } from './events.js'
import { recordableJson } from './json-result.js'
import type { IdempotencyStore, LeaseRef, StoredResult } from './store.js'
import type { IdempotencyContext, JsonValue } from './types.js'

/** What an execution needs from the core. */
export interface ExecutionSettings {
  readonly store: IdempotencyStore
  readonly clock: Clock
  readonly leaseMs: number
  readonly retentionMs: number
  readonly retryAfterMs: number
}

/** The state a holder starts from: fresh, or what earlier holders of the key committed. */
export interface ExecutionStart {
  readonly lease: LeaseRef
  readonly leaseExpiresAtMs: number
  readonly attempt: number
  readonly recoveryPoint: string | undefined
  readonly phases: Readonly<Record<string, JsonValue>>
  /**
   * With `claim: 'in-transaction'`: the open transaction whose first statement claimed the key.
   * It becomes `ctx.tx`, so the claim commits with the business writes and the result, or
   * rolls back with them.
   */
  readonly tx?: DeferredTransaction | undefined
  /**
   * Told of the result once it is committed, with the time it was recorded at and its expiry
   * (the replay cache keeps it).
   */
  readonly onRecorded?:
    | ((result: StoredResult, nowMs: number, expiresAtMs: number) => void)
    | undefined
}

/**
 * What the handler receives as `ctx`: a class (one object per request, no closures); `phase`
 * and `deferWrite` stay usable detached (`const { phase } = ctx`), bound on first read.
 */
class ExecutionContext implements IdempotencyContext {
  readonly key: string
  readonly scope: string
  readonly tx: DeferredTransaction
  readonly attempt: number
  readonly #execution: Execution
  #phase: IdempotencyContext['phase'] | undefined
  #deferWrite: IdempotencyContext['deferWrite'] | undefined

  constructor(execution: Execution, lease: LeaseRef, tx: DeferredTransaction, attempt: number) {
    this.key = lease.key
    this.scope = lease.scope
    this.tx = tx
    this.attempt = attempt
    this.#execution = execution
  }

  get recoveryPoint(): string | undefined {
    return this.#execution.recoveryPoint
  }

  get deferWrite(): IdempotencyContext['deferWrite'] {
    if (this.#deferWrite === undefined) {
      const tx = this.tx
      this.#deferWrite = (sql, params) => tx.defer(sql, params)
    }
    return this.#deferWrite
  }

  get phase(): IdempotencyContext['phase'] {
    if (this.#phase === undefined) {
      const execution = this.#execution
      this.#phase = (name, fn) => execution.phase(name, fn)
    }
    return this.#phase
  }
}

// Phase results are stored wrapped, so that a phase returning undefined replays as undefined.
type WrappedPhase = { readonly v?: JsonValue }

// The JSON a replay will read back; refused (INVALID_OPTION) when JSON would change the value.
function phaseJson(value: unknown, name: string): string | undefined {
  return value === undefined ? undefined : recordableJson(`phase ${JSON.stringify(name)}`, value)
}

// The handler gets a copy of a phase's recorded value, never the object kept in the phases:
// every later phase saves them all, so a change the handler made to the value it got
// (cart.items.push(...)) would be saved as what the phase returned, and a retry that takes over
// would resume with a value the phase never returned.
function phaseValue<T>(wrapped: WrappedPhase): Jsonified<T> {
  return (
    wrapped.v === undefined ? undefined : JSON.parse(JSON.stringify(wrapped.v))
  ) as Jsonified<T>
}

/**
 * One holder's run of a key: owns the lease, the deferred transaction and the phase state, and
 * records or releases the key exactly once.
 *
 * The lease is also enforced locally: when it runs out before the result is recorded, the
 * transaction is rolled back at once and the result will not be recorded, because another
 * request may now take the key over. (On SQLite this also frees the single connection from a
 * handler that hangs.) Each committed phase renews the lease. With `claim: 'in-transaction'`
 * nobody can take the key over (the claim is not committed), but the same limit still bounds
 * how long the handler may hold its transaction, and with it the key's lock.
 */
export class Execution {
  readonly context: IdempotencyContext
  readonly #settings: ExecutionSettings
  readonly #lease: LeaseRef
  readonly #tx: DeferredTransaction
  // True when the claim itself is a statement of #tx (claim: 'in-transaction'): releasing is a
  // rollback, and there is no committed record to recover phases from.
  readonly #claimInTx: boolean
  // Replaced (never changed in place) when a phase commits.
  #phases: Readonly<Record<string, JsonValue>>
  #recoveryPoint: string | undefined
  #timer: TimerHandle | undefined
  #expired = false
  #leaseLostPublished = false
  #settled = false
  // Whether a phase runs now: ctx.tx is held (refused) meanwhile, and so is another phase.
  #phaseRunning = false
  #onLeaseLost: ((error: IdempotencyInProgressError) => void) | undefined
  /**
   * Set when a phase's commit failed without a word on whether it happened (the connection was
   * lost after COMMIT was sent): the phase and its recorded result may be in the database,
   * unknown to #phases. See {@link Execution.release}.
   */
  #phaseInDoubt: { readonly error: unknown } | undefined
  readonly #onRecorded: ExecutionStart['onRecorded']

  constructor(settings: ExecutionSettings, start: ExecutionStart) {
    this.#settings = settings
    this.#onRecorded = start.onRecorded
    this.#lease = start.lease
    this.#phases = start.phases
    this.#recoveryPoint = start.recoveryPoint
    this.#claimInTx = start.tx !== undefined
    this.#tx =
      start.tx ?? new DeferredTransaction(settings.store, settings.store.dialect ?? 'sqlite')
    this.#armLeaseTimer(start.leaseExpiresAtMs - settings.clock.now())
    this.context = new ExecutionContext(this, start.lease, this.#tx, start.attempt)
  }

  /** The last phase committed by this or an earlier holder. */
  get recoveryPoint(): string | undefined {
    return this.#recoveryPoint
  }

  /** {@link IdempotencyContext.phase} */
  phase<T>(name: string, fn: (tx: SqlTransaction) => Promise<T> | T): Promise<Jsonified<T>> {
    return this.#phase(name, fn)
  }

  /** The key this execution holds. */
  get lease(): LeaseRef {
    return this.#lease
  }

  /**
   * Calls `listener` when the lease runs out before this execution is settled (recorded,
   * released or abandoned), right after `ctx.tx` was rolled back, so that an adapter can answer
   * a client whose handler has not finished. At once if it has already run out. One listener:
   * a later call replaces it.
   */
  onLeaseLost(listener: (error: IdempotencyInProgressError) => void): void {
    this.#onLeaseLost = listener
    if (this.#expired && !this.#settled) listener(this.#leaseLost())
  }

  #armLeaseTimer(delayMs: number): void {
    const { clock } = this.#settings
    if (this.#timer !== undefined) clock.clearTimeout(this.#timer)
    this.#timer = clock.setTimeout(
      () => {
        this.#timer = undefined
        if (this.#settled) return
        this.#expired = true
        const lost = this.#leaseLost()
        // The handler's later statements fail with this, so it learns why.
        void this.#tx.rollback(lost)
        this.#onLeaseLost?.(lost)
      },
      Math.max(0, delayMs),
    )
  }

  #settle(): void {
    if (this.#settled) throw new TypeError('This idempotent execution was already settled')
    this.#settled = true
    if (this.#timer !== undefined) this.#settings.clock.clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #leaseLost(): IdempotencyInProgressError {
    if (!this.#leaseLostPublished) {
      this.#leaseLostPublished = true
      publish('lease-lost', { scope: this.#lease.scope, key: this.#lease.key })
    }
    return new IdempotencyInProgressError(
      this.#lease.key,
      'lease-lost',
      this.#settings.retryAfterMs,
    )
  }

  async #phase<T>(name: string, fn: (tx: SqlTransaction) => Promise<T> | T): Promise<Jsonified<T>> {
    // Checked before fn runs: the name is stored as the recovery point (PostgreSQL refuses NUL,
    // and both databases store half of a surrogate pair as U+FFFD, so a retry would not find
    // the phase and run it again), and finding that out at the save would come after fn's call
    // to another system had already happened.
    checkStoredName('ctx.phase(name)', name)
    if (Object.hasOwn(this.#phases, name)) return phaseValue<T>(this.#phases[name] as WrappedPhase)
    if (this.#expired) throw this.#leaseLost()
    // A phase saves every phase it knows of: after one in doubt, a later save would drop it
    // from the record if it had committed, and a takeover would run it (its charge) again.
    // Running it again here would, too. Only a holder that reads the record knows.
    if (this.#phaseInDoubt !== undefined) throw this.#phaseInDoubt.error
    if (this.#settled) {
      throw new TransactionMisuseError(
        'ctx.phase() was called after the idempotent result was recorded',
      )
    }
    if (this.#claimInTx) {
      throw new TransactionMisuseError(
        "ctx.phase() is not available with claim: 'in-transaction': ctx.tx is open from the claim on, and a crash rolls the claim back with everything else, so there is no recovery point to keep (use the default claim: 'leased' for handlers that call other systems)",
      )
    }
    if (this.#tx.opened) {
      // On SQLite the phase's own transaction would wait forever for ctx.tx to end.
      throw new TransactionMisuseError(
        'ctx.phase() must run before the first statement on ctx.tx (phases commit on their own)',
      )
    }
    if (this.#phaseRunning) {
      // Each phase saves every phase committed before it: two saved at once would each drop
      // the other's, and a takeover would run the dropped phase (its call to another system)
      // again.
      throw new TransactionMisuseError(
        'ctx.phase() was called while another phase ran: phases run one at a time (await each before the next)',
      )
    }
    const { store, clock, leaseMs } = this.#settings
    // Like ctx.tx, the phase's transaction begins with its first statement: a call to another
    // system made before it holds no transaction (on SQLite, no lock on the whole database).
    const phaseTx = new DeferredTransaction(store, store.dialect ?? 'sqlite')
    // ctx.tx must not begin while a phase runs: its writes would not be the phase's, and on
    // SQLite the phase's commit would wait for ctx.tx, which waits for the handler, which waits
    // for the phase, until the lease runs out.
    this.#phaseRunning = true
    this.#tx.hold(phaseMisuse())
    let json: string | undefined
    let wrapped: WrappedPhase
    let leaseExpiresAtMs = 0
    let phases: Record<string, JsonValue>
    try {
      try {
        json = phaseJson(await fn(phaseTx), name)
        wrapped = json === undefined ? {} : { v: JSON.parse(json) as JsonValue }
      } catch (error) {
        await phaseTx.rollback()
        throw error
      }
      phases = { ...this.#phases, [name]: wrapped }
      try {
        await phaseTx.commit(async (tx) => {
          const nowMs = clock.now()
          leaseExpiresAtMs = nowMs + leaseMs
          const held = await store.savePhase(tx, this.#lease, name, phases, nowMs, leaseExpiresAtMs)
          if (!held || this.#expired) throw this.#leaseLost()
        })
      } catch (error) {
        // A store whose commit checks the lease again (memory, Redis) refuses with its own
        // error: answered as any lost lease, with the configured retryAfterMs and the event.
        if (error instanceof IdempotencyInProgressError) throw this.#leaseLost()
        if (commitInDoubt(store, error)) this.#phaseInDoubt = { error }
        throw error
      }
    } finally {
      this.#phaseRunning = false
      this.#tx.hold(undefined)
    }
    this.#phases = phases
    this.#recoveryPoint = name
    if (!this.#settled) this.#armLeaseTimer(leaseExpiresAtMs - clock.now())
    // Parsed again: the handler's copy, apart from the one kept in the phases.
    return (json === undefined ? undefined : JSON.parse(json)) as Jsonified<T>
  }

  /**
   * Records `result` in the handler's transaction (fenced by the lease) and commits. Throws
   * {@link IdempotencyInProgressError} (`lease-lost`) when the lease expired or was taken over:
   * then nothing was written and the business writes were rolled back. On a database error the
   * key is released (if the commit did not happen) and the error is thrown.
   */
  async record(result: StoredResult): Promise<void> {
    this.#settle()
    if (this.#expired) {
      await this.#tx.rollback()
      throw this.#leaseLost()
    }
    const { store, clock, retentionMs } = this.#settings
    let recordedAtMs = 0
    try {
      await this.#tx.commit(
        async (tx) => {
          const nowMs = clock.now()
          recordedAtMs = nowMs
          const held = await store.complete(tx, this.#lease, result, nowMs, nowMs + retentionMs)
          if (!held) throw this.#leaseLost()
        },
        store.completeAtomically === undefined || this.#claimInTx
          ? undefined
          : async (writes) => {
              const nowMs = clock.now()
              recordedAtMs = nowMs
              const held = await store.completeAtomically!(
                writes,
                this.#lease,
                result,
                nowMs,
                nowMs + retentionMs,
              )
              if (!held) throw this.#leaseLost()
            },
      )
      this.#onRecorded?.(result, recordedAtMs, recordedAtMs + retentionMs)
      publish('recorded', { scope: this.#lease.scope, key: this.#lease.key, status: result.status })
    } catch (error) {
      if (error instanceof IdempotencyInProgressError) throw this.#leaseLost()
      // The COMMIT may have happened (a connection lost after COMMIT was sent). Releasing is
      // still safe: it deletes only an in-progress record held by this lease. A claim made in
      // the transaction has nothing to release: it committed or it is gone.
      // If that fails too (the same outage, most likely), the key stays held until its lease
      // ends: published, but the commit's error is the one thrown. After a phase in doubt the
      // key is kept (see release()).
      if (!this.#claimInTx && this.#phaseInDoubt === undefined) {
        await this.#releaseRecord().catch(() => {})
      }
      throw error
    }
  }

  /**
   * Rolls the handler's transaction back but leaves the in-progress record (its lease) in
   * place: the outcome is unknown, so duplicates are refused (or wait) until the lease expires
   * and one takes the key over. With `claim: 'in-transaction'` the rollback undoes the claim.
   * Never rejects.
   */
  async abandon(): Promise<void> {
    this.#settle()
    await this.#tx.rollback()
    if (this.#claimInTx) publish('released', { scope: this.#lease.scope, key: this.#lease.key })
  }

  /**
   * Rolls the handler's transaction back and deletes the in-progress record (with `claim:
   * 'in-transaction'` the rollback alone undoes the claim), so that a retry runs the work again.
   * After committed phases the record stays and only its lease ends: the retry takes it over
   * at once and resumes after them.
   * Rejects with {@link IdempotencyReleaseError} (the store's error as `cause`, and the
   * `release-failed` event published) when the store fails to delete the record: the key then
   * stays held until its lease ends, and the caller must report that, since every retry until
   * then is answered in-progress.
   *
   * After a phase whose commit is in doubt (the connection was lost after its COMMIT, or the
   * Redis store's script, was sent) the key is kept as {@link abandon} keeps it: deleting the record, or ending the lease with
   * the phases known here, would drop that phase's recorded result if it did commit, and the
   * retry would run it again. The retry takes the key over once the lease ends and resumes
   * after whatever phases did commit.
   */
  async release(): Promise<void> {
    this.#settle()
    await this.#tx.rollback()
    // A claim made in the transaction was rolled back with it: the key is free again.
    if (this.#claimInTx) publish('released', { scope: this.#lease.scope, key: this.#lease.key })
    else if (this.#phaseInDoubt === undefined) await this.#releaseRecord()
  }

  // Deletes the record, fenced by the token: after a takeover nothing goes (and nothing is
  // published). A store failure is published and thrown as IdempotencyReleaseError.
  // With committed phases, the record stays and only its lease ends (see #endLease).
  async #releaseRecord(): Promise<void> {
    const { scope, key } = this.#lease
    let released: boolean
    try {
      released =
        this.#recoveryPoint === undefined
          ? await this.#settings.store.release(this.#lease)
          : await this.#endLease(this.#recoveryPoint)
    } catch (error) {
      publish('release-failed', { scope, key, error })
      throw new IdempotencyReleaseError(scope, key, error)
    }
    if (released) publish('released', { scope, key })
  }

  // Ends the lease now, keeping the record with its committed phases, fenced by the token as a
  // phase's save is. Deleting it would delete the phases' recorded results, and the retry
  // would run them (a charge) again; as in Stripe's design, the retry instead takes the key
  // over at once and resumes after the recovery point. False when the lease was already lost
  // (the holder that took over has the phases).
  async #endLease(point: string): Promise<boolean> {
    const { store, clock } = this.#settings
    try {
      return await store.transaction(async (tx) => {
        const nowMs = clock.now()
        return store.savePhase(tx, this.#lease, point, this.#phases, nowMs, nowMs)
      })
    } catch (error) {
      // The memory and Redis stores check the lease again at commit.
      if (error instanceof IdempotencyInProgressError) return false
      throw error
    }
  }
}

/**
 * Whether a failed commit may have happened all the same: as the store says
 * ({@link IdempotencyStore.commitInDoubt}: the Redis store's script sent on a connection lost
 * before its reply), else unless it certainly committed nothing ({@link committedNothing}: on
 * PostgreSQL the server answered with an error or the pool had no connection to send it on; a
 * SQLite commit runs in process and ends one way or the other, and so does the memory store's,
 * which has no dialect) or the driver found the transaction already failed (answered with
 * ROLLBACK).
 */
function commitInDoubt(store: IdempotencyStore, error: unknown): boolean {
  if (store.commitInDoubt !== undefined) return store.commitInDoubt(error)
  return (
    !(error instanceof TransactionMisuseError) &&
    !committedNothing(store.dialect ?? 'sqlite', error)
  )
}

function phaseMisuse(): TransactionMisuseError {
  return new TransactionMisuseError(
    'ctx.tx (or ctx.deferWrite) was used while ctx.phase() ran: a phase writes through the tx it is given, and ctx.tx begins after the phases',
  )
}
