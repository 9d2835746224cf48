// A SQL queue consumer whose lease ran out (a stalled process: SIGSTOP, a long GC pause) while
// it held a batch, on real SQLite and PostgreSQL. Every message of a batch is leased under one
// token and runs out at the same moment, so another consumer of the group may have taken any of
// them. The consumer noticed only at the ack of the message it was running, and stopped only
// that key's chain: it still started the batch's other keys, each already handed to the other
// consumer, so each ran twice (and at once). The extension's row count was never looked at
// either. The other consumer is played here by rewriting the delivery rows' lease.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlQueue,
  type SqlQueue,
  type SqlQueueErrorEvent,
} from '../../src/brokers/sql-queue.js'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import type { BreakwaterError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, delay, type OutboxDb, until } from '../outbox/support.js'

const visibilityTimeoutMs = 3_000

describe.each(dbTargets)('SQL queue batch whose lease was lost, on $dialect', (target) => {
  let t: OutboxDb
  const queues: SqlQueue[] = []

  beforeAll(async () => {
    t = await target.open('sql_queue_lost_batch')
  })
  afterAll(async () => {
    for (const q of queues) await q.close()
    await t?.close()
  })

  const messages = (topic: string): OutgoingMessage[] =>
    ['a', 'b', 'c'].map((key) => ({
      id: `${topic}-${key}`,
      topic,
      key,
      payload: '{}',
      headers: {},
    }))

  /** The topic's delivery rows (of group g) that match `and`. */
  const deliveries = (topic: string, and = 'TRUE'): Promise<number> =>
    count(t.db, 'breakwater_queue_deliveries', `WHERE topic = '${topic}' AND ${and}`)

  /** Hands the named keys' deliveries to a rival consumer, as if it had leased them. */
  const takeByRival = async (topic: string, keys: readonly string[]): Promise<void> => {
    const taken = await t.db.execute(
      `UPDATE breakwater_queue_deliveries SET lease_token = 'rival', held_until = $2
       WHERE topic = $1 AND msg_key IN (${keys.map((k) => `'${k}'`).join(', ')})`,
      [topic, Date.now() + 600_000],
    )
    expect(taken.rowCount).toBe(keys.length)
  }

  /** Subscribes with the batch's first message (key a) held until `finish()`. */
  const subscribeHolding = async (topic: string, clock?: ManualClock) => {
    const errors: SqlQueueErrorEvent[] = []
    const q = createSqlQueue(t.db, {
      prefetch: 10,
      visibilityTimeoutMs,
      pollIntervalMs: 5,
      maxPollIntervalMs: 5,
      listen: false,
      onError: (e) => errors.push(e),
      ...(clock === undefined ? {} : { clock }),
    })
    queues.push(q)
    // Stored before the group exists: the first lease takes all three, under one token.
    await q.publisher.publish(messages(topic))
    const got: string[] = []
    let finish = (): void => {}
    const sub = await q.subscriber.subscribe(topic, 'g', async (m) => {
      got.push(m.id)
      if (m.key === 'a') await new Promise<void>((resolve) => (finish = resolve))
    })
    await until(() => got.length === 1, 'the first message')
    return { errors, got, sub, finish: () => finish() }
  }

  it("starts none of the batch's other keys once the ack shows the lease was lost", async () => {
    const topic = 'lost-by-ack'
    const { errors, got, sub, finish } = await subscribeHolding(topic)
    await takeByRival(topic, ['a', 'b', 'c'])
    finish()
    await until(() => errors.some((e) => e.phase === 'settle'), 'the lease loss to be seen')
    // Time for the worker to start another chain, had it gone on.
    await delay(50)
    await sub.close()
    expect(got).toEqual([`${topic}-a`])
    expect(await deliveries(topic)).toBe(3)
    expect(await deliveries(topic, `lease_token = 'rival'`)).toBe(3)
  })

  it("starts none of the batch's other keys once an extension shows part of the lease was lost, and lets the rest go", async () => {
    const topic = 'lost-by-extension'
    const clock = new ManualClock(5_000_000)
    const { errors, got, sub, finish } = await subscribeHolding(topic, clock)
    // The rival took b and c; a, still running here, is still this consumer's.
    await takeByRival(topic, ['b', 'c'])
    const lost = () => errors.filter((e) => e.phase === 'settle')
    const deadline = Date.now() + 20_000
    while (lost().length === 0) {
      if (Date.now() > deadline) {
        finish() // so that closing the queue does not wait for the held handler for ever
        throw new Error('timed out waiting for the extension')
      }
      await clock.advance(visibilityTimeoutMs / 3)
      await delay(5)
    }
    expect((lost()[0]!.error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
    expect((lost()[0]!.error as Error).message).toMatch(/lease/)
    finish()
    // a's ack still finds its row: it is removed; b and c are the rival's.
    await until(async () => (await deliveries(topic, `msg_key = 'a'`)) === 0, "a's ack")
    await delay(50)
    await sub.close()
    expect(got).toEqual([`${topic}-a`])
    expect(await deliveries(topic, `lease_token = 'rival'`)).toBe(2)
  })
})
