// The leases a worker writes outside a step's transition, on real SQLite and PostgreSQL, driven
// by a ManualClock: the renewal a step makes when it finds its lease already run out (after a
// pause), the first lease of worker.run(), the leases a claim takes and the periodic renewal.
// Each must run `leaseMs` from when its statement runs, as the transition writes do. They were
// computed from a time taken before the statement waited (for SQLite's one writer, for the one
// pool connection, for a group-commit flush in flight), so the wait was taken off the lease: the
// step then ran on a lease shorter than leaseMs, or on one already over, and another worker could
// take the instance over while it was still running.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Clock } from '../../src/core/clock.js'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaFaults,
  type SagaWorkerOptions,
  startSaga,
} from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { whileTransactionHeld } from '../support/held-transaction.js'
import { until } from '../support/until.js'
import { dbTargets, type TestDb } from './databases.js'

const leaseMs = 1_000
// No renewal timer fires while the tests advance the clock by less than this.
const renewIntervalMs = leaseMs - 1

/** A ManualClock that can also jump without firing timers: a paused process, resumed. */
function pausableClock(manual: ManualClock): Clock & { pause(ms: number): void } {
  let paused = 0
  return {
    now: () => manual.now() + paused,
    setTimeout: (callback, delayMs) => manual.setTimeout(callback, delayMs),
    clearTimeout: (handle) => manual.clearTimeout(handle),
    pause: (ms) => {
      paused += ms
    },
  }
}

/** A step that, once started, waits until `release`: `reached` resolves when it has started. */
function heldStep(name: string) {
  const reached = gate()
  const released = gate()
  return {
    step: {
      name,
      action: async () => {
        reached.open()
        await released.promise
      },
    },
    reached: reached.promise,
    release: released.open,
  }
}

/** A saga of one held step (see heldStep), named after `prefix`. */
function heldSaga(prefix: string) {
  const hold = heldStep('hold')
  const saga = defineSaga({
    name: `${prefix}-${randomUUID().slice(0, 8)}`,
    version: 1,
    steps: [hold.step],
  })
  return { saga, hold }
}

// Lets queued promise jobs and I/O callbacks run: a statement reaches its wait.
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

describe.each(dbTargets)('leases measured when their statement runs, on $dialect', (target) => {
  let t: TestDb
  let db: SqlDriver

  beforeAll(async () => {
    t = await target.open('saga_lease_measured')
    // One connection on PostgreSQL, so a test can make the worker's statements wait for it.
    db = await openDatabase(t.url, { postgres: { maxConnections: 1 } })
  })
  afterAll(async () => {
    await db?.close()
    await t?.close()
  })

  /** A worker on the one-connection `db`, with this file's lease settings. */
  const leaseWorker = (
    clock: Clock,
    sagas: SagaWorkerOptions['sagas'],
    workerId: string,
    faults?: SagaFaults,
  ) =>
    createSagaWorker({
      db,
      sagas,
      clock,
      leaseMs,
      renewIntervalMs,
      workerId,
      ...(faults === undefined ? {} : { faults }),
    })

  it("renews a lease that ran out before a step from when the renewal's statement runs", async () => {
    const manual = new ManualClock(0)
    const clock = pausableClock(manual)
    const committed = gate()
    const resume = gate()
    const hold = heldStep('hold')
    const saga = defineSaga({
      name: `ensure-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'first', action: async () => {} }, hold.step],
    })
    const faults: SagaFaults = async (point, site) => {
      if (point !== 'after-step-commit' || site.step !== 'first') return
      committed.open()
      await resume.promise
    }
    const worker = createSagaWorker({
      db,
      sagas: [saga],
      clock,
      leaseMs,
      renewIntervalMs,
      workerId: 'A',
      faults,
    })
    const id = `ensure-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await committed.promise
    expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(leaseMs)
    await whileTransactionHeld(db, async () => {
      // The process was paused past its lease (no timer has fired yet on resuming): the next
      // step finds the lease over and renews it, and the renewal waits 700 ms for the database.
      clock.pause(1_500)
      resume.open()
      await turn()
      await manual.advance(700)
    })
    await hold.reached
    try {
      // Before: 2500 (1500 + leaseMs), measured before the wait: 300 ms left when the step began.
      expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(2_200 + leaseMs)
    } finally {
      hold.release()
    }
    expect((await running).status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, errors: 0 })
    await worker.stop()
  })

  it("writes run()'s first lease from when its insert goes out, after a flush in flight", async () => {
    const clock = new ManualClock(0)
    const act = heldStep('act')
    const hold = heldStep('hold')
    const ahead = defineSaga({
      name: `ahead-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [act.step],
    })
    const saga = defineSaga({
      name: `first-lease-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [hold.step],
    })
    const worker = createSagaWorker({
      db,
      sagas: [ahead, saga],
      clock,
      leaseMs,
      renewIntervalMs,
      workerId: 'B',
    })
    const before = worker.run(ahead, {})
    await act.reached
    let running: ReturnType<typeof worker.run> | undefined
    const id = `first-lease-${randomUUID()}`
    await whileTransactionHeld(db, async () => {
      // The other instance's write goes out and waits for the database; the new instance's
      // insert queues behind that flush, and 700 ms pass.
      act.release()
      await turn()
      running = worker.run(saga, {}, { id })
      await turn()
      await clock.advance(700)
    })
    await hold.reached
    try {
      // Before: 1000 (0 + leaseMs), taken before the wait: 300 ms left when the step began.
      expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(700 + leaseMs)
    } finally {
      hold.release()
    }
    expect((await running!).status).toBe('completed')
    expect((await before).status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, errors: 0 })
    await worker.stop()
  })

  it('claims an instance with a lease measured when the claim runs, not before its wait', async () => {
    const clock = new ManualClock(0)
    const { saga, hold } = heldSaga('claim')
    const { id } = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    let claimedLease: number | null | undefined
    const faults: SagaFaults = async (point, site) => {
      if (point === 'after-claim' && site.sagaId === id)
        claimedLease = (await getSaga(t.db, id))!.leaseExpiresAt
    }
    const worker = leaseWorker(clock, [saga], 'C', faults)
    let polled: Promise<number> | undefined
    await whileTransactionHeld(db, async () => {
      // The claim waits for the database longer than a whole lease.
      polled = worker.poll()
      await turn()
      await clock.advance(1_500)
    })
    await hold.reached
    try {
      // Before: 1000 (0 + leaseMs), taken before the wait: written already expired at 1500.
      expect(claimedLease).toBe(1_500 + leaseMs)
      expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(1_500 + leaseMs)
    } finally {
      hold.release()
    }
    expect(await polled!).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, errors: 0 })
    await worker.stop()
  })

  it('renews the leases in hand from when the renewal runs, not when its timer fired', async () => {
    const clock = new ManualClock(0)
    const { saga, hold } = heldSaga('renew')
    const worker = leaseWorker(clock, [saga], 'D')
    const id = `renew-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await hold.reached
    expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(leaseMs)
    await whileTransactionHeld(db, async () => {
      // The renewal timer fires at 999; its statement then waits 700 ms for the database.
      await clock.advance(renewIntervalMs)
      await turn()
      await clock.advance(700)
    })
    try {
      await until(
        async () => (await getSaga(t.db, id))!.leaseExpiresAt !== leaseMs,
        'the renewal to be written',
      )
      // Before (PostgreSQL): 1999 (999 + leaseMs), measured before the wait for a connection.
      expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(renewIntervalMs + 700 + leaseMs)
    } finally {
      hold.release()
    }
    expect((await running).status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, errors: 0 })
    await worker.stop()
  })
})
