/**
 * The one way durable capabilities (idempotency, outbox, sagas, event store) touch a database.
 *
 * SQL is written with `$1, $2, ...` placeholders in both dialects; the SQLite adapter rewrites
 * them to `?` with a cached translation, so each statement is written once.
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

/** A database connection (or pool) owned by breakwater. */
export interface SqlDriver extends SqlExecutor {
  /**
   * Runs `fn` in one transaction: committed when `fn` resolves, rolled back when it throws.
   * On SQLite the transaction is `BEGIN IMMEDIATE`, so writers queue instead of failing late.
   */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>
  /** Closes the connection or pool. */
  close(): Promise<void>
}
