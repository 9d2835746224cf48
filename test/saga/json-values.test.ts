// Values a saga stores as JSON, on real SQLite and PostgreSQL: a number JSON cannot hold (NaN,
// ±Infinity) is refused with INVALID_OPTION naming where it is, instead of being stored as null
// (a saga whose input said `amount: NaN` would otherwise run with `amount: null`); so is a Map
// or Set (stored as {}), a function field (left out) and an object with only #private fields
// (stored as {}). A class instance with own fields is kept, as a plain object of them.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createFlowTracker,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  getSaga,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

async function refusal(run: () => Promise<unknown>): Promise<InvalidOptionError> {
  const error = await run().then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(InvalidOptionError)
  return error as InvalidOptionError
}

describe.each(dbTargets)('saga JSON values on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_json')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('refuses an input with NaN or Infinity instead of starting the saga with null', async () => {
    const saga = defineSaga({
      name: `input-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => undefined }],
    })
    const id = `nan-${randomUUID()}`
    const error = await refusal(() => startSaga(t.db, saga, { amount: Number.NaN }, { id }))
    expect(error.code).toBe('INVALID_OPTION')
    expect(error.option).toBe('input')
    expect(error.message).toContain('NaN at input.amount')
    const items = { items: [{ price: 1 }, { price: Number.POSITIVE_INFINITY }] }
    expect((await refusal(() => startSaga(t.db, saga, items, { id }))).message).toContain(
      'Infinity at input.items[1].price',
    )
    expect(await getSaga(t.db, id)).toBeUndefined()
  })

  // An invalid Date and an undefined array element or hole were stored as null (the saga ran
  // on `at: null`), and a throwing toJSON escaped as the caller's bare Error.
  it('refuses an input with an invalid Date, undefined in an array or a throwing toJSON', async () => {
    const saga = defineSaga({
      name: `null-loss-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => undefined }],
    })
    const id = `null-loss-${randomUUID()}`
    const date = await refusal(() => startSaga(t.db, saga, { at: new Date('nope') }, { id }))
    expect(date).toMatchObject({ code: 'INVALID_OPTION', option: 'input' })
    expect(date.message).toContain('an invalid Date at input.at has no JSON form')
    const hole = await refusal(() => startSaga(t.db, saga, { skus: ['a', undefined] }, { id }))
    expect(hole.message).toContain('undefined at input.skus[1] has no JSON form')
    const boom = new Error('boom')
    const input = {
      card: {
        toJSON() {
          throw boom
        },
      },
    }
    const thrown = await refusal(() => startSaga(t.db, saga, input, { id }))
    expect(thrown.message).toContain('input.card threw: Error: boom')
    expect(thrown.cause).toBe(boom)
    expect(await getSaga(t.db, id)).toBeUndefined()
  })

  it('refuses a reply with a non-finite number, and the step still takes a good one', async () => {
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `reply-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: async () => {},
          awaitReply: { timeoutMs: 60_000, onReply: (reply) => reply as { fee: number } },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await startSaga(t.db, saga, {}, { clock })
    expect(await worker.poll()).toBe(1)
    const error = await refusal(() =>
      deliverReply(t.db, id, 'charge', { fee: Number.NEGATIVE_INFINITY }, { clock }),
    )
    expect(error.option).toBe('reply')
    expect(error.message).toContain('-Infinity at reply.fee')
    expect(await deliverReply(t.db, id, 'charge', { fee: 2 }, { clock })).toBe('delivered')
    expect(await worker.poll()).toBe(1)
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed', context: { fee: 2 } })
    await worker.stop()
  })

  it('fails a step whose result holds a non-finite number instead of merging null into the context', async () => {
    const clock = new ManualClock(0)
    let seen: unknown = 'not run'
    const saga = defineSaga({
      name: `result-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'price',
          retry: { maxAttempts: 1 },
          action: async () => ({ total: Number.NaN }),
        },
        {
          name: 'charge',
          action: async (ctx) => {
            seen = (ctx.context as { total?: unknown }).total
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    const instance = (await getSaga(t.db, id))!
    expect(seen).toBe('not run')
    expect(instance.status).toBe('compensated')
    expect(instance.steps[0]!.error).toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringContaining('NaN at result of step "price".total'),
    })
    await worker.stop()
  })

  it('refuses a tracked event whose payload holds a non-finite number', async () => {
    const tracker = createFlowTracker({
      db: t.db,
      flows: [defineFlow({ name: 'order', steps: ['placed'] })],
    })
    const correlationId = randomUUID()
    const error = await refusal(() =>
      tracker.record(t.db, {
        id: randomUUID(),
        correlationId,
        type: 'placed',
        at: 1,
        payload: { total: Number.NaN },
      }),
    )
    expect(error.option).toBe('event.payload')
    expect(error.message).toContain('NaN at event.payload.total')
    expect(await tracker.state(correlationId)).toBeUndefined()
    expect(await countRows(t.db, 'breakwater_flow_events')).toBe(0)
  })

  it('refuses an input holding a Map, a Set or a function instead of storing {} or dropping it', async () => {
    const saga = defineSaga({
      name: `lossy-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => undefined }],
    })
    const id = `lossy-${randomUUID()}`
    const cases: [unknown, string][] = [
      [{ lines: new Map([['a', 1]]) }, 'a Map at input.lines has no JSON form'],
      [{ tags: [new Set(['x'])] }, 'a Set at input.tags[0] has no JSON form'],
      [{ n: 1, notify: () => 1 }, 'a function at input.notify has no JSON form'],
    ]
    for (const [input, where] of cases) {
      const error = await refusal(() => startSaga(t.db, saga, input, { id }))
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'input' })
      expect(error.message).toContain(where)
    }
    expect(await getSaga(t.db, id)).toBeUndefined()
  })

  it('fails a step whose result holds a Set instead of merging {} into the context, and keeps a class instance', async () => {
    class Quote {
      constructor(readonly fee: number) {}
    }
    const clock = new ManualClock(0)
    const saga = defineSaga({
      name: `result-set-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'quote', action: async () => ({ quote: new Quote(3) }) },
        { name: 'tags', retry: { maxAttempts: 1 }, action: async () => ({ tags: new Set(['a']) }) },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    const instance = (await getSaga(t.db, id))!
    expect(instance.status).toBe('compensated')
    expect(instance.steps[0]!.result).toEqual({ quote: { fee: 3 } })
    expect(instance.steps[1]!.error).toMatchObject({
      code: 'INVALID_OPTION',
      message: expect.stringContaining('a Set at result of step "tags".tags'),
    })
    await worker.stop()
  })
})
