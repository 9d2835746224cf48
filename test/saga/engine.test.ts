// The saga state machine on real SQLite and PostgreSQL, driven by a ManualClock: retries with
// persisted delays, compensation that parks, operator retry and cancel, timers that survive a
// restart, fencing of a worker whose lease was taken over, versioned definitions, atCommit.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  listSagas,
  retrySaga,
  type SagaEvent,
  SagaStateConflictError,
  startSaga,
} from '../../src/saga/index.js'
import { sagaStatements } from '../../src/saga/sql.js'
import { claimInstances, stringListParam, writeBatch } from '../../src/saga/store.js'
import type { SqlTransaction } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import {
  countRows,
  dbTargets,
  effectLog,
  holdingSaga,
  leaseFrom,
  type TestDb,
} from './databases.js'

/** A retryable failure, as a 503 would be. */
function transient(message: string): Error {
  return Object.assign(new Error(message), { status: 503 })
}

const noopAction = async () => undefined
// A poll that waits on the database: the shared CI machine can take seconds per round trip while
// every other suite runs, so the default one-second bound would fail a correct worker.
const DATABASE_WAIT = { timeout: 15_000 }

describe.each(dbTargets)('saga engine on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_engine')
    await log.create(t.db)
    // A row that breaks the transaction at COMMIT (a deferred foreign key without its parent):
    // the database refuses the step's write, while the atCommit work itself succeeded.
    await t.db.execute('CREATE TABLE commit_parent (id INTEGER PRIMARY KEY)')
    await t.db.execute(
      'CREATE TABLE commit_breaker (parent INTEGER REFERENCES commit_parent (id) DEFERRABLE INITIALLY DEFERRED)',
    )
  })
  afterAll(async () => {
    await t?.close()
  })

  const log = effectLog('effects')
  const effects = (sagaId: string) => log.read(t.db, sagaId)
  const effect = (sagaId: string, what: string) => log.record(t.db, sagaId, what)

  /** A two-step saga whose first step waits, once inside, until the test opens `finish`. */
  const heldTwoSteps = (prefix: string) => {
    const inside = gate()
    const finish = gate()
    const saga = defineSaga({
      name: `${prefix}-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'one',
          action: async () => {
            inside.open()
            await finish.promise
            return { one: 1 }
          },
        },
        { name: 'two', action: async () => ({ two: 2 }) },
      ],
    })
    return { saga, inside, finish }
  }

  it('retries a transient failure after the backoff delay, persisted, and records every attempt', async () => {
    const clock = new ManualClock(1_000_000)
    let calls = 0
    const saga = defineSaga({
      name: `retrying-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'flaky',
          retry: { maxAttempts: 4, baseDelayMs: 500, jitter: 'none' },
          action: async () => {
            calls++
            if (calls < 3) throw transient(`down ${calls}`)
            return { ok: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('running')
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(1_000_500)
    await clock.advance(499)
    expect(await worker.poll()).toBe(0)
    await clock.advance(1)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(1_001_500) // 500 ms, then 1 s
    await clock.advance(1_000)
    expect(await worker.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'completed', context: { ok: true } })
    expect(instance!.steps[0]).toMatchObject({ status: 'completed', attempts: 3 })
    const timeline = await getSagaTimeline(t.db, id)
    expect(timeline.map((e) => `${e.kind}#${e.attempt ?? ''}`)).toEqual([
      'step-failed#1',
      'step-failed#2',
      'step-completed#3',
      'completed#',
    ])
    expect(timeline[0]!.detail).toMatchObject({ error: { message: 'down 1' }, retryAt: 1_000_500 })
  })

  it('fails a step for good when its attempts are spent and compensates what completed', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `spent-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'a')
          },
          compensation: async (ctx) => {
            await effect(ctx.sagaId, 'undo-a')
          },
        },
        {
          name: 'b',
          retry: { maxAttempts: 2, baseDelayMs: 10, jitter: 'none' },
          action: async () => {
            throw transient('b is down')
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await clock.advance(10)
    await worker.poll()
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('compensated')
    expect(instance!.reason).toBe('step "b" failed after 2 attempts: Error: b is down')
    expect(await effects(id)).toEqual(['a', 'undo-a'])
  })

  it('retries a failing compensation with backoff, parks the saga as failed, and resumes on retrySaga', async () => {
    const clock = new ManualClock(0)
    let refundWorks = false
    const saga = defineSaga({
      name: `parking-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'charge')
            return { chargeId: 'c1' }
          },
          compensation: async (ctx) => {
            if (!refundWorks) throw new Error(`refund of ${ctx.context.chargeId} refused`)
            await effect(ctx.sagaId, 'refund')
          },
          compensationRetry: { maxAttempts: 3, baseDelayMs: 100, jitter: 'none' },
        },
        {
          name: 'ship',
          action: async () => {
            throw Object.assign(new Error('undeliverable'), { status: 422 })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect((await getSaga(t.db, id))!.status).toBe('compensating')
    await clock.advance(100)
    await worker.poll()
    await clock.advance(200)
    await worker.poll()
    const parked = await getSaga(t.db, id)
    expect(parked!.status).toBe('failed')
    expect(parked!.reason).toContain('compensation of step "charge" failed after 3 attempts')
    expect(parked!.reason).toContain('refund of c1 refused')
    expect(parked!.reason).toContain('step "ship" failed')
    expect(await listSagas(t.db, { status: 'failed', name: saga.name })).toHaveLength(1)
    // Parked means parked: no worker picks it up.
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(0)

    await expect(cancelSaga(t.db, id)).rejects.toBeInstanceOf(SagaStateConflictError)
    refundWorks = true
    await retrySaga(t.db, id, { by: 'alice', reason: 'refunds fixed', clock })
    await expect(retrySaga(t.db, id)).rejects.toThrow(/only a parked/)
    expect(await worker.poll()).toBe(1)
    const resumed = await getSaga(t.db, id)
    expect(resumed!.status).toBe('compensated')
    expect(await effects(id)).toEqual(['charge', 'refund'])
    const kinds = (await getSagaTimeline(t.db, id)).map((e) => e.kind)
    expect(kinds).toContain('parked')
    expect(kinds.indexOf('retry-requested')).toBeGreaterThan(kinds.indexOf('parked'))
    expect(kinds.at(-1)).toBe('compensated')
  })

  it('a wait of one hour is persisted: after a restart it fires once, when due', async () => {
    const clock = new ManualClock(5_000_000)
    const hour = 3_600_000
    const saga = defineSaga({
      name: `cool-off-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'reserve')
          },
        },
        { name: 'cool-off', sleepMs: hour },
        {
          name: 'ship',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'ship')
          },
        },
      ],
    })
    const first = createSagaWorker({ db: t.db, sagas: [saga], clock, workerId: 'before-restart' })
    const { id, status } = await first.run(saga, {})
    expect(status).toBe('running')
    const waiting = await getSaga(t.db, id)
    expect(waiting!.nextRunAt).toBe(5_000_000 + hour)
    expect(waiting!.leaseOwner).toBeUndefined()
    await first.stop()

    // "Restart": a new connection and a new worker, nothing in memory from the first.
    const db2 = await t.reopen()
    // A long poll interval: advancing an hour fires every poll timer on the way.
    const second = createSagaWorker({
      db: db2,
      sagas: [saga],
      clock,
      workerId: 'after-restart',
      pollIntervalMs: 60_000,
      // Each advance below moves the clock 60 s, past any short lease: with the default
      // (800 ms) an advance made while 'ship' ran expired its lease, and the next poll ran the
      // step a second time. The lease is not what this test is about.
      leaseMs: 10 * hour,
    })
    await second.start()
    try {
      await clock.advance(hour - 1_000)
      expect(await effects(id)).toEqual(['reserve'])
      // Each round lets the poll loop's database round trip finish, then fires its next timer.
      await vi.waitFor(async () => {
        await clock.advance(60_000)
        expect((await getSaga(t.db, id))!.status).toBe('completed')
      }, DATABASE_WAIT)
      expect((await getSaga(t.db, id))!.status).toBe('completed')
      await clock.advance(hour)
    } finally {
      await second.stop()
    }
    expect(await effects(id)).toEqual(['reserve', 'ship'])
    const timeline = await getSagaTimeline(t.db, id)
    const waited = timeline.find((e) => e.kind === 'step-completed' && e.step === 'cool-off')
    expect(waited!.worker).toBe('after-restart')
    expect(waited!.at).toBeGreaterThanOrEqual(5_000_000 + hour)
  })

  it('a timer whose time passed while no worker ran fires once at the next worker’s first poll', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `late-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'wait', waitUntil: (ctx) => ctx.clock.now() + 3_600_000 },
        {
          name: 'after',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'after')
          },
        },
      ],
    })
    const { id } = await createSagaWorker({ db: t.db, sagas: [saga], clock }).run(saga, {})
    await clock.advance(10 * 3_600_000)
    const later = createSagaWorker({ db: await t.reopen(), sagas: [saga], clock })
    expect(await later.poll()).toBe(1)
    expect(await later.poll()).toBe(0)
    expect(await effects(id)).toEqual(['after'])
  })

  it('a waitUntil that keeps failing transiently uses up its attempts, then compensates', async () => {
    const clock = new ManualClock(0)
    let calls = 0
    const saga = defineSaga({
      name: `wait-fails-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          action: noopAction,
          compensation: async (ctx) => {
            await effect(ctx.sagaId, 'undo-a')
          },
        },
        {
          name: 'wait',
          waitUntil: () => {
            calls++
            throw transient(`calendar down ${calls}`)
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    // The default retry of a step: 3 attempts. Without a bound this would go on forever.
    for (let round = 0; round < 10; round++) {
      await clock.advance(60_000)
      await worker.poll()
    }
    expect(calls).toBe(3)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('step "wait" failed after 3 attempts')
    expect(instance!.steps[1]).toMatchObject({ status: 'failed', attempts: 3 })
    expect(await effects(id)).toEqual(['undo-a'])
  })

  it('cancel compensates a running saga (woken from its wait) and ends it cancelled', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `cancel-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'book',
          action: async (ctx) => {
            await effect(ctx.sagaId, 'book')
          },
          compensation: async (ctx) => {
            await effect(ctx.sagaId, `unbook (${ctx.reason})`)
          },
        },
        { name: 'wait', sleepMs: 86_400_000 },
        { name: 'never', action: async () => ({ ran: true }) },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await cancelSaga(t.db, id, { by: 'bob', reason: 'customer changed their mind', clock })
    expect((await getSaga(t.db, id))!.cancelRequested).toBe(true)
    expect(await worker.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('cancelled')
    // The operator's reason is the compensation's reason (and the saga's).
    expect(instance!.reason).toBe('cancel requested: customer changed their mind')
    expect(await effects(id)).toEqual([
      'book',
      'unbook (cancel requested: customer changed their mind)',
    ])
    await expect(cancelSaga(t.db, id)).rejects.toThrow(/only a running saga/)
    await expect(cancelSaga(t.db, 'no-such-saga')).rejects.toThrow(/No saga instance/)
  })

  it('refuses a waitUntil time past what an epoch-millisecond column and Date can hold', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `far-wait-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'book', action: noopAction, compensation: noopAction },
        // Nanoseconds by mistake: beyond PostgreSQL's BIGINT, a write that can never succeed.
        { name: 'until', waitUntil: () => 1e19 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const outcome = await worker.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toMatch(/^step "until" failed: InvalidOptionError: .*waitUntil/)
    expect(events.filter((e) => e.type === 'error')).toEqual([])
  })

  it('refuses a sleep that would end past Date’s range when reached, naming sleepMs', async () => {
    const clock = new ManualClock(Date.now())
    const saga = defineSaga({
      name: `far-sleep-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'book', action: noopAction, compensation: noopAction },
        // The longest sleep a declaration takes: it fits only from the epoch on.
        { name: 'sleep', sleepMs: 8_640_000_000_000_000 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const outcome = await worker.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toMatch(
      /^step "sleep" failed: InvalidOptionError: sleepMs of step "sleep"/,
    )
    expect((await getSaga(t.db, outcome.id))!.nextRunAt).toBeLessThanOrEqual(clock.now())
  })

  it('a cancel that arrives during an attempt is not put off by that attempt’s retry delay', async () => {
    const clock = new ManualClock(0)
    const inside = gate()
    const fail = gate()
    const saga = defineSaga({
      name: `cancel-retry-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'reserve', action: async () => ({ reserved: true }), compensation: noopAction },
        {
          name: 'charge',
          retry: { maxAttempts: 5, baseDelayMs: 60_000, jitter: 'none' },
          action: async () => {
            inside.open()
            await fail.promise
            throw transient('payments busy')
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const id = `cancel-retry-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await inside.promise
    await cancelSaga(t.db, id, { clock })
    fail.open()
    expect((await running).status).toBe('running')
    // No time passes: the cancel is due now, not after the minute of backoff.
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'cancelled' })
  })

  it('fences a stale worker: after another took over its expired lease, its writes are refused', async () => {
    // Worker A's clock stands still (a paused process); B's is past A's lease.
    const clockA = new ManualClock(0)
    const clockB = new ManualClock(10_000)
    const entered = gate()
    const releaseA = gate()
    const invocations: string[] = []
    const saga = defineSaga({
      name: `fenced-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'pay',
          action: async (ctx) => {
            invocations.push(`${ctx.attempt}:${ctx.idempotencyKey}`)
            if (invocations.length === 1) {
              entered.open()
              await releaseA.promise
            }
            await effect(ctx.sagaId, `pay by attempt ${ctx.attempt}`)
            return { paidBy: ctx.attempt }
          },
        },
        { name: 'after', action: async () => ({ after: true }) },
      ],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock: clockA })
    const a = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: clockA,
      leaseMs: 1_000,
      workerId: 'A',
    })
    const b = createSagaWorker({
      db: await t.reopen(),
      sagas: [saga],
      clock: clockB,
      leaseMs: 1_000,
      workerId: 'B',
    })
    const eventsA: SagaEvent[] = []
    a.events.on((e) => eventsA.push(e))
    const pollA = a.poll()
    await entered.promise
    expect((await getSaga(t.db, id))!.leaseOwner).toBe('A')
    expect(await b.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    const before = await getSaga(t.db, id)
    releaseA.open()
    await pollA
    // A's action ran to its end (it cannot be stopped), but its state write was refused.
    const after = await getSaga(t.db, id)
    expect(after).toEqual(before)
    expect(after!.context).toEqual({ paidBy: 2, after: true })
    expect(a.metrics().leaseLost).toBe(1)
    expect(eventsA.map((e) => e.type)).toContain('lease-lost')
    expect(invocations).toEqual([`1:${id}:pay`, `2:${id}:pay`])
    const timeline = await getSagaTimeline(t.db, id)
    expect(timeline.every((e) => e.worker === 'B')).toBe(true)
    expect(timeline[0]).toMatchObject({ kind: 'lease-expired', detail: { previousOwner: 'A' } })
  })

  it('run() reports the stored state when its last write failed or was fenced off', async () => {
    const clockA = new ManualClock(0)
    const clockB = new ManualClock(10_000)
    const entered = gate()
    const releaseA = gate()
    let fenced = 0
    let brokenCommits = 1
    const saga = defineSaga({
      name: `reported-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'only',
          action: async (ctx) => {
            if ((ctx.input as { fenced?: boolean }).fenced && fenced++ === 0) {
              entered.open()
              await releaseA.promise
            }
            ctx.atCommit(async (tx) => {
              if ((ctx.input as { broken?: boolean }).broken && brokenCommits-- > 0)
                await tx.execute('INSERT INTO commit_breaker (parent) VALUES (1)')
            })
            return { by: ctx.attempt }
          },
        },
      ],
    })
    const a = createSagaWorker({ db: t.db, sagas: [saga], clock: clockA, workerId: 'A' })
    // The commit of the only step fails in the database: nothing of it was stored.
    const broken = await a.run(saga, { broken: true })
    expect(broken).toMatchObject({ created: true, status: 'running', context: {} })
    expect(await getSaga(t.db, broken.id)).toMatchObject({ status: 'running', context: {} })
    // A is overtaken while running its step: B takes over, sees the cancel and ends it first.
    const running = a.run(saga, { fenced: true }, { id: `fenced-${randomUUID()}` })
    await entered.promise
    const b = createSagaWorker({ db: await t.reopen(), sagas: [saga], clock: clockB })
    const [fencedRow] = await t.db.query<{ id: string }>(
      "SELECT id FROM breakwater_sagas WHERE id LIKE 'fenced-%' AND lease_owner = 'A'",
    )
    await cancelSaga(t.db, fencedRow!.id, { clock: clockB })
    expect(await b.poll()).toBe(2) // and the one A gave up, its lease over on B's clock
    expect((await getSaga(t.db, broken.id))!.status).toBe('completed')
    releaseA.open()
    const outcome = await running
    expect(outcome).toMatchObject({ status: 'cancelled', reason: 'cancel requested' })
    expect((await getSaga(t.db, outcome.id))!.status).toBe('cancelled')
  })

  it('renews only the instances it runs: one given up after a database error is free at its lease end', async () => {
    const clock = new ManualClock(0)
    const inside = gate()
    const finish = gate()
    let brokenCommits = 1
    const busy = holdingSaga('busy', inside, finish)
    const broken = defineSaga({
      name: `broken-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'write',
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              // The first commit fails in the database: the worker gives the instance up.
              if (brokenCommits-- > 0)
                await tx.execute('INSERT INTO commit_breaker (parent) VALUES (1)')
            })
          },
        },
      ],
    })
    const a = createSagaWorker({
      db: t.db,
      sagas: [busy, broken],
      clock,
      leaseMs: 1_000,
      renewIntervalMs: 100,
      workerId: 'A',
    })
    const busyId = `busy-${randomUUID()}`
    const holding = a.run(busy, {}, { id: busyId })
    await inside.promise
    const { id } = await a.run(broken, {})
    expect(a.metrics().errors).toBe(1)
    // A goes on running (and renewing) the busy instance well past the broken one's lease end.
    while (clock.now() < 1_500) {
      await clock.advance(100)
      await vi.waitFor(
        async () =>
          expect((await getSaga(t.db, busyId))!.leaseExpiresAt).toBeGreaterThanOrEqual(
            clock.now() + 900,
          ),
        DATABASE_WAIT,
      )
    }
    expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(1_000)
    const b = createSagaWorker({ db: await t.reopen(), sagas: [broken], clock, workerId: 'B' })
    expect(await b.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    finish.open()
    await holding
    expect((await getSaga(t.db, busyId))!.status).toBe('completed')
  })

  it('fences each instance of a worker on its own: the stolen one is refused, its neighbour kept', async () => {
    const clockA = new ManualClock(0)
    const clockB = new ManualClock(10_000)
    const entered: string[] = []
    const release = gate()
    const bothIn = gate()
    const saga = defineSaga({
      name: `batch-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'work',
          action: async (ctx) => {
            if (ctx.attempt === 1) {
              entered.push(ctx.sagaId)
              if (entered.length === 2) bothIn.open()
              await release.promise
            }
            return { by: ctx.attempt === 1 ? 'A' : 'B' }
          },
        },
      ],
    })
    const first = await startSaga(t.db, saga, {}, { clock: clockA })
    const second = await startSaga(t.db, saga, {}, { clock: clockA })
    const a = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: clockA,
      leaseMs: 1_000,
      workerId: 'A',
    })
    const b = createSagaWorker({
      db: await t.reopen(),
      sagas: [saga],
      clock: clockB,
      leaseMs: 1_000,
      workerId: 'B',
      concurrency: 1,
    })
    const pollA = a.poll()
    await bothIn.promise
    expect(await b.poll()).toBe(1) // B takes one of A's two expired leases over
    const stolen = (await getSaga(t.db, first.id))!.leaseOwner === undefined ? first.id : second.id
    const kept = stolen === first.id ? second.id : first.id
    release.open() // both of A's actions finish together
    await pollA
    expect(a.metrics().leaseLost).toBe(1)
    expect((await getSaga(t.db, stolen))!.context).toEqual({ by: 'B' })
    expect((await getSaga(t.db, kept))!.context).toEqual({ by: 'A' })
    expect((await getSagaTimeline(t.db, stolen)).map((e) => e.worker)).toEqual(['B', 'B', 'B'])
    expect((await getSagaTimeline(t.db, kept)).map((e) => e.worker)).toEqual(['A', 'A'])
  })

  it('a group commit fences each row: the stale write of a batch is refused, the others written', async () => {
    const saga = defineSaga({
      name: `group-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'x', action: noopAction }],
    })
    const keys = stringListParam(t.db, [saga.key])
    const one = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    const two = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    const claimed = await claimInstances(t.db, 'A', leaseFrom(0, 1_000), keys, 10)
    expect(claimed.map((r) => r.id).sort()).toEqual([one.id, two.id].sort())
    // B takes `two` over after A's lease ran out.
    await t.db.execute('UPDATE breakwater_sagas SET lease_expires_at = 0 WHERE id = $1', [two.id])
    expect(
      (await claimInstances(t.db, 'B', leaseFrom(500, 4_500), keys, 10)).map((r) => r.id),
    ).toEqual([two.id])
    const write = (row: (typeof claimed)[number]) => ({
      id: row.id,
      token: Number(row.lease_token),
      status: 'completed',
      context: '{"by":"A"}',
      steps: row.steps,
      stepIndex: 1,
      attempt: 1,
      nextRunAt: 3_000,
      leaseOwner: null,
      leaseExpiresAt: null,
      reason: null,
      now: 3_000,
      finishedAt: 3_000,
      events: [
        { at: 3_000, kind: 'step-completed', step: 'x', attempt: 1, worker: 'A', detail: null },
        { at: 3_000, kind: 'completed', step: null, attempt: null, worker: 'A', detail: null },
      ],
    })
    const byId = new Map(claimed.map((r) => [r.id, r]))
    const { written } = await writeBatch(
      t.db,
      [],
      [write(byId.get(one.id)!), write(byId.get(two.id)!)],
    )
    expect(written).toEqual([{ cancelRequested: 0, leaseExpiresAt: null }, undefined])
    expect((await getSaga(t.db, one.id))!.status).toBe('completed')
    expect(await getSaga(t.db, two.id)).toMatchObject({ status: 'running', leaseOwner: 'B' })
    expect((await getSagaTimeline(t.db, one.id)).map((e) => e.kind)).toEqual([
      'step-completed',
      'completed',
    ])
    expect(await getSagaTimeline(t.db, two.id)).toEqual([])
  })

  it('a group commit fences by token: a stale and a fresh write of one instance in one batch', async () => {
    // One worker re-claimed an instance whose lease ran out while its old run still went on
    // (renewals failing): both runs' writes can meet in one flush.
    const saga = defineSaga({
      name: `group-same-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'x', action: noopAction }],
    })
    const keys = stringListParam(t.db, [saga.key])
    const { id } = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    const [stale] = await claimInstances(t.db, 'A', leaseFrom(0, 1_000), keys, 10)
    const [fresh] = await claimInstances(t.db, 'A', leaseFrom(2_000, 1_000), keys, 10)
    expect([Number(stale!.lease_token), Number(fresh!.lease_token)]).toEqual([1, 2])
    const write = (row: typeof stale, by: string) => ({
      id,
      token: Number(row!.lease_token),
      status: 'running',
      context: JSON.stringify({ by }),
      steps: row!.steps,
      stepIndex: 0,
      attempt: 1,
      nextRunAt: 2_500,
      leaseOwner: 'A',
      leaseExpiresAt: 3_500,
      reason: null,
      now: 2_500,
      finishedAt: null,
      events: [{ at: 2_500, kind: 'released', step: 'x', attempt: 1, worker: by, detail: null }],
    })
    const { written } = await writeBatch(t.db, [], [write(stale, 'stale'), write(fresh, 'fresh')])
    expect(written).toEqual([undefined, { cancelRequested: 0, leaseExpiresAt: 3_500 }])
    expect((await getSaga(t.db, id))!.context).toEqual({ by: 'fresh' })
    expect((await getSagaTimeline(t.db, id)).map((e) => e.worker)).toEqual(['fresh'])
  })

  it('refuses an input or a reply JSON cannot hold with InvalidOptionError, storing nothing', async () => {
    const saga = defineSaga({
      name: `unjsonable-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'x', action: noopAction }],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    for (const input of [() => 1, Symbol('input')]) {
      await expect(startSaga(t.db, saga, input)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'input',
      })
      await expect(worker.run(saga, input)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'input',
      })
    }
    expect(await countRows(t.db, 'breakwater_sagas', 'WHERE name = $1', [saga.name])).toBe(0)
    const { id } = await startSaga(t.db, saga, {})
    await expect(deliverReply(t.db, id, 'x', () => 1)).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      option: 'reply',
    })
    expect(await countRows(t.db, 'breakwater_saga_replies', 'WHERE saga_id = $1', [id])).toBe(0)
  })

  it('reports plain JSON events and counts them', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `events-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'one', action: async () => ({ one: 1 }), compensation: async () => undefined },
        {
          name: 'two',
          action: async () => {
            throw Object.assign(new Error('no'), { status: 400 })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, workerId: 'events' })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    await worker.run(saga, {})
    expect(events.map((e) => `${e.type}:${e.step ?? ''}`)).toEqual([
      'step-started:one',
      'step-completed:one',
      'step-started:two',
      'step-failed:two',
      'compensating:',
      'compensation-started:one',
      'compensation-completed:one',
      'compensated:',
    ])
    for (const e of events) {
      expect(JSON.parse(JSON.stringify(e))).toEqual(e)
      expect(e).toMatchObject({ worker: 'events', saga: saga.name, version: 1 })
    }
    expect(events[3]!.error).toEqual({ name: 'Error', message: 'no', status: 400 })
    expect(worker.metrics()).toMatchObject({
      stepAttempts: 2,
      stepsCompleted: 1,
      stepFailures: 1,
      compensations: 1,
      compensated: 1,
      completed: 0,
      inFlight: 0,
    })
  })

  it('a renewal that finds an instance just given back (finished, suspended) does not call it lost', async () => {
    const clock = new ManualClock(0)
    const committed = gate()
    const hold = gate()
    const saga = defineSaga({
      name: `given-back-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'only', action: async () => ({ done: true }) }],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs: 300,
      // Holds the run just after its final write committed (the lease released), while it is
      // still in hand: the moment a renewal may land in.
      faults: async (point) => {
        if (point !== 'after-step-commit') return
        committed.open()
        await hold.promise
      },
    })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const running = worker.run(saga, {})
    await committed.promise
    await clock.advance(100) // the renewal interval: the lease is no longer this worker's
    hold.open()
    const outcome = await running
    expect(outcome.status).toBe('completed')
    expect(events.map((e) => e.type)).not.toContain('lease-lost')
    expect(worker.metrics()).toMatchObject({ leaseLost: 0, completed: 1 })
  })

  it('a wait that is the last step is counted and reported as a completed step, as any other', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `last-wait-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'charge', action: async () => ({ charged: true }) },
        { name: 'return-window', sleepMs: 1_000 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    const { id } = await worker.run(saga, {})
    await clock.advance(1_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    expect(events.filter((e) => e.type === 'step-completed').map((e) => e.step)).toEqual([
      'charge',
      'return-window',
    ])
    expect(worker.metrics()).toMatchObject({ stepsCompleted: 2, completed: 1 })
  })

  it('keeps an instance on its version: v1 instances finish on v1 while v2 starts new ones', async () => {
    const name = `versioned-${randomUUID().slice(0, 8)}`
    const clock = new ManualClock(0)
    const step = (label: string) => ({
      name: label,
      action: async (ctx: { sagaId: string; version: number }) => {
        await effect(ctx.sagaId, `${label}@v${ctx.version}`)
      },
    })
    const v1 = defineSaga({
      name,
      version: 1,
      steps: [step('a'), { name: 'pause', sleepMs: 1_000 }, step('b')],
    })
    const v2 = defineSaga({
      name,
      version: 2,
      steps: [step('a'), { name: 'pause', sleepMs: 1_000 }, step('b2'), step('c')],
    })
    const old = await createSagaWorker({ db: t.db, sagas: [v1], clock }).run(v1, {})
    const fresh = await startSaga(t.db, v2, {}, { clock })
    await clock.advance(2_000)
    // A worker that only knows v2 leaves v1 instances alone.
    const v2Only = createSagaWorker({ db: t.db, sagas: [v2], clock })
    expect(await v2Only.poll()).toBe(1)
    await clock.advance(2_000)
    expect(await v2Only.poll()).toBe(1)
    expect((await getSaga(t.db, old.id))!.status).toBe('running')
    const both = createSagaWorker({ db: t.db, sagas: [v1, v2], clock })
    expect(await both.poll()).toBe(1)
    expect(await effects(old.id)).toEqual(['a@v1', 'b@v1'])
    expect(await effects(fresh.id)).toEqual(['a@v2', 'b2@v2', 'c@v2'])
  })

  it('parks an instance whose stored steps do not match a definition changed without a version bump', async () => {
    const name = `drift-${randomUUID().slice(0, 8)}`
    const clock = new ManualClock(0)
    const original = defineSaga({
      name,
      version: 1,
      steps: [
        { name: 'x', sleepMs: 10 },
        { name: 'y', action: () => undefined },
      ],
    })
    const edited = defineSaga({
      name,
      version: 1,
      steps: [
        { name: 'x', sleepMs: 10 },
        { name: 'z', action: () => undefined },
      ],
    })
    const { id } = await createSagaWorker({ db: t.db, sagas: [original], clock }).run(original, {})
    await clock.advance(10)
    expect(await createSagaWorker({ db: t.db, sagas: [edited], clock }).poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('failed')
    expect(instance!.reason).toContain('without a version bump')
  })

  it('atCommit work commits with the step’s state, and not at all when the attempt fails', async () => {
    const clock = new ManualClock(0)
    let fail = true
    const saga = defineSaga({
      name: `atcommit-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'record',
          retry: { maxAttempts: 2, baseDelayMs: 1, jitter: 'none' },
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              await log.record(tx, ctx.sagaId, `local write of attempt ${ctx.attempt}`)
            })
            if (fail) {
              fail = false
              throw transient('after registering')
            }
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect(await effects(id)).toEqual([])
    await clock.advance(1)
    await worker.poll()
    expect(await effects(id)).toEqual(['local write of attempt 2'])
  })

  it('fails a step whose attempt runs past timeoutMs (ctx.signal aborts) and retries it', async () => {
    const clock = new ManualClock(0)
    const signals: AbortSignal[] = []
    const saga = defineSaga({
      name: `timeout-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'slow',
          timeoutMs: 5_000,
          retry: { maxAttempts: 2, baseDelayMs: 1, jitter: 'none' },
          action: async (ctx) => {
            signals.push(ctx.signal)
            if (signals.length === 1) await new Promise(() => {})
            return { fast: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 60_000 })
    const running = worker.run(saga, {})
    await vi.waitFor(() => expect(signals).toHaveLength(1))
    await clock.advance(5_000)
    const { id, status } = await running
    expect(status).toBe('running')
    expect(signals[0]!.aborted).toBe(true)
    expect((await getSaga(t.db, id))!.steps[0]!.error).toMatchObject({ code: 'TIMEOUT' })
    await clock.advance(1)
    await worker.poll()
    expect((await getSaga(t.db, id))!.status).toBe('completed')
  })

  it('stop() lets the running step finish, records it, and gives the instance back at once', async () => {
    const clock = new ManualClock(0)
    const { saga, inside, finish } = heldTwoSteps('stopping')
    const { id } = await startSaga(t.db, saga, {}, { clock })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, workerId: 'stopper' })
    await worker.start()
    await clock.advance(100)
    await inside.promise
    const stopped = worker.stop()
    finish.open()
    await stopped
    expect(worker.state).toBe('stopped')
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'running', stepIndex: 1, context: { one: 1 } })
    expect(instance!.leaseOwner).toBeUndefined()
    const next = createSagaWorker({ db: t.db, sagas: [saga], clock })
    expect(await next.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    const kinds = (await getSagaTimeline(t.db, id)).map((e) => e.kind)
    expect(kinds).toEqual(['step-completed', 'released', 'step-completed', 'completed'])
  })

  it('stop() called while start() is still subscribing leaves no LISTEN behind', async () => {
    if (target.dialect !== 'postgres') return
    // A database of its own: other tests' workers listen on the shared one.
    const own = await target.open('saga_listen')
    const db = own.db
    const saga = defineSaga({
      name: `listen-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'x', action: noopAction }],
    })
    const worker = createSagaWorker({ db, sagas: [saga], clock: new ManualClock(0) })
    const starting = worker.start()
    await worker.stop()
    await starting
    expect(worker.state).toBe('stopped')
    // The listening connection's last statement: UNLISTEN once nobody listens any more.
    try {
      const rows = await db.query<{ query: string }>(
        `SELECT query FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query ILIKE '%listen "breakwater_saga"%'`,
      )
      expect(rows.map((r) => r.query)).toEqual(['UNLISTEN "breakwater_saga"'])
    } finally {
      await own.close()
    }
  })

  it('stop() of a worker never started waits for what run() and poll() have in hand', async () => {
    const clock = new ManualClock(0)
    const { saga, inside, finish } = heldTwoSteps('unstarted')
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const id = `unstarted-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    await inside.promise
    let stopped = false
    const stopping = worker.stop().then(() => {
      stopped = true
    })
    await new Promise((resolve) => setImmediate(resolve))
    expect(stopped).toBe(false)
    expect(worker.metrics().inFlight).toBe(1)
    finish.open()
    await stopping
    expect(worker.metrics().inFlight).toBe(0)
    expect((await running).status).toBe('running')
    // The step in progress was recorded and the instance given back for another worker.
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'running',
      stepIndex: 1,
      context: { one: 1 },
      leaseOwner: undefined,
    })
  })

  it('stop() called while run() is still inserting waits for that run to give its instance back', async () => {
    const clock = new ManualClock(0)
    let ran = false
    const saga = defineSaga({
      name: `inserting-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'only',
          action: async () => {
            ran = true
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const order: string[] = []
    worker.events.on((e) => {
      if (e.type === 'released') order.push('released')
    })
    const id = `inserting-${randomUUID()}`
    const running = worker.run(saga, {}, { id })
    // The insert is in flight: stop() must not resolve before the run it starts has ended
    // (a CLI closes the database once stop() resolves; the run's writes would then fail).
    await worker.stop().then(() => order.push('stopped'))
    expect(order).toEqual(['released', 'stopped'])
    expect(worker.state).toBe('stopped')
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'running',
      stepIndex: 0,
      leaseOwner: undefined,
    })
    expect(ran).toBe(false)
    expect((await running).status).toBe('running')
  })

  it('stop() called while poll() is still claiming waits for what that claim took', async () => {
    const clock = new ManualClock(0)
    let ran = false
    const saga = defineSaga({
      name: `claiming-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'only',
          action: async () => {
            ran = true
          },
        },
      ],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock })
    // The real database, its claim's answer held back (once committed) until stop() has been
    // called. The claim runs in a transaction, so its lease is measured once that has begun.
    const claimed = gate()
    const answer = gate()
    const db = new Proxy(t.db, {
      get(target, prop) {
        if (prop === 'transaction') {
          return async <T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> => {
            let claim = false
            const result = await target.transaction((tx) =>
              fn(
                new Proxy(tx, {
                  get(txTarget, txProp) {
                    const value: unknown = Reflect.get(txTarget, txProp, txTarget)
                    // The claim is the transaction's one statement: sent with COMMIT
                    // (finish) where the driver can.
                    if ((txProp === 'query' || txProp === 'finish') && typeof value === 'function')
                      return (sql: string, params?: readonly unknown[]) => {
                        if (sql === sagaStatements[t.db.dialect].claim) claim = true
                        return (value as (s: string, p?: readonly unknown[]) => unknown).call(
                          txTarget,
                          sql,
                          params,
                        )
                      }
                    return typeof value === 'function' ? value.bind(txTarget) : value
                  },
                }),
              ),
            )
            if (claim) {
              claimed.open()
              await answer.promise
            }
            return result
          }
        }
        const value: unknown = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    const worker = createSagaWorker({ db, sagas: [saga], clock })
    const order: string[] = []
    worker.events.on((e) => {
      if (e.type === 'released') order.push('released')
    })
    const polling = worker.poll()
    await claimed.promise
    const stopping = worker.stop().then(() => order.push('stopped'))
    answer.open()
    await stopping
    expect(order).toEqual(['released', 'stopped'])
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'running', leaseOwner: undefined })
    expect(ran).toBe(false)
    expect(await polling).toBe(1)
  })

  it('several workers on one database run each saga’s steps once (claims never overlap)', async () => {
    const clock = new ManualClock(0)
    const calls = new Map<string, number>()
    const saga = defineSaga({
      name: `many-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: ['a', 'b', 'c'].map((name) => ({
        name,
        action: async (ctx: { idempotencyKey: string }) => {
          calls.set(ctx.idempotencyKey, (calls.get(ctx.idempotencyKey) ?? 0) + 1)
          await new Promise((resolve) => setImmediate(resolve))
        },
      })) as [
        { name: string; action: () => Promise<void> },
        { name: string; action: () => Promise<void> },
        { name: string; action: () => Promise<void> },
      ],
    })
    const n = 120
    for (let i = 0; i < n; i++) await startSaga(t.db, saga, {}, { clock })
    const workers = await Promise.all(
      [0, 1, 2].map(async (i) =>
        createSagaWorker({
          db: i === 0 ? t.db : await t.reopen(),
          sagas: [saga],
          clock,
          concurrency: 8,
        }),
      ),
    )
    for (let round = 0; round < 100; round++) {
      const claimed = await Promise.all(workers.map((w) => w.poll()))
      if (claimed.every((c) => c === 0)) break
    }
    expect(
      await countRows(t.db, 'breakwater_sagas', `WHERE name = $1 AND status = 'completed'`, [
        saga.name,
      ]),
    ).toBe(n)
    expect(calls.size).toBe(3 * n)
    expect([...calls.values()].every((c) => c === 1)).toBe(true)
    const claimedBy = workers.map((w) => w.metrics().claimed)
    expect(claimedBy.reduce((a, b) => a + b, 0)).toBe(n)
  })
})
