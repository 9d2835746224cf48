import { mkdirSync, realpathSync } from 'node:fs'
import { maxTimerDelayMs } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkInteger,
  checkObject,
  checkOneOf,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import {
  DriverMissingError,
  StoreBusyError,
  StoreClosedError,
  TransactionMisuseError,
} from './errors.js'
import { LruCache } from './lru.js'
import { AsyncMutex } from './mutex.js'
import { bindPositional, type PositionalSql, toPositional } from './placeholders.js'
import { ScopedTransaction } from './scoped-transaction.js'
import { type FileLock, fileLock } from './sqlite-file-lock.js'
import { folderChain, statOf } from './sqlite-path.js'
import { currentTransaction, refuseCloseInside } from './transaction-context.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from './types.js'

/** The default database file of the embedded store. */
export const defaultSqliteFilename = './.breakwater/breakwater.db'

/** Options of {@link createSqliteDriver}. */
export interface SqliteDriverOptions {
  /**
   * The database file, or `':memory:'` for a private in-memory database. The parent directory
   * is created if missing.
   * @default './.breakwater/breakwater.db'
   */
  readonly filename?: string | undefined
  /**
   * How long a statement waits for another process's write lock before failing with
   * `SQLITE_BUSY`. better-sqlite3 is synchronous: while it waits, this thread is blocked. A
   * write that waits for another driver of this process on the same file waits without
   * blocking, as long at most, then fails with `STORE_BUSY`. At most 2147483647 (SQLite's limit).
   * @default 5000
   */
  readonly busyTimeoutMs?: number | undefined
  /**
   * SQLite's `synchronous` setting in WAL mode. `'normal'`: a commit survives a crash of the
   * process, but the last commits may be lost on power loss or an OS crash (the database stays
   * consistent). `'full'`: every commit is fsynced before it returns, durable on power loss, at
   * a cost in write throughput.
   * @default 'normal'
   */
  readonly synchronous?: 'normal' | 'full' | undefined
  /**
   * How many prepared statements are kept (least recently used are dropped).
   * @default 500
   */
  readonly statementCacheSize?: number | undefined
}

/** The keys of {@link SqliteDriverOptions}. @internal Also checked by `openDatabase`. */
export const sqliteDriverOptions = optionKeys<SqliteDriverOptions>({
  filename: true,
  busyTimeoutMs: true,
  synchronous: true,
  statementCacheSize: true,
})

/** The parts of a better-sqlite3 statement breakwater uses. */
export interface BetterSqliteStatement {
  /** Whether the statement returns rows. */
  readonly reader: boolean
  /** Whether the statement only reads the database. */
  readonly readonly: boolean
  /** Runs the statement and returns every row. */
  all(...params: unknown[]): unknown[]
  /** Runs the statement and returns how many rows it changed. */
  run(...params: unknown[]): { changes: number | bigint }
  /** Whether the statement returns integers as BigInt (better-sqlite3 >= 7). */
  safeIntegers?(toggle?: boolean): unknown
}

/** The parts of a better-sqlite3 `Database` breakwater uses (any better-sqlite3 12 `Database`). */
export interface BetterSqliteDatabase {
  /** Compiles a statement. */
  prepare(sql: string): BetterSqliteStatement
  /** Whether a transaction is open on this connection. */
  readonly inTransaction: boolean
}

interface CachedStatement {
  readonly statement: BetterSqliteStatement
  readonly translated: PositionalSql
}

/** Prepared statements of one better-sqlite3 connection, keyed by the `$n`-style SQL. */
class SqliteStatements {
  readonly #db: BetterSqliteDatabase
  readonly #cache: LruCache<string, CachedStatement>

  constructor(db: BetterSqliteDatabase, capacity: number) {
    this.#db = db
    this.#cache = new LruCache(capacity)
  }

  #get(sql: string): CachedStatement {
    let entry = this.#cache.get(sql)
    if (entry === undefined) {
      const translated = toPositional(sql)
      const statement = this.#db.prepare(translated.sql)
      // Integers are read as numbers whatever the Database's default: an application's own
      // connection (fromBetterSqlite) may have turned on defaultSafeIntegers for its queries.
      statement.safeIntegers?.(false)
      entry = { statement, translated }
      this.#cache.set(sql, entry)
    }
    return entry
  }

  all(sql: string, params: readonly unknown[]): unknown[] {
    const { statement, translated } = this.#get(sql)
    const args = bindPositional(translated, params)
    if (statement.reader) return statement.all(args)
    statement.run(args)
    return []
  }

  /** Runs a statement for {@link SqlTransaction.finish}: its rows (if it returns any) and count. */
  rowsAndCount(sql: string, params: readonly unknown[]): { rows: unknown[]; rowCount: number } {
    const { statement, translated } = this.#get(sql)
    const args = bindPositional(translated, params)
    if (statement.reader) {
      const rows = statement.all(args)
      return { rows, rowCount: rows.length }
    }
    return { rows: [], rowCount: Number(statement.run(args).changes) }
  }

  /** Whether the statement may write (one that does not compile counts as a read: it throws). */
  writes(sql: string): boolean {
    try {
      return !this.#get(sql).statement.readonly
    } catch {
      return false
    }
  }

  run(sql: string, params: readonly unknown[]): number {
    const { statement, translated } = this.#get(sql)
    return Number(statement.run(bindPositional(translated, params)).changes)
  }

  clear(): void {
    this.#cache.clear()
  }
}

const emptyParams: readonly unknown[] = []

/**
 * Runs statements straight on the connection, but only while a transaction is open on it: what
 * {@link fromBetterSqlite} returns, and what a driver's transaction sees. Outside a transaction
 * every statement would commit on its own, apart from the writes it belongs with; `misuse` says
 * why there is none (never opened or already ended, or ended by SQLite after a failure). A
 * class rather than closures: statements are the hot path of every request that writes, and
 * this allocates nothing but the promise per statement.
 */
class TransactionExecutor implements SqlExecutor {
  readonly dialect = 'sqlite' as const
  readonly #db: BetterSqliteDatabase
  readonly #statements: SqliteStatements
  readonly #misuse: () => TransactionMisuseError

  constructor(
    db: BetterSqliteDatabase,
    statements: SqliteStatements,
    misuse: () => TransactionMisuseError,
  ) {
    this.#db = db
    this.#statements = statements
    this.#misuse = misuse
  }

  query<R = Record<string, unknown>>(
    sql: string,
    params: readonly unknown[] = emptyParams,
  ): Promise<R[]> {
    if (!this.#db.inTransaction) return Promise.reject(this.#misuse())
    try {
      return Promise.resolve(this.#statements.all(sql, params) as R[])
    } catch (error) {
      return Promise.reject(error)
    }
  }

  execute(sql: string, params: readonly unknown[] = emptyParams): Promise<{ rowCount: number }> {
    if (!this.#db.inTransaction) return Promise.reject(this.#misuse())
    try {
      return Promise.resolve({ rowCount: this.#statements.run(sql, params) })
    } catch (error) {
      return Promise.reject(error)
    }
  }
}

// A driver's transaction is open until its callback ends, so one that is gone was ended by SQLite
// itself: some failures end the whole transaction, not only their statement (a conflict under
// `OR ROLLBACK`, `RAISE(ROLLBACK)` in a trigger, a full disk, an I/O error), and a callback that
// caught that error would otherwise go on in autocommit mode, each later statement committing on
// its own (and a savepoint beginning a transaction of its own). The same code as PostgreSQL's
// answer to a transaction whose failed statement was swallowed.
function rolledBackBySqlite(): TransactionMisuseError {
  return new TransactionMisuseError(
    'The transaction was rolled back, not committed: one of its statements failed in a way that ends the whole transaction on SQLite (OR ROLLBACK, RAISE(ROLLBACK), a full disk or an I/O error); was its error caught inside the transaction callback?',
  )
}

interface BetterSqliteConnection extends BetterSqliteDatabase {
  exec(sql: string): unknown
  pragma(source: string, options?: { simple?: boolean }): unknown
  close(): unknown
}

/**
 * A SQLite database through better-sqlite3: one connection, shared by every caller of this
 * driver. Statements run synchronously on Node's thread (they are fast: no network); a
 * transaction holds an in-process FIFO lock so nothing else of this driver runs while it is open.
 * Drivers of one process on the same file also share a write lock (see sqlite-file-lock.ts), so a
 * second driver's write waits for the first one's transaction instead of freezing the thread in
 * SQLite's busy wait; its reads go ahead (WAL). Several processes may open the same file: WAL
 * lets readers proceed while one writer works, and `BEGIN IMMEDIATE` makes writers queue (up to
 * `busyTimeoutMs`) instead of failing mid-way.
 */
export class SqliteDriver implements SqlDriver {
  readonly dialect = 'sqlite' as const
  readonly #db: BetterSqliteConnection
  readonly #statements: SqliteStatements
  /** What a transaction's `tx` runs its statements on. */
  readonly #inTransaction: SqlExecutor
  /** Keeps everything else of this driver out while one of its transactions is open. */
  readonly #mutex = new AsyncMutex()
  /** Shared by the drivers of this process on the same file: held by a write transaction. */
  readonly #file: FileLock
  readonly #busyTimeoutMs: number
  #closed = false

  /** @internal Use {@link createSqliteDriver}. */
  constructor(
    db: BetterSqliteConnection,
    statementCacheSize: number,
    file: FileLock,
    busyTimeoutMs: number,
  ) {
    this.#db = db
    this.#file = file
    this.#busyTimeoutMs = busyTimeoutMs
    this.#statements = new SqliteStatements(db, statementCacheSize)
    this.#inTransaction = new TransactionExecutor(db, this.#statements, rolledBackBySqlite)
  }

  query<R = Record<string, unknown>>(
    sql: string,
    params: readonly unknown[] = emptyParams,
  ): Promise<R[]> {
    if (this.#mustQueue(sql)) {
      return this.#queued(
        () => this.#statements.all(sql, params) as R[],
        this.#statements.writes(sql),
      )
    }
    if (this.#closed) return Promise.reject(new StoreClosedError('sqlite'))
    // Run at once, without a closure: this is every plain statement's path.
    try {
      return Promise.resolve(this.#statements.all(sql, params) as R[])
    } catch (error) {
      return Promise.reject(error)
    }
  }

  execute(sql: string, params: readonly unknown[] = emptyParams): Promise<{ rowCount: number }> {
    if (this.#mustQueue(sql)) {
      return this.#queued(
        () => ({ rowCount: this.#statements.run(sql, params) }),
        this.#statements.writes(sql),
      )
    }
    if (this.#closed) return Promise.reject(new StoreClosedError('sqlite'))
    try {
      return Promise.resolve({ rowCount: this.#statements.run(sql, params) })
    } catch (error) {
      return Promise.reject(error)
    }
  }

  // A statement waits while this driver's transaction is open, and a write also while another
  // driver of the file has one open (a read goes ahead: WAL readers never wait for a writer).
  #mustQueue(sql: string): boolean {
    return this.#mutex.locked || (this.#file.mutex.locked && this.#statements.writes(sql))
  }

  async #queued<T>(run: () => T, writes: boolean): Promise<T> {
    if (this.#refuseReentry(writes) && !this.#db.inTransaction) {
      // A read from inside another driver's transaction on this file. That transaction holds
      // the file's write lock, so this connection has none open (it would need the lock) and
      // the read can run at once; queueing could put it behind a write of this driver that
      // waits for that very transaction.
      if (this.#closed) throw new StoreClosedError('sqlite')
      return run()
    }
    await this.#mutex.acquire()
    try {
      if (writes) await this.#takeFileLock()
      try {
        if (this.#closed) throw new StoreClosedError('sqlite')
        return run()
      } finally {
        if (writes) this.#file.mutex.release()
      }
    } finally {
      this.#mutex.release()
    }
  }

  /**
   * Throws when the call would wait for a transaction that waits for it; returns true for a
   * read from inside a transaction of another driver on the same file.
   */
  #refuseReentry(writes: boolean): boolean {
    const current = currentTransaction.getStore()
    if (current === undefined || !current.tx.open) return false
    if (current.driver === this) {
      throw new TransactionMisuseError(
        'The SQLite driver was called from inside its own transaction; use the tx passed to the transaction callback (tx.transaction for a savepoint)',
      )
    }
    if (!(current.driver instanceof SqliteDriver)) return false
    if (current.driver.#file.mutex !== this.#file.mutex) return false
    if (writes) {
      throw new TransactionMisuseError(
        'A second SQLite driver on the same file was asked to write from inside a transaction of the first, which it would wait for forever; use the tx passed to the transaction callback',
      )
    }
    return true
  }

  // Waits for another driver's transaction as SQLite waits for another process's: up to the
  // busy timeout.
  async #takeFileLock(): Promise<void> {
    if (!(await this.#file.mutex.acquireWithin(this.#busyTimeoutMs))) {
      throw new StoreBusyError(this.#busyTimeoutMs)
    }
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    this.#refuseReentry(true)
    // Both locks are taken at once when free (FIFO: a free lock has nobody queued), so the
    // common path adds no await before BEGIN.
    if (!this.#mutex.tryAcquire()) await this.#mutex.acquire()
    try {
      // Always this driver's lock first, then the file's: no two drivers wait for each other.
      if (!this.#file.mutex.tryAcquire()) await this.#takeFileLock()
      try {
        if (this.#closed) throw new StoreClosedError('sqlite')
        // IMMEDIATE takes the write lock now, so a concurrent writer in another process waits
        // here (busy timeout) rather than failing at its first write with SQLITE_BUSY.
        this.#db.exec('BEGIN IMMEDIATE')
        // finish(): the last statement and COMMIT run at once (no round trips to save here,
        // but the same semantics as on PostgreSQL: committed before finish() resolves).
        let finished: { error?: unknown } | undefined
        const tx = new ScopedTransaction(this.#inTransaction, 0, (sql, params) => {
          finished = {}
          if (!this.#db.inTransaction) {
            finished.error = rolledBackBySqlite()
            return Promise.reject(finished.error)
          }
          try {
            const outcome = this.#statements.rowsAndCount(sql, params)
            this.#db.exec('COMMIT')
            return Promise.resolve(outcome)
          } catch (error) {
            this.#rollbackQuietly()
            finished.error = error
            return Promise.reject(error)
          }
        })
        let result: T
        try {
          result = await currentTransaction.run({ driver: this, tx }, fn, tx)
        } catch (error) {
          tx.end()
          // After finish() there is nothing left to roll back (#rollbackQuietly checks).
          this.#rollbackQuietly()
          throw error
        }
        tx.end()
        if (finished !== undefined) {
          // A callback that swallowed finish()'s failure still must not look committed.
          if (finished.error !== undefined) throw finished.error
          return result
        }
        // Rolled back under the callback by a failure it caught: SQLite's own "cannot commit -
        // no transaction is active" would not say that nothing was committed.
        if (!this.#db.inTransaction) throw rolledBackBySqlite()
        try {
          this.#db.exec('COMMIT')
        } catch (error) {
          this.#rollbackQuietly()
          throw error
        }
        return result
      } finally {
        this.#file.mutex.release()
      }
    } finally {
      this.#mutex.release()
    }
  }

  // The caller's error is the one worth seeing; a failing ROLLBACK must not replace it.
  #rollbackQuietly(): void {
    // Some errors (SQLITE_FULL, SQLITE_IOERR) already rolled the transaction back.
    if (!this.#db.inTransaction) return
    try {
      this.#db.exec('ROLLBACK')
    } catch {
      // Nothing better to do here; if the transaction is somehow still open, the next BEGIN
      // fails loudly rather than silently nesting.
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return
    // The mutex is held by that transaction until its callback returns.
    refuseCloseInside(this, 'SQLite')
    await this.#mutex.acquire()
    try {
      if (this.#closed) return
      this.#closed = true
      this.#statements.clear()
      this.#db.close()
    } finally {
      this.#mutex.release()
      this.#file.release()
    }
  }
}

/**
 * better-sqlite3's `Database` constructor, loaded on first use (it is an optional peer
 * dependency), typed as the connection `C` the caller uses.
 * @throws DriverMissingError when better-sqlite3 is not installed
 */
export async function loadBetterSqlite<C>(): Promise<
  new (
    filename: string,
    options?: Record<string, unknown>,
  ) => C
> {
  try {
    const module = (await import('better-sqlite3')) as unknown as {
      default: new (filename: string, options?: Record<string, unknown>) => C
    }
    return module.default
  } catch (error) {
    throw new DriverMissingError('better-sqlite3', error)
  }
}

/**
 * Opens (creating if needed) a SQLite database with better-sqlite3, in WAL mode with a busy
 * timeout, foreign keys on and `synchronous` as chosen. An unknown (misspelt) option is refused
 * with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const db = await createSqliteDriver({ filename: './.breakwater/app.db' })
 * await db.transaction(async (tx) => {
 *   await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o1', 42])
 * })
 * await db.close()
 * ```
 */
export async function createSqliteDriver(options: SqliteDriverOptions = {}): Promise<SqliteDriver> {
  checkObject('options', options)
  // A misspelt option was dropped without a word and the default used instead.
  checkOptionKeys('options', options, sqliteDriverOptions, { bareNames: true })
  const filename = options.filename ?? defaultSqliteFilename
  if (typeof filename !== 'string' || filename === '') {
    throw new InvalidOptionError('filename', 'a file path or ":memory:"', filename)
  }
  // SQLite's busy_timeout is a 32-bit int (a longer one is taken as 0: no wait at all), and so
  // is node's timer delay for the wait on another driver of the file.
  const busyTimeoutMs = checkInteger(
    'busyTimeoutMs',
    options.busyTimeoutMs ?? 5000,
    0,
    maxTimerDelayMs,
  )
  const synchronous = checkOneOf('synchronous', options.synchronous ?? 'normal', ['normal', 'full'])
  const cacheSize = checkInteger('statementCacheSize', options.statementCacheSize ?? 500, 1)

  const Database = await loadBetterSqlite<BetterSqliteConnection>()
  if (filename !== ':memory:') prepareFolder(filename)
  const db = new Database(filename)
  let fileKey: string | undefined
  try {
    // The file exists now; its real path names it whatever relative path or link reached it.
    fileKey = filename === ':memory:' ? undefined : realpathSync(filename)
    // The busy timeout goes first: switching to WAL takes a lock another process may hold.
    db.pragma(`busy_timeout = ${busyTimeoutMs}`)
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
    db.pragma('foreign_keys = ON')
  } catch (error) {
    db.close()
    throw error
  }
  return new SqliteDriver(db, cacheSize, fileLock(fileKey), busyTimeoutMs)
}

/**
 * Creates the file's folders, refusing with `INVALID_OPTION` what cannot hold a database file:
 * a folder given as the file (SQLite says only "unable to open database file"), a file where
 * a folder goes (mkdir says "EEXIST: file already exists"), and a folder that cannot be created
 * (`/proc/nope/x.db`, a read-only or forbidden place), each naming the path.
 */
function prepareFolder(filename: string): void {
  if (statOf(filename)?.isDirectory()) {
    throw new InvalidOptionError('filename', 'a file, not a folder', filename)
  }
  // Not mkdirSync({ recursive: true }): on Node 20 it loops forever under /proc, where mkdir
  // answers ENOENT for a parent that stat finds. Walking up to the nearest existing part and
  // creating each missing level on its own gets a plain error there instead.
  const { nearest, stats, missing } = folderChain(filename)
  if (stats !== undefined && !stats.isDirectory()) {
    throw new InvalidOptionError(
      'filename',
      `a path whose folders are folders (${nearest} ${stats.isFile() ? 'is a file' : 'is not a folder'})`,
      filename,
    )
  }
  for (const folder of missing) {
    try {
      mkdirSync(folder)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      // Another process preparing the same path (two migrations at once) made it first.
      if (code === 'EEXIST' && statOf(folder)?.isDirectory()) continue
      if (code === undefined || !uncreatableFolder.has(code)) throw error
      throw new InvalidOptionError(
        'filename',
        `a path whose folders can be created (creating ${folder} failed: ${code})`,
        filename,
      )
    }
  }
}

// What mkdir answers for a folder that cannot be made there whatever is retried: a place that
// takes no new folders (/proc, /sys), no permission, a read-only file system, or a dangling link
// or other non-folder in the way. Anything else (ENOSPC, EIO) is a failure of the moment.
const uncreatableFolder = new Set(['ENOENT', 'EACCES', 'EPERM', 'EROFS', 'EEXIST', 'ENOTDIR'])

const wrappedStatements = new WeakMap<object, SqliteStatements>()

/**
 * Wraps a better-sqlite3 `Database` that the application owns as a {@link SqlExecutor}, so
 * breakwater's rows are written inside the application's own transaction and commit (or roll
 * back) with its business write.
 *
 * Every statement runs synchronously inside the `query`/`execute` call, before the returned
 * promise settles: statements issued inside a synchronous `db.transaction(() => ...)` body
 * belong to that transaction. Work that awaits between statements cannot run in a synchronous
 * better-sqlite3 transaction; open one with `db.exec('BEGIN IMMEDIATE')` and end it with
 * `COMMIT`/`ROLLBACK` instead, and keep other users of the connection out meanwhile.
 * Prepared statements are cached per `Database`, so wrapping per request is cheap. Integers
 * read through it are numbers even when the `Database` has `defaultSafeIntegers(true)`.
 * A statement sent while the `Database` is outside a transaction (`db.transaction` forgotten,
 * or its function already returned; before `BEGIN` or after `COMMIT`/`ROLLBACK`) is refused
 * with `TransactionMisuseError`: it would commit on its own, apart from the business write.
 *
 * @example
 * ```ts
 * db.exec('BEGIN IMMEDIATE')
 * try {
 *   db.prepare('INSERT INTO orders (id) VALUES (?)').run('o1')
 *   await outbox.enqueue(fromBetterSqlite(db), event)
 *   db.exec('COMMIT')
 * } catch (error) { db.exec('ROLLBACK'); throw error }
 * ```
 */
export function fromBetterSqlite(db: BetterSqliteDatabase): SqlExecutor {
  let statements = wrappedStatements.get(db)
  if (statements === undefined) {
    statements = new SqliteStatements(db, 200)
    wrappedStatements.set(db, statements)
  }
  return new TransactionExecutor(db, statements, outsideTransaction)
}

// The application's transaction was never opened (db.transaction forgotten, BEGIN not run) or has
// ended (its function returned, COMMIT or ROLLBACK ran): breakwater's row would commit on its own,
// apart from the business write, and a check and the write after it would not be one step.
function outsideTransaction(): TransactionMisuseError {
  return new TransactionMisuseError(
    "fromBetterSqlite: the Database is not inside a transaction (never begun, or already committed or rolled back), so the statement would commit on its own; call it inside db.transaction(() => ...) (synchronously, before the function returns) or between db.exec('BEGIN IMMEDIATE') and COMMIT",
  )
}
