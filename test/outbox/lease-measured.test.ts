// A relay's partition leases and heartbeat, on real SQLite and PostgreSQL, driven by a
// ManualClock: each must run `leaseMs` from when its statement runs. They were computed from a
// time taken before the statement waited (for SQLite's one writer, for the one connection of the
// pool), so the wait was taken off what the database holds: after a wait longer than the lease,
// a claim or renewal wrote a lease already over, and another relay (or another instance of the
// id) could take it at once. The relay's own view (validUntil) stays measured from before the
// wait: it must never be later than what the database holds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  OUTBOX_PARTITIONS,
  outboxPartitionsTable,
  outboxRelaysTable,
} from '../../src/outbox/index.js'
import { PartitionLeases } from '../../src/outbox/leases.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  type HeldTransaction,
  holdOpenTransaction,
  whileTransactionHeld,
} from '../support/held-transaction.js'
import { StallableDriver } from '../support/stall.js'
import { dbTargets, type OutboxDb } from './support.js'

const leaseMs = 1_000
// Each test starts its clock this far after the previous one's, so that every lease and
// heartbeat an earlier test wrote has run out.
const testSpanMs = 1_000_000

// Lets queued promise jobs and I/O callbacks run: a statement reaches its wait.
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/**
 * The real driver; once armed, the statement after `sql` (the next one the leases send) waits
 * for the database: when `sql` has run, a transaction is held open until the test commits it.
 */
class HoldAfter extends StallableDriver {
  held: Promise<HeldTransaction> | undefined
  #armed: string | undefined

  arm(sql: string): void {
    this.#armed = sql
  }

  override async query<R = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<R[]> {
    const rows = await super.query<R>(sql, params)
    if (this.#armed !== undefined && sql === this.#armed) {
      this.#armed = undefined
      this.held = holdOpenTransaction(this.inner, async () => {})
      await this.held
    }
    return rows
  }
}

describe.each(dbTargets)(
  'relay leases measured when their statement runs, on $dialect',
  (target) => {
    let t: OutboxDb
    let db: SqlDriver
    let runs = 0

    beforeAll(async () => {
      t = await target.open('outbox_lease_measured')
      // One connection on PostgreSQL, so a test can make the leases' statements wait for it.
      db = await openDatabase(t.url, { postgres: { maxConnections: 1 } })
    })
    afterAll(async () => {
      await db?.close()
      await t?.close()
    })

    const noWait = async (): Promise<void> => {}

    /** A clock past every lease of the earlier tests. */
    const freshClock = (): ManualClock => new ManualClock(++runs * testSpanMs)

    const heartbeatOf = async (relayId: string): Promise<number> => {
      const rows = await t.db.query<{ expires_at: number | string }>(
        `SELECT expires_at FROM ${outboxRelaysTable} WHERE relay_id = $1`,
        [relayId],
      )
      return Number(rows[0]?.expires_at)
    }

    const leasesOf = async (relayId: string): Promise<number[]> => {
      const rows = await t.db.query<{ lease_expires_at: number | string }>(
        `SELECT DISTINCT lease_expires_at FROM ${outboxPartitionsTable} WHERE owner = $1`,
        [relayId],
      )
      return rows.map((r) => Number(r.lease_expires_at))
    }

    /** Runs `fn` while every write of `db` is held, then lets the writes through. */
    const whileWritesHeld = (fn: () => Promise<void>): Promise<void> => whileTransactionHeld(db, fn)

    /**
     * Rebalances `leases` (on `held`) with its claim held back for `waitMs` on `clock`: the
     * claim is sent once the live relays were counted, and waits for the database.
     */
    async function rebalanceWithClaimWaiting(
      leases: PartitionLeases,
      held: HoldAfter,
      clock: ManualClock,
      waitMs: number,
    ): Promise<{ claimed: readonly number[]; askedAt: number }> {
      held.arm(outboxStatements[db.dialect].liveRelays)
      const rebalanced = leases.rebalance()
      while (held.held === undefined) await turn()
      const transaction = await held.held
      const askedAt = clock.now()
      try {
        await turn()
        await clock.advance(waitMs)
      } finally {
        await transaction.commit()
      }
      return { claimed: (await rebalanced).claimed, askedAt }
    }

    it('registers with a heartbeat measured from when its statement runs, not before its wait', async () => {
      const clock = freshClock()
      const start = clock.now()
      const leases = new PartitionLeases(db, `register-${runs}`, clock, leaseMs)
      let registered: Promise<void> | undefined
      await whileWritesHeld(async () => {
        // The heartbeat waits for the database longer than a whole lease.
        registered = leases.register(noWait)
        await turn()
        await clock.advance(1_500)
      })
      await registered
      // Before: start + leaseMs, taken before the wait: written already expired.
      expect(await heartbeatOf(`register-${runs}`)).toBe(start + 1_500 + leaseMs)
    })

    it('renews heartbeat and partitions from when the renewal runs; its own view stays earlier', async () => {
      const clock = freshClock()
      const relayId = `renew-${runs}`
      const leases = new PartitionLeases(db, relayId, clock, leaseMs)
      await leases.register(noWait)
      await leases.rebalance()
      expect(leases.size).toBe(OUTBOX_PARTITIONS)
      await clock.advance(600)
      const asked = clock.now()
      let renewed: Promise<number[]> | undefined
      await whileWritesHeld(async () => {
        // The renewal waits 700 ms for the database: past the leases it renews.
        renewed = leases.renew()
        await turn()
        await clock.advance(700)
      })
      expect(await renewed).toEqual([])
      expect(leases.size).toBe(OUTBOX_PARTITIONS)
      // Before: asked + leaseMs, measured before the wait: 300 ms left when it was written.
      expect(await heartbeatOf(relayId)).toBe(asked + 700 + leaseMs)
      expect(await leasesOf(relayId)).toEqual([asked + 700 + leaseMs])
      // The relay's own view is measured from before the wait: never later than the database's.
      expect(leases.validUntil).toBe(asked + leaseMs)
      await leases.releaseAll()
    })

    it('claims partitions with a lease measured when the claim runs, not before its wait', async () => {
      const clock = freshClock()
      const relayId = `claim-${runs}`
      const held = new HoldAfter(db)
      const leases = new PartitionLeases(held, relayId, clock, leaseMs)
      await leases.register(noWait)
      // The claim waits longer than a whole lease.
      const { claimed, askedAt: claimAsked } = await rebalanceWithClaimWaiting(
        leases,
        held,
        clock,
        1_500,
      )
      expect(claimed).toHaveLength(OUTBOX_PARTITIONS)
      // Before: claimAsked + leaseMs, taken before the wait: written already expired.
      expect(await leasesOf(relayId)).toEqual([claimAsked + 1_500 + leaseMs])
      expect(leases.validUntil).toBeLessThanOrEqual(claimAsked + 1_500 + leaseMs)
      await leases.releaseAll()
    })

    it("takes no other relay's partitions whose leases ran out only while the claim waited", async () => {
      const clock = freshClock()
      const other = new PartitionLeases(t.db, `other-${runs}`, clock, leaseMs)
      await other.register(noWait)
      await other.rebalance()
      expect(other.size).toBe(OUTBOX_PARTITIONS)
      const relayId = `judged-${runs}`
      const held = new HoldAfter(db)
      const leases = new PartitionLeases(held, relayId, clock, leaseMs)
      await leases.register(noWait)
      // The other relay's leases run out while the claim waits (its renewal, say, queued
      // behind the same writer or pool).
      const { claimed } = await rebalanceWithClaimWaiting(leases, held, clock, 1_500)
      // Live when the claim was asked for: none taken (before: half of them, at once).
      expect(claimed).toEqual([])
      expect(await leasesOf(relayId)).toEqual([])
      // Still not renewed at the next rebalance: that one takes them.
      expect((await leases.rebalance()).claimed).toHaveLength(OUTBOX_PARTITIONS)
      await leases.releaseAll()
    })
  },
)
