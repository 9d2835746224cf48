// A SQL queue subscription with a backlog lets the event loop turn between batches. On SQLite
// the driver answers with promises that are already resolved, so lease, dispatch and ack ran as
// one chain of microtasks until the backlog was empty: 40,000 messages held off timers, I/O and
// a SIGTERM handler for 10 s (found by verification testing with real processes). A chain of
// setImmediate callbacks counts the loop's turns; the handler records the count, and every
// batch after the first must find it moved on. No timing threshold.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlQueue } from '../../src/brokers/sql-queue.js'
import { dbTargets, type OutboxDb, until } from '../outbox/support.js'

const prefetch = 4

describe.each(dbTargets)('SQL queue subscription on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('sql_queue_event_loop')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('lets the event loop turn between batches of a backlog', async () => {
    const queue = createSqlQueue(t.db, { pollIntervalMs: 2, maxPollIntervalMs: 20, prefetch })
    const topic = `loop-${target.dialect}`
    const total = 5 * prefetch
    await queue.publisher.publish(
      Array.from({ length: total }, (_, i) => ({
        id: `m-${i}`,
        topic,
        key: 'one-key',
        payload: '{}',
        headers: {},
      })),
    )
    let turns = 0
    let running = true
    const tick = (): void => {
      turns++
      if (running) setImmediate(tick)
    }
    const seen: number[] = []
    try {
      const subscription = await queue.subscriber.subscribe(topic, 'g', async () => {
        seen.push(turns)
      })
      setImmediate(tick)
      await until(() => seen.length === total, 'the backlog delivered')
      await subscription.close()
    } finally {
      running = false
      await queue.close()
    }
    // One key: delivered in order, one batch of `prefetch` after another.
    const boundaries: boolean[] = []
    for (let i = prefetch; i < seen.length; i += prefetch) boundaries.push(seen[i]! > seen[i - 1]!)
    expect(boundaries).toEqual(boundaries.map(() => true))
  })
})
