// atCommit work that never settles (an awaited network call that never answers), on real SQLite
// and PostgreSQL, driven by a ManualClock. The work runs inside the transaction that records the
// step, so it held that transaction, and on SQLite the one writer, for ever: no other saga, and
// nothing else writing to the database, could go on. The worker's atCommitTimeoutMs now bounds
// it: the transaction is rolled back and the attempt fails with SagaAtCommitTimeoutError, as
// for atCommit work that throws (see at-commit-failure.test.ts).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AbortedError, InvalidOptionError } from '../../src/core/errors.js'
import {
  createSagaWorker,
  defaultAtCommitTimeoutMs,
  defineSaga,
  getSaga,
  getSagaTimeline,
  SagaAtCommitTimeoutError,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type Gate, gate } from '../support/gate.js'
import { dbTargets, effectLog, sqliteDb, type TestDb } from './databases.js'

const never = new Promise<never>(() => {})
const sagaName = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`
// A lease longer than any test: only the atCommit bound can end a hung transaction.
const leaseMs = 3_600_000

describe('atCommitTimeoutMs option', () => {
  const saga = defineSaga({ name: 'order', version: 1, steps: [{ name: 'a', action: () => {} }] })

  it.each([
    ['zero', 0],
    ['a fraction', 1.5],
    ['a string', '100'],
    ['Infinity', Number.POSITIVE_INFINITY],
  ])('refuses %s at construction, naming the option', async (_label, value) => {
    const t = await sqliteDb.open('saga_at_commit_timeout_options')
    try {
      expect(() =>
        createSagaWorker({ db: t.db, sagas: [saga], atCommitTimeoutMs: value as number }),
      ).toThrow(expect.objectContaining({ code: 'INVALID_OPTION', option: 'atCommitTimeoutMs' }))
      expect(() =>
        createSagaWorker({ db: t.db, sagas: [saga], atCommitTimeoutMs: value as number }),
      ).toThrow(InvalidOptionError)
    } finally {
      await t.close()
    }
  })
})

describe.each(dbTargets)('atCommit work that never settles, on $dialect', (target) => {
  let t: TestDb
  const log = effectLog('hung_commit_effects')

  beforeAll(async () => {
    t = await target.open('saga_at_commit_timeout')
    await log.create(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  /** One step, one attempt, whose atCommit work writes a row and then never settles. */
  const hungSaga = (prefix: string, hung: Gate) =>
    defineSaga({
      name: sagaName(prefix),
      version: 1,
      steps: [
        {
          name: 'reserve',
          retry: { maxAttempts: 1 },
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              await log.record(tx, ctx.sagaId, 'reserve (rolled back)')
              hung.open()
              await never
            })
          },
        },
      ],
    })

  it('rolls the transaction back after atCommitTimeoutMs and fails the attempt, naming the step and the bound', async () => {
    const clock = new ManualClock(0)
    const hung = gate()
    const saga = hungSaga('hung-commit', hung)
    const other = defineSaga({
      name: sagaName('other'),
      version: 1,
      steps: [
        {
          name: 'write',
          action: async (ctx) => {
            ctx.atCommit((tx) => log.record(tx, ctx.sagaId, 'other').then(() => {}))
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga, other],
      clock,
      leaseMs,
      atCommitTimeoutMs: 500,
    })
    const running = worker.run(saga, {})
    await hung.promise
    await clock.advance(499)
    await clock.advance(1)
    const outcome = await running
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toBe(
      'step "reserve" failed: SagaAtCommitTimeoutError: Step "reserve": its atCommit work did not finish within atCommitTimeoutMs (500 ms); its transaction was rolled back [SAGA_AT_COMMIT_TIMEOUT]',
    )
    const stored = await getSaga(t.db, outcome.id)
    expect(stored!.steps[0]).toMatchObject({
      status: 'failed',
      attempts: 1,
      error: { code: 'SAGA_AT_COMMIT_TIMEOUT' },
    })
    expect(await log.read(t.db, outcome.id)).toEqual([])
    // The database is free again (on SQLite, the writer): another saga's transaction commits.
    const second = await worker.run(other, {})
    expect(second.status).toBe('completed')
    expect(await log.read(t.db, second.id)).toEqual(['other'])
    expect(worker.metrics()).toMatchObject({ errors: 0, inFlight: 0 })
    await worker.stop()
  })

  it('is retryable: the step goes again after its retry delay, and the next attempt commits', async () => {
    const clock = new ManualClock(0)
    const hung = gate()
    let calls = 0
    const saga = defineSaga({
      name: sagaName('hung-once'),
      version: 1,
      steps: [
        {
          name: 'write',
          retry: { maxAttempts: 2, baseDelayMs: 100, jitter: 'none' },
          action: async (ctx) => {
            ctx.atCommit(async (tx) => {
              if (++calls === 1) {
                hung.open()
                await never
              }
              await log.record(tx, ctx.sagaId, `write #${ctx.attempt}`)
            })
            return { written: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      atCommitTimeoutMs: 50,
    })
    const running = worker.run(saga, {})
    await hung.promise
    await clock.advance(50)
    const { id, status } = await running
    expect(status).toBe('running')
    const waiting = await getSaga(t.db, id)
    expect(waiting).toMatchObject({ nextRunAt: 150, leaseOwner: undefined, context: {} })
    expect(waiting!.steps[0]).toMatchObject({
      attempts: 1,
      error: { code: 'SAGA_AT_COMMIT_TIMEOUT' },
    })
    await clock.advance(100)
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'completed',
      context: { written: true },
    })
    expect(await log.read(t.db, id)).toEqual(['write #2'])
    const kinds = (await getSagaTimeline(t.db, id)).map((e) => `${e.kind}#${e.attempt ?? ''}`)
    expect(kinds).toEqual(['step-failed#1', 'step-completed#2', 'completed#'])
    await worker.stop()
  })

  it('bounds a compensation atCommit the same way, and parks naming it', async () => {
    const clock = new ManualClock(0)
    const hung = gate()
    const saga = defineSaga({
      name: sagaName('hung-undo'),
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => ({ chargeId: 'c1' }),
          compensationRetry: { maxAttempts: 1 },
          compensation: async (ctx) => {
            ctx.atCommit(async () => {
              hung.open()
              await never
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
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      atCommitTimeoutMs: 20,
    })
    const running = worker.run(saga, {})
    await hung.promise
    await clock.advance(20)
    const outcome = await running
    expect(outcome.status).toBe('failed')
    expect(outcome.reason).toBe(
      'compensation of step "charge" failed after 1 attempt: SagaAtCommitTimeoutError: Compensation of step "charge": its atCommit work did not finish within atCommitTimeoutMs (20 ms); its transaction was rolled back [SAGA_AT_COMMIT_TIMEOUT] (while compensating because step "ship" failed: Error: no stock)',
    )
    await worker.stop()
  })

  /**
   * One step whose atCommit work writes a row, waits until its signal aborts, keeps the signal
   * and its reason, and then throws that reason, as work that passes its signal on would; and a
   * worker on a ManualClock for it.
   */
  const listening = (prefix: string, atCommitTimeoutMs: number) => {
    const clock = new ManualClock(0)
    const hung = gate()
    const seen: { signal?: AbortSignal; reason?: unknown } = {}
    const saga = defineSaga({
      name: sagaName(prefix),
      version: 1,
      steps: [
        {
          name: 'reserve',
          retry: { maxAttempts: 3 },
          action: async (ctx) => {
            ctx.atCommit(async (tx, signal) => {
              seen.signal = signal
              await log.record(tx, ctx.sagaId, 'reserve (rolled back)')
              hung.open()
              await new Promise<void>((resolve) =>
                signal.addEventListener('abort', () => resolve(), { once: true }),
              )
              seen.reason = signal.reason
              throw signal.reason
            })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs, atCommitTimeoutMs })
    return { clock, saga, worker, hung, seen }
  }

  it("aborts the work's signal when the bound fires, so the work can stop", async () => {
    const { clock, saga, worker, hung, seen } = listening('told', 40)
    const running = worker.run(saga, {})
    await hung.promise
    expect(seen.signal!.aborted).toBe(false)
    await clock.advance(39)
    expect(seen.signal!.aborted).toBe(false)
    await clock.advance(1)
    const { id, status } = await running
    expect(status).toBe('running') // retryable: the next attempt is due after the delay
    expect(seen.signal!.aborted).toBe(true)
    expect(seen.reason).toBeInstanceOf(SagaAtCommitTimeoutError)
    expect(seen.reason).toMatchObject({ step: 'reserve', timeoutMs: 40 })
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({
      error: { code: 'SAGA_AT_COMMIT_TIMEOUT' },
    })
    expect(await log.read(t.db, id)).toEqual([])
    await worker.stop()
  })

  it('leaves the signal alone when the work ends in time', async () => {
    const clock = new ManualClock(0)
    let seen: AbortSignal | undefined
    const saga = defineSaga({
      name: sagaName('in-time'),
      version: 1,
      steps: [
        {
          name: 'write',
          action: async (ctx) => {
            ctx.atCommit(async (tx, signal) => {
              seen = signal
              await log.record(tx, ctx.sagaId, 'write')
            })
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs,
      atCommitTimeoutMs: 40,
    })
    const outcome = await worker.run(saga, {})
    expect(outcome.status).toBe('completed')
    await clock.advance(1_000)
    expect(seen!.aborted).toBe(false)
    expect(await log.read(t.db, outcome.id)).toEqual(['write'])
    await worker.stop()
  })

  it('aborts the signal when stop({ timeoutMs }) gives up on the step, and writes nothing more for it', async () => {
    const { clock, saga, worker, hung, seen } = listening('stopped', 60_000)
    const events: string[] = []
    worker.events.on((e) => events.push(e.type))
    const running = worker.run(saga, {})
    await hung.promise
    const stopping = worker.stop({ timeoutMs: 100 })
    await clock.advance(100)
    await stopping
    expect(seen.reason).toBeInstanceOf(AbortedError)
    const { id } = await running
    // The abandoned attempt is not recorded as failed: the lease is left to run out.
    const stored = await getSaga(t.db, id)
    expect(stored).toMatchObject({ status: 'running', stepIndex: 0 })
    expect(stored!.steps[0]).not.toHaveProperty('error')
    expect(await log.read(t.db, id)).toEqual([])
    expect(events).not.toContain('step-failed')
  })

  it('defaults to 30 s', async () => {
    const clock = new ManualClock(0)
    const hung = gate()
    let settled = false
    const saga = hungSaga('hung-default', hung)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs })
    const running = worker.run(saga, {}).finally(() => {
      settled = true
    })
    await hung.promise
    await clock.advance(29_999)
    expect(settled).toBe(false)
    await clock.advance(1)
    const outcome = await running
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toContain(`within atCommitTimeoutMs (${defaultAtCommitTimeoutMs} ms)`)
    expect(defaultAtCommitTimeoutMs).toBe(30_000)
    await worker.stop()
  })

  it('SagaAtCommitTimeoutError carries the step and the bound', () => {
    const error = new SagaAtCommitTimeoutError('reserve', 500)
    expect(error).toMatchObject({
      code: 'SAGA_AT_COMMIT_TIMEOUT',
      retryable: true,
      step: 'reserve',
      timeoutMs: 500,
    })
  })
})
