import { TransactionMisuseError } from './errors.js'
import type { SqlDialect, SqlExecutor, SqlTransaction } from './types.js'

/**
 * Runs a transaction's last statement and its `COMMIT` (see {@link SqlTransaction.finish}); each
 * driver brings its own, and settles the transaction's connection after it.
 */
export type TransactionFinisher = (
  sql: string,
  params: readonly unknown[],
) => Promise<{ rows: unknown[]; rowCount: number }>

/**
 * The `tx` handed to a transaction callback: it forwards statements to the connection that holds
 * the transaction while the callback runs, refuses them afterwards (a statement that was not
 * awaited would otherwise run outside the transaction, or on a connection already returned to
 * the pool), and implements nested transactions as savepoints, the same on both dialects.
 *
 * While one of its savepoints runs, it refuses its own statements (and `finish`, and a second
 * savepoint) with `TRANSACTION_MISUSE`: they would travel on the same connection into the
 * savepoint and be undone by its `ROLLBACK TO` after having reported success. It refuses
 * rather than waits for the savepoint to end: a savepoint callback that awaits something which
 * awaits the outer `tx` would then wait for itself forever.
 */
export class ScopedTransaction implements SqlTransaction {
  readonly dialect: SqlDialect
  readonly #connection: SqlExecutor
  readonly #depth: number
  /** The transaction this one is a savepoint of: it ends with it. */
  readonly #parent: ScopedTransaction | undefined
  #open = true
  /**
   * Set while a savepoint of this transaction runs (from its `SAVEPOINT` until its `RELEASE`):
   * this transaction's own statements and a second savepoint are refused meanwhile.
   */
  #savepointRunning = false
  /** {@inheritDoc SqlTransaction.finish} Present when the driver gave a finisher. */
  readonly finish?: <R = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ) => Promise<{ rows: R[]; rowCount: number }>

  /**
   * @param finisher The driver's way to run a last statement together with `COMMIT`; given only
   *   for the outermost transaction, which then offers `finish`.
   */
  constructor(
    connection: SqlExecutor,
    depth = 0,
    finisher?: TransactionFinisher,
    parent?: ScopedTransaction,
  ) {
    this.dialect = connection.dialect
    this.#connection = connection
    this.#depth = depth
    this.#parent = parent
    if (finisher !== undefined) {
      this.finish = <R>(sql: string, params: readonly unknown[] = []) => {
        if (!this.open) return Promise.reject(ended())
        if (this.#savepointRunning) return Promise.reject(insideSavepoint())
        if (endsOrBegins(sql)) return Promise.reject(transactionControl(sql))
        this.#open = false
        return finisher(sql, params) as Promise<{ rows: R[]; rowCount: number }>
      }
    }
  }

  /**
   * Whether statements are still accepted: not once this transaction ended, nor once the one it
   * is a savepoint of ended (its connection may be back in the pool, or outside any transaction,
   * where a late statement would commit on its own).
   */
  get open(): boolean {
    return this.#open && (this.#parent === undefined || this.#parent.open)
  }

  /** Refuses every later statement. */
  end(): void {
    this.#open = false
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    if (!this.open) return Promise.reject(ended())
    if (this.#savepointRunning) return Promise.reject(insideSavepoint())
    if (endsOrBegins(sql)) return Promise.reject(transactionControl(sql))
    return this.#connection.query<R>(sql, params)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    if (!this.open) return Promise.reject(ended())
    if (this.#savepointRunning) return Promise.reject(insideSavepoint())
    if (endsOrBegins(sql)) return Promise.reject(transactionControl(sql))
    return this.#connection.execute(sql, params)
  }

  /** A savepoint's own SAVEPOINT, ROLLBACK TO or RELEASE: sent while that savepoint runs. */
  #control(sql: string): Promise<{ rowCount: number }> {
    if (!this.open) return Promise.reject(ended())
    return this.#connection.execute(sql)
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    if (!this.open) throw ended()
    // Savepoints nest, they cannot overlap: two at once of one tx would share a name, and the
    // first's ROLLBACK TO would go back to the second's, keeping the first's writes (or undo
    // the second's after it reported success).
    if (this.#savepointRunning) throw overlapping()
    this.#savepointRunning = true
    try {
      return await this.#savepoint(fn)
    } finally {
      this.#savepointRunning = false
    }
  }

  async #savepoint<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    // Savepoint names only need to be unique among the savepoints open at once, which nest.
    const name = `breakwater_sp_${this.#depth + 1}`
    const child = new ScopedTransaction(this.#connection, this.#depth + 1, undefined, this)
    // Through #control, not the connection: the savepoint's own statements are refused too
    // once the transaction ended.
    await this.#control(`SAVEPOINT ${name}`)
    let result: T
    try {
      result = await fn(child)
    } catch (error) {
      child.end()
      await this.#rollBackTo(name)
      throw error
    }
    child.end()
    try {
      await this.#control(`RELEASE SAVEPOINT ${name}`)
    } catch (error) {
      // PostgreSQL aborts the transaction at a failed statement; a callback that caught that
      // error and returned leaves it aborted back to the SAVEPOINT, which then cannot be
      // released (25P02). Rolled back to it, the outer transaction goes on; the savepoint's
      // writes are undone, so it must not look released: as for the outer transaction's
      // COMMIT answered with ROLLBACK. SQLite undoes only the failed statement (those that end
      // the whole transaction end the savepoint too), so it releases normally.
      if ((error as { code?: unknown } | null)?.code !== abortedTransaction) throw error
      await this.#rollBackTo(name)
      throw failedEarlier('savepoint')
    }
    return result
  }

  async #rollBackTo(name: string): Promise<void> {
    try {
      await this.#control(`ROLLBACK TO SAVEPOINT ${name}`)
      await this.#control(`RELEASE SAVEPOINT ${name}`)
    } catch {
      // The connection is broken (or the transaction ended); the outer transaction will fail
      // on its next statement or on COMMIT, and the error already at hand is the one worth
      // seeing.
    }
  }
}

/**
 * A statement that ends the transaction (COMMIT, END, ROLLBACK without TO, ABORT, PREPARE
 * TRANSACTION) or begins one, after any leading comments and empty statements (`;`, which
 * SQLite skips). Sent through a tx, it would commit
 * part of the callback's writes and run the rest on their own (PostgreSQL), or end the
 * transaction under the driver (SQLite), so it is refused before it is sent. Savepoint
 * statements (SAVEPOINT, RELEASE, ROLLBACK TO) stay inside the transaction and are taken.
 * Anchored at the start and failing at the first letter of an ordinary statement, it costs
 * tens of nanoseconds per statement.
 */
const transactionControlStatement =
  /^(?:\s+|;|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*(begin|start\s+transaction|commit|end|abort|prepare\s+transaction|rollback(?!(?:\s+(?:transaction|work))?\s+to\b))\b/i

function endsOrBegins(sql: string): boolean {
  return typeof sql === 'string' && transactionControlStatement.test(sql)
}

function transactionControl(sql: string): TransactionMisuseError {
  // The statement's first word, as the pattern found it after the comments.
  const word = transactionControlStatement.exec(sql)?.[1]?.split(/\s/, 1)[0]
  return new TransactionMisuseError(
    `A statement that ends or begins a transaction (${JSON.stringify(word?.toUpperCase())}) was sent through a tx: the transaction commits when its callback resolves and rolls back when it throws, so return or throw instead (tx.transaction runs a savepoint)`,
  )
}

/** PostgreSQL's "current transaction is aborted, commands ignored until end of transaction block". */
const abortedTransaction = '25P02'

/**
 * The error for a transaction (PostgreSQL answered its `COMMIT` with `ROLLBACK`) or a savepoint
 * (its `RELEASE` was refused) that a failed statement had aborted although its callback
 * returned normally: the callback caught the statement's error. Nothing of it was kept.
 */
export function failedEarlier(scope: 'transaction' | 'savepoint'): TransactionMisuseError {
  return new TransactionMisuseError(
    scope === 'transaction'
      ? 'The transaction was rolled back, not committed: one of its statements had failed (was its error caught inside the transaction callback?)'
      : 'The savepoint (tx.transaction) was rolled back, not released: one of its statements had failed (was its error caught inside the savepoint callback?); the outer transaction goes on without its writes',
  )
}

function overlapping(): TransactionMisuseError {
  return new TransactionMisuseError(
    'A savepoint (tx.transaction) was started while another savepoint of the same tx was still running; savepoints of one tx must run one after another (await each before starting the next)',
  )
}

function insideSavepoint(): TransactionMisuseError {
  return new TransactionMisuseError(
    "A statement was sent through a tx while a savepoint of it (tx.transaction) was still running; it would run inside the savepoint and be undone if the savepoint rolls back. Use the savepoint's own tx inside its callback, or await tx.transaction(...) before using the outer tx again",
  )
}

function ended(): TransactionMisuseError {
  return new TransactionMisuseError(
    'This transaction has already ended: a statement ran through its tx after the transaction callback settled (was a query not awaited?)',
  )
}
