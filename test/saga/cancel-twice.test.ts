// A second cancelSaga on a saga whose cancel is still pending resolves (the cancel is already
// requested) and changes nothing: the first request's reason stays the compensation's, and the
// timeline records one request (its reason silently replaced the first, found by exploratory
// testing). A cancel of a saga no longer running is still refused.
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
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('a second cancel on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_cancel_twice')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('keeps the first request and its reason', async () => {
    const reasons: string[] = []
    const saga = defineSaga({
      name: `cancel-twice-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          action: async () => ({ a: 1 }),
          compensation: async (ctx) => {
            reasons.push(ctx.reason)
          },
        },
        { name: 'wait', sleepMs: 60_000 },
      ],
    })
    const clock = new ManualClock(0)
    const { id } = await startSaga(t.db, saga, null, { clock })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    expect(await worker.poll()).toBe(1)
    await expect(cancelSaga(t.db, id, { reason: 'first', by: 'alice', clock })).resolves.toBe(
      'requested',
    )
    await expect(cancelSaga(t.db, id, { reason: 'second', by: 'bob', clock })).resolves.toBe(
      'already-requested',
    )
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'cancelled',
      reason: 'cancel requested: first',
    })
    expect(reasons).toEqual(['cancel requested: first'])
    const requests = (await getSagaTimeline(t.db, id)).filter((e) => e.kind === 'cancel-requested')
    expect(requests).toMatchObject([{ worker: 'alice', detail: { reason: 'first' } }])
    await expect(cancelSaga(t.db, id, { reason: 'third', clock })).rejects.toMatchObject({
      code: 'SAGA_STATE_CONFLICT',
    })
  })
})
