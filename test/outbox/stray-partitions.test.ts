// Rows of breakwater_outbox_partitions outside 0..63, added or renumbered by hand. A relay claims
// at most its fair share of the free partitions in partition order, so a stray row below 0 took
// a place in it: a relay alone held -1 and 0..62, and partition 63, whose events are in the
// outbox, was never claimed. A relay now claims only the partitions breakwater knows. Real
// SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRelay, OUTBOX_PARTITIONS } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { dbTargets, type OutboxDb, testPublisher, testQueue } from './support.js'

const T0 = 1_700_000_000_000
const every = Array.from({ length: OUTBOX_PARTITIONS }, (_, i) => i)

describe.each(dbTargets)('stray outbox partition rows, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_stray_partitions')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([[-1], [64], [-1000]])(
    'a row for partition %i: a relay alone holds every partition 0..63 and never it',
    async (stray) => {
      await t.db.execute(
        `INSERT INTO breakwater_outbox_partitions (partition_no, token) VALUES (${stray}, 0)`,
      )
      const queue = testQueue(t.db)
      const clock = new ManualClock(T0)
      const relay = createRelay({
        db: t.db,
        publisher: testPublisher(queue.publisher),
        clock,
        leaseMs: 3_000,
        retention: false,
      })
      try {
        await relay.start()
        expect(relay.partitions()).toEqual(every)
        // Still so after its leases were renewed and rebalanced. The advance fires the renewals
        // at once; until one has come back (real statements), the leases from start() have run
        // out by the relay's clock and it lists none.
        await clock.advance(3_000)
        await until(() => relay.partitions().length > 0, 'a renewal')
        expect(relay.partitions()).toEqual(every)
        const [row] = await t.db.query<{ owner: string | null }>(
          `SELECT owner FROM breakwater_outbox_partitions WHERE partition_no = ${stray}`,
        )
        expect(row).toEqual({ owner: null })
      } finally {
        await relay.stop()
        await queue.close()
        await t.db.execute(`DELETE FROM breakwater_outbox_partitions WHERE partition_no = ${stray}`)
        await t.db.execute('DELETE FROM breakwater_outbox_relays')
        await t.db.execute(
          'UPDATE breakwater_outbox_partitions SET owner = NULL, lease_expires_at = NULL',
        )
      }
    },
  )
})
