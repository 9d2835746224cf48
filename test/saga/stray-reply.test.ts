// A reply for a step that already ran, or a redelivered copy of a reply that was read and
// refused, is discarded by deliverReply: nothing is recorded and the saga is not woken before
// its time (on real SQLite and PostgreSQL, with a ManualClock).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { migrateInbox } from '../../src/outbox/index.js'
import { wakeSaga } from '../../src/saga/admin.js'
import {
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  sagaReplyHandler,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
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
