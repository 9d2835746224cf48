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

/**
 * Rows of `table` PostgreSQL looks at to run `statement` on the database at `url`, in a
 * transaction rolled back afterwards (a DELETE deletes nothing). The breakwater driver prepares
 * its statements, and PostgreSQL may switch a prepared statement to a generic plan (one made
 * without the parameters' values) after a few runs: `plan` says which one to measure.
 */
export async function postgresRowsExamined(
  url: string,
  statement: SentStatement,
  table: string,
  plan: 'custom' | 'generic',
): Promise<number> {
  const pg = (await import('pg')).default
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query(`SET LOCAL plan_cache_mode = force_${plan}_plan`)
    await client.query(`PREPARE measured AS ${statement.sql}`)
    // EXECUTE takes its arguments as literals, not bound parameters; the types are the ones
    // PREPARE inferred, as for the driver's own prepared statement.
    const args = statement.params.map((value) => literal(client, value)).join(', ')
    const { rows } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE measured${args === '' ? '' : `(${args})`}`,
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

/** The lines (`detail`) of SQLite's `EXPLAIN QUERY PLAN` for `statement`, its parameters bound. */
export async function sqlitePlan(db: SqlExecutor, statement: SentStatement): Promise<string[]> {
  const rows = await db.query<{ detail: string }>(
    `EXPLAIN QUERY PLAN ${statement.sql}`,
    statement.params,
  )
  return rows.map((row) => row.detail)
}
