// The dead-letter admin statements' cost in an outbox of many published rows (kept until
// retention) and a few dead ones, read from the plans the databases ran (rows PostgreSQL looked
// at, the shape of SQLite's plan), never from the clock. On SQLite, listDead (`breakwater outbox
// dead`) walked the rowid range from afterId over every published row to find the dead ones:
// 585 ms at a million published rows with 100 dead, where the partial index of held rows
// answers from the dead rows alone. Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listDead, outboxStats, redrive } from '../../src/outbox/index.js'
import {
  postgresRowsExamined,
  type SentStatement,
  sqlitePlan,
  statementsSentBy,
} from '../support/query-plan.js'
import { dbTargets, type OutboxDb } from './support.js'

const outboxTable = 'breakwater_outbox'
const published = 5_000
const dead = 20
const base = 1_000_000_000_000

describe.each(dbTargets)('dead-letter statements on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('outbox_dead_letter_cost')
    await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
        event_type, topic, payload, headers, partition_no, created_at, published_at)
      WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ${published})
      SELECT 'ev-' || i, 'order', 'agg-' || i, 'paid', 'orders', '{}', '{}', i % 64,
        ${base} + i, ${base} + i
      FROM g`)
    await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
        event_type, topic, payload, headers, partition_no, created_at, attempts, last_error, dead_at)
      WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ${dead})
      SELECT 'dead-' || i, 'order', 'd-' || i, 'paid', 'orders', '{}', '{}', i % 64,
        ${2 * base} + i, 10, 'boom', ${2 * base} + i
      FROM g`)
    // No ANALYZE on SQLite: breakwater never runs it, and without its statistics SQLite took
    // the rowid range for listDead.
    if (target.dialect === 'postgres') await t.db.execute(`ANALYZE ${outboxTable}`)
  })
  afterAll(async () => {
    await t?.close()
  })

  const sentBy = (call: (db: typeof t.db) => Promise<unknown>): Promise<SentStatement[]> =>
    statementsSentBy(t.db, call)

  /** The lines of SQLite's `EXPLAIN QUERY PLAN` for `statement`, its parameters bound. */
  const planDetails = async (statement: SentStatement): Promise<string[]> =>
    (await sqlitePlan(t.db, statement)).map((line) => line.detail)

  /** Each statement reads the dead rows (SQLite: through `index`), not the published ones. */
  async function expectDeadRowsOnly(
    sent: readonly SentStatement[],
    index = `${outboxTable}_held`,
  ): Promise<void> {
    expect(sent.length).toBeGreaterThan(0)
    for (const statement of sent) {
      if (target.dialect === 'postgres') {
        const examined = await postgresRowsExamined(t.url, statement, outboxTable, 'custom')
        expect(examined, `plan of ${statement.sql}`).toBeLessThanOrEqual(2 * dead)
      } else {
        const details = await planDetails(statement)
        const shown = `plan of ${statement.sql}: ${details.join('; ')}`
        // A walk of the rowid range, or of the whole table: every published row.
        expect(
          details.filter((d) => /INTEGER PRIMARY KEY|^SCAN breakwater_outbox$/.test(d)),
          shown,
        ).toEqual([])
        expect(
          details.some((d) => d.includes(index)),
          shown,
        ).toBe(true)
      }
    }
  }

  it('lists dead events, a page at a time, reading the dead rows only', async () => {
    let page: Awaited<ReturnType<typeof listDead>> = []
    const sent = await sentBy(async (db) => {
      page = await listDead(db, { limit: 5 })
    })
    expect(page.map((e) => e.eventId)).toEqual(['dead-1', 'dead-2', 'dead-3', 'dead-4', 'dead-5'])
    await expectDeadRowsOnly(sent)

    const after = page.at(-1)?.id ?? 0
    const next = await sentBy(async (db) => {
      page = await listDead(db, { limit: 5, afterId: after })
    })
    expect(page.map((e) => e.eventId)).toEqual(['dead-6', 'dead-7', 'dead-8', 'dead-9', 'dead-10'])
    await expectDeadRowsOnly(next)
  })

  it('counts dead events reading the dead rows only', async () => {
    const sent = await sentBy(async (db) => {
      expect((await outboxStats(db)).dead).toBe(dead)
    })
    const deadCount = sent.filter((s) => /dead_at IS NOT NULL/.test(s.sql))
    if (target.dialect === 'sqlite') {
      // One statement counts pending, dead and stranded: its dead sub-count reads the index.
      const details = deadCount.length > 0 ? await planDetails(deadCount[0]!) : []
      expect(
        details.some((d) => d.includes(`${outboxTable}_held`)),
        details.join('; '),
      ).toBe(true)
      expect(details.filter((d) => /^SCAN breakwater_outbox$/.test(d))).toEqual([])
    }
  })

  it('redrives by id and all of them reading the dead rows only', async () => {
    // By id: each looked up in the event_id index.
    await expectDeadRowsOnly(
      await sentBy((db) => redrive(db, ['dead-1', 'dead-2'])),
      'sqlite_autoindex_breakwater_outbox_1',
    )
    await expectDeadRowsOnly(await sentBy((db) => redrive(db, 'all')))
  })
})
