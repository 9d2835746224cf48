// A clock whose now() has a fraction of a millisecond (a ManualClock after a jittered timer, a
// clock built on performance.now()) must not break any time the outbox writes to PostgreSQL's
// BIGINT columns: enqueue, the relay's leases, marks and retries, the inbox and retention.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createInbox,
  createOutbox,
  createRelay,
  outboxStats,
  pruneInbox,
  pruneOutbox,
} from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { delay, type OutboxDb, postgresTarget, testPublisher, testQueue } from './support.js'

describe('a clock with a fraction of a millisecond on postgres', () => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await postgresTarget.open('outbox_fractional_clock')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('enqueues, publishes, retries, records and prunes', async () => {
    const clock = new ManualClock(1_700_000_000_000.5)
    const outbox = createOutbox({ clock, topic: 'fraction' })
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    let failOnce = true
    publisher.before = () => {
      if (failOnce) {
        failOnce = false
        throw new Error('broker hiccup')
      }
    }
    await t.db.transaction(async (tx) => {
      await outbox.enqueue(tx, {
        id: 'f-1',
        aggregateType: 'thing',
        aggregateId: 'a',
        type: 'changed',
        payload: {},
      })
      await outbox.enqueue(tx, [
        { id: 'f-2', aggregateType: 'thing', aggregateId: 'b', type: 'changed', payload: {} },
      ])
    })
    const relay = createRelay({
      db: t.db,
      publisher,
      clock,
      leaseMs: 3_000,
      pollIntervalMs: 10,
      maxPollIntervalMs: 20,
      retryBackoff: { baseDelayMs: 100, maxDelayMs: 100, jitter: 'none' },
      retention: { olderThanMs: 0.5, everyMs: 50 },
    })
    const errors: unknown[] = []
    relay.events.on((e) => {
      if (e.type === 'error') errors.push(e.error)
    })
    try {
      await relay.start()
      const deadline = Date.now() + 20_000
      while (!(publisher.confirmed.includes('f-1') && publisher.confirmed.includes('f-2'))) {
        if (Date.now() > deadline) throw new Error(`not published: ${String(errors[0])}`)
        await clock.advance(10.25)
        await delay(2)
      }
    } finally {
      await relay.stop()
      await queue.close()
    }
    expect(errors).toEqual([])
    expect((await outboxStats(t.db, { clock })).pending).toBe(0)
    await clock.advance(1.5)
    await pruneOutbox(t.db, { clock, olderThanMs: 0.5 })
    await pruneOutbox(t.db, { clock, olderThanMs: 0, archive: true })

    const inbox = createInbox({ consumer: 'fraction', clock })
    const result = await t.db.transaction((tx) =>
      inbox.handle(tx, { id: 'm-1' } as never, async () => 'done'),
    )
    expect(result).toMatchObject({ duplicate: false })
    await clock.advance(10.5)
    expect(await pruneInbox(t.db, { clock, olderThanMs: 0.5 })).toBe(1)
  })
})
