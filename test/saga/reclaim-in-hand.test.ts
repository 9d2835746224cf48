// A worker's own claim must not take an instance the worker is still running. Under load a
// worker's renewal fell behind, its lease ran out while the step still ran, and its next claim
// (which takes any instance whose lease has run out) took the instance back from itself: the
// step ran a second time in the same process, at the same time as the first attempt, whose
// write was then refused as a lost lease. Driven by a ManualClock, whose jump lets the lease run
// out without firing the renewal timer. Real SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSagaWorker, defineSaga, getSaga, type SagaEvent } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('a saga worker claiming on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_reclaim_in_hand')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('leaves an instance it is still running to that run when its lease has run out', async () => {
    const clock = new ManualClock(1_000)
    const inside = gate()
    const again = gate()
    const finish = gate()
    let attempts = 0
    const saga = defineSaga({
      name: `reclaim-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'a',
          action: async () => {
            attempts++
            ;(attempts === 1 ? inside : again).open()
            await finish.promise
            return { done: true }
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 1_000 })
    const events: SagaEvent[] = []
    worker.events.on((event) => events.push(event))
    const running = worker.run(saga, {})
    try {
      await inside.promise
      // The renewal fell behind: the lease ran out while step `a` still runs.
      clock.jump(2_000)
      const claiming = worker.poll()
      const claimed = await Promise.race([claiming, again.promise.then(() => 'ran again')])
      finish.open()

      expect(claimed).toBe(0)
      const outcome = await running
      expect(outcome.status).toBe('completed')
      expect(await claiming).toBe(0)
      expect(attempts).toBe(1)
      expect((await getSaga(t.db, outcome.id))?.status).toBe('completed')
      const types = events.map((event) => event.type)
      expect(types).not.toContain('recovered')
      expect(types).not.toContain('lease-lost')
    } finally {
      finish.open()
      await worker.stop()
    }
  })
})
