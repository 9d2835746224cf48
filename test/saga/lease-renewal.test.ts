// Lease renewal on real PostgreSQL, driven by a ManualClock: the one statement that renews every
// instance a worker runs must not wait behind a row that one of the worker's own step
// transactions holds locked (a slow `send` or `atCommit`), or the other instances' leases run out
// meanwhile and are taken over for nothing.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createSagaWorker, defineSaga, getSaga, type SagaEvent } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { holdingSaga, postgresDb, type TestDb } from './databases.js'

// A poll that waits on the database (the shared CI machine is slow while every suite runs).
const DATABASE_WAIT = { timeout: 15_000 }

describe('saga lease renewal on postgres', () => {
  let t: TestDb

  beforeAll(async () => {
    t = await postgresDb.open('saga_lease_renewal')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Renewal rounds to 500 ms: the instance `id`'s lease must be extended in each. */
  async function renewalsGoOn(clock: ManualClock, id: string): Promise<void> {
    while (clock.now() < 500) {
      await clock.advance(100)
      await vi.waitFor(
        async () =>
          expect((await getSaga(t.db, id))!.leaseExpiresAt).toBeGreaterThanOrEqual(
            clock.now() + 900,
          ),
        DATABASE_WAIT,
      )
    }
  }

  it("keeps the other instances' leases while one row is locked by its step's slow commit", async () => {
    const clock = new ManualClock(0)
    const inside = gate()
    const finish = gate()
    const locked = gate()
    const unlock = gate()
    const busy = holdingSaga('busy', inside, finish)
    const slow = defineSaga({
      name: `slow-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'commit',
          action: async (ctx) => {
            // Runs inside the step's transaction, after its fenced write: the row stays locked
            // until the test lets the transaction commit.
            ctx.atCommit(async () => {
              locked.open()
              await unlock.promise
            })
            return { done: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [busy, slow],
      clock,
      leaseMs: 1_000,
      renewIntervalMs: 100,
      workerId: 'A',
    })
    // Renewal rounds while the slow commit holds its row: the busy instance's lease is extended
    // each time (before, the renewal waited for the lock and renewed nothing).
    const busyId = `busy-${randomUUID()}`
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const holding = worker.run(busy, {}, { id: busyId })
    await inside.promise
    const committing = worker.run(slow, {})
    await locked.promise
    try {
      await renewalsGoOn(clock, busyId)
    } finally {
      // Also on failure: an open transaction would keep the database from being dropped.
      unlock.open()
      finish.open()
    }

    // The locked instance was passed over, not called lost: its commit goes through.
    const outcome = await committing
    expect(outcome.status).toBe('completed')
    expect((await holding).status).toBe('completed')
    expect((await getSaga(t.db, busyId))!.status).toBe('completed')
    expect(events.map((e) => e.type)).not.toContain('lease-lost')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, completed: 2, errors: 0 })
    await worker.stop()
  })

  // A reply insert (deliverReply, in an inbox's transaction still open while a duplicate's handler
  // finishes) holds FOR KEY SHARE on the instance. The renewal locked FOR UPDATE SKIP LOCKED,
  // which that share lock blocks, so it passed the instance over for as long as the transaction
  // stayed open, and its lease ran out under a running step.
  it("renews a running instance's lease while another transaction holds a reply insert's share lock on it", async () => {
    const clock = new ManualClock(0)
    const inside = gate()
    const finish = gate()
    const busy = holdingSaga('shared', inside, finish)
    const worker = createSagaWorker({
      db: t.db,
      sagas: [busy],
      clock,
      leaseMs: 1_000,
      renewIntervalMs: 100,
      workerId: 'A',
    })
    const busyId = `shared-${randomUUID()}`
    const holding = worker.run(busy, {}, { id: busyId })
    await inside.promise
    const shared = gate()
    const release = gate()
    // The lock insertReply's EXISTS (... FOR KEY SHARE) takes, held as its transaction is.
    const share = t.db.transaction(async (tx) => {
      await tx.query('SELECT 1 FROM breakwater_sagas WHERE id = $1 FOR KEY SHARE', [busyId])
      shared.open()
      await release.promise
    })
    await shared.promise
    try {
      await renewalsGoOn(clock, busyId)
    } finally {
      release.open()
      await share
      finish.open()
    }
    expect((await holding).status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, completed: 1, errors: 0 })
    await worker.stop()
  })
})
