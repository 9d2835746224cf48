// What a statement costs, read from the plan the database ran (rows PostgreSQL looked at, the
// shape of SQLite's plan) rather than from the clock: a scan that grows with the table shows up
// in a small test table as clearly as in a large one, and no time threshold is involved.
import type { SqlExecutor, SqlTransaction } from '../../src/stores/index.js'

/** A node of PostgreSQL's `EXPLAIN (ANALYZE, FORMAT JSON)` plan, as far as these tests read it. */
export interface PlanNode {
  readonly 'Relation Name'?: string
  readonly 'Actual Rows'?: number
  readonly 'Actual Loops'?: number
  readonly 'Rows Removed by Filter'?: number
  readonly 'Rows Removed by Index Recheck'?: number
  readonly Plans?: readonly PlanNode[]
}

/** Rows of `table` the plan's scans produced or removed, over all their loops. */
export function rowsExamined(node: PlanNode, table: string): number {
  let examined = 0
  if (node['Relation Name'] === table) {
    const loops = node['Actual Loops'] ?? 1
    examined +=
      ((node['Actual Rows'] ?? 0) +
        (node['Rows Removed by Filter'] ?? 0) +
        (node['Rows Removed by Index Recheck'] ?? 0)) *
      loops
  }
  for (const child of node.Plans ?? []) examined += rowsExamined(child, table)
  return examined
}

/** A statement as a caller sent it. */
export interface SentStatement {
  readonly sql: string
  readonly params: readonly unknown[]
}

/**
 * `executor` as a library function sees it, every statement it sends (`query`, `execute`,
 * `finish`, in its transactions too) appended to `sent` and then run on the real database.
 */
export function recordingStatements<E extends SqlExecutor>(executor: E, sent: SentStatement[]): E {
  return new Proxy(executor, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target)
      if (typeof value !== 'function') return value
      if (prop === 'query' || prop === 'execute' || prop === 'finish') {
        return (sql: string, params: readonly unknown[] = []) => {
          sent.push({ sql, params })
          return (value as (s: string, p: readonly unknown[]) => unknown).call(target, sql, params)
        }
      }
      if (prop === 'transaction') {
        return <T>(fn: (tx: SqlTransaction) => Promise<T>) =>
          (value as (f: (tx: SqlTransaction) => Promise<T>) => Promise<T>).call(target, (tx) =>
            fn(recordingStatements(tx, sent)),
          )
      }
      return value.bind(target)
    },
  })
}

/** The statements `call` sends through `executor`, recorded as it runs them on the real database. */
export async function statementsSentBy<E extends SqlExecutor>(
  executor: E,
  call: (db: E) => Promise<unknown>,
): Promise<SentStatement[]> {
  const sent: SentStatement[] = []
  await call(recordingStatements(executor, sent))
  return sent
}

/**
 * Rows of `table` PostgreSQL looks at to run `statement` on the database at `url`, in a
 * transaction rolled back afterwards (a DELETE deletes nothing). The breakwater driver prepares
 * its statements, and from a prepared statement's sixth run PostgreSQL may plan it once for
 * every value (a generic plan) if that looks no dearer than planning each run: `plan` says
 * which run to measure, the first (`custom`) or one after five runs (`cached`, whichever plan
 * PostgreSQL chose by then; the runs change what they change, rolled back with the rest).
 */
export async function postgresRowsExamined(
  url: string,
  statement: SentStatement,
  table: string,
  plan: 'custom' | 'cached',
): Promise<number> {
  const pg = (await import('pg')).default
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query(`PREPARE measured AS ${statement.sql}`)
    // EXECUTE takes its arguments as literals, not bound parameters; the types are the ones
    // PREPARE inferred, as for the driver's own prepared statement.
    const args = statement.params.map((value) => literal(client, value)).join(', ')
    const execute = `EXECUTE measured${args === '' ? '' : `(${args})`}`
    if (plan === 'cached') for (let run = 0; run < 5; run++) await client.query(execute)
    const { rows } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${execute}`,
    )
    const root = rows[0]?.['QUERY PLAN'][0]?.Plan
    if (root === undefined) throw new Error('no plan')
    return rowsExamined(root, table)
  } finally {
    await client.query('ROLLBACK').catch(() => {})
    await client.end()
  }
}

/** `value` as an untyped PostgreSQL literal: NULL, a number, a string or an array of them. */
function literal(client: { escapeLiteral(text: string): string }, value: unknown): string {
  if (value === null || value === undefined) return 'NULL'
  if (typeof value === 'number' || typeof value === 'bigint') return String(value)
  if (Array.isArray(value)) {
    const items = value.map((item) =>
      item === null ? 'NULL' : `"${String(item).replace(/["\\]/g, '\\$&')}"`,
    )
    return client.escapeLiteral(`{${items.join(',')}}`)
  }
  return client.escapeLiteral(String(value))
}

/** A line of SQLite's `EXPLAIN QUERY PLAN`. */
export interface SqlitePlanLine {
  readonly id: number
  readonly parent: number
  readonly detail: string
}

/** SQLite's `EXPLAIN QUERY PLAN` for `statement`, its parameters bound. */
export function sqlitePlan(db: SqlExecutor, statement: SentStatement): Promise<SqlitePlanLine[]> {
  return db.query<SqlitePlanLine>(`EXPLAIN QUERY PLAN ${statement.sql}`, statement.params)
}

/**
 * The lines of `plan` that read every row of `table` or sort what a read of it found: a full
 * scan (not one of an index read in order), or a sort of the whole result (`TEMP B-TREE FOR
 * ORDER BY`) beside a read of the table. A sort of a subquery's rows (bounded by its own
 * LIMIT) or of the rest of an order an index gives in part (`RIGHT PART OF ORDER BY`) is not.
 */
export function sqliteUnboundedReads(plan: readonly SqlitePlanLine[], table: string): string[] {
  const reads = new RegExp(`^(SCAN|SEARCH) ${table}\\b`)
  return plan
    .filter(
      (line) =>
        line.detail === `SCAN ${table}` ||
        (line.detail === 'USE TEMP B-TREE FOR ORDER BY' &&
          plan.some((other) => other.parent === line.parent && reads.test(other.detail))),
    )
    .map((line) => line.detail)
}
