import { type SqlDialect, type SqlTransaction, TransactionMisuseError } from '../stores/index.js'
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
  #ready: Promise<SqlTransaction> | undefined
  /** The store's transaction, once it has begun (and until the decision is made). */
  #tx: SqlTransaction | undefined
  #done: Promise<void> | undefined
  #decide: ((decision: Decision) => void) | undefined
  #closed = false
  #closedError: Error | undefined

  constructor(store: IdempotencyStore, dialect: SqlDialect) {
    this.#store = store
    this.dialect = dialect
  }

  /** Whether the transaction has begun. */
  get opened(): boolean {
    return this.#ready !== undefined
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    const tx = this.#current()
    if (tx !== undefined) return tx.query<R>(sql, params)
    return this.#open().then((tx) => tx.query<R>(sql, params))
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    const tx = this.#current()
    if (tx !== undefined) return tx.execute(sql, params)
    return this.#open().then((tx) => tx.execute(sql, params))
  }

  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    // The savepoint's statements are refused as ctx.tx's own are, with the same reason (a lost
    // lease), once the result was recorded or the transaction rolled back.
    const guarded = (savepoint: SqlTransaction) => fn(new GuardedSavepoint(savepoint, this))
    const tx = this.#current()
    if (tx !== undefined) return tx.transaction(guarded)
    return this.#open().then((tx) => tx.transaction(guarded))
  }

  /** Why statements are refused now (the result was recorded or rolled back), else undefined. */
  refusal(): Error | undefined {
    if (!this.#closed) return undefined
    return this.#closedError ?? closedMisuse()
  }

  /**
   * The store's transaction when a statement can go to it at once: it has begun (the SQLite
   * driver begins synchronously when nothing holds its lock, so even the first statement
   * usually finds it) and no decision was made. Otherwise undefined: wait for `#open()`.
   */
  #current(): SqlTransaction | undefined {
    if (this.#closed) return undefined
    if (this.#ready === undefined) void this.#open()
    return this.#tx
  }

  #open(): Promise<SqlTransaction> {
    if (this.#closed) return Promise.reject(this.refusal())
    if (this.#ready === undefined) {
      let resolveReady!: (tx: SqlTransaction) => void
      let rejectReady!: (error: unknown) => void
      this.#ready = new Promise<SqlTransaction>((resolve, reject) => {
        resolveReady = resolve
        rejectReady = reject
      })
      const decision = new Promise<Decision>((resolve) => {
        this.#decide = resolve
      })
      this.#done = this.#store.transaction(async (tx) => {
        this.#tx = tx
        resolveReady(tx)
        const decided = await decision
        this.#tx = undefined
        if ('rollback' in decided) throw rollbackSignal
        await decided.commit(tx)
      })
      // If BEGIN itself fails, the statements waiting for the transaction fail with its error.
      this.#done.catch(rejectReady)
    }
    return this.#ready
  }

  /**
   * Runs `write` as the last step of the transaction and commits; if the handler never opened
   * the transaction, `write` runs in a transaction of its own. Rejects (after rolling back)
   * when `write` or COMMIT fails.
   */
  commit(write: (tx: SqlTransaction) => Promise<void>): Promise<void> {
    this.#closed = true
    if (this.#ready === undefined) return this.#store.transaction(write)
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
    if (this.#ready === undefined) return
    this.#decide?.(rollbackDecision)
    await this.#done?.catch(() => {})
  }
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
    return this.#savepoint.transaction((deeper) => fn(new GuardedSavepoint(deeper, this.#owner)))
  }
}
