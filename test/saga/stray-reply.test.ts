// A reply for a step that already ran, or a redelivered copy of a reply that was read and
// refused, is discarded by deliverReply: nothing is recorded and the saga is not woken before
// its time (on real SQLite and PostgreSQL, with a ManualClock).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { migrateInbox } from '../../src/outbox/index.js'
import { wakeSaga } from '../../src/saga/admin.js'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  sagaReplyHandler,
} from '../../src/saga/index.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('stray saga replies on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_stray_reply')
    await migrateInbox(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  const name = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`

  it('a reply naming a step that already ran is discarded and wakes nothing', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: name('ran'),
      version: 1,
      steps: [
        { name: 'reserve', action: () => ({ reservationId: 'r-1' }) },
        { name: 'nap', sleepMs: 60_000 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(60_000)
    expect(await deliverReply(t.db, id, 'reserve', { late: true }, { clock })).toBe('stale')
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(60_000)
    expect(await worker.poll()).toBe(0)
  })

  it('a reply naming a step that waits on a timer (sleepMs, waitUntil) wakes nothing', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: name('timer'),
      version: 1,
      steps: [
        { name: 'nap', sleepMs: 60_000 },
        { name: 'until', waitUntil: (ctx) => ctx.clock.now() + 60_000 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    // A misrouted reply naming the sleeping step: it awaits no reply, so nothing is recorded
    // and the sleep is not cut short.
    expect(await deliverReply(t.db, id, 'nap', { stray: true }, { clock })).toBe('stale')
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(60_000)
    expect(await worker.poll()).toBe(0)
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(120_000)
    expect(await deliverReply(t.db, id, 'until', { stray: true }, { clock })).toBe('stale')
    expect(await deliverReply(t.db, id, 'nap', { stray: true }, { clock })).toBe('stale')
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(120_000)
    expect(await worker.poll()).toBe(0)
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
  })

  it('the wake of a reply makes the saga due only when the replied step is its current one', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: name('current'),
      version: 1,
      steps: [
        { name: 'reserve', action: () => ({ reservationId: 'r-1' }) },
        { name: 'nap', sleepMs: 60_000 },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    // A reply for the earlier step that got past deliverReply's read (a race): not due.
    await wakeSaga(t.db, id, 0, clock.now())
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(60_000)
    await wakeSaga(t.db, id, 1, clock.now())
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(0)
  })

  /** One command/reply step, retried a minute after a refused (negative) reply. */
  const chargeSaga = () =>
    defineSaga({
      name: name('charge'),
      version: 1,
      steps: [
        {
          name: 'charge',
          retry: { maxAttempts: 3, baseDelayMs: 60_000, jitter: 'none', shouldRetry: () => true },
          send: () => {},
          awaitReply: {
            timeoutMs: 600_000,
            onReply: (reply) => {
              if (!(reply as { ok: boolean }).ok) throw new Error('declined')
              return { charged: true }
            },
          },
        },
      ],
    })

  it('a redelivered refused reply neither wakes the retry delay nor answers the resend', async () => {
    const clock = new ManualClock(0)
    const saga = chargeSaga()
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect(await deliverReply(t.db, id, 'charge', { ok: false }, { clock, attempt: 1 })).toBe(
      'delivered',
    )
    expect(await worker.poll()).toBe(1)
    const delayed = await getSaga(t.db, id)
    expect(delayed!.steps[0]).toMatchObject({ status: 'failed', attempts: 1 })
    expect(delayed!.nextRunAt).toBe(60_000)

    // The broker delivers the negative reply again, in the retry delay: discarded, with or
    // without its attempt.
    expect(await deliverReply(t.db, id, 'charge', { ok: false }, { clock })).toBe('stale')
    expect(await deliverReply(t.db, id, 'charge', { ok: false }, { clock, attempt: 1 })).toBe(
      'stale',
    )
    expect((await getSaga(t.db, id))!.nextRunAt).toBe(60_000)
    expect(await worker.poll()).toBe(0)

    // The resend waits; another copy of attempt 1's reply is not its answer.
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting', attempts: 2 })
    expect(await deliverReply(t.db, id, 'charge', { ok: false }, { clock, attempt: 1 })).toBe(
      'stale',
    )
    expect(await worker.poll()).toBe(0)
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting', attempts: 2 })

    // The resend's own reply is read.
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock, attempt: 2 })).toBe(
      'delivered',
    )
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({
      status: 'completed',
      context: { charged: true },
    })
    // And once the step ran, any further copy is discarded.
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock, attempt: 2 })).toBe(
      'stale',
    )
  })

  // A copy of attempt 1's reply read the step's state (waiting for it), then stalled before
  // its insert; meanwhile the first copy was recorded, read and refused (the reply row deleted,
  // the resend due in a minute). The stalled copy's insert then found no row: it was recorded
  // as 'delivered' and woke the saga at once, and the next claim took it as the answer to the
  // resend, which was never sent. Its check and its insert must be one with the worker's
  // writes: it is dropped as 'stale' (or, had it come first, recorded, and the other copy a
  // duplicate). Through the driver, and in the caller's transaction (as sagaReplyHandler
  // delivers a reply, in its inbox transaction).
  it.each(['driver', 'transaction'] as const)(
    'a copy of a reply that read the state before the first copy was refused wakes nothing (%s)',
    async (via) => {
      const clock = new ManualClock(0)
      const saga = chargeSaga()
      // Every statement of the first copy and of the worker, counted while it runs: on SQLite a
      // copy that holds a write transaction keeps them waiting until it ends.
      let running = 0
      const counted = hooked(t.db, async (_sql, run) => {
        running++
        try {
          return await run()
        } finally {
          running--
        }
      })
      const worker = createSagaWorker({ db: counted, sagas: [saga], clock })
      const { id } = await worker.run(saga, {})
      const stalled = gate()
      const release = gate()
      let inTransaction = false
      // The second copy waits before its insert until the first copy was handled (or cannot be
      // while this copy holds the database).
      const second = hooked(
        t.db,
        async (sql, run) => {
          if (/INSERT INTO breakwater_saga_replies/.test(sql)) {
            stalled.open()
            await release.promise
          }
          return run()
        },
        (open) => {
          inTransaction = open
        },
      )
      const copy = { ok: false, copy: 2 }
      const secondCopy =
        via === 'driver'
          ? deliverReply(second, id, 'charge', copy, { clock, attempt: 1 })
          : second.transaction((tx) => deliverReply(tx, id, 'charge', copy, { clock, attempt: 1 }))
      await stalled.promise
      let firstCopy: unknown
      const refusal = (async () => {
        firstCopy = await deliverReply(counted, id, 'charge', { ok: false }, { clock, attempt: 1 })
        return worker.poll()
      })()
      let settled = false
      void refusal.finally(() => {
        settled = true
      })
      while (!settled && !(t.db.dialect === 'sqlite' && inTransaction && running > 0)) {
        await new Promise((resolve) => setImmediate(resolve))
      }
      release.open()
      const outcomes = [await secondCopy, await refusal.then(() => firstCopy)].sort()
      expect([
        ['delivered', 'stale'],
        ['delivered', 'duplicate'],
      ]).toContainEqual(outcomes)
      const refused = await getSaga(t.db, id)
      expect(refused!.steps[0]).toMatchObject({ status: 'failed', attempts: 1, replyRefusedAt: 1 })
      expect(refused!.nextRunAt).toBe(60_000)
      expect(await worker.poll()).toBe(0)
      // The resend is sent after its delay, and its own reply is read.
      await clock.advance(60_000)
      expect(await worker.poll()).toBe(1)
      expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting', attempts: 2 })
      expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock, attempt: 2 })).toBe(
        'delivered',
      )
      expect(await worker.poll()).toBe(1)
      expect((await getSaga(t.db, id))!.status).toBe('completed')
    },
  )

  it('sagaReplyHandler drops a copy of a refused reply by the attempt in its causation id', async () => {
    const clock = new ManualClock(0)
    const saga = chargeSaga()
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const ignored: string[] = []
    const handle = sagaReplyHandler(t.db, { clock, onIgnored: (m) => ignored.push(m.id) })
    const { id } = await worker.run(saga, {})
    // Two messages with the same reply (the service replied twice to attempt 1's command).
    const reply = (messageId: string, attempt: number, ok: boolean) =>
      handle({
        id: messageId,
        topic: 'saga.replies',
        key: id,
        payload: JSON.stringify({ ok }),
        headers: {
          'correlation-id': id,
          'saga-step': 'charge',
          'causation-id': `${id}:charge:${attempt}`,
        },
      } as never)
    await reply('m-1', 1, false)
    expect(await worker.poll()).toBe(1)
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'waiting', attempts: 2 })
    await reply('m-2', 1, false)
    expect(ignored).toEqual(['m-2'])
    expect(await worker.poll()).toBe(0)
    await reply('m-3', 2, true)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
  })

  // The step's state alone said the reply was awaited (its command sent, unread), but a saga
  // that compensates, or is parked, never reads a reply: it was recorded as 'delivered', the
  // wake (running sagas only) did nothing, and sagaReplyHandler did not report it.
  it('a reply for a saga that compensates or is parked is stale, and reported as ignored', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: name('parked'),
      version: 1,
      steps: [
        {
          name: 'charge',
          send: () => {},
          awaitReply: { timeoutMs: 600_000 },
          compensation: () => {
            throw new Error('refunds down')
          },
          compensationRetry: { maxAttempts: 2, baseDelayMs: 60_000, jitter: 'none' },
        },
      ],
    })
    const ignored: string[] = []
    const handle = sagaReplyHandler(t.db, { clock, onIgnored: (m) => ignored.push(m.id) })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    await cancelSaga(t.db, id, { clock })
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'compensating' })
    // The cancel cut the step off (failed), its command still sent: the step alone would take
    // the reply; the saga compensating is what makes it stale.
    expect((await getSaga(t.db, id))!.steps[0]).toMatchObject({ status: 'failed', sent: true })
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock })).toBe('stale')
    await clock.advance(60_000)
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'failed' })
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock })).toBe('stale')
    await handle({
      id: `${id}-reply`,
      topic: 'saga.replies',
      key: id,
      payload: JSON.stringify({ ok: true }),
      headers: { 'correlation-id': id, 'saga-step': 'charge' },
    } as never)
    expect(ignored).toEqual([`${id}-reply`])
    expect(
      await t.db.query('SELECT 1 FROM breakwater_saga_replies WHERE saga_id = $1', [id]),
    ).toEqual([])
  })

  it('refuses an attempt that is not a positive integer', async () => {
    for (const attempt of [0, 1.5, '1']) {
      await expect(
        deliverReply(t.db, 'any', 'charge', {}, { attempt: attempt as number }),
      ).rejects.toBeInstanceOf(InvalidOptionError)
    }
  })

  it('sagaReplyHandler ignores a reply whose headers hold text no saga id or step can have (a NUL)', async () => {
    const ignored: string[] = []
    const handle = sagaReplyHandler(t.db, { onIgnored: (m) => ignored.push(m.id) })
    const reply = (id: string, headers: Record<string, string>) =>
      handle({ id, topic: 'saga.replies', key: 'k', payload: '{}', headers } as never)
    // Refused by the database on PostgreSQL (a bare driver error): the message was rejected
    // and redelivered for ever.
    await reply('nul-1', { 'correlation-id': 'order\u0000-1', 'saga-step': 'charge' })
    await reply('nul-2', { 'correlation-id': 'order-1', 'saga-step': 'char\u0000ge' })
    expect(ignored).toEqual(['nul-1', 'nul-2'])
    // deliverReply itself refuses them with InvalidOptionError rather than a driver error.
    await expect(deliverReply(t.db, 'order\u0000-1', 'charge', {})).rejects.toBeInstanceOf(
      InvalidOptionError,
    )
    await expect(deliverReply(t.db, 'order-1', 'char\u0000ge', {})).rejects.toBeInstanceOf(
      InvalidOptionError,
    )
  })
})

/**
 * The database with every statement (its own, and its transactions', and each transaction as
 * a whole, as `BEGIN`) going through `hook`, which may hold it before it runs (the saga tests never mock a database); `inTransaction` is
 * told when a transaction of it opens and ends.
 */
function hooked(
  db: SqlDriver,
  hook: (sql: string, run: () => Promise<unknown>) => Promise<unknown>,
  inTransaction: (open: boolean) => void = () => {},
): SqlDriver {
  const wrap = <T extends SqlExecutor>(target: T): T =>
    new Proxy(target, {
      get(object, prop) {
        if (prop === 'query' || prop === 'execute') {
          return (sql: string, params?: readonly unknown[]) =>
            hook(sql, () => (object[prop] as SqlExecutor['query']).call(object, sql, params))
        }
        if (prop === 'transaction') {
          return (fn: (tx: SqlTransaction) => Promise<unknown>) =>
            hook('BEGIN', () =>
              (object as unknown as SqlDriver).transaction(async (tx) => {
                inTransaction(true)
                try {
                  return await fn(wrap(tx))
                } finally {
                  inTransaction(false)
                }
              }),
            )
        }
        const value: unknown = Reflect.get(object, prop, object)
        return typeof value === 'function' ? value.bind(object) : value
      },
    })
  return wrap(db)
}
