// The relay's read with many events queued behind one dead event. The read walks the pending
// rows of the relay's partitions in id order; the rows held behind a dead (or retrying) event
// stay pending, and the read stepped over all of them again at every read: 0.1 to 0.8 s per read
// with 200,000 of them. The relay now parks the rows it reads held back (parked_behind), and
// the read walks an index that leaves parked rows out. Measured on the plans the databases ran
// (rows PostgreSQL looked at; the index SQLite walks and what that index holds), never on time.
// Real SQLite and PostgreSQL.
//
// Rows are loaded by SQL. On PostgreSQL they carry the oldest normal writer xid (3), so that a
// transaction left open by another test file (the horizon is server-wide) does not hold them
// back from the read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import { createRelay, redrive } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  postgresRowsExamined,
  recordingStatements,
  type SentStatement,
  sqlitePlan,
} from '../support/query-plan.js'
import { count, dbTargets, type OutboxDb, until } from './support.js'

const outboxTable = 'breakwater_outbox'
const T0 = 1_700_000_000_000
/** Events queued behind the dead one. */
const behind = 20_000
const batchSize = 64
const roundSize = batchSize / 2

describe.each(dbTargets)('the relay read behind a dead event on $dialect', (target) => {
  let t: OutboxDb
  const readBatch = outboxStatements[target.dialect].readBatch

  beforeAll(async () => {
    t = await target.open('outbox_parked_read_cost')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Inserts rows `from`..`to` of `aggregate` (one aggregate per row if `aggregate` is undefined). */
  async function load(
    prefix: string,
    from: number,
    to: number,
    aggregate: string | undefined,
    extra: { column: string; value: string } | undefined = undefined,
  ): Promise<void> {
    const pg = target.dialect === 'postgres'
    const aggregateId = aggregate === undefined ? `'${prefix}-' || i` : `'${aggregate}'`
    const partition = aggregate === undefined ? 'i % 64' : '7'
    const columns = `${pg ? ', xid' : ''}${extra === undefined ? '' : `, ${extra.column}`}`
    const values = `${pg ? ", '3'::xid8" : ''}${extra === undefined ? '' : `, ${extra.value}`}`
    await t.db.execute(`INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id,
        event_type, topic, payload, headers, partition_no, created_at${columns})
      WITH RECURSIVE g(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM g WHERE i < ${to})
      SELECT '${prefix}-' || i, 'order', ${aggregateId}, 'paid', 'orders', '{}', '{}',
        ${partition}, ${T0} + i${values}
      FROM g ORDER BY i`)
  }

  /**
   * Rows of the outbox the read looks at (PostgreSQL: the more of its first plan and the plan
   * cached after five runs), or the lines of the plan SQLite runs.
   */
  async function readCost(statement: SentStatement): Promise<number | string[]> {
    if (target.dialect === 'postgres') {
      await t.db.execute(`ANALYZE ${outboxTable}`)
      return Math.max(
        await postgresRowsExamined(t.url, statement, outboxTable, 'custom'),
        await postgresRowsExamined(t.url, statement, outboxTable, 'cached'),
      )
    }
    return (await sqlitePlan(t.db, statement)).map((line) => line.detail)
  }

  it('looks at a batch of rows, not at every event parked behind the dead one', async () => {
    await load('hot', 0, 0, 'hot', { column: 'attempts, dead_at', value: `10, ${T0}` })
    await load('hot', 1, behind, 'hot')
    await load('free', 1, 10, undefined)
    const clock = new ManualClock(T0 + 1_000)
    const sent: SentStatement[] = []
    const published: string[] = []
    const relay = createRelay({
      db: recordingStatements(t.db, sent),
      publisher: {
        publish: async (messages: readonly OutgoingMessage[]) => {
          for (const m of messages) published.push(m.id)
        },
        close: async () => {},
      },
      clock,
      batchSize,
      listen: false,
      retention: false,
      keepAlive: false,
    })
    await relay.start()
    try {
      const parked = () => count(t.db, outboxTable, 'WHERE parked_behind IS NOT NULL')
      // Parking 20,000 rows is 20,000 row updates: a loaded host gets its time.
      await until(
        async () => {
          await clock.advance(50)
          return (await parked()) === behind && published.length === 10
        },
        'the held events to be parked and the others published',
        90_000,
      )
      expect(published.every((id) => id.startsWith('free-'))).toBe(true)

      // New events of other aggregates come in: the next read takes them alone.
      await load('later', 1, 100, undefined)
      const reads = sent.filter((s) => s.sql === readBatch)
      const last = reads[reads.length - 1]
      expect(last).toBeDefined()
      const params = [...(last?.params ?? [])]
      params[2] = roundSize
      const after = await readCost({ sql: readBatch, params })
      if (typeof after === 'number') {
        // Each row taken and its one probe for an earlier held event of its aggregate; with
        // fresh statistics the planner may instead read every unparked row (the 100 new ones)
        // and sort them, which is the same claim: none of the parked events is looked at.
        expect(after).toBeLessThanOrEqual(100 + 3 * roundSize)
      } else {
        // The rows with no retry time from their own index (the rows waiting for a retry from
        // another, by retry time: see retry-wait-read-cost), never one holding parked rows.
        expect(after, after.join('; ')).toContain(`SCAN o USING INDEX ${outboxTable}_ready`)
        expect(after.join('; ')).not.toMatch(/_unparked|_pending/)
        // What that index holds: the new events, none of the parked ones.
        expect(
          await count(
            t.db,
            outboxTable,
            'WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL',
          ),
        ).toBe(100)
      }

      // Redriven, the dead event goes out first; its mark unparks the events parked behind it,
      // which follow in order. (The events of the reads after the first were parked behind the
      // last event parked before them, a parked event holding back its aggregate's later ones:
      // they are unparked in turn, as the events they wait for are published.)
      expect(await redrive(t.db, ['hot-0'])).toBe(1)
      await until(async () => {
        await clock.advance(50)
        return published.filter((id) => id.startsWith('hot-')).length >= 3
      }, 'the redriven event and the first events behind it')
      expect(await parked()).toBeLessThan(behind)
      expect(
        await count(
          t.db,
          outboxTable,
          `WHERE parked_behind = (SELECT id FROM ${outboxTable} WHERE event_id = 'hot-0')`,
        ),
      ).toBe(0)
      expect(published.filter((id) => id.startsWith('hot-')).slice(0, 3)).toEqual([
        'hot-0',
        'hot-1',
        'hot-2',
      ])
    } finally {
      await relay.stop()
    }
  }, 180_000)
})
