// Two relays started with the same relayId must not both own every partition (lease fencing
// cannot tell them apart by owner): the second one finds the id held by another live instance.
// A crashed relay restarted with its old id must come up once the old heartbeat has expired.
// And a relay is started once: start() after stop() says so instead of resolving silently.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import {
  createRelay,
  outboxRelaysTable,
  type Relay,
  type RelayEvent,
} from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, delay, type OutboxDb, testPublisher, testQueue } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000

describe.each(dbTargets)('relay identity on $dialect', (target) => {
  let t: OutboxDb
  const open: Relay[] = []

  beforeAll(async () => {
    t = await target.open('relay_identity')
  })
  afterEach(async () => {
    for (const relay of open.splice(0)) await relay.stop().catch(() => {})
    await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
    await t.db.execute(
      'UPDATE breakwater_outbox_partitions SET owner = NULL, lease_expires_at = NULL',
    )
  })
  afterAll(async () => {
    await t?.close()
  })

  function relay(clock: ManualClock, faults?: () => void): Relay {
    const queue = testQueue(t.db)
    const r = createRelay({
      db: t.db,
      publisher: testPublisher(queue.publisher),
      clock,
      relayId: 'same-id',
      leaseMs,
      pollIntervalMs: 10,
      maxPollIntervalMs: 20,
      retention: false,
      ...(faults === undefined ? {} : { faults }),
    })
    open.push(r)
    r.events.on((e) => {
      if (e.type === 'stopped' || e.type === 'crashed' || e.type === 'failed') void queue.close()
    })
    return r
  }

  // Drives the clock from timer to timer until `promise` settles; returns how far it went.
  async function drive(clock: ManualClock, promise: Promise<unknown>): Promise<number> {
    let settled = false
    promise.then(
      () => {
        settled = true
      },
      () => {
        settled = true
      },
    )
    const from = clock.now()
    const deadline = Date.now() + 20_000
    while (!settled) {
      if (Date.now() > deadline) throw new Error('never settled')
      await delay(3)
      const next = clock.nextTimerAt()
      if (next !== undefined && !settled) await clock.advance(Math.max(0, next - clock.now()))
    }
    return clock.now() - from
  }

  it('refuses to start a second live relay with the same id', async () => {
    const clock = new ManualClock(T0)
    const a = relay(clock)
    await a.start()
    expect(a.partitions()).toHaveLength(64)
    const b = relay(clock)
    const started = b.start()
    let settled = false
    started.then(
      () => (settled = true),
      () => (settled = true),
    )
    // The clock moves in small steps, each only once the live relay's heartbeat runs well
    // ahead of it (it renews every leaseMs / 3): the live relay is never seen as expired.
    const deadline = Date.now() + 20_000
    while (!settled) {
      if (Date.now() > deadline) throw new Error('never settled')
      const rows = await t.db.query<{ expires_at: number | string }>(
        `SELECT expires_at FROM ${outboxRelaysTable} WHERE relay_id = 'same-id'`,
      )
      if (Number(rows[0]?.expires_at) - clock.now() > leaseMs / 2) await clock.advance(100)
      await delay(2)
    }
    const error = await started.catch((e: unknown) => e)
    expect(BreakwaterError.is(error) && error.code, String(error)).toBe('RELAY_ID_IN_USE')
    expect(b.state).toBe('stopped')
    expect(b.partitions()).toEqual([])
    expect(a.state).toBe('running')
    expect(a.partitions()).toHaveLength(64)
  })

  it('starts a crashed relay again with its old id, after its heartbeat expired', async () => {
    const clock = new ManualClock(T0)
    const a = relay(clock, () => {
      throw new Error('crash')
    })
    await a.start()
    const deadline = Date.now() + 20_000
    while (a.state !== 'crashed') {
      if (Date.now() > deadline) throw new Error('never crashed')
      await clock.advance(10)
      await delay(3)
    }
    // Only the restarted relay has timers now: the clock moves only by its wait.
    const b = relay(clock)
    const started = b.start()
    const waited = await drive(clock, started)
    await started
    expect(waited).toBeGreaterThan(0)
    expect(waited).toBeLessThanOrEqual(leaseMs + 1)
    expect(b.partitions()).toHaveLength(64)
  })

  it('stops a relay whose id was taken over, with RELAY_ID_IN_USE, leaving the new holder alone', async () => {
    // A stalls past its heartbeat (its clock stands still while B's runs ahead); B, started
    // with the same id, takes the id over. A must not run on forever, publishing nothing.
    const clockA = new ManualClock(T0)
    const a = relay(clockA)
    const seen: RelayEvent[] = []
    a.events.on((e) => seen.push(e))
    await a.start()
    expect(a.partitions()).toHaveLength(64)
    const clockB = new ManualClock(T0 + 5 * leaseMs)
    const b = relay(clockB)
    await b.start()
    expect(b.partitions()).toHaveLength(64)
    const holderBefore = await t.db.query<{ instance: string }>(
      `SELECT instance FROM ${outboxRelaysTable} WHERE relay_id = 'same-id'`,
    )

    const deadline = Date.now() + 20_000
    while (!seen.some((e) => e.type === 'failed')) {
      if (Date.now() > deadline) throw new Error(`never failed: ${JSON.stringify(seen)}`)
      await clockA.advance(leaseMs / 3)
      await delay(3)
    }
    const failed = seen.find((e) => e.type === 'failed')
    const error = failed?.type === 'failed' ? failed.error : undefined
    expect(BreakwaterError.is(error) && error.code, String(error)).toBe('RELAY_ID_IN_USE')
    expect(a.state).toBe('stopped')
    expect(a.partitions()).toEqual([])
    expect(seen.filter((e) => e.type === 'failed')).toHaveLength(1)
    // Its partitions were reported lost, once.
    const lost = seen.flatMap((e) => (e.type === 'partitionsChanged' ? e.lost : []))
    expect(lost.sort((x, y) => x - y)).toEqual(Array.from({ length: 64 }, (_, i) => i))
    // stop() after it resolves; start() says the relay ran.
    await a.stop()
    const again = await a.start().catch((e: unknown) => e)
    expect(BreakwaterError.is(again) && again.code).toBe('RELAY_STOPPED')
    // Nothing of B's was released: its heartbeat and its 64 leases are intact.
    const holderAfter = await t.db.query<{ instance: string }>(
      `SELECT instance FROM ${outboxRelaysTable} WHERE relay_id = 'same-id'`,
    )
    expect(holderAfter).toEqual(holderBefore)
    const held = await t.db.query<{ n: number | string }>(
      `SELECT COUNT(*) AS n FROM breakwater_outbox_partitions WHERE owner = 'same-id' AND lease_expires_at IS NOT NULL`,
    )
    expect(Number(held[0]!.n)).toBe(64)
    expect(b.state).toBe('running')
    expect(b.partitions()).toHaveLength(64)
  })

  it('rejects start() after stop() with RELAY_STOPPED', async () => {
    const clock = new ManualClock(T0)
    const never = relay(clock)
    await never.stop()
    const error = await never.start().catch((e: unknown) => e)
    expect(BreakwaterError.is(error) && error.code).toBe('RELAY_STOPPED')
    expect(never.state).toBe('stopped')

    const once = relay(clock)
    await once.start()
    await once.stop()
    const again = await once.start().catch((e: unknown) => e)
    expect(BreakwaterError.is(again) && again.code).toBe('RELAY_STOPPED')
  })
})
