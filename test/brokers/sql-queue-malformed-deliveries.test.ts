// A delivery row changed outside breakwater. Real SQLite and PostgreSQL.
//
// held_until: on SQLite, text set by hand into the INTEGER column stays text, and text sorts
// above every number: `held_until <= now` was never true, so the message was never delivered
// again to its group and, held, silently kept every later message of its key behind it for
// ever. A held_until that is not a number is now taken as run out. A negative number or a
// fraction (PostgreSQL: only a negative one) was already run out.
//
// seq: a seq that points at no message (SQLite keeps text, a blob or a fraction as it is in its
// INTEGER column; either database keeps a negative number) was dropped without a word, and text
// or a blob could not even be dropped: the ack used Number(seq), NaN, so the delivery was leased
// again every visibility timeout for ever. It is now removed on its first lease and reported
// once (refused, naming the seq).
//
// delivery_count: one that is not a whole number from 0 reached the handler as deliveryCount
// -4 or 2.5; the lease now counts it as delivered before (2).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlQueue,
  queueDeliveriesTable,
  type SqlQueue,
  type SqlQueueErrorEvent,
} from '../../src/brokers/sql-queue.js'
import { dbTargets, type OutboxDb, until } from '../outbox/support.js'

describe.each(dbTargets)(
  'SQL queue delivery rows changed outside breakwater on $dialect',
  (target) => {
    let t: OutboxDb
    const queues: SqlQueue[] = []
    beforeAll(async () => {
      t = await target.open('sql_queue_malformed_deliveries')
    })
    afterAll(async () => {
      for (const q of queues) await q.close()
      await t?.close()
    })

    const values: Array<[string, string]> = [['a negative number', '-5']]
    if (target.dialect === 'sqlite') {
      values.push(['text', `'abc'`], ['a fraction', '1.5'], ['a blob', `X'00'`])
    }

    // Publishes k-1, k-2 and j-1 to a fresh topic with a group 'g', then sets `set` on the
    // delivery of k-1; returns the topic, the queue and what onError was given.
    async function published(set: string): Promise<[string, SqlQueue, SqlQueueErrorEvent[]]> {
      const errors: SqlQueueErrorEvent[] = []
      const q = createSqlQueue(t.db, {
        pollIntervalMs: 2,
        maxPollIntervalMs: 20,
        visibilityTimeoutMs: 1_000,
        onError: (e) => errors.push(e),
      })
      queues.push(q)
      const topic = `t-${set}`
      await (await q.subscriber.subscribe(topic, 'g', async () => {})).close()
      await q.publisher.publish(
        ['k-1', 'k-2', 'j-1'].map((id) => ({
          id,
          topic,
          key: id.slice(0, 1),
          payload: '{}',
          headers: {},
        })),
      )
      await t.db.execute(
        `UPDATE ${queueDeliveriesTable} SET ${set}
       WHERE topic = $1 AND seq = (SELECT MIN(seq) FROM ${queueDeliveriesTable} WHERE topic = $1)`,
        [topic],
      )
      return [topic, q, errors]
    }

    it.each(values)('held_until %s: the message is delivered, its key in order', async (_, bad) => {
      const [topic, q] = await published(`held_until = ${bad}, delivery_count = 1`)
      const seen: string[] = []
      const subscription = await q.subscriber.subscribe(topic, 'g', async (m) => {
        seen.push(m.id)
      })
      try {
        await until(() => seen.length === 3, 'every message delivered')
        expect(seen.filter((id) => id.startsWith('k-'))).toEqual(['k-1', 'k-2'])
      } finally {
        await subscription.close()
      }
    })

    it.each(values)('seq %s: the delivery is removed and reported once', async (_, bad) => {
      const [topic, q, errors] = await published(`seq = ${bad}`)
      const seen: string[] = []
      const subscription = await q.subscriber.subscribe(topic, 'g', async (m) => {
        seen.push(m.id)
      })
      try {
        await until(async () => {
          const rows = await t.db.query(
            `SELECT seq FROM ${queueDeliveriesTable} WHERE topic = $1`,
            [topic],
          )
          return seen.length === 2 && rows.length === 0
        }, 'the other messages handled and every delivery gone')
        expect(seen).toEqual(['k-2', 'j-1'])
        expect(errors).toHaveLength(1)
        expect(errors[0]).toMatchObject({ phase: 'refused', topic, group: 'g' })
        expect(String(errors[0]!.error)).toMatch(/seq .* points at no message/)
      } finally {
        await subscription.close()
      }
    })

    it.each(values)('delivery_count %s: the handler is given 2', async (_, bad) => {
      const [topic, q, errors] = await published(`delivery_count = ${bad}`)
      const counts = new Map<string, number>()
      const subscription = await q.subscriber.subscribe(topic, 'g', async (m) => {
        counts.set(m.id, m.deliveryCount)
      })
      try {
        await until(() => counts.size === 3, 'every message handled')
        expect(Object.fromEntries(counts)).toEqual({ 'k-1': 2, 'k-2': 1, 'j-1': 1 })
        expect(errors).toEqual([])
      } finally {
        await subscription.close()
      }
    })
  },
)
