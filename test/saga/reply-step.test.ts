// Command/reply steps on real SQLite and PostgreSQL, driven by a ManualClock and deliverReply:
// a step whose command was sent has an unknown outcome until its reply is read, so every
// compensation that starts meanwhile (a cancel, a last reply timeout) undoes it too; a reply
// that arrives while a worker is suspending the step again keeps its wake-up.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { wakeSaga } from '../../src/saga/admin.js'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  type SagaRetryOptions,
  SagaStateConflictError,
  startSaga,
} from '../../src/saga/index.js'
import { sagaStatements } from '../../src/saga/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, effectLog, type TestDb } from './databases.js'

type Run = () => Promise<unknown[]>

/**
 * The database as the worker sees it: every query goes to the real database through `hook`,
 * which may do something before the worker gets the answer (the saga tests never mock one).
 */
function withQueryHook(
  db: SqlDriver,
  hook: (sql: string, params: readonly unknown[], run: Run) => Promise<unknown[]>,
): SqlDriver {
  return new Proxy(db, {
    get(target, prop) {
      if (prop === 'query') {
        return (sql: string, params: readonly unknown[] = []) =>
          hook(sql, params, () => target.query(sql, params))
      }
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    },
  })
}

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
      'stale',
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

  // PostgreSQL only: SQLite has one writer, so an open transaction holds every claim anyway.
  // A duplicate reply's transaction (an inbox's, still open while its handler finishes) holds
  // deliverReply's FOR KEY SHARE on the instance; the claim locked FOR UPDATE SKIP LOCKED,
  // which that share lock blocks, so the woken saga was passed over until the next poll.
  it.skipIf(target.dialect !== 'postgres')(
    "a duplicate reply's open transaction does not keep the woken saga from the next claim",
    async () => {
      const clock = new ManualClock(0)
      const saga = orderSaga('dup-open', { maxAttempts: 3 })
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
      const { id } = await worker.run(saga, {})
      const reply = { ok: true, chargeId: 'c-1' }
      expect(await deliverReply(t.db, id, 'charge', reply, { clock })).toBe('delivered')
      const finish = gate()
      let duplicate: unknown
      const open = t.db.transaction(async (tx) => {
        duplicate = await deliverReply(tx, id, 'charge', reply, { clock })
        await finish.promise
      })
      try {
        while (duplicate === undefined) await new Promise((resolve) => setImmediate(resolve))
        expect(duplicate).toBe('duplicate')
        expect(await worker.poll()).toBe(1)
      } finally {
        finish.open()
        await open
      }
      expect((await getSaga(t.db, id))!.status).toBe('completed')
      expect(await effects(id)).toEqual(['reserve', 'charge-sent 1', 'ship'])
    },
  )

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

  it('a reply for a step that has sent no command is refused, and the step still sends it', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('unsent', { maxAttempts: 3 })
    const { id } = await startSaga(t.db, saga, {}, { clock })
    // A stray reply (misrouted, or left from an earlier instance with this id): kept, it was
    // taken as the charge's answer when the step came, and the charge was never sent.
    const refused = await deliverReply(
      t.db,
      id,
      'charge',
      { ok: true, chargeId: 'stray' },
      {
        clock,
      },
    ).catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(SagaStateConflictError)
    expect((refused as SagaStateConflictError).code).toBe('SAGA_STATE_CONFLICT')
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'running', context: {} })
    expect(await effects(id)).toEqual(['reserve', 'charge-sent 1'])
    await deliverReply(t.db, id, 'charge', { ok: true, chargeId: 'c-1' }, { clock })
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'completed',
      context: { chargeId: 'c-1' },
    })
  })

  /**
   * The worker's database: once `arm`ed, the first time the worker reads the charge's reply of
   * `id` and finds none, `arrive()` runs before the worker gets that answer (a reply that
   * comes between the worker's read and its next write).
   */
  const replyAfterEmptyRead = (id: string, arrive: () => Promise<void>) => {
    let armed = false
    const db = withQueryHook(t.db, async (sql, params, run) => {
      const rows = await run()
      const replyRead = sql === sagaStatements[t.db.dialect].selectReply && params[0] === id
      if (armed && replyRead && params[1] === 'charge' && rows.length === 0) {
        armed = false
        await arrive()
      }
      return rows
    })
    return { db, arm: () => (armed = true) }
  }

  it('a reply that arrives while a spurious wake suspends the step again is read at once', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('spurious-wake', { maxAttempts: 3 })
    const id = `spurious-${randomUUID()}`
    const worker1 = replyAfterEmptyRead(id, async () => {
      await deliverReply(t.db, id, 'charge', { ok: true, chargeId: 'c-1' }, { clock })
    })
    const worker = createSagaWorker({ db: worker1.db, sagas: [saga], clock })
    await worker.run(saga, {}, { id })
    // A spurious wake (a stray reply no longer wakes anything): nothing for the saga to do.
    await wakeSaga(t.db, id, 1, clock.now())
    worker1.arm()
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.steps[1]!.status).toBe('waiting')
    // No time passes: the charge's reply is read now, not when the minute's timeout fires.
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed' })
    expect(await effects(id)).toEqual(['reserve', 'charge-sent 1', 'ship'])
  })

  it('a reply that arrives as the step times out is read at once, not after the retry delay', async () => {
    const clock = new ManualClock(0)
    const saga = orderSaga('timeout-reply', { maxAttempts: 3, baseDelayMs: 60_000 }, 1_000)
    const id = `timeout-reply-${randomUUID()}`
    const worker1 = replyAfterEmptyRead(id, async () => {
      await deliverReply(t.db, id, 'charge', { ok: true, chargeId: 'c-1' }, { clock })
    })
    const worker = createSagaWorker({ db: worker1.db, sagas: [saga], clock })
    await worker.run(saga, {}, { id })
    await clock.advance(1_000)
    worker1.arm()
    expect(await worker.poll()).toBe(1) // timed out: a resend in a minute
    expect((await getSaga(t.db, id))!.steps[1]!.status).toBe('failed')
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed' })
    // The late reply counted: the command was not sent again.
    expect(await effects(id)).toEqual(['reserve', 'charge-sent 1', 'ship'])
  })

  it.runIf(target.dialect === 'postgres')(
    'a reply whose transaction is still open while the step is suspended again wakes it on commit',
    async () => {
      const clock = new ManualClock(0)
      const saga = orderSaga('open-reply', { maxAttempts: 3 })
      const id = `open-reply-${randomUUID()}`
      const recorded = gate()
      const commit = gate()
      let replyTx: Promise<void> | undefined
      const worker1 = replyAfterEmptyRead(id, async () => {
        // The reply's transaction (an inbox handler's) records it and stays open.
        replyTx = t.db.transaction(async (tx) => {
          await deliverReply(tx, id, 'charge', { ok: true, chargeId: 'c-1' }, { clock })
          recorded.open()
          await commit.promise
        })
        await recorded.promise
      })
      // The worker's suspend write: if it waits for a row lock (the reply's), let the reply
      // commit; if it does not, the reply commits only after the worker is done.
      const db = withQueryHook(worker1.db, async (sql, _params, run) => {
        if (replyTx === undefined || sql !== sagaStatements.postgres.transitionBatch) return run()
        const written = run()
        let settled = false
        void written.finally(() => (settled = true)).catch(() => {})
        while (!settled) {
          const [row] = await t.db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'`,
          )
          if (row!.n > 0) {
            commit.open()
            break
          }
          await new Promise((resolve) => setImmediate(resolve))
        }
        return written
      })
      const worker = createSagaWorker({ db, sagas: [saga], clock })
      await worker.run(saga, {}, { id })
      await wakeSaga(t.db, id, 1, clock.now())
      worker1.arm()
      expect(await worker.poll()).toBe(1)
      commit.open()
      await replyTx
      expect(await worker.poll()).toBe(1)
      expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed' })
    },
  )

  it("ctx.atCommit work a reply step's send registers commits with its command, or fails the attempt", async () => {
    // The commit work was read before send ran ([send, ...work]): what send registered through
    // ctx.atCommit was dropped without a word, and the step went on as if it had run.
    const clock = new ManualClock(0)
    let failAtCommit = true
    const saga = defineSaga({
      name: `reply-at-commit-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          retry: { maxAttempts: 3, baseDelayMs: 1_000, jitter: 'none' },
          send: async (ctx) => {
            const attempt = ctx.attempt
            ctx.atCommit(async (tx) => {
              // 503: transient, so the step is retried.
              if (failAtCommit) throw Object.assign(new Error('ledger refused'), { status: 503 })
              await effect(tx, ctx.sagaId, `ledger ${attempt}`)
            })
          },
          awaitReply: { timeoutMs: 60_000, onReply: () => ({}) },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    // The work threw: the attempt failed with its error, nothing was sent.
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({
      status: 'failed',
      error: expect.objectContaining({ message: 'ledger refused' }),
    })
    expect((await getSaga(t.db, id))!.steps[0]!.sent).toBeUndefined()
    expect(await effects(id)).toEqual([])
    failAtCommit = false
    await clock.advance(1_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting', sent: true })
    expect(await effects(id)).toEqual(['ledger 2'])
  })
})
