// A delivery's held_until changed outside breakwater. On SQLite, text set by hand into the
// INTEGER column stays text, and text sorts above every number: `held_until <= now` was never
// true, so the message was never delivered again to its group and, held, silently kept every
// later message of its key behind it for ever. A held_until that is not a number is now taken
// as run out. A negative number or a fraction (PostgreSQL: only a negative one) was already
// run out: checked here too. Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlQueue, queueDeliveriesTable, type SqlQueue } from '../../src/brokers/sql-queue.js'
import { dbTargets, type OutboxDb, until } from '../outbox/support.js'

describe.each(dbTargets)(
  'SQL queue held_until changed outside breakwater on $dialect',
  (target) => {
    let t: OutboxDb
    const queues: SqlQueue[] = []

    beforeAll(async () => {
      t = await target.open('sql_queue_malformed_held_until')
    })
    afterAll(async () => {
      for (const q of queues) await q.close()
      await t?.close()
    })

    const cases: Array<[string, string]> = [['a negative number', '-5']]
    if (target.dialect === 'sqlite') {
      cases.push(['text', `'abc'`], ['a fraction', '1.5'], ['a blob', `X'00'`])
    }
    it.each(cases)('held_until %s: the message is delivered, its key in order', async (_, bad) => {
      const q = createSqlQueue(t.db, {
        pollIntervalMs: 2,
        maxPollIntervalMs: 20,
        onError: () => {},
      })
      queues.push(q)
      const topic = `t-${bad}`
      const seen: string[] = []
      // The group exists from the first subscription on: published messages get its deliveries.
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
        `UPDATE ${queueDeliveriesTable} SET held_until = ${bad}, delivery_count = 1
       WHERE topic = $1 AND seq = (SELECT MIN(seq) FROM ${queueDeliveriesTable} WHERE topic = $1)`,
        [topic],
      )
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
  },
)
