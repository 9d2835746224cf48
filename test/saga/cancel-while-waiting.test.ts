// A cancel that comes while the current step waits (a sleepMs or waitUntil timer, a reply, a
// retry delay) cuts that step off: it never runs on. The finished saga kept showing it as it was
// (`waiting`, or `pending` with the error of its last attempt), in getSaga and `saga show`, as
// if it still waited or had never started (found by review). It now ends `failed`, as a step
// whose attempts end without completing does; a step it must compensate ends `compensated`.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaStep,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe.each(dbTargets)('a cancel while a step waits on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_cancel_waiting')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Runs `a`, then `step` until it waits; cancels; runs the cancel. */
  // biome-ignore lint/suspicious/noExplicitAny: one step of any kind, whatever context it sees
  async function cancelledAt(step: SagaStep<null, any, unknown>) {
    const compensated: string[] = []
    const saga = defineSaga({
      name: `cancel-waiting-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          action: async () => ({ a: 1 }),
          compensation: async () => {
            compensated.push('a')
          },
        },
        step,
        { name: 'after', action: async () => ({ after: 1 }) },
      ],
    })
    const clock = new ManualClock(0)
    const { id } = await startSaga(t.db, saga, null, { clock })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    expect(await worker.poll()).toBe(1)
    const waiting = (await getSaga(t.db, id))!.steps[1]!
    await cancelSaga(t.db, id, { reason: 'customer left', clock })
    expect(await worker.poll()).toBe(1)
    const ended = (await getSaga(t.db, id))!
    expect(ended).toMatchObject({ status: 'cancelled', reason: 'cancel requested: customer left' })
    expect(compensated).toEqual(['a'])
    return { id, waiting, steps: ended.steps }
  }

  it('a sleepMs step ends failed, not waiting (getSaga and saga show)', async () => {
    const { id, waiting, steps } = await cancelledAt({ name: 'cool-off', sleepMs: 60_000 })
    expect(waiting).toMatchObject({ status: 'waiting', wakeAt: 60_000 })
    expect(steps.map((s) => s.status)).toEqual(['compensated', 'failed', 'pending'])
    const shown = await runSagaCommand(t, ['show', id])
    expect(shown.code).toBe(0)
    expect(shown.out).toMatch(/^ {2}2 +cool-off +failed +1 /m)
    // The timeline keeps its `step-waiting` entry: the step did wait, until the cancel.
    const stepsSection = shown.out.slice(
      shown.out.indexOf('\nsteps\n'),
      shown.out.indexOf('\ntimeline\n'),
    )
    expect(stepsSection).not.toMatch(/waiting/)
  })

  it('a waitUntil step ends failed', async () => {
    const { waiting, steps } = await cancelledAt({ name: 'until', waitUntil: () => 90_000 })
    expect(waiting).toMatchObject({ status: 'waiting', wakeAt: 90_000 })
    expect(steps[1]).toMatchObject({ status: 'failed', attempts: 1 })
  })

  it('a reply step without a compensation ends failed, its command still counted as sent', async () => {
    const { waiting, steps } = await cancelledAt({
      name: 'ask',
      send: async () => {},
      awaitReply: { timeoutMs: 60_000 },
    })
    expect(waiting).toMatchObject({ status: 'waiting', sent: true })
    expect(steps[1]).toMatchObject({ status: 'failed', sent: true })
  })

  it('a waiting reply step stored by an earlier version (no sent flag) is still compensated', async () => {
    const refunded: string[] = []
    const saga = defineSaga({
      name: `cancel-legacy-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: async () => {},
          awaitReply: { timeoutMs: 60_000 },
          compensation: async () => {
            refunded.push('charge')
          },
        },
      ],
    })
    const clock = new ManualClock(0)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, null)
    // As an earlier version stored a waiting reply step: `waiting` always meant a command sent.
    const steps = (await getSaga(t.db, id))!.steps.map(({ sent: _, ...rest }) => rest)
    await t.db.execute('UPDATE breakwater_sagas SET steps = $1 WHERE id = $2', [
      JSON.stringify(steps),
      id,
    ])
    await cancelSaga(t.db, id, { clock })
    expect(await worker.poll()).toBe(1)
    expect(refunded).toEqual(['charge'])
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'cancelled',
      steps: [{ status: 'compensated' }],
    })
  })

  it('an action in its retry delay ends failed, with its last error', async () => {
    const { waiting, steps } = await cancelledAt({
      name: 'flaky',
      retry: { maxAttempts: 5, baseDelayMs: 60_000, jitter: 'none' },
      action: async () => {
        throw Object.assign(new Error('connection reset'), { code: 'ECONNRESET' })
      },
    })
    expect(waiting).toMatchObject({ status: 'pending', attempts: 1 })
    expect(steps[1]).toMatchObject({
      status: 'failed',
      attempts: 1,
      error: { message: 'connection reset' },
    })
  })
})
