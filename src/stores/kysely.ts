import { randomUUID } from 'node:crypto'
import { InvalidOptionError } from '../core/errors.js'
import { LruCache } from './lru.js'
import { bindPositional, toPositional } from './placeholders.js'
import type { SqlDialect, SqlExecutor } from './types.js'

/**
 * The shape of a compiled query Kysely executes (`CompiledQuery.raw(sql, params)`), built here
 * without importing Kysely so breakwater never loads it.
 */
export interface KyselyCompiledQuery {
  /** The SQL text. */
  readonly sql: string
  /** The bound values. */
  readonly parameters: readonly unknown[]
  /** Kysely's operation node: a raw node holding the SQL. */
  readonly query: {
    readonly kind: 'RawNode'
    readonly sqlFragments: readonly string[]
    readonly parameters: readonly never[]
  }
  /** Kysely's query id, read by plugins. */
  readonly queryId: { readonly queryId: string }
}

/** The part of a Kysely `Transaction` breakwater uses. */
export interface KyselyExecutor {
  /** Kysely's `isTransaction`: false on the `Kysely` instance itself, which is refused. */
  readonly isTransaction?: boolean
  /** Kysely's `executeQuery(compiledQuery)`. */
  executeQuery(query: KyselyCompiledQuery): Promise<{
    readonly rows: readonly unknown[]
    readonly numAffectedRows?: bigint | undefined
  }>
}

const translations = new LruCache<string, ReturnType<typeof toPositional>>(500)

/**
 * Wraps a Kysely transaction as a {@link SqlExecutor}, so breakwater's rows commit (or roll
 * back) with the business writes made through Kysely. `dialect` must match the Kysely dialect:
 * `'sqlite'` for `SqliteDialect` (better-sqlite3), `'postgres'` for `PostgresDialect` (pg); a
 * mismatch, or a MySQL or MSSQL transaction, is refused with `INVALID_OPTION` naming `dialect`
 * when Kysely's adapter can be told (it can for Kysely's own dialects and those extending their
 * adapters).
 *
 * The `Kysely` instance itself is refused (`INVALID_OPTION` naming `trx`): through it each
 * statement commits on its own, apart from the business write, as `fromPgClient` and
 * `fromBetterSqlite` refuse a connection outside a transaction.
 *
 * On PostgreSQL, values are parsed by the application's pg pool: BIGINT columns arrive as
 * strings unless that pool parses int8 (breakwater's own executors always return numbers).
 * Breakwater's capabilities read their BIGINT columns through `Number(...)` for this reason.
 *
 * On SQLite, Kysely prepares the statements on the application's better-sqlite3 `Database`:
 * when that has `defaultSafeIntegers(true)`, every integer arrives as a BigInt, and breakwater
 * cannot change it. Use `fromBetterSqlite(database)` (the same `Database`) inside the Kysely
 * transaction instead: it runs on the same connection, in the same transaction, and returns
 * numbers.
 *
 * @example
 * ```ts
 * await kysely.transaction().execute(async (trx) => {
 *   await trx.insertInto('orders').values({ id: 'o1' }).execute()
 *   await outbox.enqueue(fromKysely(trx, 'postgres'), event)
 * })
 * ```
 */
export function fromKysely(trx: KyselyExecutor, dialect: SqlDialect): SqlExecutor {
  if (dialect !== 'sqlite' && dialect !== 'postgres') {
    throw new InvalidOptionError('dialect', 'one of "sqlite", "postgres"', dialect)
  }
  const adapter = kyselyAdapterName(trx)
  const adapterDialect = adapter === undefined ? undefined : kyselyAdapterDialects[adapter]
  if (adapter !== undefined && adapterDialect !== dialect) {
    throw new InvalidOptionError(
      'dialect',
      adapterDialect === undefined
        ? `a Kysely transaction of SQLite or PostgreSQL (this one's adapter is ${adapter}, which breakwater does not speak)`
        : `${JSON.stringify(adapterDialect)}, the dialect of this Kysely transaction (${adapter})`,
      dialect,
    )
  }
  if (trx.isTransaction === false) {
    throw new InvalidOptionError(
      'trx',
      'a Kysely Transaction (the trx of kysely.transaction().execute(...)), not the Kysely instance, whose statements each commit alone',
      trx,
    )
  }
  const run = (sql: string, params: readonly unknown[]) => {
    let text = sql
    let values = params
    if (dialect === 'sqlite') {
      // Kysely's SQLite driver hands the SQL to better-sqlite3 as is, which binds `$n` only by
      // name: translate to positional `?` as breakwater's own SQLite driver does.
      let translated = translations.get(sql)
      if (translated === undefined) {
        translated = toPositional(sql)
        translations.set(sql, translated)
      }
      text = translated.sql
      values = bindPositional(translated, params)
    }
    return trx.executeQuery(compiled(text, values))
  }
  return {
    dialect,
    query: async <R>(sql: string, params: readonly unknown[] = []) =>
      (await run(sql, params)).rows as R[],
    execute: async (sql: string, params: readonly unknown[] = []) => {
      const result = await run(sql, params)
      // Kysely's SQLite driver reports no count for a statement that returns rows (INSERT,
      // UPDATE or DELETE ... RETURNING): then each row it returned is one it changed.
      return { rowCount: Number(result.numAffectedRows ?? result.rows.length) }
    },
  }
}

/** Kysely's own dialect adapters, by class name, and the dialect breakwater speaks to each. */
const kyselyAdapterDialects: Readonly<Record<string, SqlDialect | undefined>> = {
  SqliteAdapter: 'sqlite',
  PostgresAdapter: 'postgres',
  MysqlAdapter: undefined,
  MssqlAdapter: undefined,
}

/**
 * The name of the Kysely dialect adapter behind `trx` (the nearest of Kysely's own in its class
 * chain, so a third-party dialect extending `PostgresAdapter` counts as PostgreSQL), or
 * undefined when it cannot be told. Best effort, on purpose: `getExecutor()` is marked internal
 * in Kysely, and a bundler may rename classes, so anything unexpected skips the check rather
 * than refuse a working transaction. Told, a mismatch is refused at once instead of failing
 * later with a syntax error that does not name it.
 */
function kyselyAdapterName(trx: KyselyExecutor): string | undefined {
  try {
    const executor = (trx as { getExecutor?: () => { adapter?: unknown } }).getExecutor?.()
    let proto: unknown =
      executor?.adapter === undefined ? undefined : Object.getPrototypeOf(executor.adapter)
    while (proto !== null && proto !== undefined && proto !== Object.prototype) {
      const name = (proto as { constructor?: { name?: unknown } }).constructor?.name
      if (typeof name === 'string' && Object.hasOwn(kyselyAdapterDialects, name)) return name
      proto = Object.getPrototypeOf(proto)
    }
  } catch {
    // Not Kysely's shape: nothing to tell.
  }
  return undefined
}

function compiled(sql: string, parameters: readonly unknown[]): KyselyCompiledQuery {
  return Object.freeze({
    sql,
    parameters: Object.freeze([...parameters]),
    query: Object.freeze({
      kind: 'RawNode' as const,
      sqlFragments: Object.freeze([sql]),
      parameters: Object.freeze([]),
    }),
    queryId: Object.freeze({ queryId: randomUUID() }),
  })
}
