// A flow event whose `at` was changed outside breakwater (text or a blob on SQLite, which keeps
// it as it is in its INTEGER column; a negative or fractional time on either database): the
// tracker read it with Number(), so state() showed the event at NaN (an Invalid Date) or before
// 1970, and stalled() placed the flow by that. On SQLite, MAX(at) picks text over every number,
// so such a flow came first in the listing, and when it ended a page the cursor became NaN:
// the next page matched nothing and every flow after it was left out without a word. Both now
// fail with StoredDataError naming the event, the correlation id and the column. Real SQLite
// and PostgreSQL (whose BIGINT holds only numbers: a negative one there); time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { createFlowTracker, defineFlow } from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const payFlow = defineFlow({ name: 'pay', steps: ['pay-asked', 'pay-settled'], withinMs: 1 })

describe.each(dbTargets)('flow events with a malformed at, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_malformed_flow_events')
  })
  afterAll(async () => {
    await t?.close()
  })
  beforeEach(async () => {
    await t.db.execute('DELETE FROM breakwater_flow_events')
  })

  const bad: [string, unknown, string][] = [
    ['a negative time', -5, '-5'],
    ...(target.dialect === 'sqlite'
      ? ([
          ['text', 'abc', '"abc"'],
          ['a fraction', 5.5, '5.5'],
          ['a blob', Buffer.from('x'), 'a Uint8Array'],
        ] as [string, unknown, string][])
      : []),
  ]

  it.each(bad)(
    '%s: state() names the event, the correlation id and the column',
    async (_, value, shown) => {
      const tracker = createFlowTracker({ db: t.db, flows: [payFlow], clock: new ManualClock(100) })
      const correlationId = `pay-${randomUUID()}`
      await tracker.record(t.db, {
        id: `${correlationId}-1`,
        correlationId,
        type: 'pay-asked',
        at: 5,
      })
      await tracker.record(t.db, {
        id: `${correlationId}-2`,
        correlationId,
        type: 'pay-settled',
        at: 6,
      })
      await t.db.execute('UPDATE breakwater_flow_events SET at = $1 WHERE event_id = $2', [
        value,
        `${correlationId}-2`,
      ])
      const error = await tracker.state(correlationId).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        code: 'STORED_DATA_INVALID',
        table: 'breakwater_flow_events',
        row: `event "${correlationId}-2" (correlation id "${correlationId}")`,
        column: 'at',
        message: `breakwater_flow_events event "${correlationId}-2" (correlation id "${correlationId}"): at is ${shown}, not a time (whole epoch ms from 0); the row was changed outside breakwater and is left as it is`,
      })
      const [row] = await t.db.query<{ n: number | string }>(
        'SELECT COUNT(*) AS n FROM breakwater_flow_events WHERE correlation_id = $1',
        [correlationId],
      )
      expect(Number(row!.n)).toBe(2)
    },
  )

  it.each(bad)(
    '%s: stalled() fails naming the flow (never skips or misplaces it), and pages every flow once fixed',
    async (_, value) => {
      // Three flows that completed recently and two that stalled earlier: with limit 2, the
      // listing takes three pages of two to find both stalled ones.
      const tracker = createFlowTracker({
        db: t.db,
        flows: [payFlow],
        clock: new ManualClock(1_000),
      })
      const record = (correlationId: string, type: string, at: number) =>
        tracker.record(t.db, { id: `${correlationId}-${type}`, correlationId, type, at })
      for (const [i, id] of ['done-a', 'done-b', 'done-c'].entries()) {
        await record(id, 'pay-asked', 500 + i)
        await record(id, 'pay-settled', 501 + i)
      }
      await record('stuck-a', 'pay-asked', 400)
      await record('stuck-b', 'pay-asked', 300)
      // The spoilt flow: readable, it is a stalled one too, the most recently active. Its
      // second event (of a type the flow does not declare) is the one spoilt: on SQLite text
      // and blobs make it the flow's MAX(at), which the first page's cursor left out of every
      // page; a number keeps the flow first by its other event.
      await record('spoilt', 'pay-asked', 900)
      await record('spoilt', 'pay-noted', 950)
      const spoil = (at: unknown) =>
        t.db.execute('UPDATE breakwater_flow_events SET at = $1 WHERE event_id = $2', [
          at,
          'spoilt-pay-noted',
        ])
      await spoil(value)
      for (const limit of [1, 2, 1000]) {
        const error = await tracker.stalled({ limit }).catch((e: unknown) => e)
        expect(error).toBeInstanceOf(StoredDataError)
        expect(error).toMatchObject({
          table: 'breakwater_flow_events',
          row: 'event "spoilt-pay-noted" (correlation id "spoilt")',
          column: 'at',
        })
      }
      await spoil(950)
      const ids = async (limit: number) =>
        (await tracker.stalled({ limit })).map((s) => s.correlationId)
      expect(await ids(1000)).toEqual(['spoilt', 'stuck-a', 'stuck-b'])
      expect(await ids(2)).toEqual(['spoilt', 'stuck-a'])
      await t.db.execute('DELETE FROM breakwater_flow_events WHERE correlation_id = $1', ['spoilt'])
      expect(await ids(2)).toEqual(['stuck-a', 'stuck-b'])
      expect(await ids(1)).toEqual(['stuck-a'])
    },
  )
})
