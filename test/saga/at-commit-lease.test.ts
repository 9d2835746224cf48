// The lease a step's own transaction writes (a step with atCommit work, a reply step's send), on
// real SQLite and PostgreSQL, driven by a ManualClock. The lease must run `leaseMs` from when the
// transaction wrote it, not from before it: the time spent waiting for the transaction (SQLite's
// one writer, held by another transaction) and running the atCommit work inside it was taken
// off the lease, so the next step started on a lease that ran out early (and another worker
// could take the instance over while the step was still running), and a wait longer than the
// lease wrote one already over.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createSagaWorker, defineSaga, getSaga, type SagaEvent } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, holdingSaga, sqliteDb, type TestDb } from './databases.js'

const leaseMs = 1_000

// No renewal fires while the tests advance the clock by less than this: only the step's own
// write sets the lease.
const renewIntervalMs = leaseMs - 1

describe.each(dbTargets)('the lease written by a step transaction, on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_at_commit_lease')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('runs leaseMs from the end of the atCommit work, not from before the transaction', async () => {
    const clock = new ManualClock(0)
    const holding = gate()
    const finish = gate()
    const saga = defineSaga({
      name: `commit-lease-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'slow-commit',
          action: async (ctx) => {
            // 600 ms pass inside the step's transaction (a slow statement, a lock wait).
            ctx.atCommit(() => clock.advance(600))
          },
        },
        {
          name: 'hold',
          action: async () => {
            holding.open()
            await finish.promise
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      renewIntervalMs,
      workerId: 'A',
    })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const id = `commit-lease-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await holding.promise
    try {
      const stored = await getSaga(t.db, id)
      expect(clock.now()).toBe(600)
      // Before: 1000 (0 + leaseMs), 400 ms left when the next step started.
      expect(stored!.leaseExpiresAt).toBe(600 + leaseMs)
    } finally {
      finish.open()
    }
    expect((await running).status).toBe('completed')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, errors: 0 })
    await worker.stop()
  })
})

describe('the lease written by a step transaction that waited for the SQLite writer', () => {
  let t: TestDb

  beforeAll(async () => {
    t = await sqliteDb.open('saga_at_commit_lease_wait')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('runs leaseMs from when the transaction began', async () => {
    const clock = new ManualClock(0)
    const acting = gate()
    const proceed = gate()
    const holding = gate()
    const finish = gate()
    const saga = defineSaga({
      name: `commit-wait-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'commit',
          action: async (ctx) => {
            acting.open()
            await proceed.promise
            ctx.atCommit(async () => {})
          },
        },
        {
          name: 'hold',
          action: async () => {
            holding.open()
            await finish.promise
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      renewIntervalMs,
      workerId: 'A',
    })
    const id = `commit-wait-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await acting.promise
    // Another transaction holds the one writer while the step's transaction queues for it.
    const began = gate()
    const release = gate()
    const blocker = t.db.transaction(async () => {
      began.open()
      await release.promise
    })
    await began.promise
    proceed.open()
    // The step returns and its write queues behind the blocker (promise jobs only).
    await new Promise((resolve) => setImmediate(resolve))
    await clock.advance(700)
    release.open()
    await blocker
    await holding.promise
    try {
      // Before: 1000, written at 700 with 300 ms left.
      expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(700 + leaseMs)
    } finally {
      finish.open()
    }
    expect((await running).status).toBe('completed')
    await worker.stop()
  })
})

describe('a lease renewal that waited for the SQLite writer', () => {
  let t: TestDb

  beforeAll(async () => {
    t = await sqliteDb.open('saga_renewal_wait')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('renews for leaseMs from when its statement runs', async () => {
    const clock = new ManualClock(0)
    const holding = gate()
    const finish = gate()
    const saga = holdingSaga('renew-wait', holding, finish)
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      renewIntervalMs: 100,
      workerId: 'A',
    })
    const id = `renew-wait-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await holding.promise
    const began = gate()
    const release = gate()
    const blocker = t.db.transaction(async () => {
      began.open()
      await release.promise
    })
    await began.promise
    try {
      // The renewal fires at 100 and queues behind the blocker; 400 ms pass meanwhile (no
      // other renewal starts while one is under way).
      await clock.advance(100)
      await clock.advance(400)
    } finally {
      release.open()
    }
    await blocker
    try {
      // Before: 1100, measured when the renewal fired.
      await vi.waitFor(async () =>
        expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(500 + leaseMs),
      )
    } finally {
      finish.open()
    }
    expect((await running).status).toBe('completed')
    await worker.stop()
  })
})
