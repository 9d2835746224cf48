import { isGroupableWrite } from '../stores/group-commit.js'
import {
  type SqlDialect,
  type SqlTransaction,
  type SqlWrite,
  TransactionMisuseError,
} from '../stores/index.js'
import type { IdempotencyStore } from './store.js'

type Decision =
  | { readonly commit: (tx: SqlTransaction) => Promise<void> }
  | { readonly rollback: true }

// Thrown inside the store transaction to roll it back on purpose; never escapes this file.
const rollbackSignal = new Error('idempotency: deliberate rollback')
const rollbackDecision: Decision = { rollback: true }

/**
 * The handler's `ctx.tx`: a transaction that begins on its first statement and stays open
 * until the core decides to record the result in it (commit) or to roll it back.
 *
 * Beginning late matters: a handler that first calls other services holds no database
 * transaction meanwhile (on SQLite an open transaction blocks every other writer of the
 * process), and atomic phases, which need their own transactions, can run before it.
 *
 * Once the store's transaction has begun, statements go straight to its `tx` (no extra promise
 * per statement): this is every keyed request's hot path.
 */
export class DeferredTransaction implements SqlTransaction {
  readonly dialect: SqlDialect
  readonly #store: IdempotencyStore
  /** Whether the store's transaction was asked to begin (on the first statement). */
  #began = false
  /** The store's transaction, once it has begun (and until the decision is made). */
  #tx: SqlTransaction | undefined
  #done: Promise<void> | undefined
  #decide: ((decision: Decision) => void) | undefined
  #closed = false
  #closedError: Error | undefined
  /**
   * Why the store's transaction ended before a decision (BEGIN failed): every later statement
   * fails with it at once. Nothing would ever send a statement queued in `#waiting` after it.
   */
  #failure: { readonly error: unknown } | undefined
  /** Why statements are refused for the time being (an atomic phase runs), see {@link hold}. */
  #held: Error | undefined
  /**
   * Statements made before the store's transaction began, in the order they were made. They
   * are sent the moment it begins, before anything else runs, so they keep their order with
   * each other and come before the result's write (see {@link DeferredTransaction.defer}).
   */
  #waiting: WaitingStatement[] = []
  /**
   * Deferred writes kept back while the transaction has not begun, on a store that can write
   * them with the result as one atomic unit (`completeAtomically`): if nothing begins the
   * transaction before the result is recorded, they go with it in a group commit; otherwise
   * they are sent first thing when it begins.
   */
  #kept: SqlWrite[] = []
  /** Deferred writes sent so far; each settles (never rejects) once answered. */
  #deferred: Promise<void>[] = []
  /** The failure of the first deferred write (in the order made) that failed, once answered. */
  #deferredFailure: { readonly error: unknown; readonly order: number } | undefined
  /**
   * The savepoints whose callbacks are running, innermost last. A deferred write made meanwhile
   * goes to the innermost: ctx.tx itself refuses statements while a savepoint of it runs.
   */
  readonly #savepoints: SqlTransaction[] = []

  constructor(store: IdempotencyStore, dialect: SqlDialect) {
    this.#store = store
    this.dialect = dialect
  }

  /** Whether the transaction has begun, or a write was deferred into it. */
  get opened(): boolean {
    return this.#began || this.#kept.length > 0
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    const tx = this.#current()
    if (tx !== undefined) return tx.query<R>(sql, params)
    return this.#whenBegun((tx) => tx.query<R>(sql, params))
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    const tx = this.#current()
    if (tx !== undefined) return tx.execute(sql, params)
    return this.#whenBegun((tx) => tx.execute(sql, params))
  }

  /**
   * Sends a write without waiting for its answer (`ctx.deferWrite`). It keeps its place among
   * the transaction's statements; the result's write and `COMMIT` follow it on the same
   * connection, so on PostgreSQL (whose connections pipeline) they share its round trip. Its
   * failure is checked before the commit can count: on SQLite its answer is already there (it
   * runs in process) and a failed write rolls the transaction back; on PostgreSQL a failed
   * statement aborts the transaction, so the server answers `COMMIT` with `ROLLBACK`. Either
   * way {@link commit} rejects with the write's own error.
   *
   * Throws at once, sending nothing, when statements are refused (the result was recorded or
   * rolled back).
   */
  defer(sql: string, params?: readonly unknown[]): void {
    const refused = this.refusal()
    if (refused !== undefined) throw refused
    if (!this.#began && this.#store.completeAtomically !== undefined && isGroupableWrite(sql)) {
      // A copy: a handler that changes its array after deferring must not change the write,
      // as it would not have once the write was sent.
      this.#kept.push(params === undefined ? { sql } : { sql, params: [...params] })
      return
    }
    const tx = this.#savepoints.at(-1) ?? this.#current()
    this.#track(
      tx !== undefined ? tx.execute(sql, params) : this.#whenBegun((tx) => tx.execute(sql, params)),
    )
  }

  // Counts a deferred write that was sent: its failure is checked before the commit.
  #track(written: Promise<unknown>): void {
    const order = this.#deferred.length
    this.#deferred.push(
      written.then(
        () => {},
        (error: unknown) => {
          // The first write made that failed, whichever answer came first: on PostgreSQL the
          // writes after it fail only because it aborted the transaction.
          if (this.#deferredFailure === undefined || order < this.#deferredFailure.order) {
            this.#deferredFailure = { error, order }
          }
        },
      ),
    )
  }

  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    // The savepoint's statements are refused as ctx.tx's own are, with the same reason (a lost
    // lease), once the result was recorded or the transaction rolled back.
    const guarded = (savepoint: SqlTransaction) => this.inSavepoint(savepoint, fn)
    const tx = this.#current()
    const done =
      tx !== undefined ? tx.transaction(guarded) : this.#whenBegun((tx) => tx.transaction(guarded))
    // A deferred write made in the savepoint may have failed, and the savepoint's rollback
    // healed the PostgreSQL transaction, so its COMMIT would succeed: the failure must be known
    // before the commit is sent (#commitAfterDeferred checks). The writes were sent before the
    // savepoint's RELEASE or ROLLBACK TO on the same connection, so they are answered already
    // and this costs no round trip.
    return done.then(
      async (value) => {
        await Promise.all(this.#deferred)
        return value
      },
      async (error: unknown) => {
        await Promise.all(this.#deferred)
        throw error
      },
    )
  }

  /**
   * Why statements are refused now (the result was recorded or rolled back, or for the time
   * being, see {@link hold}), else undefined.
   */
  refusal(): Error | undefined {
    if (!this.#closed) return this.#held
    return this.#closedError ?? closedMisuse()
  }

  /**
   * Refuses every statement with `reason` until called again with undefined. Statements that
   * were sent before are not affected.
   */
  hold(reason: Error | undefined): void {
    this.#held = reason
  }

  /**
   * The store's transaction when a statement can go to it at once: it has begun (the SQLite
   * driver begins synchronously when nothing holds its lock, so even the first statement
   * usually finds it) and no decision was made. Otherwise undefined: queue behind `#open()`.
   */
  #current(): SqlTransaction | undefined {
    if (this.#closed || this.#failure !== undefined || this.#held !== undefined) return undefined
    if (!this.#began) this.#open()
    return this.#tx
  }

  /** Begins the store's transaction; statements made meanwhile wait in `#waiting`. */
  #open(): void {
    this.#began = true
    if (this.#kept.length > 0) {
      // The writes deferred before it began go first: they were made before anything waiting.
      const kept = this.#kept.map(({ sql, params }) => {
        let statement: WaitingStatement | undefined
        this.#track(
          new Promise<unknown>(
            (resolve, reject) =>
              (statement = {
                send: (tx) => void tx.execute(sql, params).then(resolve, reject),
                fail: reject,
              }),
          ),
        )
        return statement!
      })
      this.#kept = []
      this.#waiting = [...kept, ...this.#waiting]
    }
    const decision = new Promise<Decision>((resolve) => {
      this.#decide = resolve
    })
    this.#done = this.#store.transaction(async (tx) => {
      this.#tx = tx
      // Synchronously, before the decision below can be acted on: a commit decided while the
      // transaction was beginning must come after every statement made before it.
      const waiting = this.#waiting
      this.#waiting = []
      for (const statement of waiting) statement.send(tx)
      const decided = await decision
      this.#tx = undefined
      if ('rollback' in decided) throw rollbackSignal
      await this.#commitAfterDeferred(tx, decided.commit)
    })
    // If BEGIN itself fails, the statements waiting for the transaction fail with its error,
    // and so do the statements made after it.
    this.#done.catch((error: unknown) => {
      this.#failure ??= { error }
      const waiting = this.#waiting
      this.#waiting = []
      for (const statement of waiting) statement.fail(error)
    })
  }

  /** Queues a statement until the store's transaction has begun (see `#waiting`). */
  #whenBegun<T>(send: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    if (this.#closed || this.#held !== undefined) return Promise.reject(this.refusal())
    if (this.#failure !== undefined) return Promise.reject(this.#failure.error)
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({ send: (tx) => send(tx).then(resolve, reject), fail: reject })
      if (!this.#began) this.#open()
    })
  }

  /** Throws the error of the first deferred write that failed, if one did (as answered so far). */
  #throwIfDeferredFailed(): void {
    const failure = this.#deferredFailure
    if (failure !== undefined) throw failure.error
  }

  /** Runs `write` and commits, unless a deferred write failed: then that write's error. */
  async #commitAfterDeferred(
    tx: SqlTransaction,
    write: (tx: SqlTransaction) => Promise<void>,
  ): Promise<void> {
    const deferred = this.#deferred
    if (deferred.length === 0) return write(tx)
    if (tx.dialect !== 'postgres') {
      // In process: the answers are there, waiting costs no round trip. A failed statement
      // does not end a SQLite transaction, so the commit must not even start.
      await Promise.all(deferred)
      this.#throwIfDeferredFailed()
      return write(tx)
    }
    // A failure already known must stop the commit here: a savepoint's rollback may have
    // healed the transaction after it, and PostgreSQL would then commit without the write.
    this.#throwIfDeferredFailed()
    // Sent right behind the deferred writes, without waiting for their answers. If one failed,
    // PostgreSQL aborted the transaction: `write` fails (or its COMMIT is answered ROLLBACK),
    // and the write's own error says more than "current transaction is aborted".
    const written = write(tx)
    await Promise.allSettled([written, ...deferred])
    this.#throwIfDeferredFailed()
    await written
  }

  /** Runs a savepoint's callback, guarded, with deferred writes sent into that savepoint. */
  async inSavepoint<T>(
    savepoint: SqlTransaction,
    fn: (tx: SqlTransaction) => Promise<T>,
  ): Promise<T> {
    this.#savepoints.push(savepoint)
    try {
      return await fn(new GuardedSavepoint(savepoint, this))
    } finally {
      this.#savepoints.splice(this.#savepoints.lastIndexOf(savepoint), 1)
    }
  }

  /**
   * Runs `write` as the last step of the transaction and commits; if the handler never opened
   * the transaction, `write` runs in a transaction of its own. Rejects (after rolling back)
   * when `write` or COMMIT fails.
   */
  commit(
    write: (tx: SqlTransaction) => Promise<void>,
    atomically?: (writes: readonly SqlWrite[]) => Promise<void>,
  ): Promise<void> {
    this.#closed = true
    if (!this.#began) {
      // Nothing waits for an answer inside the transaction: the deferred writes and the
      // result's write can go as one unit, sharing a commit with other requests'.
      if (atomically !== undefined) return atomically(this.#kept)
      if (this.#kept.length === 0) return this.#store.transaction(write)
      this.#open()
    }
    this.#decide?.({ commit: write })
    return this.#done!
  }

  /**
   * Rolls the transaction back (if it began). Later statements fail with `reason` when given.
   * Never rejects: a broken connection rolls back too.
   */
  async rollback(reason?: Error): Promise<void> {
    if (!this.#closed) this.#closedError = reason
    this.#closed = true
    this.#kept = []
    if (!this.#began) return
    this.#decide?.(rollbackDecision)
    await this.#done?.catch(() => {})
  }
}

/** A statement made before the store's transaction began, sent once it has. */
interface WaitingStatement {
  readonly send: (tx: SqlTransaction) => void
  readonly fail: (error: unknown) => void
}

function closedMisuse(): TransactionMisuseError {
  return new TransactionMisuseError(
    'ctx.tx was used after the idempotent result was recorded or rolled back (was a statement not awaited?)',
  )
}

/** A savepoint of ctx.tx: its statements are refused once ctx.tx is settled, for its reason. */
class GuardedSavepoint implements SqlTransaction {
  readonly dialect: SqlDialect
  readonly #savepoint: SqlTransaction
  readonly #owner: DeferredTransaction

  constructor(savepoint: SqlTransaction, owner: DeferredTransaction) {
    this.dialect = savepoint.dialect
    this.#savepoint = savepoint
    this.#owner = owner
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    const refused = this.#owner.refusal()
    return refused === undefined ? this.#savepoint.query<R>(sql, params) : Promise.reject(refused)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    const refused = this.#owner.refusal()
    return refused === undefined ? this.#savepoint.execute(sql, params) : Promise.reject(refused)
  }

  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    const refused = this.#owner.refusal()
    if (refused !== undefined) return Promise.reject(refused)
    return this.#savepoint.transaction((deeper) => this.#owner.inSavepoint(deeper, fn))
  }
}
