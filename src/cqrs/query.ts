import { InvalidOptionError } from '../core/errors.js'
import { checkFunction, checkInteger, checkObject } from '../core/validate.js'
import type { SqlDialect, SqlExecutor } from '../stores/index.js'
import type { Projector } from './projector.js'

/**
 * What a query handler reads through: SELECT (or WITH ... SELECT) statements over read-model
 * tables. Statements that write, or that name the event store's own `breakwater_` tables, are
 * refused, which keeps queries on the query side of CQRS.
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
   * The projectors of the read models this query reads, for `atLeastPosition` waits.
   * @default []
   */
  readonly projectors?: readonly Projector[]
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
  readonly atLeastPosition?: number
  /**
   * How long to wait for `atLeastPosition` before failing with `TimeoutError`.
   * @default 5000
   */
  readonly timeoutMs?: number
  /** Aborts the wait. */
  readonly signal?: AbortSignal
}

/** A query: params in, result out, read models only. */
export type QueryHandler<P, R> = (params: P, options?: QueryOptions) => Promise<R>

const readOnly = /^\s*(select|with)\b/i
const writes = /\b(insert|update|delete|merge|create|drop|alter|truncate|grant|revoke)\b/i
const storeTables = /\bbreakwater_/i

function readerOf(db: SqlExecutor): ReadModelReader {
  return {
    dialect: db.dialect,
    query<R>(sql: string, params?: readonly unknown[]): Promise<R[]> {
      if (
        typeof sql !== 'string' ||
        !readOnly.test(sql) ||
        writes.test(sql) ||
        storeTables.test(sql)
      ) {
        return Promise.reject(
          new InvalidOptionError(
            'sql',
            'a SELECT over read models (no writes, no breakwater_ tables)',
            sql,
          ),
        )
      }
      return db.query<R>(sql, params)
    },
  }
}

/**
 * Creates a query handler over read models. With `atLeastPosition` it first waits for the
 * given projectors (read-your-writes after a command).
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
  const db = checkObject('db', options.db) as unknown as SqlExecutor
  checkFunction('db.query', db.query)
  const run = checkFunction<(reader: ReadModelReader, params: P) => Promise<R>>('run', options.run)
  const projectors = options.projectors ?? []
  if (!Array.isArray(projectors)) {
    throw new InvalidOptionError('projectors', 'an array of projectors', projectors)
  }
  const reader = readerOf(db)
  return async (params, callOptions = {}) => {
    if (callOptions.atLeastPosition !== undefined) {
      const position = checkInteger('atLeastPosition', callOptions.atLeastPosition, 0)
      const wait = {
        timeoutMs: callOptions.timeoutMs ?? 5000,
        ...(callOptions.signal === undefined ? {} : { signal: callOptions.signal }),
      }
      await Promise.all(projectors.map((projector) => projector.waitFor(position, wait)))
    }
    return run(reader, params)
  }
}
