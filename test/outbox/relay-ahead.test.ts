// The round a relay reads ahead (while the current one is out) holds the later events of the
// current round's aggregates, so it may be published only if the current round went through
// entirely. These tests make a round fail part-way and then fail the database step that
// follows (charging the failed event), and check that the read-ahead round is not published:
// an aggregate's next event must never reach the broker before the one it follows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { StallableDriver } from '../support/stall.js'
import {
  dbTargets,
  delay,
  type OutboxDb,
  pendingCount,
  testPublisher,
  testQueue,
} from './support.js'

const T0 = 1_700_000_000_000

/** The real driver, except that the first run of one statement fails before it runs. */
class FailOnce extends StallableDriver {
  failed = false
  readonly #sql: string

  constructor(inner: SqlDriver, sql: string) {
    super(inner)
    this.#sql = sql
  }

  override query<R = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<R[]> {
    if (sql === this.#sql && !this.failed) {
      this.failed = true
      return Promise.reject(new Error('connection terminated unexpectedly'))
    }
    return super.query<R>(sql, params)
  }
}

describe.each(dbTargets)('relay read-ahead on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('relay_ahead')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('does not publish the round read ahead when charging a failed event of the round fails', async () => {
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'ahead' })
    // Round 1 is [a-0, b-0] (a full round of batchSize / 2), so [a-1, b-1] is read ahead.
    for (const id of ['a-0', 'b-0', 'a-1', 'b-1']) {
      await t.db.transaction((tx) =>
        outbox.enqueue(tx, {
          id,
          aggregateType: 'thing',
          aggregateId: id.slice(0, 1),
          type: 'changed',
          payload: { id },
        }),
      )
    }
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    let rejectA0 = true
    publisher.before = (messages) => {
      if (rejectA0 && messages.some((m) => m.id === 'a-0')) {
        if (messages.length === 1) rejectA0 = false
        throw new BreakwaterError('BROKER_REJECTED', 'the broker refused the message')
      }
    }
    // a-0 is charged; that statement fails (the connection dropped).
    const db = new FailOnce(t.db, outboxStatements[t.db.dialect].charge)
    const relay = createRelay({
      db,
      publisher,
      clock,
      batchSize: 4,
      pollIntervalMs: 10,
      maxPollIntervalMs: 50,
      retryBackoff: { baseDelayMs: 100, maxDelayMs: 100, jitter: 'none' },
      retention: false,
    })
    const events: RelayEvent[] = []
    relay.events.on((e) => events.push(e))
    try {
      await relay.start()
      const deadline = Date.now() + 20_000
      while ((await pendingCount(t.db)) > 0) {
        if (Date.now() > deadline) throw new Error('the outbox never drained')
        await clock.advance(20)
        await delay(2)
      }
      expect(db.failed).toBe(true)
      expect(events.some((e) => e.type === 'error' && e.phase === 'charge')).toBe(true)
      // Per aggregate, the first confirmation of each event follows the enqueue order.
      const firsts = [...new Set(publisher.confirmed)]
      expect(firsts.filter((id) => id.startsWith('a-'))).toEqual(['a-0', 'a-1'])
      expect(firsts.filter((id) => id.startsWith('b-'))).toEqual(['b-0', 'b-1'])
    } finally {
      await relay.stop()
      await queue.close()
    }
  })
})
