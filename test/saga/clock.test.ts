// Sagas under a clock whose time has a fraction of a millisecond, on real SQLite and
// PostgreSQL: ManualClock reaches one as soon as it fires a jittered timer, and a clock built on
// performance.now() always has one. The time columns are BIGINT on PostgreSQL, which refuses a
// fraction, so every time the saga store writes must be whole milliseconds.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createFlowTracker,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  pruneSagas,
  retrySaga,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const start = 1_700_000_000_000.5

/** A retryable failure, as a 503 would be. */
function transient(message: string): Error {
  return Object.assign(new Error(message), { status: 503 })
}

describe.each(dbTargets)('sagas under a fractional clock on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_clock')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('retries a step with jitter and completes, storing whole milliseconds', async () => {
    const clock = new ManualClock(start)
    let calls = 0
    const saga = defineSaga({
      name: `jittered-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'flaky',
          retry: { maxAttempts: 3, baseDelayMs: 500, jitter: 'full', random: () => 0.37 },
          action: async () => {
            calls++
            if (calls < 2) throw transient(`down ${calls}`)
            return { ok: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('running')
    const waiting = (await getSaga(t.db, id))!
    expect(Number.isInteger(waiting.nextRunAt)).toBe(true)
    // A jittered timer of the clock itself, as the worker's poll timer with jitter would be.
    clock.setTimeout(() => {}, 123.456)
    await clock.advance(waiting.nextRunAt - clock.now() + 0.25)
    expect(Number.isInteger(clock.now())).toBe(false)
    expect(await worker.poll()).toBe(1)
    const instance = (await getSaga(t.db, id))!
    expect(instance).toMatchObject({ status: 'completed', context: { ok: true } })
    for (const time of [instance.createdAt, instance.updatedAt, instance.finishedAt]) {
      expect(Number.isInteger(time)).toBe(true)
    }
    const timeline = await getSagaTimeline(t.db, id)
    expect(timeline.map((e) => e.kind)).toEqual(['step-failed', 'step-completed', 'completed'])
    for (const entry of timeline) expect(Number.isInteger(entry.at)).toBe(true)
    await worker.stop()
  })

  it('starts, waits for a reply, is cancelled, retried and pruned', async () => {
    const clock = new ManualClock(start)
    const saga = defineSaga({
      name: `replied-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: async () => {},
          awaitReply: { timeoutMs: 60_000, onReply: (reply) => reply as { ok: boolean } },
          compensation: async () => {
            throw new Error('refund service down')
          },
          compensationRetry: { maxAttempts: 1 },
        },
        { name: 'ship', action: async () => ({ shipped: true }) },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const started = await startSaga(t.db, saga, {}, { clock })
    expect(await worker.poll()).toBe(1) // the command is sent
    await clock.advance(0.25)
    expect(await deliverReply(t.db, started.id, 'charge', { ok: true }, { clock })).toBe(
      'delivered',
    )
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, started.id))!.status).toBe('completed')

    const second = await startSaga(t.db, saga, {}, { clock })
    expect(await worker.poll()).toBe(1)
    await cancelSaga(t.db, second.id, { clock })
    expect(await worker.poll()).toBe(1) // the refund fails for good: parked
    expect((await getSaga(t.db, second.id))!.status).toBe('failed')
    await retrySaga(t.db, second.id, { clock })
    expect((await getSaga(t.db, second.id))!.status).toBe('compensating')

    await clock.advance(10_000.5)
    expect(await pruneSagas(t.db, { olderThanMs: 1_000, clock })).toBeGreaterThanOrEqual(1)
    expect(await getSaga(t.db, started.id)).toBeUndefined()
    await worker.stop()
  })

  it('records tracked events observed at a fractional time', async () => {
    const clock = new ManualClock(start)
    const flow = defineFlow({ name: 'order', steps: ['order-placed', 'order-shipped'] })
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const correlationId = randomUUID()
    expect(
      await tracker.observe({
        id: randomUUID(),
        payload: '{}',
        headers: { 'correlation-id': correlationId, 'event-type': 'order-placed' },
      }),
    ).toBe(true)
    const state = (await tracker.state(correlationId))!
    expect(state.events.map((e) => e.at)).toEqual([Math.floor(start)])
  })
})
