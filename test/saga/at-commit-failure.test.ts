// atCommit work that throws, on real SQLite and PostgreSQL. The work runs in the transaction
// that records the step (or compensation), so when it throws nothing is recorded: the attempt
// failed with that error, and the step's retry (or compensationRetry) decides what next, as for
// an action (or compensation) that throws. Before, the instance was abandoned as if its worker
// had died: it sat until its lease ran out, then went again, and ended "used up its attempts
// without recording an outcome (its workers died ...)" without the error. The same happened to
// a thrown value that String() cannot convert (no prototype): its failure path threw.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  getSagaTimeline,
  type SagaEvent,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, effectLog, type TestDb } from './databases.js'

/** A retryable failure, as a 503 would be. */
function transient(message: string): Error {
  return Object.assign(new Error(message), { status: 503 })
}

describe.each(dbTargets)('atCommit work that throws, on $dialect', (target) => {
  let t: TestDb
  const log = effectLog('commit_effects')

  beforeAll(async () => {
    t = await target.open('saga_at_commit_failure')
    await log.create(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  it('fails the attempt with its error: the step fails for good and the saga compensates at once', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `commit-fails-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => {
            ctx.atCommit((tx) => log.record(tx, ctx.sagaId, 'reserve').then(() => {}))
          },
          compensation: async (ctx) => {
            ctx.atCommit((tx) => log.record(tx, ctx.sagaId, 'undo-reserve').then(() => {}))
          },
        },
        {
          name: 'order-row',
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              await log.record(tx, ctx.sagaId, 'order-row (rolled back)')
              throw new Error('duplicate order number')
            })
          },
        },
      ],
    })
    const events: SagaEvent[] = []
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    worker.events.on((e) => events.push(e))
    const outcome = await worker.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toBe('step "order-row" failed: Error: duplicate order number')
    const stored = await getSaga(t.db, outcome.id)
    expect(stored).toMatchObject({ status: 'compensated' })
    expect(stored!.steps[1]).toMatchObject({
      status: 'failed',
      attempts: 1,
      error: { message: 'duplicate order number' },
    })
    expect(await log.read(t.db, outcome.id)).toEqual(['reserve', 'undo-reserve'])
    expect(events.filter((e) => e.type === 'error')).toEqual([])
    expect(worker.metrics().inFlight).toBe(0)
  })

  it('fails the step for a thrown value that cannot be made a string (no prototype), instead of giving it up', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `exotic-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'odd',
          action: async () => {
            throw Object.assign(Object.create(null) as object, { code: 'ODD' })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 3_600_000 })
    const outcome = await worker.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toBe('step "odd" failed: Error: [object Object] [ODD]')
    expect((await getSaga(t.db, outcome.id))!.steps[0]).toMatchObject({
      status: 'failed',
      error: { name: 'Error', message: '[object Object]', code: 'ODD' },
    })
  })

  it('retries a transient failure of the work after the persisted delay', async () => {
    const clock = new ManualClock(0)
    let calls = 0
    const saga = defineSaga({
      name: `commit-retry-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'write',
          retry: { maxAttempts: 3, baseDelayMs: 100, jitter: 'none' },
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              if (++calls === 1) throw transient('lock timeout')
              await log.record(tx, ctx.sagaId, `write #${ctx.attempt}`)
            })
            return { written: true }
          },
        },
      ],
    })
    // A lease longer than the test: a run abandoned by the failure would never be claimed.
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 3_600_000 })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('running')
    const waiting = await getSaga(t.db, id)
    expect(waiting).toMatchObject({ nextRunAt: 100, leaseOwner: undefined, context: {} })
    expect(waiting!.steps[0]).toMatchObject({ attempts: 1, error: { message: 'lock timeout' } })
    await clock.advance(100)
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'completed',
      context: { written: true },
    })
    expect(await log.read(t.db, id)).toEqual(['write #2'])
    const kinds = (await getSagaTimeline(t.db, id)).map((e) => `${e.kind}#${e.attempt ?? ''}`)
    expect(kinds).toEqual(['step-failed#1', 'step-completed#2', 'completed#'])
  })

  it('fails a compensation attempt with its error, retried, then parked naming it', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `commit-undo-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => ({ chargeId: 'c1' }),
          compensationRetry: { maxAttempts: 2, baseDelayMs: 50, jitter: 'none' },
          compensation: async (ctx) => {
            ctx.atCommit(async () => {
              throw new Error('refund ledger is read-only')
            })
          },
        },
        {
          name: 'ship',
          action: async () => {
            throw new Error('no stock')
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 3_600_000 })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('compensating')
    expect(await getSaga(t.db, id)).toMatchObject({ nextRunAt: 50, leaseOwner: undefined })
    await clock.advance(50)
    expect(await worker.poll()).toBe(1)
    const parked = await getSaga(t.db, id)
    expect(parked!.status).toBe('failed')
    expect(parked!.reason).toBe(
      'compensation of step "charge" failed after 2 attempts: Error: refund ledger is read-only (while compensating because step "ship" failed: Error: no stock)',
    )
    expect(parked!.steps[0]).toMatchObject({ status: 'completed', compensationAttempts: 2 })
  })
})
