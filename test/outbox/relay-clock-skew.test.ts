// Clock skew between two relays sharing one PostgreSQL database. Lease ends are written from the
// holder's clock and judged run out on the claimer's, so a claimer whose clock runs ahead by s
// sees a lease end s early. A holder renews every third of leaseMs, so its lease has at least
// leaseMs - leaseMs / 3 left whenever another relay looks: a skew below that never takes a
// renewed lease over, and one above it does, between two renewals (docs/outbox.md, Clocks).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { PartitionLeases } from '../../src/outbox/leases.js'
import { outboxPartitionsTable, outboxRelaysTable } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type OutboxDb, postgresTarget } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000
const renewEveryMs = leaseMs / 3
const noWait = async (): Promise<void> => {}

describe('partition leases on PostgreSQL with the relays’ clocks apart', () => {
  let t: OutboxDb
  let dbB: SqlDriver

  beforeAll(async () => {
    t = await postgresTarget.open('relay_clock_skew')
    dbB = await t.another()
  })
  afterAll(async () => {
    await t?.close()
  })
  beforeEach(async () => {
    await t.db.execute(`UPDATE ${outboxPartitionsTable} SET owner = NULL, lease_expires_at = NULL`)
    await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
  })

  /**
   * Relay A holds all 64 partitions and renews every third of the lease; relay B, its clock
   * `skewMs` ahead, rebalances just before each of A's renewals (the latest a renewed lease is
   * looked at). Returns what B claimed and what A found lost over `rounds` renewals.
   */
  async function skewed(skewMs: number, rounds: number) {
    const clockA = new ManualClock(T0)
    const clockB = new ManualClock(T0 + skewMs)
    const a = new PartitionLeases(t.db, 'relay-a', clockA, leaseMs)
    const b = new PartitionLeases(dbB, 'relay-b', clockB, leaseMs)
    await a.register(noWait)
    expect((await a.rebalance()).claimed).toHaveLength(64)
    await b.register(noWait)
    const claimedByB: number[] = []
    const lostByA: number[] = []
    for (let round = 0; round < rounds; round++) {
      // 1 ms before A's next renewal: the renewed leases have leaseMs - renewEveryMs + 1 left.
      await clockA.advance(renewEveryMs - 1)
      await clockB.advance(renewEveryMs - 1)
      claimedByB.push(...(await b.rebalance()).claimed)
      await clockA.advance(1)
      await clockB.advance(1)
      lostByA.push(...(await a.renew()))
    }
    return { claimedByB, lostByA, a, b }
  }

  it('a relay ahead by less than leaseMs - leaseMs / 3 never takes a renewed lease', async () => {
    const { claimedByB, lostByA, a } = await skewed(leaseMs - renewEveryMs - 100, 6)
    expect(claimedByB).toEqual([])
    expect(lostByA).toEqual([])
    expect(a.size).toBe(64)
  })

  it('a relay ahead by more takes renewed leases over from a live holder', async () => {
    // Not a guarantee but the limit the docs state. A's heartbeat, renewed with its leases, has
    // run out on B's clock too: B counts itself the only live relay and takes all 64 at its
    // first rebalance while A renews on time. A learns it at its next renewal (fenced by the
    // token, so A's marks for them are refused; publishes of the same rows may overlap).
    const { claimedByB, lostByA, a, b } = await skewed(leaseMs - renewEveryMs + 100, 1)
    expect(claimedByB).toHaveLength(64)
    expect([...lostByA].sort((x, y) => x - y)).toEqual([...claimedByB].sort((x, y) => x - y))
    expect(a.size).toBe(0)
    expect(b.size).toBe(64)
  })

  it('a clock stepped back by less than the limit keeps its leases renewed', async () => {
    // An NTP step back of A's clock (Date.now() jumps, timers do not) makes A's lease ends
    // early for B by the step, as a skew would: A keeps them while the step stays below the limit.
    const clockA = new ManualClock(T0)
    const clockB = new ManualClock(T0)
    const a = new PartitionLeases(t.db, 'relay-a', clockA, leaseMs)
    const b = new PartitionLeases(dbB, 'relay-b', clockB, leaseMs)
    await a.register(noWait)
    expect((await a.rebalance()).claimed).toHaveLength(64)
    await b.register(noWait)
    clockA.jump(-(leaseMs - renewEveryMs - 100))
    for (let round = 0; round < 6; round++) {
      await clockA.advance(renewEveryMs - 1)
      await clockB.advance(renewEveryMs - 1)
      expect((await b.rebalance()).claimed).toEqual([])
      await clockA.advance(1)
      await clockB.advance(1)
      expect(await a.renew()).toEqual([])
    }
  })
})
