// A relay whose wall clock steps back (an NTP correction). Its next rebalance was due at a
// wall-clock time, and after a step back of an hour that time was an hour away: the relay
// waited that long (one timer, which a later correction of the clock did not shorten) before
// it looked for free partitions again, so the partitions of a relay that stopped meanwhile
// went unpublished. A rebalance is never further away than its interval.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRelay, outboxRelaysTable, type Relay } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, delay, type OutboxDb, testPublisher, testQueue } from './support.js'

const T0 = 1_700_000_000_000
const hourMs = 3_600_000

describe.each(dbTargets)('relay across a wall-clock step on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('relay_clock_step')
  })
  afterAll(async () => {
    await t?.close()
  })

  // Moves both relays' clocks in small steps, letting their database work settle between
  // them, until `done` or `limitMs` of clock time.
  async function advanceUntil(clocks: ManualClock[], limitMs: number, done: () => boolean) {
    for (let ms = 0; ms < limitMs && !done(); ms += 20) {
      for (const clock of clocks) await clock.advance(20)
      await delay(2)
    }
  }

  it.each([
    ['stays stepped back', 0],
    ['is corrected again', hourMs],
  ])(
    'claims the partitions a stopped relay freed within a few rebalance intervals when the clock %s',
    async (_, correctionMs) => {
      // Each relay has its own clock: only a's steps.
      const clockA = new ManualClock(T0)
      const clockB = new ManualClock(T0)
      const clocks = [clockA, clockB]
      const queue = testQueue(t.db)
      const relays: Relay[] = []
      const relay = (relayId: string, clock: ManualClock) => {
        const r = createRelay({
          db: t.db,
          publisher: testPublisher(queue.publisher),
          clock,
          relayId,
          leaseMs: 1_000,
          pollIntervalMs: 10,
          maxPollIntervalMs: 20,
          retention: false,
        })
        relays.push(r)
        return r
      }
      try {
        const a = relay('a', clockA)
        const b = relay('b', clockB)
        await a.start()
        await b.start()
        await advanceUntil(
          clocks,
          10_000,
          () => a.partitions().length === 32 && b.partitions().length === 32,
        )
        expect([a.partitions().length, b.partitions().length]).toEqual([32, 32])
        // a's leases, renewed on its clock, now end an hour ago for b, which takes them over:
        // a is left without partitions, waiting for its next rebalance.
        clockA.jump(-hourMs)
        await advanceUntil(clocks, 10_000, () => a.partitions().length === 0)
        expect([a.partitions().length, b.partitions().length]).toEqual([0, 64])
        await advanceUntil(clocks, 500, () => false)
        clockA.jump(correctionMs)
        // b frees every partition as it stops; a rebalances every leaseMs / 3.
        await b.stop()
        await advanceUntil(clocks, 2_000, () => a.partitions().length === 64)
        expect(a.partitions()).toHaveLength(64)
      } finally {
        for (const r of relays) await r.stop()
        await queue.close()
        await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
        await t.db.execute('UPDATE breakwater_outbox_partitions SET owner = NULL')
      }
    },
  )
})
