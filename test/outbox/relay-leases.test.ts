// Lease changes whose statement's outcome the relay does not learn (the connection dropped
// after the statement ran): the relay must never go on publishing partitions the database
// no longer gives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createOutbox,
  createRelay,
  outboxRelaysTable,
  partitionOf,
  type RelayEvent,
} from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { StallableDriver } from '../support/stall.js'
import { dbTargets, delay, type OutboxDb, testPublisher, testQueue } from './support.js'

const T0 = 1_700_000_000_000

/** The real driver, except that the first run of one statement runs and then reports failure. */
class LoseReplyOnce extends StallableDriver {
  lost = false
  readonly #sql: string

  constructor(inner: SqlDriver, sql: string) {
    super(inner)
    this.#sql = sql
  }

  override async execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    const result = await super.execute(sql, params)
    if (sql === this.#sql && !this.lost) {
      this.lost = true
      throw new Error('connection terminated after the statement ran')
    }
    return result
  }
}

describe.each(dbTargets)('relay leases on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('relay_leases')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('publishes nothing of the partitions it released when the reply to the release was lost', async () => {
    // 'agg-0' hashes to partition 55, 'agg-2' to 29: with two live relays the first keeps
    // 0-31 and releases 32-63.
    expect([partitionOf('agg-0'), partitionOf('agg-2')]).toEqual([55, 29])
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'leases' })
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    const db = new LoseReplyOnce(t.db, outboxStatements[t.db.dialect].release)
    const relay = createRelay({
      db,
      publisher,
      clock,
      leaseMs: 3_000,
      pollIntervalMs: 10,
      maxPollIntervalMs: 20,
      retryBackoff: { baseDelayMs: 100, maxDelayMs: 100, jitter: 'none' },
      retention: false,
    })
    const events: RelayEvent[] = []
    relay.events.on((e) => events.push(e))
    try {
      await relay.start()
      expect(relay.partitions()).toHaveLength(64)
      // Another relay goes live: the next rebalance releases half, and its reply is lost.
      await t.db.execute(
        `INSERT INTO ${outboxRelaysTable} (relay_id, started_at, expires_at) VALUES ('other', $1, $2)`,
        [T0, T0 + 3_600_000],
      )
      const deadline = Date.now() + 20_000
      while (!db.lost) {
        if (Date.now() > deadline) throw new Error('no release')
        await clock.advance(100)
        await delay(2)
      }
      const owners = await t.db.query<{ partition_no: number; owner: string | null }>(
        'SELECT partition_no, owner FROM breakwater_outbox_partitions WHERE partition_no = 55',
      )
      expect(owners[0]?.owner).toBeNull()
      for (const aggregateId of ['agg-0', 'agg-2']) {
        await t.db.transaction((tx) =>
          outbox.enqueue(tx, {
            id: `${aggregateId}-e`,
            aggregateType: 'thing',
            aggregateId,
            type: 'changed',
            payload: {},
          }),
        )
      }
      relay.wake()
      // Well before the next renewal (every leaseMs / 3), which would learn the truth.
      while (!publisher.confirmed.includes('agg-2-e')) {
        if (Date.now() > deadline) throw new Error('agg-2-e never published')
        await clock.advance(10)
        await delay(2)
      }
      expect(publisher.confirmed).not.toContain('agg-0-e')
      expect(relay.partitions()).not.toContain(55)
    } finally {
      await relay.stop()
      await queue.close()
      await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
    }
  })
})
