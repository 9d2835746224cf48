// A relay instance whose id was taken over (it stalled past its heartbeat and another process
// started with the same relayId) has lost everything for good and stops. A lease operation
// still queued behind the one that found out (the renewal timer's, the mark path's, a rebalance)
// must then send nothing. Before, it sent its heartbeat again: a stray write at best, and when
// the new holder's heartbeat had just run out (a short stall of its own), the stale instance took
// the id back and bumped every partition's token, fencing off the live relay (whose next
// heartbeat then found the id taken and stopped it too) while the stale one, already failed,
// published nothing: the outbox stopped.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { OUTBOX_PARTITIONS, outboxRelaysTable, RelayIdInUseError } from '../../src/outbox/index.js'
import { PartitionLeases } from '../../src/outbox/leases.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000

describe.each(dbTargets)(
  'partition leases after the relay id was taken over, on $dialect',
  (target) => {
    let t: OutboxDb

    beforeAll(async () => {
      t = await target.open('leases_after_takeover')
    })
    afterAll(async () => {
      await t?.close()
    })

    it('sends no heartbeat once the id is known lost, and never fences the new holder', async () => {
      const clock = new ManualClock(T0)
      const noWait = async (): Promise<void> => {}
      const stale = new PartitionLeases(t.db, 'same-id', clock, leaseMs)
      await stale.register(noWait)
      await stale.rebalance()
      expect(stale.size).toBe(OUTBOX_PARTITIONS)

      // The stale instance stalls past its heartbeat; a new process takes the id over.
      await clock.advance(leaseMs + 1)
      const fresh = new PartitionLeases(t.db, 'same-id', clock, leaseMs)
      await fresh.register(noWait)
      await fresh.rebalance()
      expect(fresh.size).toBe(OUTBOX_PARTITIONS)

      // The stale instance learns it, and has two more operations queued behind that renewal.
      const found = stale.renew()
      const queuedRenewal = stale.renew()
      const queuedRebalance = stale.rebalance()
      await expect(found).rejects.toBeInstanceOf(RelayIdInUseError)
      // The new holder stalls briefly too: its heartbeat runs out before the queued ones run.
      await clock.advance(leaseMs + 1)
      await expect(queuedRenewal).rejects.toMatchObject({ code: 'RELAY_ID_IN_USE' })
      await expect(queuedRebalance).rejects.toMatchObject({ code: 'RELAY_ID_IN_USE' })
      // And any later one.
      await expect(stale.renew()).rejects.toMatchObject({ code: 'RELAY_ID_IN_USE' })

      // The id is still the new holder's, and so are its partitions: it renews them all.
      const [row] = await t.db.query<{ expires_at: number | string }>(
        `SELECT expires_at FROM ${outboxRelaysTable} WHERE relay_id = $1`,
        ['same-id'],
      )
      // Its own last heartbeat, not one the stale instance sent after it.
      expect(Number(row!.expires_at)).toBe(T0 + leaseMs + 1 + leaseMs)
      expect(await fresh.renew()).toEqual([])
      expect(fresh.size).toBe(OUTBOX_PARTITIONS)
      await fresh.releaseAll()
    })
  },
)
