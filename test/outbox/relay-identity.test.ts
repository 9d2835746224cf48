// Two relays started with the same relayId must not both own every partition (lease fencing
// cannot tell them apart by owner): the second one finds the id held by another live instance.
// A crashed relay restarted with its old id must come up once the old heartbeat has expired.
// And a relay is started once: start() after stop() says so instead of resolving silently.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import { createRelay, outboxRelaysTable, type Relay } from '../../src/outbox/index.js'
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
      if (e.type === 'stopped' || e.type === 'crashed') void queue.close()
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
