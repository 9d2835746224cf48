// Leases and delays written to the database (a saga's lease, a relay's partitions and
// heartbeat, a queue delivery's visibility) must run from when their statement runs. A time read
// before the call is taken off by whatever the statement waits for first: SQLite's one writer,
// a PostgreSQL pool connection. After a long enough wait the lease is written already over, and
// another worker, relay or consumer takes it at once. These helpers read the clock once the
// transaction has begun, after those waits.
//
// Whether someone else's lease has run out is judged the other way, as of when the call was
// made (`asked`): a lease that ran out during the wait may only have gone unrenewed because its
// owner's renewal was queued behind the same writer or pool, and taking it then would run its
// work twice at once. An owner that did die loses it at the next call instead.
import { type Clock, storedTime } from '../core/clock.js'
import type { SqlDriver, SqlTransaction } from './types.js'

/**
 * Runs `fn` in a transaction of `db`, given `now`, the time on `clock` (as stored: whole
 * milliseconds) read once the transaction has begun: on both dialects the wait for SQLite's one
 * writer or for a PostgreSQL pool connection comes before it, so a lease measured from it runs
 * from when its statements run. (Waits inside the server, such as row locks, still come after.)
 * `asked` is the time read when this was called, before those waits (never after `now`): judge
 * whether another holder's lease has run out as of it, not as of `now`, since a lease that ran
 * out during the wait may only have gone unrenewed because its renewal queued behind the same
 * writer or pool.
 *
 * On PostgreSQL BEGIN is pipelined with the first statement; COMMIT costs a round trip unless
 * the last statement goes with it ({@link measuredQuery}, {@link measuredExecute}).
 *
 * @example
 * ```ts
 * await measuredOnceBegun(db, clock, async (tx, now) => {
 *   await tx.execute('UPDATE jobs SET lease_end = $1 WHERE id = $2', [now + 30_000, id])
 * })
 * ```
 */
export function measuredOnceBegun<T>(
  db: SqlDriver,
  clock: Pick<Clock, 'now'>,
  fn: (tx: SqlTransaction, now: number, asked: number) => Promise<T>,
): Promise<T> {
  const asked = storedTime(clock)
  return db.transaction((tx) => {
    const now = storedTime(clock)
    return fn(tx, now, Math.min(asked, now))
  })
}

/** One statement, built from the time it runs at. */
export interface MeasuredStatement {
  readonly sql: string
  readonly params: readonly unknown[]
}

/**
 * Runs the one statement `build(now, asked)` gives (the times of {@link measuredOnceBegun}), and
 * resolves to its rows. The statement commits with the transaction (`finish`): on PostgreSQL
 * BEGIN, the statement and COMMIT travel together, the one round trip of the statement alone.
 *
 * @example
 * ```ts
 * const rows = await measuredQuery<{ id: string }>(db, clock, (now, asked) => ({
 *   sql: 'UPDATE jobs SET lease_end = $1 WHERE lease_end <= $2 RETURNING id',
 *   params: [now + 30_000, asked],
 * }))
 * ```
 */
export function measuredQuery<R = Record<string, unknown>>(
  db: SqlDriver,
  clock: Pick<Clock, 'now'>,
  build: (now: number, asked: number) => MeasuredStatement,
): Promise<R[]> {
  return measuredOnceBegun(db, clock, (tx, now, asked) => {
    const { sql, params } = build(now, asked)
    return queryLast<R>(tx, sql, params)
  })
}

/**
 * As {@link measuredQuery}, resolving to the number of rows the statement changed.
 *
 * @example
 * ```ts
 * const renewed = await measuredExecute(db, clock, (now) => ({
 *   sql: 'UPDATE jobs SET lease_end = $1 WHERE id = $2',
 *   params: [now + 30_000, id],
 * }))
 * ```
 */
export function measuredExecute(
  db: SqlDriver,
  clock: Pick<Clock, 'now'>,
  build: (now: number, asked: number) => MeasuredStatement,
): Promise<number> {
  return measuredOnceBegun(db, clock, (tx, now, asked) => {
    const { sql, params } = build(now, asked)
    return executeLast(tx, sql, params)
  })
}

/**
 * Runs `sql` as the last statement of `tx` and resolves to the number of rows it changed,
 * committing with it where the driver can, as {@link queryLast} does for rows.
 */
export async function executeLast(
  tx: SqlTransaction,
  sql: string,
  params: readonly unknown[],
): Promise<number> {
  return tx.finish === undefined
    ? (await tx.execute(sql, params)).rowCount
    : (await tx.finish(sql, params)).rowCount
}

/**
 * Runs `sql` as the last statement of `tx` and resolves to its rows, committing with it where
 * the driver can (`finish`: on PostgreSQL the statement and COMMIT travel together, saving the
 * COMMIT's round trip); otherwise as a plain statement, the transaction committing after.
 *
 * @example
 * ```ts
 * await db.transaction(async (tx) => {
 *   await tx.execute('DELETE FROM jobs WHERE done')
 *   return queryLast<{ id: string }>(tx, 'SELECT id FROM jobs', [])
 * })
 * ```
 */
export async function queryLast<R = Record<string, unknown>>(
  tx: SqlTransaction,
  sql: string,
  params: readonly unknown[],
): Promise<R[]> {
  return tx.finish === undefined ? tx.query<R>(sql, params) : (await tx.finish<R>(sql, params)).rows
}
