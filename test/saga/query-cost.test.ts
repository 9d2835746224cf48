// The admin statements' cost against a table of many finished instances, read from the plans the
// databases ran (rows PostgreSQL looked at, the shape of SQLite's plan), never from the clock.
// pruneSagas asked for several statuses at once (its default), and no index reads
// `status IN (...) ORDER BY created_at` in order: each batch read and sorted every instance old
// enough, 1.1 s per 1,000-row batch at a million on PostgreSQL (an external sort), tens of
// minutes to clear them. listSagas filtered with `($1 IS NULL OR status = $1) AND ...`, one
// statement for every filter, and no index gave its newest-first order: it read and sorted the
// whole table (0.95 s on PostgreSQL, 2.1 s on SQLite at a million instances, for 20 lines).
// Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listSagas, pruneSagas } from '../../src/saga/index.js'
import { sagaTable } from '../../src/saga/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  postgresRowsExamined,
  type SentStatement,
  sqlitePlan,
  sqliteUnboundedReads,
  statementsSentBy,
} from '../support/query-plan.js'
import { dbTargets, type TestDb } from './databases.js'

// Enough rows that reading them all is told apart from reading a batch by a wide margin.
const instances = 6_000
const batchSize = 100
const base = 1_000_000_000_000

describe.each(dbTargets)('saga admin statements on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_query_cost')
    // Finished instances in turn of each status and of two names, oldest first, and a few
    // running ones.
    await t.db.execute(`INSERT INTO ${sagaTable} (id, name, version, definition, status, input,
        context, steps, step_index, attempt, next_run_at, lease_token, created_at, updated_at,
        finished_at)
      WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ${instances})
      SELECT 's-' || i, CASE i % 2 WHEN 0 THEN 'order' ELSE 'refund' END, 1, 'order@1',
        CASE i % 3 WHEN 0 THEN 'completed' WHEN 1 THEN 'compensated' ELSE 'cancelled' END,
        '{}', '{}', '[]', 1, 1, ${base} + i, 1, ${base} + i, ${base} + i + 10, ${base} + i + 10
      FROM g`)
    await t.db.execute(`INSERT INTO ${sagaTable} (id, name, version, definition, status, input,
        context, steps, step_index, attempt, next_run_at, lease_token, created_at, updated_at)
      WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 20)
      SELECT 'r-' || i, 'order', 1, 'order@1', 'running', '{}', '{}', '[]', 0, 1,
        ${2 * base} + i, 1, ${2 * base} + i, ${2 * base} + i
      FROM g`)
    // The newest ones created in the same millisecond, in several statuses: listed by id.
    for (const [id, status] of [
      ['t-c', 'failed'],
      ['t-a', 'running'],
      ['t-b', 'compensating'],
    ])
      await t.db.execute(
        `INSERT INTO ${sagaTable} (id, name, version, definition, status, input, context, steps,
          step_index, attempt, next_run_at, lease_token, created_at, updated_at)
        VALUES ($1, 'order', 1, 'order@1', $2, '{}', '{}', '[]', 0, 1, $3, 1, $3, $3)`,
        [id, status, 3 * base],
      )
    await t.db.execute('ANALYZE')
  })
  afterAll(async () => {
    await t?.close()
  })

  const sentBy = (call: (db: typeof t.db) => Promise<unknown>): Promise<SentStatement[]> =>
    statementsSentBy(t.db, call)

  /** How each statement reads the saga table: rows examined (PostgreSQL), plan lines (SQLite). */
  async function expectBounded(sent: readonly SentStatement[], most: number): Promise<void> {
    expect(sent.length).toBeGreaterThan(0)
    for (const statement of sent) {
      if (target.dialect === 'postgres') {
        for (const plan of ['custom', 'cached'] as const) {
          const examined = await postgresRowsExamined(t.url, statement, sagaTable, plan)
          expect(examined, `${plan} plan of ${statement.sql}`).toBeLessThanOrEqual(most)
        }
      } else {
        const plan = await sqlitePlan(t.db, statement)
        expect(
          sqliteUnboundedReads(plan, sagaTable),
          `plan of ${statement.sql}: ${plan.map((line) => line.detail).join('; ')}`,
        ).toEqual([])
      }
    }
  }

  it('prunes a batch of several statuses reading about a batch of instances, not all', async () => {
    const clock = new ManualClock(3 * base)
    const sent = await sentBy((db) =>
      pruneSagas(db, { olderThanMs: 0, batchSize, maxBatches: 1, clock }),
    )
    // The batch itself, then each removed instance looked up again to be deleted.
    await expectBounded(sent, 3 * batchSize)
    const left = await t.db.query<{ n: number }>(
      `SELECT COUNT(*) AS n FROM ${sagaTable} WHERE status IN ('completed', 'compensated', 'cancelled')`,
    )
    expect(Number(left[0]!.n)).toBe(instances - batchSize)
  })
  it('lists the newest instances, filtered or not, reading about as many as it lists', async () => {
    const limit = 20
    const filters = [
      {},
      { status: 'completed' },
      { name: 'refund' },
      { status: 'cancelled', name: 'order' },
    ] as const
    for (const filter of filters) {
      const sent = await sentBy(async (db) => {
        const listed = await listSagas(db, { ...filter, limit })
        // What a read of the whole table, sorted, lists.
        const where = Object.keys(filter).map((column, i) => `${column} = $${i + 1}`)
        const expected = await t.db.query<{ id: string }>(
          `SELECT id FROM ${sagaTable} ${where.length === 0 ? '' : `WHERE ${where.join(' AND ')}`}
          ORDER BY created_at DESC, id LIMIT ${limit}`,
          Object.values(filter),
        )
        expect(listed.map((line) => line.id)).toEqual(expected.map((row) => row.id))
        expect(listed).toHaveLength(limit)
      })
      // A filter reads the newest instances in order until it has found `limit` that match:
      // here at most 6 read for one listed (both filters, through either index).
      await expectBounded(sent, 8 * limit)
    }
  })
})
