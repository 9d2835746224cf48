// After a read that found nothing, the relay asks PostgreSQL whether pending rows of its
// partitions wait for the transaction horizon (heldBack). With many pending rows that the read
// could not take (all held behind retries, say), that question scanned the whole outbox: a
// sequential scan removing every row by filter, 0.6 s per empty read at a million rows. It now
// looks at the newest pending row of each owned partition only. Measured on the plan PostgreSQL
// ran (rows it looked at), not on time. Real PostgreSQL.
//
// The horizon is server-wide and other test files share the server, so any of their open
// transactions holds back rows written after it began. Rows loaded here therefore carry the
// oldest normal transaction id (3) as their writer: committed before anything still running, so
// their answer does not depend on what else runs. Where a row must carry its real writer, the
// answer is compared with a full-scan count taken in the same statement (one snapshot).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { OUTBOX_PARTITIONS } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import { type PlanNode, rowsExamined } from '../support/query-plan.js'
import { type OutboxDb, postgresTarget } from './support.js'

const partitions = Array.from({ length: OUTBOX_PARTITIONS }, (_, i) => i)
const heldBack = outboxStatements.postgres.heldBack ?? ''

describe('heldBack on postgres', () => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await postgresTarget.open('outbox_horizon_cost')
  })
  afterAll(async () => {
    await t?.close()
  })

  async function load(n: number): Promise<void> {
    await t.db.execute('TRUNCATE breakwater_outbox')
    await t.db.execute(
      `INSERT INTO breakwater_outbox (event_id, aggregate_type, aggregate_id, event_type, topic,
         payload, headers, partition_no, created_at, xid)
       SELECT 'e-' || g, 'order', 'a-' || g, 'paid', 'orders', '{}', '{}', g % 64, 1700000000000 + g,
         '3'::xid8
       FROM generate_series(1, $1::int) AS g`,
      [n],
    )
    await t.db.execute('ANALYZE breakwater_outbox')
  }

  async function examined(): Promise<number> {
    const rows = await t.db.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${heldBack}`,
      [partitions],
    )
    const plan = rows[0]?.['QUERY PLAN'][0]?.Plan
    if (plan === undefined) throw new Error('no plan')
    return rowsExamined(plan, 'breakwater_outbox')
  }

  it('looks at no more rows than partitions, however many rows are pending', async () => {
    for (const n of [2_000, 20_000]) {
      await load(n)
      const [answer] = await t.db.query<{ held: boolean }>(heldBack, [partitions])
      // Every row was written by a transaction older than any still running.
      expect(answer?.held).toBe(false)
      expect(await examined()).toBeLessThanOrEqual(OUTBOX_PARTITIONS)
    }
  })

  it('still sees a row committed behind a transaction that is still running', async () => {
    await load(100)
    const pg = (await import('pg')).default
    const open = new pg.Client({ connectionString: t.url })
    await open.connect()
    try {
      await open.query('BEGIN')
      // Takes a transaction id, so the horizon stays at or below it until this ends.
      await open.query('SELECT pg_current_xact_id()')
      await t.db.execute(
        `INSERT INTO breakwater_outbox (event_id, aggregate_type, aggregate_id, event_type, topic,
           payload, headers, partition_no, created_at)
         VALUES ('late', 'order', 'a-late', 'paid', 'orders', '{}', '{}', 5, 1700000000000)`,
      )
      const held = async (owned: number[]) =>
        (await t.db.query<{ held: boolean }>(heldBack, [owned]))[0]?.held
      expect(await held(partitions)).toBe(true)
      expect(await held([5])).toBe(true)
      // Another relay's partitions: nothing of theirs waits.
      expect(await held([4, 6])).toBe(false)
      await open.query('COMMIT')
      // 'late' is no longer held by `open`, but a transaction of another test file may have begun
      // before it was written: the answer must be what a full scan sees in the same snapshot.
      const [after] = await t.db.query<{ held: boolean; scanned: boolean }>(
        `SELECT (${heldBack}) AS held, EXISTS (
           SELECT 1 FROM breakwater_outbox
           WHERE published_at IS NULL AND dead_at IS NULL
             AND xid >= pg_snapshot_xmin(pg_current_snapshot())) AS scanned`,
        [partitions],
      )
      expect(after?.held).toBe(after?.scanned)
    } finally {
      await open.end()
    }
  })
})
