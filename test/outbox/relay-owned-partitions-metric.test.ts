// The relay's ownedPartitions figure (breakwater_relay_owned_partitions in `breakwater relay`'s
// /metrics) must say what the relay holds. A relay cut off from its database (its statements
// hang) cannot renew; once its leases have run out by its own clock another relay takes the
// partitions over. It used to go on reporting all of them until its database came back: two
// relays each said they held the 64 partitions, and an alert on their sum saw 128.
// relay.partitions() had the same fault: it listed partitions the relay may no longer publish.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRelay, OUTBOX_PARTITIONS, outboxRelaysTable } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { StallableDriver } from '../support/stall.js'
import { dbTargets, type OutboxDb, testQueue } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000

// What both relays of a test share; each adds its database and id.
function relayOptions(clock: ManualClock, queue: ReturnType<typeof testQueue>) {
  return {
    publisher: queue.publisher,
    clock,
    leaseMs,
    pollIntervalMs: 10,
    maxPollIntervalMs: 20,
    retention: false,
  } as const
}

describe.each(dbTargets)('relay owned partitions figure on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('relay_owned_partitions')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('counts no partition whose lease ran out while the database was unreachable', async () => {
    const clock = new ManualClock(T0)
    const queue = testQueue(t.db)
    const cutOff = new StallableDriver(t.db)
    const options = relayOptions(clock, queue)
    const a = createRelay({ ...options, db: cutOff, relayId: 'cut-off' })
    const b = createRelay({ ...options, db: t.db, relayId: 'takes-over' })
    try {
      await a.start()
      expect(a.metrics().ownedPartitions).toBe(OUTBOX_PARTITIONS)

      cutOff.stall()
      await clock.advance(leaseMs + 1)
      // Its leases have run out: the other relay takes every partition.
      await b.start()
      expect(b.metrics().ownedPartitions).toBe(OUTBOX_PARTITIONS)
      const held = await t.db.query<{ owner: string | null }>(
        'SELECT owner FROM breakwater_outbox_partitions',
      )
      expect(held.every((row) => row.owner === 'takes-over')).toBe(true)

      expect(a.metrics().ownedPartitions).toBe(0)
    } finally {
      cutOff.resume()
      await a.stop()
      await b.stop()
      await queue.close()
      await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
    }
  })

  it('lists no partition in partitions() once its leases ran out unrenewed', async () => {
    const clock = new ManualClock(T0)
    const queue = testQueue(t.db)
    const cutOff = new StallableDriver(t.db)
    const a = createRelay({ ...relayOptions(clock, queue), db: cutOff, relayId: 'cut-off' })
    const every = Array.from({ length: OUTBOX_PARTITIONS }, (_, p) => p)
    try {
      await a.start()
      expect(a.partitions()).toEqual(every)

      cutOff.stall()
      // Its renewals hang; the leases from start() still run for a moment by its clock.
      await clock.advance(leaseMs - 1)
      expect(a.partitions()).toEqual(every)
      await clock.advance(2)
      // Run out: another relay may take them over; the relay cannot know yet, nor publish.
      expect(a.partitions()).toEqual([])
      expect(a.metrics().ownedPartitions).toBe(0)
    } finally {
      cutOff.resume()
      await a.stop()
      await queue.close()
      await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
    }
  })
})
