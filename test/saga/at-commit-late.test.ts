// ctx.atCommit called once the step's function has settled (from a callback it did not await,
// a timer, or an action cut off at its timeoutMs that goes on running) registers work that can
// never run: the transaction that records the step has been written, or is being written,
// without it. It was accepted without a word and the work silently dropped (an outbox row or a
// business row never written, with the step recorded as done). It is refused now with
// InvalidOptionError naming atCommit, so the late caller learns it. Real SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  type AtCommitWork,
  createSagaWorker,
  defineSaga,
  type StepContext,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

/** Calls `ctx.atCommit(work)` and returns what it threw (undefined when it was accepted). */
function registerLate(ctx: Pick<StepContext<unknown, object>, 'atCommit'>, work: AtCommitWork) {
  try {
    ctx.atCommit(work)
    return undefined
  } catch (error) {
    return error
  }
}

describe.each(dbTargets)('atCommit after the step settled, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_at_commit_late')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('is refused for an action and a compensation that already returned', async () => {
    const ran: string[] = []
    const late: unknown[] = []
    let reserveCtx: Pick<StepContext<unknown, object>, 'atCommit'> | undefined
    let undoCtx: Pick<StepContext<unknown, object>, 'atCommit'> | undefined
    const saga = defineSaga({
      name: `late-commit-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => {
            reserveCtx = ctx
          },
          compensation: async (ctx) => {
            undoCtx = ctx
          },
        },
        {
          name: 'charge',
          action: async () => {
            // reserve returned and was recorded: its context's atCommit comes too late.
            late.push(registerLate(reserveCtx!, async () => void ran.push('reserve work')))
            throw Object.assign(new Error('declined'), { status: 402 })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    try {
      expect((await worker.run(saga, null)).status).toBe('compensated')
      late.push(registerLate(undoCtx!, async () => void ran.push('undo work')))
    } finally {
      await worker.stop()
    }
    expect(ran).toEqual([])
    expect(late).toHaveLength(2)
    for (const error of late) {
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('atCommit')
    }
  })

  it('is refused for an action cut off at its timeoutMs that goes on running', async () => {
    const clock = new ManualClock(0)
    let release: () => void = () => {}
    let lateError: unknown = 'not called'
    let started = false
    const after = new Promise<void>((resolve) => {
      release = resolve
    })
    const saga = defineSaga({
      name: `late-commit-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'slow',
          timeoutMs: 100,
          retry: { maxAttempts: 1 },
          action: async (ctx) => {
            started = true
            await after
            lateError = registerLate(ctx, async () => {})
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    try {
      const run = worker.run(saga, null)
      await vi.waitFor(() => expect(started).toBe(true))
      await clock.advance(100)
      expect((await run).status).toBe('compensated')
      release()
      await vi.waitFor(() => expect(lateError).not.toBe('not called'))
      expect(lateError).toBeInstanceOf(InvalidOptionError)
    } finally {
      await worker.stop()
    }
  })
})
