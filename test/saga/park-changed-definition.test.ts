// A saga parked by a worker whose definition changed without a version bump, while an attempt
// of an action had begun and recorded nothing (its worker died during it), then retried on a
// worker with the right definition. The attempt may have had its effect: its compensation runs
// first, as for any attempt without a recorded outcome. The park used to come before that was
// noted, and retrySaga reset the attempt counter, the only sign that the attempt began: the
// step was skipped and only the earlier steps were undone (found by exploratory testing).
// The timeline's lease-expired entry names the stored step, not the changed definition's.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  getSagaTimeline,
  retrySaga,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

const leaseMs = 1_000

describe.each(dbTargets)('a park for a changed definition on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_park_changed')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('keeps an attempt that recorded nothing, compensated after the retry', async () => {
    const name = `park-${randomUUID().slice(0, 8)}`
    const log: string[] = []
    const stuck = gate()
    const inB = gate()
    const define = (names: readonly string[], hang: boolean) =>
      defineSaga({
        name,
        version: 1,
        steps: names.map((step) => ({
          name: step,
          action: async () => {
            log.push(`act ${step}`)
            if (step === 'b' && hang) {
              inB.open()
              await stuck.promise
            }
            return { [step]: 1 }
          },
          compensation: async () => {
            log.push(`comp ${step}`)
          },
        })),
      })
    const { id } = await startSaga(t.db, define(['a', 'b', 'c'], true), null, {
      clock: new ManualClock(0),
    })
    // A worker whose clock stands still (a dead process) while b's action runs.
    const dead = createSagaWorker({
      db: t.db,
      sagas: [define(['a', 'b', 'c'], true)],
      clock: new ManualClock(0),
      leaseMs,
      workerId: 'dead',
    })
    const deadRun = dead.poll()
    await inB.promise
    const changed = createSagaWorker({
      db: t.db,
      sagas: [define(['a', 'x', 'c'], false)],
      clock: new ManualClock(10 * leaseMs),
      leaseMs,
      workerId: 'changed',
    })
    expect(await changed.poll()).toBe(1)
    const parked = await getSaga(t.db, id)
    expect(parked).toMatchObject({ status: 'failed' })
    expect(parked!.reason).toContain('a definition was changed without a version bump')
    expect(parked!.steps[1]).toMatchObject({ name: 'b', outcomeUnknown: true })
    const recovered = (await getSagaTimeline(t.db, id)).find((e) => e.kind === 'lease-expired')
    // The stored step, not the changed definition's 'x' at that index.
    expect(recovered).toMatchObject({ step: 'b', worker: 'changed' })

    await retrySaga(t.db, id, { clock: new ManualClock(20 * leaseMs) })
    const right = createSagaWorker({
      db: t.db,
      sagas: [define(['a', 'b', 'c'], false)],
      clock: new ManualClock(30 * leaseMs),
      leaseMs,
      workerId: 'right',
    })
    expect(await right.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(log).toEqual(['act a', 'act b', 'comp b', 'comp a'])
    expect(instance!.steps.map((s) => s.status)).toEqual(['compensated', 'compensated', 'pending'])

    stuck.open()
    await deadRun
    // The dead worker's late write was fenced off.
    expect(await getSaga(t.db, id)).toEqual(instance)
  })
})
