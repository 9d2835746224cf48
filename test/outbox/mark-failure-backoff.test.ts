// A mark that keeps failing (the relay's role lost UPDATE on the outbox, a full disk) while
// reads and publishes succeed: each cycle republishes the batch and fails again. Those cycles
// must back off like any other failed cycles, up to retryBackoff.maxDelayMs, not at the base
// delay for ever because the read of each cycle succeeded. Real SQLite, where a trigger makes
// the mark statement fail; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  delay,
  type OutboxDb,
  pendingCount,
  sqliteTarget,
  testPublisher,
  testQueue,
} from './support.js'

const T0 = 1_700_000_000_000

const failMarks = `CREATE TRIGGER refuse_marks BEFORE UPDATE OF published_at ON breakwater_outbox
BEGIN SELECT RAISE(ABORT, 'marks refused by the test'); END`

describe('a relay whose marks keep failing, on sqlite', () => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await sqliteTarget.open('mark_failure_backoff')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('backs off exponentially up to maxDelayMs, and starts again from the base after a full cycle', async () => {
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'mark-backoff' })
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    // When each publish of an event was confirmed, on the relay's clock.
    const at = new Map<string, number[]>()
    const inner = publisher.publish
    publisher.publish = async (messages, signal) => {
      await inner(messages, signal)
      for (const m of messages) at.set(m.id, [...(at.get(m.id) ?? []), clock.now()])
    }
    const relay = createRelay({
      db: t.db,
      publisher,
      clock,
      pollIntervalMs: 10,
      maxPollIntervalMs: 100,
      retryBackoff: { baseDelayMs: 100, maxDelayMs: 2_000, jitter: 'none' },
      retention: false,
    })
    const events: RelayEvent[] = []
    relay.events.on((e) => events.push(e))
    const gaps = (id: string) => {
      const times = at.get(id) ?? []
      return times.slice(1).map((time, i) => time - times[i]!)
    }
    // Each gap as long as the backoff asks, give or take a few steps of the clock (the relay's
    // I/O may finish a step late on a busy machine).
    const expectGaps = (actual: number[], expected: number[]) => {
      expect(actual.length).toBeGreaterThanOrEqual(expected.length)
      actual.slice(0, expected.length).forEach((gap, i) => {
        expect(gap, `gap ${i} of ${JSON.stringify(actual)}`).toBeGreaterThanOrEqual(expected[i]!)
        expect(gap, `gap ${i} of ${JSON.stringify(actual)}`).toBeLessThanOrEqual(expected[i]! + 50)
      })
    }
    // Advances the clock by `ms` in steps of 10 ms, letting the relay's I/O run in between.
    const advance = async (ms: number) => {
      for (let passed = 0; passed < ms; passed += 10) {
        await clock.advance(10)
        await delay(1)
      }
    }
    const enqueue = (id: string) =>
      t.db.transaction((tx) =>
        outbox.enqueue(tx, { id, aggregateType: 'a', aggregateId: 'mb', type: 't', payload: {} }),
      )
    try {
      await t.db.execute(failMarks)
      await enqueue('mb-1')
      await relay.start()
      await advance(30_000)
      expect(events.some((e) => e.type === 'error' && e.phase === 'mark')).toBe(true)
      // 100, 200, 400, 800, 1600, then 2000 ms apart: about 18 publishes in 30 s, not 300.
      const first = gaps('mb-1')
      expect(at.get('mb-1')!.length).toBeLessThanOrEqual(20)
      expect(first.length).toBeGreaterThan(8)
      expectGaps(first, [100, 200, 400, 800, 1_600, ...first.slice(5).map(() => 2_000)])

      // The marks work again: the event is marked, a full cycle.
      await t.db.execute('DROP TRIGGER refuse_marks')
      await advance(2_500)
      expect(await pendingCount(t.db)).toBe(0)

      // They fail again: the backoff starts again from the base delay.
      await t.db.execute(failMarks)
      await enqueue('mb-2')
      relay.wake()
      await advance(2_000)
      expectGaps(gaps('mb-2'), [100, 200, 400])
    } finally {
      await relay.stop()
      await queue.close()
      await t.db.execute('DROP TRIGGER IF EXISTS refuse_marks')
    }
  })
})
