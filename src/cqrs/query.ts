import { InvalidOptionError } from '../core/errors.js'
import { checkFunction, checkInteger, checkObject, optionKeys } from '../core/validate.js'
import type { SqlDialect, SqlExecutor, SqlTransaction } from '../stores/index.js'
import { checkOptionKeys } from './checks.js'
import type { Projector } from './projector.js'

/**
 * What a query handler reads through: SELECT (or WITH ... SELECT) statements over read-model
 * tables. Statements that write (also `SELECT ... INTO`), that name the event store's own
 * `breakwater_` tables, or that are followed by another statement are refused, which keeps
 * queries on the query side of CQRS. Words inside string literals, quoted identifiers and
 * comments are not taken for statements (`WHERE kind = 'profile-update'`).
 *
 * On PostgreSQL, when the handler's `db` can open transactions (a breakwater driver, or a `tx`,
 * where the query runs in a savepoint), each statement also runs in a `READ ONLY` transaction:
 * writes to tables and sequences the text cannot show (`nextval`, `SELECT ... FOR SHARE`, a SQL
 * function that inserts) are refused by the server, with the same `INVALID_OPTION` error
 * (`cause`: the server's error). What a read-only transaction allows is refused by name:
 * session-level advisory locks and `set_config` (they would outlive the query on a pooled
 * connection), large objects (`lo_create`, `lo_import`, ...), `pg_notify`, `pg_stat_reset*`
 * and other server effects, and functions that run SQL given as text (`query_to_xml` and the
 * other `*_to_xml`, `ts_stat`, `dblink`). Not every such function: see docs/cqrs.md.
 */
export interface ReadModelReader {
  /** The database dialect. */
  readonly dialect: SqlDialect
  /** Runs one read-only statement and returns its rows. */
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]>
}

/** Options of {@link createQueryHandler}. */
export interface QueryHandlerOptions<P, R> {
  /** Where the read models live (the event store's `db`, or a read replica's executor). */
  readonly db: SqlExecutor
  /**
   * The projectors of the read models this query reads, for `atLeastPosition` waits. Without
   * any, a query given `atLeastPosition` is refused with `InvalidOptionError`.
   * @default []
   */
  readonly projectors?: readonly Projector[] | undefined
  /** Runs the query. */
  readonly run: (reader: ReadModelReader, params: P) => Promise<R>
}

/** Per-call options of a query handler. */
export interface QueryOptions {
  /**
   * Read-your-writes: wait until every projector of the query has applied this global
   * position (e.g. a command's `lastPosition`) before running the query.
   * @default no wait
   */
  readonly atLeastPosition?: number | undefined
  /**
   * How long to wait for `atLeastPosition` before failing with `TimeoutError`: an integer >= 0,
   * or `Infinity` for no timeout (as `Projector.waitFor` takes it).
   * @default 5000
   */
  readonly timeoutMs?: number | undefined
  /** Aborts the wait. */
  readonly signal?: AbortSignal | undefined
}

/** A query: params in, result out, read models only. */
export type QueryHandler<P, R> = (params: P, options?: QueryOptions) => Promise<R>

const handlerOptions = optionKeys<QueryHandlerOptions<unknown, unknown>>({
  db: true,
  projectors: true,
  run: true,
})
const queryOptions = optionKeys<QueryOptions>({
  atLeastPosition: true,
  timeoutMs: true,
  signal: true,
})

const readOnly = /^\s*(select|with)\b/i
// INTO: PostgreSQL's SELECT ... INTO creates a table.
const writes = /\b(insert|into|update|delete|merge|create|drop|alter|truncate|grant|revoke)\b/i
// A second statement (PostgreSQL runs all of a parameterless query) could be anything: SET,
// LOCK, NOTIFY, CALL, DO.
const secondStatement = /;\s*\S/
const storeTables = /\bbreakwater_/i
/**
 * PostgreSQL functions refused by name: a READ ONLY transaction allows them (checked on
 * PostgreSQL 15), but their effect outlives the query or reaches past the read models. Not every
 * such function: the database role the queries run as is the boundary (see docs/cqrs.md).
 */
const refusedFunctions = [
  // Effects that outlive the query on the (pooled) session: session-level advisory locks and
  // unlocks, and settings (set_config's is_local argument is not visible to a text check, so
  // all of set_config is refused). The transaction-scoped pg_advisory_xact_lock* end with the
  // query and stay allowed.
  'pg_(?:try_)?advisory_(?:lock|unlock)(?:_shared|_all)?',
  'set_config',
  // Large objects: created, written and unlinked in a read-only transaction, committed with
  // the query; lo_import and lo_export also read and write the server's files.
  'lo_(?:creat|create|from_bytea|import|export|unlink|put|open|truncate|truncate64)',
  'lowrite',
  // Effects outside the database's tables: NOTIFY, statistics, the server's processes, WAL and
  // configuration, replication, and its files.
  'pg_notify',
  'pg_stat_reset\\w*',
  'pg_stat_statements_reset',
  'pg_(?:cancel|terminate)_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_switch_wal',
  'pg_create_restore_point',
  'pg_logical_emit_message',
  'pg_(?:create|drop|copy)_(?:physical_|logical_)?replication_slot',
  'pg_replication_origin_\\w+',
  'pg_read_(?:binary_)?file',
  'pg_file_\\w+',
  // SQL given as text, which the text check cannot judge: query_to_xml('select * from
  // breakwater_events', ...) read the event log; table_to_xml('breakwater_events', ...) and
  // schema_to_xml / database_to_xml read it by name; dblink runs anything on a connection of
  // its own, outside the read-only transaction.
  '(?:query|table|schema|database|cursor)_to_xml(?:schema|_and_xmlschema)?',
  'ts_stat',
  'ts_rewrite',
  'dblink\\w*',
].join('|')
// A refused function called by its name (also schema-qualified: pg_catalog.lo_create).
const refusedCall = new RegExp(`\\b(?:${refusedFunctions})\\b`, 'i')
// One written as a quoted identifier ("lo_create", U&"lo\005fcreate").
const refusedName = new RegExp(`^(?:${refusedFunctions})$`, 'i')

/** What a statement is made of, apart from its literals and comments. */
interface Scanned {
  /** The statement with string literals, quoted identifiers and comments blanked out. */
  readonly code: string
  /** The names written as quoted identifiers. */
  readonly quoted: readonly string[]
}

const identifierChar = /[A-Za-z0-9_$]/
const dollarTag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/

/**
 * Splits a statement into its code and its quoted identifiers, dropping string literals
 * (PostgreSQL: also E'...' and $tag$...$tag$) and comments, so that the checks below judge the
 * statement and not words in its data. Undefined when a literal or comment is not closed.
 */
function scan(sql: string, dialect: SqlDialect): Scanned | undefined {
  const postgres = dialect === 'postgres'
  const quoted: string[] = []
  let code = ''
  let i = 0
  while (i < sql.length) {
    const c = sql[i]!
    const next = sql[i + 1]
    if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i)
      if (end < 0) break
      code += ' '
      i = end
    } else if (c === '/' && next === '*') {
      let depth = 1
      let j = i + 2
      while (j < sql.length && depth > 0) {
        if (sql[j] === '*' && sql[j + 1] === '/') {
          depth--
          j += 2
        } else if (postgres && sql[j] === '/' && sql[j + 1] === '*') {
          depth++
          j += 2
        } else j++
      }
      if (depth > 0) return undefined
      code += ' '
      i = j
    } else if (c === "'") {
      // PostgreSQL's E'...' takes backslash escapes; elsewhere a backslash is a character.
      const escapes =
        postgres && /[eE]/.test(sql[i - 1] ?? '') && !identifierChar.test(sql[i - 2] ?? '')
      let j = i + 1
      for (;;) {
        if (j >= sql.length) return undefined
        if (escapes && sql[j] === '\\') j += 2
        else if (sql[j] === "'" && sql[j + 1] === "'") j += 2
        else if (sql[j] === "'") break
        else j++
      }
      // SQLite takes a string literal where only a table name can stand (FROM 'events') as that
      // name: there it is a name, and judged as one.
      if (!postgres && isTableNamePosition(code))
        quoted.push(sql.slice(i + 1, j).replace(/''/g, "'"))
      code += ' '
      i = j + 1
    } else if (c === '"' || (!postgres && (c === '`' || c === '['))) {
      const close = c === '[' ? ']' : c
      let name = ''
      let j = i + 1
      for (;;) {
        if (j >= sql.length) return undefined
        if (sql[j] === close && close !== ']' && sql[j + 1] === close) {
          name += close
          j += 2
        } else if (sql[j] === close) break
        else name += sql[j++]
      }
      // PostgreSQL's U&"..." spells the name with escapes (\XXXX, \+XXXXXX, or another
      // escape character given by a UESCAPE clause after it): judge the name it stands for.
      quoted.push(postgres && /u&$/i.test(code) ? unicodeName(name, sql.slice(j + 1)) : name)
      code += ' q '
      i = j + 1
    } else if (postgres && c === '$' && !identifierChar.test(sql[i - 1] ?? '')) {
      const tag = dollarTag.exec(sql.slice(i))?.[0]
      if (tag === undefined) {
        code += c
        i++
        continue
      }
      const end = sql.indexOf(tag, i + tag.length)
      if (end < 0) return undefined
      code += ' '
      i = end + tag.length
    } else {
      code += c
      i++
    }
  }
  return { code, quoted }
}

// The code before a SQLite string literal that can only be a table name: FROM, JOIN, a schema's
// dot, or a comma of a FROM list (the code since the last FROM holds no parenthesis and no
// keyword of a later clause, so `IN ('a', 'b')` and select lists stay data).
const tableNameBefore = /(?:\bfrom|\bjoin|\.)\s*$/i
const fromListComma =
  /\bfrom\b(?![\s\S]*\b(?:from|where|on|using|group|order|having|limit|window|select|union|intersect|except|values)\b)[^()]*,\s*$/i

function isTableNamePosition(code: string): boolean {
  return tableNameBefore.test(code) || fromListComma.test(code)
}

/**
 * The name a PostgreSQL `U&"..."` identifier stands for: its escapes (`\XXXX`, `\+XXXXXX`,
 * the escape character doubled) decoded, with the escape character of a `UESCAPE 'c'` clause
 * in `rest` (the text after the identifier) when there is one.
 */
function unicodeName(name: string, rest: string): string {
  const marker = /^\s*uescape\s*'(.)'/i.exec(rest)?.[1] ?? '\\'
  let decoded = ''
  for (let k = 0; k < name.length; k++) {
    const c = name[k]!
    if (c !== marker) {
      decoded += c
      continue
    }
    if (name[k + 1] === marker) {
      decoded += marker
      k++
      continue
    }
    const long = name[k + 1] === '+'
    const hex = long ? name.slice(k + 2, k + 8) : name.slice(k + 1, k + 5)
    if (!/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== (long ? 6 : 4)) {
      decoded += c
      continue
    }
    decoded += String.fromCodePoint(Math.min(Number.parseInt(hex, 16), 0x10ffff))
    k += long ? 7 : 4
  }
  return decoded
}

/** Whether `sql` is one read-only statement over read models. */
function isReadModelQuery(sql: unknown, dialect: SqlDialect): boolean {
  if (typeof sql !== 'string') return false
  const scanned = scan(sql, dialect)
  return (
    scanned !== undefined &&
    readOnly.test(scanned.code) &&
    !secondStatement.test(scanned.code) &&
    !writes.test(scanned.code) &&
    !refusedCall.test(scanned.code) &&
    !storeTables.test(scanned.code) &&
    !scanned.quoted.some((name) => /^breakwater_/i.test(name) || refusedName.test(name))
  )
}

const refused = 'a SELECT over read models (one statement, no writes, no breakwater_ tables)'

// SQLSTATE read_only_sql_transaction: the server refused a write in a READ ONLY transaction.
const readOnlyViolation = '25006'

/** Carries a savepoint's rows out through the throw that rolls the savepoint back. */
class RolledBack<R> {
  constructor(readonly rows: R[]) {}
}

/**
 * Runs `sql` in a READ ONLY transaction of `db` (PostgreSQL only). On a breakwater driver the
 * statement and its COMMIT follow BEGIN and `SET TRANSACTION READ ONLY` in one round trip
 * (pipelined); on a `tx` it runs in a savepoint that is always rolled back, because a
 * released savepoint would leave the caller's whole transaction read-only.
 */
async function readOnlyQuery<R>(
  db: SqlExecutor & Pick<SqlTransaction, 'transaction'>,
  sql: string,
  params: readonly unknown[] | undefined,
): Promise<R[]> {
  try {
    return await db.transaction(async (tx) => {
      const readOnly = tx.execute('SET TRANSACTION READ ONLY')
      if (tx.finish !== undefined) {
        // Sent before the statement is answered: both go out with BEGIN. Should SET fail, the
        // statement fails behind it and Promise.all reports SET's error, the first to settle.
        const [, done] = await Promise.all([readOnly, tx.finish<R>(sql, params)])
        return done.rows
      }
      await readOnly
      throw new RolledBack(await tx.query<R>(sql, params))
    })
  } catch (error) {
    if (error instanceof RolledBack) return error.rows as R[]
    if ((error as { code?: unknown } | null)?.code === readOnlyViolation) {
      const invalid = new InvalidOptionError(
        'sql',
        `${refused}; the server refused it in a read-only transaction (${(error as Error).message})`,
        sql,
      )
      Object.defineProperty(invalid, 'cause', { value: error, configurable: true, writable: true })
      throw invalid
    }
    throw error
  }
}

function readerOf(db: SqlExecutor): ReadModelReader {
  // A plain executor (fromPgClient, a Kysely wrapper) cannot open a transaction of its own, and
  // on SQLite no statement that passes the text check writes the database (see docs/cqrs.md).
  const transactional =
    db.dialect === 'postgres' &&
    typeof (db as Partial<Pick<SqlTransaction, 'transaction'>>).transaction === 'function'
  return {
    dialect: db.dialect,
    query<R>(sql: string, params?: readonly unknown[]): Promise<R[]> {
      if (!isReadModelQuery(sql, db.dialect)) {
        return Promise.reject(new InvalidOptionError('sql', refused, sql))
      }
      return transactional
        ? readOnlyQuery<R>(db as SqlExecutor & Pick<SqlTransaction, 'transaction'>, sql, params)
        : db.query<R>(sql, params)
    },
  }
}

/**
 * Creates a query handler over read models. With `atLeastPosition` it first waits for the
 * given projectors (read-your-writes after a command; refused with `InvalidOptionError` when
 * it was given none). An unknown (misspelt) option, here or
 * in a query's options, is refused with `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const orderHistory = createQueryHandler({
 *   db: store.db,
 *   projectors: [historyProjector],
 *   run: (rm, customerId: string) =>
 *     rm.query('SELECT * FROM order_history WHERE customer_id = $1', [customerId]),
 * })
 * const { lastPosition } = await orders.handle('order-7', placeOrder)
 * const rows = await orderHistory('c-1', { atLeastPosition: lastPosition })
 * ```
 */
export function createQueryHandler<P, R>(options: QueryHandlerOptions<P, R>): QueryHandler<P, R> {
  checkObject('options', options)
  // A misspelt option (`projector`) was dropped: a read-your-writes query waited for nothing.
  checkOptionKeys('options', options, handlerOptions)
  const db = checkObject('db', options.db) as unknown as SqlExecutor
  checkFunction('db.query', db.query)
  const run = checkFunction<(reader: ReadModelReader, params: P) => Promise<R>>('run', options.run)
  const projectors = options.projectors ?? []
  if (!Array.isArray(projectors)) {
    throw new InvalidOptionError('projectors', 'an array of projectors', projectors)
  }
  projectors.forEach((projector: unknown, i) => {
    const p = checkObject(`projectors[${i}]`, projector)
    if (typeof p.waitFor !== 'function') {
      throw new InvalidOptionError(`projectors[${i}]`, 'a projector (createProjector)', projector)
    }
  })
  const reader = readerOf(db)
  return async (params, callOptions = {}) => {
    // A bare position (query(params, lastPosition)) would otherwise be ignored: the query would
    // run at once, without the read-your-writes wait it asked for.
    checkObject('options', callOptions)
    checkOptionKeys('options', callOptions, queryOptions)
    if (callOptions.atLeastPosition !== undefined) {
      const position = checkInteger('atLeastPosition', callOptions.atLeastPosition, 0)
      // Read-your-writes asked of a handler with nothing to wait for: the query would run at
      // once and could miss the caller's write, while the caller believed it waited.
      if (projectors.length === 0) {
        throw new InvalidOptionError(
          'atLeastPosition',
          'no position: this query handler has no projectors to wait for (give createQueryHandler the projectors of the read models it reads)',
          position,
        )
      }
      const wait = {
        timeoutMs: callOptions.timeoutMs ?? 5000,
        ...(callOptions.signal === undefined ? {} : { signal: callOptions.signal }),
      }
      await Promise.all(projectors.map((projector) => projector.waitFor(position, wait)))
    }
    return run(reader, params)
  }
}
