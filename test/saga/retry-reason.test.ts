// A parked saga resumed by retrySaga compensates for the reason it compensated before it was
// parked: its compensations get that reason as ctx.reason, and it ends with that reason, not
// with the park's "compensation ... failed" text (nested once more at each further park).
// Real SQLite and PostgreSQL, ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  getSaga,
  retrySaga,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('retrySaga keeps the compensation reason on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_retry_reason')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** A saga whose `charge` compensation fails until `refunds.work` is set; `ship` waits. */
  const refundSaga = (shipFails: boolean) => {
    const refunds = { work: false, reasons: [] as string[] }
    const saga = defineSaga({
      name: `retry-reason-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => ({ chargeId: 'c1' }),
          compensation: async (ctx) => {
            refunds.reasons.push(ctx.reason)
            if (!refunds.work) throw new Error('refund ledger is read-only')
          },
          compensationRetry: { maxAttempts: 1 },
        },
        shipFails
          ? {
              name: 'ship',
              action: async () => {
                throw Object.assign(new Error('no stock'), { status: 422 })
              },
            }
          : { name: 'ship', sleepMs: 60_000 },
      ],
    })
    return { saga, refunds }
  }

  it('a failed saga parked by its compensation ends compensated with the step failure as reason', async () => {
    const clock = new ManualClock(1_000)
    const { saga, refunds } = refundSaga(true)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    const original = 'step "ship" failed: Error: no stock'
    expect((await getSaga(t.db, id))!.status).toBe('failed')

    // Parked twice: the second park's reason names the original cause once, not nested.
    await retrySaga(t.db, id, { clock })
    expect((await getSaga(t.db, id))!.reason).toBe(original)
    await worker.poll()
    const again = await getSaga(t.db, id)
    expect(again!.status).toBe('failed')
    expect(again!.reason).toBe(
      `compensation of step "charge" failed after 1 attempt: Error: refund ledger is read-only (while compensating because ${original})`,
    )

    refunds.work = true
    await retrySaga(t.db, id, { clock })
    await worker.poll()
    const done = await getSaga(t.db, id)
    expect(done!.status).toBe('compensated')
    expect(done!.reason).toBe(original)
    expect(refunds.reasons).toEqual([original, original, original])
  })

  it('a cancelled saga parked by its compensation ends cancelled with the cancel reason', async () => {
    const clock = new ManualClock(1_000)
    const { saga, refunds } = refundSaga(false)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await startSaga(t.db, saga, {}, { clock })
    await worker.poll()
    expect((await getSaga(t.db, id))!.status).toBe('running')
    await cancelSaga(t.db, id, { reason: 'customer changed their mind', clock })
    await worker.poll()
    expect((await getSaga(t.db, id))!.status).toBe('failed')

    refunds.work = true
    await retrySaga(t.db, id, { clock })
    await worker.poll()
    const done = await getSaga(t.db, id)
    const cancelled = 'cancel requested: customer changed their mind'
    expect(done!.status).toBe('cancelled')
    expect(done!.reason).toBe(cancelled)
    expect(refunds.reasons).toEqual([cancelled, cancelled])
  })
})
