// An error whose message holds a NUL character (an echo of binary input, a C library's text):
// PostgreSQL text cannot store NUL, so a saga's `reason` built from it made every write of the
// failure refused, and the saga never left its failing step. It is stored with the NUL escaped.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
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

  it('records a final step failure whose message holds a NUL', async () => {
    const clock = new ManualClock(1_000_000)
    const saga = defineSaga({
      name: `nul-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          retry: { maxAttempts: 1 },
          action: async () => {
            throw new Error('bad byte \u0000 here')
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    const instance = await getSaga(t.db, id)
    expect(instance?.status).toBe('compensated')
    expect(instance?.reason).toBe('step "a" failed: Error: bad byte \\0 here')
    // The timeline keeps the message as it was (JSON escapes the NUL).
    const failed = (await getSagaTimeline(t.db, id)).find((e) => e.kind === 'step-failed')
    expect(failed?.detail).toMatchObject({ error: { message: 'bad byte \u0000 here' } })
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
