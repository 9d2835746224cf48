// An error whose message holds a NUL character (an echo of binary input, a C library's text):
// PostgreSQL text cannot store NUL, so a saga's `reason` built from it made every write of the
// failure refused, and the saga never left its failing step. It is stored with the NUL escaped.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  getSaga,
  getSagaTimeline,
  startSaga,
} from '../../src/saga/index.js'
import { claimInstances, stringListParam, writeBatch } from '../../src/saga/store.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, leaseFrom, type TestDb } from './databases.js'

describe.each(dbTargets)('saga error text on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_error_text')
  })
  afterAll(async () => {
    await t?.close()
  })

  // Half of a surrogate pair has no UTF-8 form: on PostgreSQL the batched write (a JSON
  // parameter) was refused with `22P02 invalid input syntax for type json` at every attempt, so
  // the saga stayed `running` for ever; SQLite stored three bytes read back as three U+FFFD. It
  // is stored as one U+FFFD. The timeline keeps the message as it was (JSON escapes both).
  it.each([
    ['a NUL', 'bad byte \u0000 here', 'bad byte \\0 here'],
    ['a lone surrogate', 'bad \ud800 here', 'bad \ufffd here'],
  ])('records a final step failure whose message holds %s', async (_what, message, stored) => {
    const clock = new ManualClock(1_000_000)
    const saga = defineSaga({
      name: `text-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          retry: { maxAttempts: 1 },
          action: async () => {
            throw new Error(message)
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, listen: false })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('compensated')
    expect((await getSaga(t.db, id))?.reason).toBe(`step "a" failed: Error: ${stored}`)
    const failed = (await getSagaTimeline(t.db, id)).find((e) => e.kind === 'step-failed')
    expect(failed?.detail).toMatchObject({ error: { message } })
    await worker.stop()
  })

  it('cancels with an operator reason that holds a lone surrogate', async () => {
    const clock = new ManualClock(1_000_000)
    const saga = defineSaga({
      name: `sur-cancel-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => ({}) }],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock })
    expect(await cancelSaga(t.db, id, { reason: 'x\ud800y', clock })).toBe('requested')
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, listen: false })
    const errors: unknown[] = []
    worker.events.on((e) => {
      if (e.type === 'error') errors.push(e.error)
    })
    expect(await worker.poll()).toBe(1)
    await worker.stop()
    expect(errors).toEqual([])
    const instance = await getSaga(t.db, id)
    expect(instance?.status).toBe('cancelled')
    expect(instance?.reason).toBe('cancel requested: x\ufffdy')
  })

  it('writes a group commit whose reason holds a NUL, with the other instances of the batch', async () => {
    const saga = defineSaga({
      name: `nul-batch-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'x', action: async () => undefined }],
    })
    const clock = new ManualClock(0)
    const ids = [
      (await startSaga(t.db, saga, {}, { clock })).id,
      (await startSaga(t.db, saga, {}, { clock })).id,
    ]
    const keys = stringListParam(t.db, [saga.key])
    const claimed = await claimInstances(t.db, 'A', leaseFrom(0, 1_000), keys, 10)
    const writes = claimed.map((row, i) => ({
      id: row.id,
      token: Number(row.lease_token),
      status: i === 0 ? 'compensated' : 'completed',
      context: '{}',
      steps: row.steps,
      stepIndex: 0,
      attempt: 1,
      nextRunAt: 500,
      leaseOwner: null,
      leaseExpiresAt: null,
      reason: i === 0 ? 'step "x" failed: Error: a\u0000b' : null,
      now: 500,
      finishedAt: 500,
      events: [],
    }))
    const { written } = await writeBatch(t.db, [], writes)
    expect(written).toEqual([
      { cancelRequested: 0, leaseExpiresAt: null },
      { cancelRequested: 0, leaseExpiresAt: null },
    ])
    const first = await getSaga(t.db, claimed[0]!.id)
    expect(first).toMatchObject({ status: 'compensated', reason: 'step "x" failed: Error: a\\0b' })
    expect(ids).toContain(claimed[1]!.id)
    expect((await getSaga(t.db, claimed[1]!.id))?.status).toBe('completed')
  })
})
