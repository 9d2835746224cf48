// Command/reply steps on real SQLite and PostgreSQL, driven by a ManualClock and deliverReply:
// a step whose command was sent has an unknown outcome until its reply is read, so every
// compensation that starts meanwhile (a cancel, a last reply timeout) undoes it too.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  type SagaRetryOptions,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, effectLog, type TestDb } from './databases.js'

describe.each(dbTargets)('saga reply steps on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_reply')
    await log.create(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  const log = effectLog('reply_effects')
  const effect = log.record
  const effects = (sagaId: string) => log.read(t.db, sagaId)
  /** What a saga whose sent charge was refunded did. */
  const refunded = (id: string) => ['reserve', 'charge-sent 1', `refund ${id}:charge`, 'release']

  /** reserve (compensated), charge (a command and its reply, refunded), ship. */
  const orderSaga = (prefix: string, retry: SagaRetryOptions, timeoutMs = 60_000) =>
    defineSaga({
      name: `${prefix}-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => {
            await effect(t.db, ctx.sagaId, 'reserve')
            return { reservationId: 'r-1' }
          },
          compensation: async (ctx) => {
            await effect(t.db, ctx.sagaId, 'release')
          },
        },
        {
          name: 'charge',
          retry,
          send: async (ctx, tx) => {
            await effect(tx, ctx.sagaId, `charge-sent ${ctx.attempt}`)
          },
          awaitReply: {
            timeoutMs,
            onReply: (reply) => {
              const r = reply as { ok: boolean; chargeId?: string }
              if (!r.ok) throw Object.assign(new Error('card declined'), { status: 402 })
              return { chargeId: r.chargeId! }
            },
          },
          // By the command's idempotency key: the reply (and its chargeId) may never have come.
          compensation: async (ctx) => {
            await effect(t.db, ctx.sagaId, `refund ${ctx.sagaId}:${ctx.step}`)
          },
        },
        {
          name: 'ship',
          action: async (ctx) => {
            await effect(t.db, ctx.sagaId, 'ship')
          },
        },
      ],
    })

  it('a cancel while the reply is awaited refunds the sent command before releasing the earlier step', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('cancel-reply', { maxAttempts: 3 })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('running')
    expect((await getSaga(t.db, id))!.steps[1]).toMatchObject({ status: 'waiting', sent: true })
    await cancelSaga(t.db, id, { reason: 'customer left', clock })
    // Woken at once: no time passes.
    expect(await worker.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({
      status: 'cancelled',
      reason: 'cancel requested: customer left',
    })
    expect(instance!.steps.map((s) => s.status)).toEqual(['compensated', 'compensated', 'pending'])
    expect(await effects(id)).toEqual(refunded(id))
    // The card was charged after all: the late positive reply changes nothing, it was refunded.
    expect(await deliverReply(t.db, id, 'charge', { ok: true, chargeId: 'c-1' }, { clock })).toBe(
      'delivered',
    )
    expect(await worker.poll()).toBe(0)
    expect((await getSaga(t.db, id))!.status).toBe('cancelled')
    const compensations = (await getSagaTimeline(t.db, id))
      .filter((e) => e.kind === 'compensation-completed')
      .map((e) => e.step)
    expect(compensations).toEqual(['charge', 'reserve'])
  })

  it('a cancel in the retry delay after a reply timeout refunds the command sent before', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga(
      'cancel-delay',
      { maxAttempts: 3, baseDelayMs: 60_000, jitter: 'none' },
      1_000,
    )
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await clock.advance(1_000)
    expect(await worker.poll()).toBe(1) // the reply timed out: a resend in a minute
    expect((await getSaga(t.db, id))!.steps[1]).toMatchObject({ status: 'failed', sent: true })
    await cancelSaga(t.db, id, { clock })
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('cancelled')
    expect(await effects(id)).toEqual(refunded(id))
  })

  it('the last reply timeout compensates the step whose command got no reply, then the earlier ones', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('last-timeout', { maxAttempts: 1 }, 1_000)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await clock.advance(1_000)
    expect(await worker.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('compensated')
    expect(instance!.reason).toContain('SagaReplyTimeoutError')
    expect(await effects(id)).toEqual(refunded(id))
  })

  it('a negative reply tells the outcome: the declined step is not refunded, the earlier one is released', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('declined', { maxAttempts: 3 })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await deliverReply(t.db, id, 'charge', { ok: false }, { clock })
    expect(await worker.poll()).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('compensated')
    expect(instance!.steps[1]).toMatchObject({ status: 'failed' })
    expect(instance!.steps[1]!.sent).toBeUndefined()
    expect(await effects(id)).toEqual(['reserve', 'charge-sent 1', 'release'])
  })
})
