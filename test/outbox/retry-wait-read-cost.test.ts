// The relay's read with many events waiting for their own retry. An event charged a failed
// attempt is not held behind anything, so it is not parked: it stays pending with its retry time
// (retry_at). The read walked the pending unparked rows in id order and left out, row by row,
// those whose retry time had not come, so every read stepped over all of them again (a broker
// that refused the head event of 200,000 aggregates for a while: 140 ms per SQLite read, 44 ms
// per PostgreSQL read). The read now takes the rows with no retry time from an index that
// holds only them, in id order, and the rows whose retry time has come from an index ordered by
// that time, so the rows still waiting are never looked at. Measured on the plans the databases
// ran (rows PostgreSQL looked at; the indexes SQLite walks and what they hold), never on time.
// Then a relay publishes what the read gives, each aggregate in order, before and after the
// retry times come. Real SQLite and PostgreSQL.
//
// Rows are loaded by SQL. On PostgreSQL they carry the oldest normal writer xid (3), so that a
// transaction left open by another test file (the horizon is server-wide) does not hold them
// back from the read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listParam, outboxStatements } from '../../src/outbox/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import { postgresRowsExamined, sqlitePlan } from '../support/query-plan.js'
import { count, dbTargets, type OutboxDb, recordingRelay, until } from './support.js'

const outboxTable = 'breakwater_outbox'
const T0 = 1_700_000_000_000
/** Events waiting for their retry. */
const waiting = 20_000
/** Events with no retry time, enqueued after them. */
const fresh = 100
const roundSize = 32

describe.each(dbTargets)('the relay read past events waiting for a retry on $dialect', (target) => {
  let t: OutboxDb
  const readBatch = outboxStatements[target.dialect].readBatch

  beforeAll(async () => {
    t = await target.open('outbox_retry_wait_read_cost')
  })
  afterAll(async () => {
    await t?.close()
  })

  /**
   * Inserts rows `from`..`to` with event ids `prefix-i`, each of aggregate `prefix-i`, in
   * partition i % 64, setting `columns` to `values` (SQL of `i`).
   */
  async function load(
    prefix: string,
    from: number,
    to: number,
    columns = '',
    values = '',
  ): Promise<void> {
    const pg = target.dialect === 'postgres'
    const xid = pg ? ', xid' : ''
    const xidValue = pg ? ", '3'::xid8" : ''
    const rows = pg
      ? `generate_series(${from}, ${to}) AS g(i)`
      : `(WITH RECURSIVE g(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM g WHERE i < ${to})
          SELECT i FROM g) AS g`
    await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
        event_type, topic, payload, headers, partition_no, created_at${xid}${columns})
      SELECT '${prefix}-' || i, 'order', '${prefix}-' || i, 'paid', 'orders', '{}', '{}',
        i % 64, ${T0} + i${xidValue}${values}
      FROM ${rows} ORDER BY i`)
  }

  /** The read a relay owning every partition sends at `now`, with nothing set aside. */
  function read(now: number): { sql: string; params: unknown[] } {
    const partitions = Array.from({ length: 64 }, (_, i) => i)
    const none = listParam(target.dialect, [])
    return {
      sql: readBatch,
      params: [listParam(target.dialect, partitions), now, roundSize, none, none, 1, 1024 * 1024],
    }
  }

  it('looks at the rows it returns, not at the events waiting for their retry', async () => {
    // Charged once each, due from a minute on; then events of other aggregates.
    await load(
      'wait',
      1,
      waiting,
      ', attempts, last_error, retry_at',
      `, 1, 'refused', ${T0} + 60000 + i`,
    )
    await load('new', 1, fresh)
    const now = T0 + 1_000
    const statement = read(now)
    const found = await t.db.query<{ event_id: string; held_behind: unknown }>(
      statement.sql,
      statement.params,
    )
    expect(found.map((row) => row.event_id)).toEqual(
      Array.from({ length: roundSize }, (_, i) => `new-${i + 1}`),
    )
    expect(found.every((row) => row.held_behind === null)).toBe(true)

    if (target.dialect === 'postgres') {
      await t.db.execute(`ANALYZE ${outboxTable}`)
      // The rows returned and their one probe each for an earlier held event of their
      // aggregate; with fresh statistics the planner may instead read every row with no retry
      // time (the 100 new ones) and sort them. Either way none of the waiting ones.
      for (const plan of ['custom', 'cached'] as const) {
        expect(await postgresRowsExamined(t.url, statement, outboxTable, plan)).toBeLessThanOrEqual(
          fresh + 3 * roundSize,
        )
      }
      return
    }
    const plan = (await sqlitePlan(t.db, statement)).map((line) => line.detail)
    const shown = plan.join('; ')
    // No walk of an index holding the waiting rows in id order: the rows with no retry time
    // from their own index, the due ones from a range of the retry-time index.
    expect(shown).not.toContain(`${outboxTable}_unparked`)
    expect(shown).not.toContain(`${outboxTable}_pending`)
    expect(plan, shown).toContain(`SCAN o USING INDEX ${outboxTable}_ready`)
    expect(plan, shown).toContain(`SEARCH o USING INDEX ${outboxTable}_retry_due (retry_at<?)`)
    // What those hold: the new events alone, and no row due yet.
    expect(
      await count(
        t.db,
        `${outboxTable} INDEXED BY ${outboxTable}_ready`,
        'WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL AND retry_at IS NULL',
      ),
    ).toBe(fresh)
    expect(
      await count(
        t.db,
        `${outboxTable} INDEXED BY ${outboxTable}_retry_due`,
        `WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL
          AND retry_at IS NOT NULL AND retry_at <= ${now}`,
      ),
    ).toBe(0)
  })

  // PostgreSQL plans the read from the statistics of the last ANALYZE, which autovacuum runs
  // only after a tenth of the table changed: right after a broker refused many events, they say
  // hardly any row has a retry time. Planned as one row, the due rows were read through
  // whichever index held them the cheapest-looking way, which could be _blocking (every dead,
  // retrying and parked event, in aggregate order) and a sort: every waiting row at every read.
  it.runIf(target.dialect === 'postgres')(
    'looks past the waiting events on statistics from before they were charged',
    async () => {
      await t.db.execute(`DELETE FROM ${outboxTable}`)
      await t.db.execute(`ALTER TABLE ${outboxTable} SET (autovacuum_enabled = false)`)
      try {
        await load('wait', 1, waiting)
        // A few waiting and dead events, as in steady running.
        await t.db.execute(
          `UPDATE ${outboxTable} SET attempts = 1, retry_at = $1 WHERE event_id IN ('wait-1', 'wait-2')`,
          [T0 + 5],
        )
        await t.db.execute(
          `UPDATE ${outboxTable} SET attempts = 10, dead_at = $1 WHERE event_id = 'wait-3'`,
          [T0],
        )
        await t.db.execute(`VACUUM ANALYZE ${outboxTable}`)
        // The broker refuses them all: charged once each, due from a minute on.
        await t.db.execute(
          `UPDATE ${outboxTable} SET attempts = 1, last_error = 'refused', retry_at = $1 + id
          WHERE dead_at IS NULL`,
          [T0 + 60_000],
        )
        await load('new', waiting + 1, waiting + fresh)
        const statement = read(T0 + 1_000)
        // The first read after the charges steps over the old versions of the charged rows in
        // the index of rows with no retry time, once, and marks them dead; not measured.
        await t.db.query(statement.sql, statement.params)
        for (const plan of ['custom', 'cached'] as const) {
          expect(
            await postgresRowsExamined(t.url, statement, outboxTable, plan),
          ).toBeLessThanOrEqual(fresh + 3 * roundSize)
        }
      } finally {
        await t.db.execute(`ALTER TABLE ${outboxTable} RESET (autovacuum_enabled)`)
      }
    },
  )

  it('publishes every aggregate in order, before and after the retry times come', async () => {
    await t.db.execute(`DELETE FROM ${outboxTable}`)
    // Aggregates r-1..r-200: a head charged once, due at T0 + 10 s + i (so the due ones come
    // in the reverse of id order for the read's retry-time index when the clock passes them
    // together... they do not: later ids are due later); behind each head two more events.
    const pg = target.dialect === 'postgres'
    const xid = pg ? ', xid' : ''
    const xidValue = pg ? ", '3'::xid8" : ''
    const heads = 200
    // Due in the reverse of id order: the retry-time index gives them newest first.
    await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
        event_type, topic, payload, headers, partition_no, created_at, attempts, retry_at${xid})
      ${pg ? 'SELECT' : 'WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 200) SELECT'}
        'r-' || i || '/0', 'order', 'r-' || i, 'paid', 'orders', '{}', '{}', i % 64, ${T0},
        1, ${T0} + 10000 + (${heads} - i)${xidValue}
      FROM ${pg ? `generate_series(1, ${heads}) AS g(i)` : 'g'} ORDER BY i`)
    for (const position of [1, 2]) {
      await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
          event_type, topic, payload, headers, partition_no, created_at${xid})
        ${pg ? 'SELECT' : `WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ${heads}) SELECT`}
          'r-' || i || '/${position}', 'order', 'r-' || i, 'paid', 'orders', '{}', '{}', i % 64,
          ${T0}${xidValue}
        FROM ${pg ? `generate_series(1, ${heads}) AS g(i)` : 'g'} ORDER BY i`)
    }
    await load('free', 1, 300)

    const clock = new ManualClock(T0 + 1_000)
    const published: string[] = []
    const relay = recordingRelay({ db: t.db, clock, batchSize: 2 * roundSize }, published)
    await relay.start()
    try {
      await until(async () => {
        await clock.advance(50)
        return published.length === 300
      }, 'the free events')
      expect(published.every((id) => id.startsWith('free-'))).toBe(true)
      // Everything of the retried aggregates is parked or waiting: nothing of it went out.
      expect(await count(t.db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(2 * heads)

      await clock.advance(10_000 + heads)
      await until(async () => {
        await clock.advance(50)
        return published.length === 300 + 3 * heads
      }, 'the retried aggregates')
      for (let i = 1; i <= heads; i++) {
        const own = published.filter((id) => id.startsWith(`r-${i}/`))
        expect(own).toEqual([`r-${i}/0`, `r-${i}/1`, `r-${i}/2`])
      }
      // Published means confirmed by the broker; the marks follow.
      await until(
        async () => (await count(t.db, outboxTable, 'WHERE published_at IS NULL')) === 0,
        'every event marked published',
      )
      expect(await count(t.db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(0)
    } finally {
      await relay.stop()
    }
  }, 120_000)
})
