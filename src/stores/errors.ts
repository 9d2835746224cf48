import { BreakwaterError, describeValue } from '../core/errors.js'
import { isObjectRecord } from '../core/validate.js'
import type { SqlDialect } from './types.js'

/** The driver package a database URL needs (`better-sqlite3` or `pg`) is not installed. */
export class DriverMissingError extends BreakwaterError {
  /** The npm package to install. */
  readonly driver: string

  constructor(driver: string, cause: unknown) {
    super(
      'DRIVER_MISSING',
      `The "${driver}" package is needed for this database but could not be loaded; install it with \`npm install ${driver}\``,
      { cause },
    )
    this.driver = driver
  }
}

/**
 * A statement or transaction was sent to a driver (or a store, such as the Redis idempotency
 * store) after `close()`.
 */
export class StoreClosedError extends BreakwaterError {
  constructor(dialect: string, message = `The ${dialect} driver is closed`) {
    super('STORE_CLOSED', message)
  }
}

/**
 * The store stayed busy for longer than its wait limit. Retryable. On SQLite: a write waited
 * longer than `busyTimeoutMs` for the write lock that drivers of one process share per file
 * (held by another driver's transaction). On PostgreSQL: every pooled connection
 * (`maxConnections`) stayed in use for longer than `connectionTimeoutMs`; `cause` is pg-pool's
 * own error.
 */
export class StoreBusyError extends BreakwaterError {
  /** How long the statement waited, in milliseconds. */
  readonly timeoutMs: number

  constructor(timeoutMs: number, message?: string, cause?: unknown) {
    super(
      'STORE_BUSY',
      message ??
        `database is locked: another SQLite driver of this process on the same file held a transaction open for more than busyTimeoutMs (${timeoutMs} ms)`,
      cause === undefined ? { retryable: true } : { retryable: true, cause },
    )
    this.timeoutMs = timeoutMs
  }
}

/**
 * A transaction executor was used after its transaction ended, or while one of its savepoints
 * runs (the statement would be undone with the savepoint), or a SQLite driver was called from
 * inside its own open transaction (which would otherwise wait forever).
 */
export class TransactionMisuseError extends BreakwaterError {
  constructor(message: string) {
    super('TRANSACTION_MISUSE', message)
  }
}

/** An applied migration's recorded name differs from the migration in code. */
export class MigrationConflictError extends BreakwaterError {
  /** The capability whose migrations conflict. */
  readonly capability: string
  /** The migration version. */
  readonly version: number
  /** The name recorded in `breakwater_migrations`. */
  readonly appliedName: string
  /** The name of the migration in code. */
  readonly expectedName: string

  constructor(capability: string, version: number, appliedName: string, expectedName: string) {
    super(
      'MIGRATION_CONFLICT',
      `Migration ${capability} #${version} was applied as "${appliedName}" but the code now calls it "${expectedName}"; never edit an applied migration, add a new one`,
    )
    this.capability = capability
    this.version = version
    this.appliedName = appliedName
    this.expectedName = expectedName
  }
}

/**
 * The database records a migration of a capability newer than any this code knows: a newer
 * breakwater migrated it. The older code refuses to migrate or run that capability (it could
 * write rows the newer code misreads, or miss a column added `NOT NULL`); nothing in the
 * database is changed. Upgrade breakwater to the release that migrated it, or a later one.
 */
export class SchemaTooNewError extends BreakwaterError {
  /** The capability whose schema is newer, e.g. `outbox`. */
  readonly capability: string
  /** The highest version of the capability recorded in `breakwater_migrations`. */
  readonly databaseVersion: number
  /** The highest version of the capability's migrations in this code (0: it knows none). */
  readonly knownVersion: number

  constructor(capability: string, databaseVersion: number, knownVersion: number) {
    const known =
      knownVersion === 0
        ? `knows no ${capability} migration`
        : `knows ${capability} migrations only up to version ${knownVersion}`
    super(
      'SCHEMA_TOO_NEW',
      `The database's ${capability} schema is at version ${databaseVersion}, but this breakwater ${known}: a newer breakwater migrated it. Upgrade breakwater to that release or later; nothing was changed in the database`,
    )
    this.capability = capability
    this.databaseVersion = databaseVersion
    this.knownVersion = knownVersion
  }
}

/** Which stored value: the table, the row (as a message names it) and the column. */
export interface StoredPlace {
  readonly table: string
  readonly row: string
  readonly column: string
}

/**
 * A row read back from one of breakwater's tables does not hold what breakwater writes there:
 * a JSON column whose text is not JSON, or JSON of the wrong shape (headers that are not an
 * object of strings, saga steps that are not a list), or a number column holding text, a
 * fraction or a negative where breakwater writes whole numbers. Only a change made behind
 * breakwater's back does that (a manual edit, another writer's bug, a restored backup). The
 * reader reports it naming the table, the row and the column, and changes nothing in the row;
 * each reader says what it does with it (the relay dead-letters the event, a projector stops
 * right before it, a saga worker leaves the instance and runs the others).
 */
export class StoredDataError extends BreakwaterError {
  /** The table, e.g. `breakwater_outbox`. */
  readonly table: string
  /** The row, as the message names it (`row 12 (event "e-1")`, `saga "s-1"`). */
  readonly row: string
  /** The column that holds what cannot be read, e.g. `headers`. */
  readonly column: string
  /**
   * What is wrong with the value, as the message words it after the column (`is not JSON
   * (...)`): for a reader that shows the row with the others, marked, rather than failing.
   */
  readonly problem: string

  /**
   * @param where Which table, row and column.
   * @param problem What is wrong with the value (`is not JSON: ...`).
   */
  constructor(where: StoredPlace, problem: string, cause?: unknown) {
    super(
      'STORED_DATA_INVALID',
      `${where.table} ${where.row}: ${where.column} ${problem}; the row was changed outside breakwater and is left as it is`,
      cause === undefined ? {} : { cause },
    )
    this.table = where.table
    this.row = where.row
    this.column = where.column
    this.problem = problem
  }
}

/**
 * Parses a JSON column of a stored row, throwing {@link StoredDataError} naming the row when
 * its text is not JSON (a bare `SyntaxError` names nothing). `where` is called only then: the
 * readers on hot paths (a replay, a relay batch, an event read) word nothing for a good row.
 */
export function parseStoredJson(text: unknown, where: () => StoredPlace): unknown {
  if (typeof text !== 'string') throw new StoredDataError(where(), `is not text (${typeof text})`)
  try {
    return JSON.parse(text) as unknown
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error)
    throw new StoredDataError(where(), `is not JSON (${reason})`, error)
  }
}

/** {@link parseStoredJson} for a column that holds a JSON object (`{...}`). */
export function parseStoredObject(
  text: unknown,
  where: () => StoredPlace,
): Record<string, unknown> {
  const value = parseStoredJson(text, where)
  if (!isObjectRecord(value))
    throw new StoredDataError(where(), `is not a JSON object: ${describeValue(value)}`)
  return value
}

/**
 * A whole number from 0 read back from a stored row (a position, a count), or undefined when
 * it is anything else. PostgreSQL's integer columns come back as numbers (int8 is parsed as
 * one), but only a row changed outside breakwater holds a negative one; SQLite's columns take
 * any value, so a text set by hand (`'abc'`) stays text and a fraction a real: read with
 * `Number()`, these became NaN or a fraction. Digit text is still read (an int8 column of an
 * executor that does not parse it), and so is a BigInt (a better-sqlite3 Database with safe
 * integers, through `fromKysely`): Number() read both, and a valid row must not be reported.
 */
export function readStoredWholeNumber(value: unknown): number | undefined {
  // Signed text is never a whole number from 0 here, not even `-0`.
  if (typeof value === 'string' && value.startsWith('-')) return undefined
  const number = readStoredNumber(value)
  return number !== undefined && Number.isSafeInteger(number) && number >= 0 ? number : undefined
}

/**
 * A number read back from a stored row, or undefined when it is none: a finite number, digit
 * text with an optional sign, or a BigInt, read as `Number()` reads them (so text that is not
 * digits, which `Number()` made NaN or 0, is none). {@link readStoredWholeNumber} narrows it to
 * whole numbers from 0; a caller whose column may hold others (a time, a count it checks
 * itself) takes this and says what is wrong with the number.
 */
export function readStoredNumber(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined
  if (typeof value === 'bigint' || (typeof value === 'string' && /^-?\d+$/.test(value)))
    return Number(value)
  return undefined
}

/** What kind of database failure an error is, across both dialects. */
export type SqlErrorKind =
  /** A UNIQUE or PRIMARY KEY constraint rejected the row. */
  | 'unique-violation'
  /** A serialization failure or deadlock (PostgreSQL 40001/40P01): retry the transaction. */
  | 'serialization-failure'
  /**
   * The database was locked past the busy timeout (SQLite `SQLITE_BUSY`, breakwater's
   * `STORE_BUSY`), or a lock timed out.
   */
  | 'busy'
  /** Anything else. */
  | 'other'

/**
 * Classifies a driver error so capability code can react the same way on both dialects
 * (better-sqlite3 error codes such as `SQLITE_CONSTRAINT_UNIQUE`, PostgreSQL SQLSTATEs).
 *
 * @example
 * ```ts
 * try { await db.execute('INSERT INTO t (id) VALUES ($1)', [id]) }
 * catch (error) { if (sqlErrorKind(error) !== 'unique-violation') throw error }
 * ```
 */
export function sqlErrorKind(error: unknown): SqlErrorKind {
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return 'other'
  if (
    code === '23505' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
  )
    return 'unique-violation'
  if (code === '40001' || code === '40P01') return 'serialization-failure'
  if (
    code === '55P03' ||
    code === 'STORE_BUSY' ||
    code.startsWith('SQLITE_BUSY') ||
    code.startsWith('SQLITE_LOCKED')
  )
    return 'busy'
  return 'other'
}

/**
 * Whether a failed PostgreSQL statement (or transaction) certainly wrote nothing: the server
 * answered it with an error response (a SQLSTATE and a severity, which Node's own socket errors
 * lack), so its transaction rolled back. Connection exceptions (class 08), shutdowns (57P0x)
 * and internal errors (class XX) are unknown outcomes, like a lost connection: a connection
 * lost after COMMIT was sent may have committed. Internal: the callers decide what an unknown
 * outcome must not be followed by (a retry, a release).
 */
export function rolledBackByServer(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false
  const { code, severity } = error as { code?: unknown; severity?: unknown }
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code) || typeof severity !== 'string') {
    return false
  }
  return !code.startsWith('08') && !code.startsWith('57P0') && !code.startsWith('XX')
}

/**
 * Whether a failed transaction, its COMMIT included, certainly committed nothing, so that what
 * it was to record may be written again or given up: any failure on SQLite (the database runs
 * in process, and a COMMIT that fails leaves nothing applied), a PostgreSQL pool that handed out
 * no connection in time (`STORE_BUSY`: nothing was sent), or an error the PostgreSQL server
 * answered with ({@link rolledBackByServer}). A lost connection is not: its COMMIT may have
 * been applied. Internal: the one answer that the saga runner (may a state write be retried?)
 * and idempotency (may a key be released?) both need.
 */
export function committedNothing(dialect: SqlDialect, error: unknown): boolean {
  if (dialect === 'sqlite') return true
  return (error as { code?: unknown } | null)?.code === 'STORE_BUSY' || rolledBackByServer(error)
}
