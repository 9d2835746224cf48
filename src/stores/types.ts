/**
 * The one way durable capabilities (idempotency, outbox, sagas, event store) touch a database.
 *
 * SQL is written with `$1, $2, ...` placeholders in both dialects; the SQLite adapter rewrites
 * them to `?` with a cached translation, so each statement is written once. A placeholder may
 * appear more than once (`$1` twice binds the first value twice).
 *
 * Values that can be bound: numbers, strings, `null` (and `undefined`, sent as `null`), booleans
 * (stored as 0/1 on SQLite), `Uint8Array`/`Buffer` and `bigint`. NaN is refused on SQLite
 * (`INVALID_OPTION` naming `params[i]`), which would store it as NULL, and so are a `Date`, an
 * object and an array (pg would bind them as text or JSON; SQLite binds neither). Timestamps are integer
 * milliseconds since the epoch everywhere (`BIGINT` on PostgreSQL, `INTEGER` on SQLite).
 *
 * Values read back: `BIGINT` columns arrive as JS numbers from every executor breakwater
 * creates (`openDatabase`, `fromPgClient`, `fromBetterSqlite`); values beyond 2^53 lose
 * precision, so keep exact large integers in text. Booleans read back as `true`/`false` from a
 * PostgreSQL `BOOLEAN` column and `0`/`1` from SQLite: compare truthily. Blobs read back as
 * `Buffer`.
 */
export interface SqlExecutor {
  /** Which SQL dialect this executor speaks, so capabilities can pick the right statement. */
  readonly dialect: SqlDialect
  /** Runs one statement and returns its rows (empty for statements that return none). */
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]>
  /** Runs one statement and returns the number of rows it changed. */
  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }>
}

/** The SQL dialects breakwater speaks. */
export type SqlDialect = 'sqlite' | 'postgres'

/**
 * The executor handed to {@link SqlDriver.transaction}'s callback. It is valid only until the
 * callback settles; a statement sent through it later fails with `TRANSACTION_MISUSE`. So does
 * a statement that would end or begin a transaction (`COMMIT`, `END`, `ROLLBACK`, `ABORT`,
 * `BEGIN`, `START TRANSACTION`, `PREPARE TRANSACTION`): the callback's result decides commit or
 * rollback. Savepoint statements of your own (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`) are taken.
 */
export interface SqlTransaction extends SqlExecutor {
  /**
   * Runs `fn` inside a savepoint of this transaction: the savepoint is released when `fn`
   * resolves and rolled back (leaving the outer transaction open and usable) when it throws.
   * On PostgreSQL, a statement that failed inside `fn` whose error `fn` caught has aborted the
   * savepoint: it is rolled back all the same, and this rejects with `TRANSACTION_MISUSE` (the
   * outer transaction goes on). On SQLite such a statement undoes only itself, as in the outer
   * transaction, and the savepoint is released with its other writes.
   * Savepoints nest; they cannot overlap: a second savepoint of the same `tx` started while one
   * runs is refused with `TRANSACTION_MISUSE`. While `fn` runs (from `SAVEPOINT` to `RELEASE`),
   * the outer `tx` refuses its own statements and `finish` with `TRANSACTION_MISUSE` too: sent
   * on the same connection, they would run inside the savepoint and be undone by its rollback
   * after having succeeded. They are refused, not queued until the savepoint ends, because a
   * savepoint that awaits work which awaits the outer `tx` would then wait for itself forever;
   * inside `fn`, use the savepoint's `tx`. The
   * savepoint's `tx` ends with the outer one too: once the outer transaction has ended (its
   * callback settled, or idempotency's lease expiry rolled `ctx.tx` back), its statements fail
   * with `TRANSACTION_MISUSE` instead of running outside any transaction.
   */
  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T>
  /**
   * Runs `sql` as the transaction's last statement and commits with it: on PostgreSQL the
   * statement and `COMMIT` travel together (one round trip instead of two). Resolves once the
   * transaction has committed. If the statement fails, the transaction is rolled back and the
   * statement's error is thrown; if an earlier statement had already failed the transaction,
   * it is rolled back and `TRANSACTION_MISUSE` is thrown. A failing `COMMIT` is thrown as is
   * and is ambiguous, as for {@link SqlDriver.transaction}.
   *
   * Afterwards the transaction accepts no statement and the callback should return: the
   * outcome is settled, so an error the callback throws after a successful `finish` still
   * reaches the caller but does not undo the commit. Only the outermost `tx` of a transaction
   * begun by a breakwater driver has it; savepoints and wrapped user transactions do not (the
   * user owns their `COMMIT`), so callers check for it and otherwise use `execute`.
   */
  finish?<R = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<{ rows: R[]; rowCount: number }>
}

/** A notification delivered by {@link SqlDriver.listen}. */
export interface SqlNotification {
  /** The channel it was sent on. */
  readonly channel: string
  /** The payload given to `pg_notify` (empty string when none, or when `reconnected`). */
  readonly payload: string
  /**
   * True for the synthetic notification delivered after the listening connection was lost and
   * re-established: notifications sent in between are lost, so a consumer should re-read its
   * source once (as it would after a poll timeout).
   */
  readonly reconnected: boolean
}

/** Stops a {@link SqlDriver.listen} subscription. */
export type Unlisten = () => Promise<void>

/** One statement of a unit given to {@link SqlDriver.writeAtomically}. */
export interface SqlWrite {
  readonly sql: string
  readonly params?: readonly unknown[]
}

/**
 * Looks at a unit's row counts (one per statement, in order) once its statements ran, before
 * its commit: returns an error to roll the unit back and reject with it, or undefined to keep it.
 */
export type WriteCheck = (rowCounts: readonly number[]) => Error | undefined

/** A database connection (or pool) owned by breakwater. */
export interface SqlDriver extends SqlExecutor {
  /**
   * Runs `fn` in one transaction: committed when `fn` resolves, rolled back when it throws.
   *
   * On SQLite the transaction is `BEGIN IMMEDIATE` (writers queue on the file lock instead of
   * failing late) and no other statement of this driver runs while it is open. On PostgreSQL it
   * runs on one pooled connection at the server's default isolation (READ COMMITTED; run `SET
   * TRANSACTION ISOLATION LEVEL ...` as the first statement to change it).
   *
   * If COMMIT itself fails, that error is thrown as is and the outcome is ambiguous: the commit
   * may or may not have happened (on PostgreSQL the connection can drop after the server
   * committed). Callers that must know re-read what they wrote.
   *
   * A callback that catches a statement's error and goes on cannot commit what the failure
   * ended: on PostgreSQL every failed statement aborts the transaction, on SQLite some do
   * (`OR ROLLBACK`, `RAISE(ROLLBACK)`, a full disk, an I/O error). Later statements fail, and
   * the transaction rejects with `TRANSACTION_MISUSE`; nothing runs outside it. Use a savepoint
   * (`tx.transaction`) for a step whose failure the callback means to survive.
   *
   * Inside `fn`, use `tx`, never the driver itself: on SQLite that would wait for the open
   * transaction forever, so it fails fast with `TRANSACTION_MISUSE`. Use `tx.transaction` for
   * a nested unit (a savepoint).
   */
  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T>
  /**
   * Writes `writes` atomically: all of them or, when one fails or `check` refuses, none.
   * Resolves with each statement's row count once they are committed. Present on SQLite, where
   * it is a group commit: units asked for in the same turn of the event loop share one
   * `BEGIN IMMEDIATE ... COMMIT`, each in a savepoint of its own, which writes each changed page
   * to the log once for the group instead of once per unit (about a quarter of the cost per
   * small unit at 16 to a group). A unit's promise settles after the group's `COMMIT`, so a
   * resolved write is durable as a transaction's is. Units are statements, not callbacks: no
   * caller's code runs inside the shared transaction. A failing `COMMIT` rejects every unit of
   * the group (nothing of it was written); a failure that ends SQLite's whole transaction (a
   * full disk, `OR ROLLBACK`) rejects the unit that met it, and the group's other units are run
   * again in a new transaction. Statements that control transactions or savepoints are refused
   * with `TRANSACTION_MISUSE`, as is a call from inside this driver's own transaction.
   * Absent on PostgreSQL: callers fall back to {@link transaction}.
   */
  writeAtomically?(writes: readonly SqlWrite[], check?: WriteCheck): Promise<number[]>
  /**
   * Subscribes to notifications on `channel` (PostgreSQL LISTEN on one dedicated connection per
   * driver, re-established with backoff when it drops). Absent on SQLite, where consumers poll.
   * Send with {@link notify} (inside a transaction, it is delivered on commit). `channel` is 1 to
   * 63 bytes, PostgreSQL's longest name; a longer one is refused with `INVALID_OPTION`.
   */
  listen?(channel: string, onNotify: (notification: SqlNotification) => void): Promise<Unlisten>
  /**
   * Closes the connection or pool. Waits for the transactions in progress to finish (work that
   * is still waiting for a pooled connection on PostgreSQL is refused with `STORE_CLOSED`), so it
   * must not be called from inside one of this driver's own transactions: SQLite's driver then
   * fails at once with `TRANSACTION_MISUSE` and stays open; PostgreSQL's waits forever.
   */
  close(): Promise<void>
}
