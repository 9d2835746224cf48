// A reply step's send and onReply and a wait step's waitUntil run while the saga holds its
// lease: one that never settles is abandoned after the step's callTimeoutMs (on the injected
// clock) and counts as a failed attempt, on real SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createSagaWorker,
  defaultCallTimeoutMs,
  defineSaga,
  deliverReply,
  getSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, effectLog, type TestDb } from './databases.js'

const never = new Promise<never>(() => {})
const sagaName = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`

describe('callTimeoutMs declarations', () => {
  const base = { name: 'order', version: 1 }
  const reply = { send: () => {}, awaitReply: { timeoutMs: 1_000 } }

  it.each([
    ['zero', 0],
    ['a fraction', 1.5],
    ['a string', '100'],
  ])('refuses %s on a reply step', (_label, value) => {
    expect(() =>
      defineSaga({
        ...base,
        steps: [{ name: 'charge', ...reply, callTimeoutMs: value as number }],
      }),
    ).toThrow(InvalidOptionError)
  })

  it('refuses it on an action step (timeoutMs) and on a sleepMs step (nothing is called)', () => {
    for (const step of [
      { name: 'a', action: () => {}, callTimeoutMs: 10 },
      { name: 'a', sleepMs: 10, callTimeoutMs: 10 },
    ]) {
      try {
        defineSaga({ ...base, steps: [step as never] })
        expect.unreachable()
      } catch (error) {
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe('saga "order".steps["a"].callTimeoutMs')
      }
    }
  })

  it('accepts it on reply and waitUntil steps, and has a documented default', () => {
    expect(defaultCallTimeoutMs).toBe(30_000)
    expect(() =>
      defineSaga({
        ...base,
        steps: [
          { name: 'charge', ...reply, callTimeoutMs: 5 },
          { name: 'later', waitUntil: () => 0, callTimeoutMs: 5 },
        ],
      }),
    ).not.toThrow()
  })
})

describe.each(dbTargets)('hung step functions on $dialect', (target) => {
  let t: TestDb
  const log = effectLog('call_timeout_effects')

  beforeAll(async () => {
    t = await target.open('saga_call_timeout')
    await log.create(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  const noRetry = { maxAttempts: 2, baseDelayMs: 60_000, jitter: 'none' } as const

  it('a send that never settles fails its attempt after callTimeoutMs, sending nothing', async () => {
    const clock = new ManualClock(0)
    const entered = gate()
    const saga = defineSaga({
      name: sagaName('hung-send'),
      version: 1,
      steps: [
        {
          name: 'charge',
          retry: noRetry,
          callTimeoutMs: 1_000,
          send: async (ctx, tx) => {
            await log.record(tx, ctx.sagaId, `sent ${ctx.attempt}`)
            entered.open()
            await never
          },
          awaitReply: { timeoutMs: 60_000 },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const running = worker.run(saga, {})
    await entered.promise
    await clock.advance(1_000)
    const { id, status } = await running
    expect(status).toBe('running')
    const instance = await getSaga(t.db, id)
    expect(instance!.steps[0]).toMatchObject({
      status: 'failed',
      attempts: 1,
      error: { code: 'TIMEOUT' },
    })
    expect(instance!.leaseOwner).toBeUndefined()
    expect(instance!.nextRunAt).toBe(61_000)
    // Its transaction was rolled back: the command was never written.
    expect(await log.read(t.db, id)).toEqual([])
  })

  it('an onReply that never settles fails its attempt after callTimeoutMs', async () => {
    const clock = new ManualClock(0)
    const entered = gate()
    const saga = defineSaga({
      name: sagaName('hung-reply'),
      version: 1,
      steps: [
        {
          name: 'charge',
          retry: noRetry,
          callTimeoutMs: 500,
          send: () => {},
          awaitReply: {
            timeoutMs: 60_000,
            onReply: async () => {
              entered.open()
              return never
            },
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock })).toBe('delivered')
    const polled = worker.poll()
    await entered.promise
    await clock.advance(500)
    expect(await polled).toBe(1)
    const instance = await getSaga(t.db, id)
    expect(instance!.status).toBe('running')
    expect(instance!.steps[0]).toMatchObject({ attempts: 1, error: { code: 'TIMEOUT' } })
    expect(instance!.leaseOwner).toBeUndefined()
    expect(instance!.nextRunAt).toBe(500 + 60_000)
  })

  it('a waitUntil that never settles fails its attempt after callTimeoutMs', async () => {
    const clock = new ManualClock(0)
    const entered = gate()
    const saga = defineSaga({
      name: sagaName('hung-wait'),
      version: 1,
      steps: [
        {
          name: 'later',
          callTimeoutMs: 200,
          waitUntil: async () => {
            entered.open()
            return never
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const running = worker.run(saga, {})
    await entered.promise
    await clock.advance(200)
    const { id, status } = await running
    expect(status).toBe('running')
    const instance = await getSaga(t.db, id)
    expect(instance!.steps[0]).toMatchObject({ status: 'pending', error: { code: 'TIMEOUT' } })
    expect(instance!.leaseOwner).toBeUndefined()
  })
})
