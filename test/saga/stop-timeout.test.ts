// worker.stop({ timeoutMs }) on real SQLite and PostgreSQL, driven by a ManualClock: a step that
// does not end in time is abandoned (its signal aborts, nothing more is written for it), the
// worker stops, and its instance's lease simply runs out for another worker to resume it.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AbortedError, InvalidOptionError } from '../../src/core/errors.js'
import { createSagaWorker, defineSaga, getSaga, type SagaEvent } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga worker stop with a timeout on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_stop_timeout')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** A saga whose one step hangs (ignoring its signal) until the test releases it. */
  const hanging = () => {
    const inside = gate()
    const release = gate()
    const reasons: unknown[] = []
    let calls = 0
    const saga = defineSaga({
      name: `hang-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'hang',
          action: async (ctx) => {
            calls++
            if (calls > 1) return { by: 'other' }
            ctx.signal.addEventListener('abort', () => reasons.push(ctx.signal.reason))
            inside.open()
            await release.promise
            return { by: 'first' }
          },
        },
      ],
    })
    return { saga, inside, release, reasons, calls: () => calls }
  }

  it('refuses a timeout that is not a non-negative integer, and keeps running', async () => {
    const { saga } = hanging()
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    for (const options of [{ timeoutMs: -1 }, { timeoutMs: 1.5 }, { timeoutMs: '5' }, null]) {
      await expect(worker.stop(options as never)).rejects.toBeInstanceOf(InvalidOptionError)
    }
    expect(worker.state).toBe('new')
    await worker.stop({ timeoutMs: 0 })
    expect(worker.state).toBe('stopped')
  })

  it('stops waiting after timeoutMs: the step is abandoned and its lease runs out for another worker', async () => {
    const clock = new ManualClock(0)
    const h = hanging()
    const a = createSagaWorker({ db: t.db, sagas: [h.saga], clock, leaseMs: 5_000, workerId: 'A' })
    const events: SagaEvent[] = []
    a.events.on((e) => events.push(e))
    const id = `hang-${randomUUID()}`
    const running = a.run(h.saga, {}, { id })
    await h.inside.promise
    let stopped = false
    const stopping = a.stop({ timeoutMs: 1_000 }).then(() => {
      stopped = true
    })
    await clock.advance(999)
    expect(stopped).toBe(false)
    await clock.advance(1)
    await stopping
    expect(a.state).toBe('stopped')
    // The step was told (its signal aborted); its lease is neither released nor renewed.
    expect(h.reasons).toHaveLength(1)
    expect(h.reasons[0]).toBeInstanceOf(AbortedError)
    expect(events.filter((e) => e.type === 'abandoned').map((e) => e.sagaId)).toEqual([id])
    // run() reports what the database has: the saga is still running.
    expect(await running).toMatchObject({ id, status: 'running' })
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'running',
      leaseOwner: 'A',
      leaseExpiresAt: 5_000,
    })
    await clock.advance(3_000) // past renewal intervals: none comes
    expect((await getSaga(t.db, id))!.leaseExpiresAt).toBe(5_000)

    // At its lease end another worker resumes it from the persisted state.
    await clock.advance(1_000)
    const b = createSagaWorker({ db: await t.reopen(), sagas: [h.saga], clock, workerId: 'B' })
    expect(await b.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'completed',
      context: { by: 'other' },
    })

    // The abandoned step ends at last: nothing of it is written.
    h.release.open()
    await new Promise((resolve) => setImmediate(resolve))
    expect((await getSaga(t.db, id))!.context).toEqual({ by: 'other' })
    expect(a.metrics()).toMatchObject({ completed: 0, leaseLost: 0 })
  })

  it('a step that ends within the timeout is recorded and given back as by stop()', async () => {
    const clock = new ManualClock(0)
    const h = hanging()
    const a = createSagaWorker({ db: t.db, sagas: [h.saga], clock, leaseMs: 5_000 })
    const running = a.run(h.saga, {})
    await h.inside.promise
    const stopping = a.stop({ timeoutMs: 1_000 })
    h.release.open()
    await stopping
    const { id } = await running
    expect(h.reasons).toEqual([])
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed', context: { by: 'first' } })
  })
})
