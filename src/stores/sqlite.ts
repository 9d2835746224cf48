import {
  accessSync,
  constants,
  mkdirSync,
  realpathSync,
  type Stats,
  statfsSync,
  statSync,
} from 'node:fs'
import { basename, dirname, resolve, sep } from 'node:path'
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
import {
  type GroupConnection,
  groupedWritesRefusal,
  type PendingUnit,
  runGroup,
} from './group-commit.js'
import { LruCache } from './lru.js'
import { AsyncMutex } from './mutex.js'
import { bindPositional, notSql, type PositionalSql, toPositional } from './placeholders.js'
import { ScopedTransaction } from './scoped-transaction.js'
import { type FileLock, fileLock } from './sqlite-file-lock.js'
import { folderChain, statOf } from './sqlite-path.js'
import { currentTransaction, refuseCloseInside } from './transaction-context.js'
import type { SqlDriver, SqlExecutor, SqlTransaction, SqlWrite, WriteCheck } from './types.js'

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
  /**
   * How large the WAL file (`<filename>-wal`) may grow before the driver empties it. SQLite
   * checkpoints the WAL into the database after commits but never waits for readers, and it
   * starts the file over only once no reader is left in it, which processes that read and
   * write all the time (relays, consumers, projectors, handlers) never allow: without this the
   * WAL grew to hundreds of MB and stayed there. Past this size, a look after every 32nd
   * statement or transaction runs `wal_checkpoint(TRUNCATE)`, which waits up to 100 ms (or
   * `busyTimeoutMs`, when shorter) for other processes' writer and older readers, blocking this
   * thread and their writes meanwhile; one that gives up (a long read elsewhere) is tried again
   * once the WAL has grown by as much again. Also SQLite's `journal_size_limit`. At least 1 MiB
   * (1048576): a smaller bound would checkpoint after nearly every transaction.
   * @default 16777216 (16 MiB)
   */
  readonly walSizeLimitBytes?: number | undefined
}

/** The default of {@link SqliteDriverOptions.walSizeLimitBytes}: 16 MiB. */
export const defaultWalSizeLimitBytes = 16 * 1024 * 1024

// How many statements and transactions pass between two looks at the WAL's size: a stat costs
// about a microsecond, which every commit need not pay; a WAL grows by at most this many
// transactions' pages past the bound before it is seen.
const walCheckInterval = 32

// The longest a checkpoint of an oversized WAL blocks the thread (and other processes' writers)
// waiting for the writer and readers of other connections to finish. Their transactions are
// short under the load that makes the WAL grow; one that holds on longer (a long report) makes
// the checkpoint give up, and it is tried again once the WAL has grown by the bound once more.
const walCheckpointWaitMs = 100

// What the retries of a checkpoint sleep on (Atomics.wait: this thread blocks, as it does in
// SQLite's own busy wait).
const pause = new Int32Array(new SharedArrayBuffer(4))

/** The keys of {@link SqliteDriverOptions}. @internal Also checked by `openDatabase`. */
export const sqliteDriverOptions = optionKeys<SqliteDriverOptions>({
  filename: true,
  busyTimeoutMs: true,
  synchronous: true,
  statementCacheSize: true,
  walSizeLimitBytes: true,
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
  /** The database file as it was opened (better-sqlite3's `name`), for error messages. */
  readonly name?: string | undefined
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
      // Checked on a miss only: a string was checked when it was cached.
      if (typeof sql !== 'string') throw notSql(sql)
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
 * SQLite's result codes for a failure of the file's surroundings rather than of the statement:
 * no space left, a write lock held elsewhere, a file that may not be written, an I/O error, a
 * file damaged or not a database. Their messages name no file.
 */
const environmentCodes = [
  'SQLITE_FULL',
  'SQLITE_BUSY',
  'SQLITE_LOCKED',
  'SQLITE_READONLY',
  'SQLITE_IOERR',
  'SQLITE_CORRUPT',
  'SQLITE_NOTADB',
  'SQLITE_CANTOPEN',
  'SQLITE_PERM',
]

// Errors already given their file: a failure seen by both a transaction's statement and its
// driver is described once.
const described = new WeakSet<object>()

/**
 * Adds the database file, and what its code means for it, to a better-sqlite3 error of the
 * file's surroundings (see environmentCodes). better-sqlite3 said only "database or disk is
 * full", "database is locked" or "attempt to write a readonly database": a process with several
 * SQLite files (an outbox beside a SQL-queue broker) logged a failure that named none of them,
 * and a full disk or a file this user may not write read like a fault in breakwater. The error
 * itself is kept (its class and `code`: `sqlErrorKind` and `classifyFailure` read it as
 * before); only its message and the first line of its stack change. `busyTimeoutMs` is
 * undefined for a connection breakwater did not configure (fromBetterSqlite). `db`, the
 * connection that failed, tells a `SQLITE_FULL` of its page limit from one of a full disk.
 */
function describeSqliteFailure(
  error: unknown,
  filename: string | undefined,
  busyTimeoutMs: number | undefined,
  db?: BetterSqliteDatabase,
): unknown {
  if (!(error instanceof Error) || described.has(error)) return error
  const code = (error as { code?: unknown }).code
  if (typeof code !== 'string') return error
  const base = environmentCodes.find((c) => code === c || code.startsWith(`${c}_`))
  if (base === undefined) return error
  described.add(error)
  const onDisk =
    filename === undefined || filename === '' || filename === ':memory:' ? undefined : filename
  const file = onDisk === undefined ? 'the in-memory SQLite database' : `SQLite file ${onDisk}`
  const limit = base === 'SQLITE_FULL' && db !== undefined ? pageLimit(db, onDisk) : undefined
  const meaning =
    limit === undefined
      ? environmentMeaning(base, busyTimeoutMs)
      : `it reached the limit PRAGMA max_page_count set on this connection (${limit.max} pages of ${limit.pageSize} bytes; it holds ${limit.pages}), not a full disk; nothing of the failed statement was written`
  const before = error.message
  error.message = `${before} (${file}${meaning === '' ? '' : `: ${meaning}`})`
  if (typeof error.stack === 'string') {
    const head = `${error.name}: ${before}`
    if (error.stack.startsWith(head)) {
      error.stack = `${error.name}: ${error.message}${error.stack.slice(head.length)}`
    }
  }
  return error
}

/**
 * The page limit of `db` when it, rather than the file system, is what a `SQLITE_FULL` ran into
 * (undefined otherwise, or when it cannot be told). SQLite answers both with "database or disk
 * is full": an application that caps its database with `PRAGMA max_page_count` on a disk with
 * room to spare was told its disk was full. The limit is the cause when the room it leaves is
 * less than the file system's free space: a write too large for the disk is then refused by the
 * limit first. An in-memory database has no file system, so only its limit (or the process's
 * memory, which fails with SQLITE_NOMEM instead) can be full: `onDisk` is undefined for it.
 */
function pageLimit(
  db: BetterSqliteDatabase,
  onDisk: string | undefined,
): { max: number; pages: number; pageSize: number } | undefined {
  try {
    const max = pragmaNumber(db, 'max_page_count')
    const pages = pragmaNumber(db, 'page_count')
    const pageSize = pragmaNumber(db, 'page_size')
    if (max === undefined || pages === undefined || pageSize === undefined) return undefined
    const left = (max - pages) * pageSize
    if (onDisk !== undefined) {
      const fs = statfsSync(dirname(onDisk))
      if (left >= fs.bavail * fs.bsize) return undefined
    }
    return { max, pages, pageSize }
  } catch {
    // A closed connection, a folder gone: the message keeps SQLite's own reading.
    return undefined
  }
}

// One number a PRAGMA returns (a BigInt on a Database with safe integers).
function pragmaNumber(db: BetterSqliteDatabase, name: string): number | undefined {
  const [row] = db.prepare(`PRAGMA ${name}`).all() as Record<string, unknown>[]
  const value = row?.[name]
  return typeof value === 'number' || typeof value === 'bigint' ? Number(value) : undefined
}

// What a code of environmentCodes means for the file, in the words of its message.
function environmentMeaning(base: string, busyTimeoutMs: number | undefined): string {
  switch (base) {
    case 'SQLITE_FULL':
      return 'no space left on its file system for it or its -wal file; nothing of the failed statement was written'
    case 'SQLITE_BUSY':
      return busyTimeoutMs === undefined
        ? 'another connection held its write lock past the busy timeout; retryable'
        : `another connection held its write lock for more than busyTimeoutMs (${busyTimeoutMs} ms); retryable`
    case 'SQLITE_READONLY':
      return 'it cannot be written: the file, or its folder (which holds its -wal and -shm files), is read-only for this user, or its file system is mounted read-only'
    case 'SQLITE_IOERR':
      return 'the operating system failed a read or write of it or its -wal or -shm file'
    case 'SQLITE_CORRUPT':
    case 'SQLITE_NOTADB':
      return 'the file is damaged or is not a SQLite database'
    default:
      return ''
  }
}

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
  readonly #busyTimeoutMs: number | undefined
  readonly #filename: string | undefined

  /**
   * `busyTimeoutMs` and `filename` (the file's real path) are known for a driver's own
   * connection; an application's (fromBetterSqlite) is named by better-sqlite3's `name`.
   */
  constructor(
    db: BetterSqliteDatabase,
    statements: SqliteStatements,
    misuse: () => TransactionMisuseError,
    busyTimeoutMs?: number,
    filename?: string,
  ) {
    this.#db = db
    this.#statements = statements
    this.#misuse = misuse
    this.#busyTimeoutMs = busyTimeoutMs
    this.#filename = filename
  }

  query<R = Record<string, unknown>>(
    sql: string,
    params: readonly unknown[] = emptyParams,
  ): Promise<R[]> {
    if (!this.#db.inTransaction) return Promise.reject(this.#misuse())
    try {
      return Promise.resolve(this.#statements.all(sql, params) as R[])
    } catch (error) {
      return Promise.reject(
        describeSqliteFailure(
          error,
          this.#filename ?? this.#db.name,
          this.#busyTimeoutMs,
          this.#db,
        ),
      )
    }
  }

  execute(sql: string, params: readonly unknown[] = emptyParams): Promise<{ rowCount: number }> {
    if (!this.#db.inTransaction) return Promise.reject(this.#misuse())
    try {
      return Promise.resolve({ rowCount: this.#statements.run(sql, params) })
    } catch (error) {
      return Promise.reject(
        describeSqliteFailure(
          error,
          this.#filename ?? this.#db.name,
          this.#busyTimeoutMs,
          this.#db,
        ),
      )
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
  /** The WAL file; undefined for an in-memory database (which has none). */
  readonly #walFile: string | undefined
  /** Statements and transactions left before the next look at the WAL's size. */
  #untilWalCheck = walCheckInterval
  readonly #walSizeLimitBytes: number
  /** The WAL size above which it is checkpointed (raised after a checkpoint that gave up). */
  #checkpointAbove: number
  /** The file's real path, for error messages; undefined for an in-memory database. */
  readonly #filename: string | undefined
  #closed = false
  /** Units of {@link writeAtomically} waiting for their group. */
  #units: PendingUnit[] = []
  /** Whether a group is due to run (asked for, and not yet holding the locks). */
  #groupDue = false
  /** The connection as a group sees it (see group-commit.ts). */
  readonly #group: GroupConnection

  /** @internal Use {@link createSqliteDriver}. */
  constructor(
    db: BetterSqliteConnection,
    statementCacheSize: number,
    file: FileLock,
    busyTimeoutMs: number,
    filename?: string,
    walSizeLimitBytes = defaultWalSizeLimitBytes,
  ) {
    this.#db = db
    this.#file = file
    this.#busyTimeoutMs = busyTimeoutMs
    this.#walFile = filename === undefined ? undefined : `${filename}-wal`
    this.#walSizeLimitBytes = walSizeLimitBytes
    this.#checkpointAbove = walSizeLimitBytes
    this.#statements = new SqliteStatements(db, statementCacheSize)
    this.#filename = filename
    this.#inTransaction = new TransactionExecutor(
      db,
      this.#statements,
      rolledBackBySqlite,
      busyTimeoutMs,
      filename,
    )
    this.#group = {
      begin: () => db.exec('BEGIN IMMEDIATE'),
      commit: () => db.exec('COMMIT'),
      run: (sql, params) => this.#statements.run(sql, params),
      exec: (sql) => db.exec(sql),
      inTransaction: () => db.inTransaction,
      rollbackQuietly: () => this.#rollbackQuietly(),
      described: (error) => this.#described(error),
    }
  }

  // A failure of one of this driver's statements, BEGIN or COMMIT, naming the file when its
  // surroundings failed (see describeSqliteFailure).
  #described(error: unknown): unknown {
    return describeSqliteFailure(error, this.#filename, this.#busyTimeoutMs, this.#db)
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
      const rows = this.#statements.all(sql, params) as R[]
      if (--this.#untilWalCheck <= 0) this.#checkWal(false)
      return Promise.resolve(rows)
    } catch (error) {
      return Promise.reject(this.#described(error))
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
      const rowCount = this.#statements.run(sql, params)
      if (--this.#untilWalCheck <= 0) this.#checkWal(false)
      return Promise.resolve({ rowCount })
    } catch (error) {
      return Promise.reject(this.#described(error))
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
      return this.#runDescribed(run)
    }
    await this.#mutex.acquire()
    try {
      if (writes) await this.#takeFileLock()
      try {
        if (this.#closed) throw new StoreClosedError('sqlite')
        const result = this.#runDescribed(run)
        if (writes && --this.#untilWalCheck <= 0) this.#checkWal(true)
        return result
      } finally {
        if (writes) this.#file.mutex.release()
      }
    } finally {
      this.#mutex.release()
    }
  }

  #runDescribed<T>(run: () => T): T {
    try {
      return run()
    } catch (error) {
      throw this.#described(error)
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
        try {
          this.#db.exec('BEGIN IMMEDIATE')
        } catch (error) {
          throw this.#described(error)
        }
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
            if (--this.#untilWalCheck <= 0) this.#checkWal(true)
            return Promise.resolve(outcome)
          } catch (error) {
            this.#rollbackQuietly()
            finished.error = this.#described(error)
            return Promise.reject(finished.error)
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
          throw this.#described(error)
        }
        if (--this.#untilWalCheck <= 0) this.#checkWal(true)
        return result
      } finally {
        this.#file.mutex.release()
      }
    } finally {
      this.#mutex.release()
    }
  }

  /**
   * Writes `writes` atomically, sharing one `COMMIT` with the other units asked for in the same
   * turn of the event loop (group commit, see {@link SqlDriver.writeAtomically}). The group runs
   * on `setImmediate`, so units that arrive while I/O callbacks run (the requests of one poll)
   * join it; it waits for the driver's and the file's locks as a transaction does.
   */
  writeAtomically(writes: readonly SqlWrite[], check?: WriteCheck): Promise<number[]> {
    try {
      this.#refuseReentry(true)
    } catch (error) {
      return Promise.reject(error)
    }
    if (this.#closed) return Promise.reject(new StoreClosedError('sqlite'))
    const refusal = groupedWritesRefusal(writes)
    if (refusal !== undefined) return Promise.reject(refusal)
    return new Promise<number[]>((resolve, reject) => {
      this.#units.push({ writes, check, resolve, reject })
      if (!this.#groupDue) {
        this.#groupDue = true
        setImmediate(this.#runDueGroup)
      }
    })
  }

  readonly #runDueGroup = (): void => {
    void this.#commitUnits()
  }

  // Takes the locks, then every unit queued by then: units asked for while it waited join.
  async #commitUnits(): Promise<void> {
    if (!this.#mutex.tryAcquire()) await this.#mutex.acquire()
    try {
      this.#groupDue = false
      await this.#runUnitsHoldingDriver()
    } finally {
      this.#mutex.release()
    }
  }

  // Runs the queued units; the caller holds this driver's lock.
  async #runUnitsHoldingDriver(): Promise<void> {
    const units = this.#units
    if (units.length === 0) return
    this.#units = []
    try {
      if (!this.#file.mutex.tryAcquire()) await this.#takeFileLock()
    } catch (error) {
      for (const unit of units) unit.reject(error)
      return
    }
    try {
      if (this.#closed) {
        for (const unit of units) unit.reject(new StoreClosedError('sqlite'))
        return
      }
      let left: PendingUnit[] = units
      while (left.length > 0) left = runGroup(this.#group, left)
      this.#untilWalCheck -= units.length
      if (this.#untilWalCheck <= 0) this.#checkWal(true)
    } finally {
      this.#file.mutex.release()
    }
  }

  /**
   * Checkpoints the WAL back to nothing once it has grown past `walSizeLimitBytes`. SQLite
   * checkpoints after commits on its own, but without waiting: a reader on an older snapshot
   * stops it short, and the WAL restarts from its beginning only once it was checkpointed whole
   * with no reader left in it. Processes that read and write all the time (relays, consumers,
   * projectors, request handlers) always have some reader there, so the WAL only grew (466 MB
   * beside a 108 MB database in exploratory testing) and every reader's lookups in it slowed
   * with it. `wal_checkpoint(TRUNCATE)` takes the write lock and waits for the readers on old
   * snapshots to finish (new ones read the database file: everything is in it by then), then
   * empties the file. Runs outside any transaction of this connection and never while another
   * driver of this process holds the file (its write lock, held on this thread, would never
   * come free); the commit before it stands whatever happens here. `holdsFile`: the caller
   * holds the file's lock of this process.
   */
  #checkWal(holdsFile: boolean): void {
    this.#untilWalCheck = walCheckInterval
    if (this.#walFile === undefined || this.#db.inTransaction) return
    if (!holdsFile && this.#file.mutex.locked) return
    const size = statSync(this.#walFile, { throwIfNoEntry: false })?.size ?? 0
    if (size <= this.#checkpointAbove) return
    let outcome: { busy: number; log: number } | undefined
    const deadline = performance.now() + Math.min(this.#busyTimeoutMs, walCheckpointWaitMs)
    try {
      for (;;) {
        const left = Math.max(0, Math.ceil(deadline - performance.now()))
        this.#db.pragma(`busy_timeout = ${left}`)
        ;[outcome] = this.#db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number; log: number }[]
        // log -1: another connection held the checkpoint lock, which SQLite gives up on at once,
        // without its busy wait. While the WAL is this large every commit of every process
        // runs SQLite's own passive checkpoint, so that lock is taken most of the time; it comes
        // free between two of them.
        if (outcome?.busy !== 1 || outcome.log !== -1 || left === 0) break
        Atomics.wait(pause, 0, 0, 1)
      }
    } catch {
      // Only an I/O failure gets here (a busy checkpoint reports busy = 1): the commit before it
      // stands, and the next statement meets the failure if it persists.
    } finally {
      this.#db.pragma(`busy_timeout = ${this.#busyTimeoutMs}`)
    }
    // One that gave up (a reader or writer held on past the wait) is tried again once the WAL
    // has grown as much again, rather than blocking after every commit while that reader runs.
    this.#checkpointAbove =
      outcome?.busy === 0 ? this.#walSizeLimitBytes : size + this.#walSizeLimitBytes
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
      // Units asked for before close() are work in progress: written, not refused.
      await this.#runUnitsHoldingDriver()
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
 * timeout, foreign keys on and `synchronous` as chosen, keeping the WAL file near
 * `walSizeLimitBytes`. An unknown (misspelt) option is refused with `InvalidOptionError`
 * (`INVALID_OPTION`) naming it, and so is a `filename` that cannot hold a database: a folder
 * (or a path ending in `/`), a path under a file, a folder that cannot be created or one this
 * user may not write (SQLite creates `<file>-wal` and `<file>-shm` beside the file).
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
  const walSizeLimitBytes = checkInteger(
    'walSizeLimitBytes',
    options.walSizeLimitBytes ?? defaultWalSizeLimitBytes,
    1024 * 1024,
  )

  const Database = await loadBetterSqlite<BetterSqliteConnection>()
  if (filename !== ':memory:') prepareFolder(filename)
  let db: BetterSqliteConnection
  try {
    db = new Database(filename)
  } catch (error) {
    // A folder that is writable leaves SQLite's own failure (a full disk, an I/O error): it
    // names the file too, as a running driver's do.
    throw unwritableFolder(filename, error) ?? describeSqliteFailure(error, filename, busyTimeoutMs)
  }
  let fileKey: string | undefined
  try {
    // The file exists now; its real path names it whatever relative path or link reached it.
    fileKey = filename === ':memory:' ? undefined : realpathSync(filename)
    // The busy timeout goes first: switching to WAL takes a lock another process may hold.
    db.pragma(`busy_timeout = ${busyTimeoutMs}`)
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
    db.pragma('foreign_keys = ON')
    // A WAL that restarts from its beginning is cut down to this size (by default SQLite keeps
    // the file as large as it ever grew).
    db.pragma(`journal_size_limit = ${walSizeLimitBytes}`)
  } catch (error) {
    db.close()
    throw (
      unwritableFolder(filename, error) ??
      describeSqliteFailure(error, fileKey ?? filename, busyTimeoutMs)
    )
  }
  return new SqliteDriver(
    db,
    cacheSize,
    fileLock(fileKey),
    busyTimeoutMs,
    fileKey,
    walSizeLimitBytes,
  )
}

/**
 * Creates the file's folders, refusing with `INVALID_OPTION` what cannot hold a database file:
 * a folder given as the file, or a path ending in a separator, `.` or `..` (SQLite says only
 * "unable to open database file", or creates a file named after the last folder), a path that
 * is no regular file (a device such as /dev/null, a FIFO, a socket), a file where
 * a folder goes (mkdir says "EEXIST: file already exists"), and a folder that cannot be created
 * (`/proc/nope/x.db`, a read-only or forbidden place), each naming the path.
 */
function prepareFolder(filename: string): void {
  // '/data/new/' named a folder, yet SQLite created a file called new.
  const existing = statOf(filename)
  if (existing?.isDirectory() || namesFolder(filename)) {
    throw new InvalidOptionError('filename', 'a file, not a folder', filename)
  }
  // A device, FIFO or socket can hold no database: SQLite failed on /dev/null with a bare
  // "disk I/O error" that did not say the path was no file at all.
  if (existing !== undefined && !existing.isFile()) {
    throw new InvalidOptionError(
      'filename',
      `a regular file (${filename} is ${specialFileKind(existing)})`,
      filename,
    )
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

// What a path that is neither a file nor a folder is, for the refusal's message.
function specialFileKind(stats: Stats): string {
  if (stats.isCharacterDevice()) return 'a character device'
  if (stats.isBlockDevice()) return 'a block device'
  if (stats.isFIFO()) return 'a named pipe'
  if (stats.isSocket()) return 'a socket'
  return 'not a regular file'
}

/**
 * Whether a path ends in a separator, `.` or `..`: a folder, whether or not it exists.
 *
 * @example
 * ```ts
 * namesFolder('./data/') // true
 * ```
 */
export function namesFolder(filename: string): boolean {
  const last = filename.split(sep === '\\' ? /[\\/]/ : '/').at(-1)
  return last === '' || last === '.' || last === '..'
}

/**
 * The refusal for a database SQLite could not open or switch to WAL because its folder is not
 * writable by this user (undefined when that is not why): SQLite creates `<file>-wal` and
 * `<file>-shm` beside the file, even to read a WAL database, and said only "unable to open
 * database file" (a new file) or "attempt to write a readonly database" (an existing one).
 */
function unwritableFolder(filename: string, error: unknown): InvalidOptionError | undefined {
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return undefined
  if (!code.startsWith('SQLITE_CANTOPEN') && !code.startsWith('SQLITE_READONLY')) return undefined
  const folder = dirname(resolve(filename))
  try {
    accessSync(folder, constants.W_OK | constants.X_OK)
    return undefined
  } catch (refusal) {
    const name = basename(filename)
    return new InvalidOptionError(
      'filename',
      `a file in a folder this user can write (${folder} is not: ${(refusal as NodeJS.ErrnoException).code}; SQLite creates ${name}-wal and ${name}-shm there, even to read a WAL database)`,
      filename,
    )
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
