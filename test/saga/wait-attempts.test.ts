// A waitUntil step's recorded attempts and error, as getSaga reports them: the attempts its
// waitUntil was called (retried like an action's), and no stale error once it succeeded. (One
// whose attempts are spent is checked in engine.test.ts.)
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, getSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

/** A retryable failure, as a 503 would be. */
function transient(message: string): Error {
  return Object.assign(new Error(message), { status: 503 })
}

describe.each(dbTargets)('waitUntil attempts on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_wait_attempts')
  })
  afterAll(async () => {
    await t?.close()
  })

  const waitSaga = (waitUntil: () => number) =>
    defineSaga({
      name: `wait-attempts-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'wait', waitUntil },
        { name: 'after', action: async () => ({ done: true }) },
      ],
    })

  it('a waitUntil that failed once, then succeeded, is completed after 2 attempts with no error', async () => {
    const clock = new ManualClock(1_000_000)
    let calls = 0
    const saga = waitSaga(() => {
      calls++
      if (calls === 1) throw transient('calendar down')
      return 1_000_000 + 5_000
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    for (let round = 0; round < 5; round++) {
      await clock.advance(2_000)
      await worker.poll()
    }
    expect(calls).toBe(2)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('completed')
    expect(instance!.steps[0]).toEqual(
      expect.objectContaining({ name: 'wait', status: 'completed', attempts: 2 }),
    )
    expect(instance!.steps[0]).not.toHaveProperty('error')
  })
})
