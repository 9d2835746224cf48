// Rebuilding a choreographed flow's state from its events (pure), and flow declarations.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createFlowTracker,
  defineFlow,
  reconstructFlow,
  type TrackedEvent,
} from '../../src/saga/index.js'

const flow = defineFlow({
  name: 'order',
  steps: [
    'order-placed',
    { event: 'payment-charged', failsOn: ['payment-declined'], withinMs: 1_000 },
    { event: 'order-shipped', withinMs: 5_000 },
  ],
  compensation: [{ event: 'order-cancelled', withinMs: 2_000 }],
})

const ev = (type: string, at: number, id = `${type}@${at}`): TrackedEvent => ({
  id,
  correlationId: 'c1',
  type,
  at,
})

describe('reconstructFlow', () => {
  it('follows a flow through its steps to completed', () => {
    const started = reconstructFlow([flow], 'c1', [ev('order-placed', 0)], 500)
    expect(started).toMatchObject({
      flow: 'order',
      status: 'in-progress',
      next: 'payment-charged',
      dueAt: 1_000,
    })
    const done = reconstructFlow(
      [flow],
      'c1',
      [ev('order-placed', 0), ev('payment-charged', 400), ev('order-shipped', 3_000)],
      10_000_000,
    )
    expect(done).toMatchObject({
      status: 'completed',
      next: undefined,
      outOfOrder: [],
      unexpected: [],
    })
  })

  it('reports a stall when the next event is overdue, measured from the previous step', () => {
    const state = reconstructFlow(
      [flow],
      'c1',
      [ev('order-placed', 0), ev('payment-charged', 400)],
      5_401,
    )
    expect(state).toMatchObject({
      status: 'stalled',
      next: 'order-shipped',
      dueAt: 5_400,
      stalledAt: { event: 'order-shipped', overdueMs: 1 },
    })
  })

  it('turns to the compensation after a failure event, and stalls there too', () => {
    const failed = [ev('order-placed', 0), ev('payment-declined', 300)]
    expect(reconstructFlow([flow], 'c1', failed, 1_000)).toMatchObject({
      status: 'compensating',
      failure: { type: 'payment-declined' },
      next: 'order-cancelled',
      dueAt: 2_300,
    })
    expect(reconstructFlow([flow], 'c1', failed, 2_301).status).toBe('stalled')
    expect(
      reconstructFlow([flow], 'c1', [...failed, ev('order-cancelled', 900)], 9_999).status,
    ).toBe('compensated')
    const noCompensation = defineFlow({
      name: 'simple',
      steps: ['a', { event: 'b', failsOn: ['b-failed'] }],
    })
    expect(reconstructFlow([noCompensation], 'c1', [ev('a', 0), ev('b-failed', 1)], 2).status).toBe(
      'failed',
    )
  })

  it('reports reordered deliveries and events the flow does not declare', () => {
    const state = reconstructFlow(
      [flow],
      'c1',
      [
        ev('order-placed', 0),
        ev('order-shipped', 100),
        ev('payment-charged', 200),
        ev('coupon-used', 50),
      ],
      300,
    )
    expect(state.status).toBe('completed')
    expect(state.outOfOrder).toEqual(['order-shipped']) // it came before the payment
    expect(state.unexpected.map((e) => e.type)).toEqual(['coupon-used'])
  })

  it('counts an event id given twice once, as its first occurrence, as the tracker does', () => {
    const placed = ev('order-placed', 0)
    const coupon = ev('coupon-used', 50)
    const state = reconstructFlow(
      [flow],
      'c1',
      // An at-least-once source repeats the coupon and the placement; the copy of the
      // placement carries a later time, as a redelivery read with its delivery time would.
      [placed, coupon, { ...coupon }, { ...placed, at: 900 }, ev('payment-charged', 400)],
      600,
    )
    expect(state.events.map((e) => e.id)).toEqual([placed.id, coupon.id, 'payment-charged@400'])
    expect(state.unexpected).toHaveLength(1)
    expect(state.steps[0]).toMatchObject({ done: true, at: 0 })
    expect(state.outOfOrder).toEqual([])
  })

  it('picks the flow by its first event; events of no declared flow are all unexpected', () => {
    const other = defineFlow({ name: 'refund', steps: ['refund-requested', 'refund-paid'] })
    expect(reconstructFlow([flow, other], 'c1', [ev('refund-requested', 0)], 1).flow).toBe('refund')
    const unknown = reconstructFlow([flow, other], 'c1', [ev('mystery', 0)], 1)
    expect(unknown).toMatchObject({ flow: undefined, status: 'in-progress' })
    expect(unknown.unexpected).toHaveLength(1)
  })

  // A flow may start with an event another flow expects later (a payment flow begun by
  // 'payment-charged', which the order flow also waits for). The flow was the first in the
  // list whose first event the correlation id had, so the order of the list decided: listed
  // first, the payment flow took every order flow that reached its payment, and reported
  // 'order-placed' as unexpected and the flow as waiting for a payment event.
  it('picks the flow whose first event came first, whatever the order of the flows', () => {
    const payment = defineFlow({ name: 'payment', steps: ['payment-charged', 'payment-settled'] })
    const events = [ev('order-placed', 0), ev('payment-charged', 400), ev('order-shipped', 3_000)]
    for (const flows of [
      [flow, payment],
      [payment, flow],
    ]) {
      expect(reconstructFlow(flows, 'c1', events, 4_000)).toMatchObject({
        flow: 'order',
        status: 'completed',
        unexpected: [],
      })
      expect(reconstructFlow(flows, 'c2', [ev('payment-charged', 0)], 1).flow).toBe('payment')
      // Reordered: the payment came before the order was placed, still an order flow.
      const reordered = [ev('payment-charged', 0), ev('order-placed', 10)]
      expect(reconstructFlow(flows, 'c3', reordered, 20)).toMatchObject({
        flow: 'order',
        outOfOrder: ['payment-charged'],
      })
    }
  })

  // Two flows that start with the same event cannot be told apart: the first listed took every
  // instance of both, silently.
  it('refuses two flows that start with the same event', () => {
    const a = defineFlow({ name: 'a', steps: ['order-placed', 'x'] })
    const error = (() => {
      try {
        reconstructFlow([flow, a], 'c1', [], 0)
      } catch (e) {
        return e
      }
    })()
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('flows[1]')
    expect(() =>
      createFlowTracker({
        db: { dialect: 'sqlite', transaction: async () => undefined } as never,
        flows: [flow, a],
      }),
    ).toThrow(InvalidOptionError)
  })

  it('property: a step is done exactly when its event is among the events, whatever their order', () => {
    const types = ['order-placed', 'payment-charged', 'order-shipped', 'noise']
    fc.assert(
      fc.property(
        fc.array(fc.record({ type: fc.constantFrom(...types), at: fc.nat(10_000) }), {
          maxLength: 12,
        }),
        fc.nat(20_000),
        (raw, now) => {
          const events = [
            ev('order-placed', 0, 'first'),
            ...raw.map((r, i) => ev(r.type, r.at, `e${i}`)),
          ]
          const state = reconstructFlow([flow], 'c1', events, now)
          for (const step of state.steps) {
            expect(step.done).toBe(events.some((e) => e.type === step.event))
          }
          const allDone = state.steps.every((s) => s.done)
          expect(state.status === 'completed').toBe(allDone)
          expect(state.events.map((e) => e.at)).toEqual(
            [...events.map((e) => e.at)].sort((a, b) => a - b),
          )
        },
      ),
    )
  })
})

// What `[a, , b]` makes (a hole at `index`), which biome refuses to have written literally.
function holeAt(index: number, entries: readonly unknown[]): unknown[] {
  const list = [...entries]
  list.splice(index, 0, undefined)
  delete list[index]
  return list
}

describe('defineFlow', () => {
  it.each([
    [{ name: '', steps: ['a'] }, 'flow.name'],
    [{ name: 'f', steps: [] }, 'flow "f".steps'],
    [{ name: 'f', steps: ['a', ''] }, 'flow "f".steps[1].event'],
    [{ name: 'f', steps: ['a', 'a'] }, 'flow "f" event #2'],
    [{ name: 'f', steps: ['a', { event: 'b', failsOn: ['a'] }] }, 'flow "f" event #2'],
    [{ name: 'f', steps: ['a'], withinMs: 0 }, 'flow "f".withinMs'],
    [{ name: 'f', steps: ['a', { event: 'b', withinMs: -1 }] }, 'flow "f".steps[1].withinMs'],
    // Accepted and ignored: only the steps' failure events turn a flow to its compensation.
    [
      { name: 'f', steps: ['a'], compensation: [{ event: 'c', failsOn: ['d'] }] },
      'flow "f".compensation[0].failsOn',
    ],
    // A misspelt option was dropped without a word (the step got the flow's withinMs).
    [{ name: 'f', steps: ['a', { event: 'b', within: 5 }] }, 'flow "f".steps[1].within'],
    [{ name: 'f', steps: ['a'], compensations: ['c'] }, 'flow "f".compensations'],
    // Holes (a doubled comma): map skipped them, so a hole in the steps or the compensation
    // failed with a bare TypeError, and one in failsOn was kept as an undefined event type.
    [{ name: 'f', steps: holeAt(0, ['a', 'b']) }, 'flow "f".steps[0]'],
    [{ name: 'f', steps: ['a'], compensation: holeAt(1, ['c', 'd']) }, 'flow "f".compensation[1]'],
    [
      { name: 'f', steps: ['a', { event: 'b', failsOn: holeAt(0, ['x']) }] },
      'flow "f".steps[1].failsOn',
    ],
  ])('refuses %j', (declaration, option) => {
    try {
      defineFlow(declaration as never)
      expect.unreachable()
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })
})

describe('tracker.record input', () => {
  // Refused before anything reaches the database: the executor must not be called.
  const untouched = {
    dialect: 'sqlite' as const,
    query: async () => expect.unreachable('no query for a refused event'),
    execute: async () => expect.unreachable('no statement for a refused event'),
  }
  const tracker = createFlowTracker({
    db: { ...untouched, transaction: async () => undefined } as never,
    flows: [flow],
  })
  const valid = { id: 'e1', correlationId: 'c1', type: 'order-placed', at: 0 }

  it.each([
    // JSON.stringify threw a bare TypeError (no code) for a BigInt.
    ['a payload JSON cannot hold (BigInt)', { ...valid, payload: 10n }, 'event.payload'],
    // A function has no JSON text: it was stored as no payload at all, silently.
    ['a payload JSON cannot hold (function)', { ...valid, payload: () => 1 }, 'event.payload'],
    ['a source that is not a string', { ...valid, source: 42 }, 'event.source'],
    // PostgreSQL text cannot hold NUL: a bare driver error (no code) that aborted the caller's
    // transaction, so a reactor with a tracker had the message redelivered for ever.
    ['an id with a NUL', { ...valid, id: 'e\u00001' }, 'event.id'],
    ['a correlation id with a NUL', { ...valid, correlationId: 'c\u00001' }, 'event.correlationId'],
    ['a type with a NUL', { ...valid, type: 'order\u0000placed' }, 'event.type'],
    ['a source with a NUL', { ...valid, source: 'bil\u0000ling' }, 'event.source'],
    // A lone surrogate is stored as U+FFFD: two different correlation ids would be one flow.
    [
      'a correlation id with a lone surrogate',
      { ...valid, correlationId: 'c\ud800' },
      'event.correlationId',
    ],
  ])('refuses %s with InvalidOptionError', async (_label, event, option) => {
    const error = await tracker.record(untouched as never, event as never).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
  })
})

describe('tracker.observe input', () => {
  it('ignores a message whose headers hold text the tracker cannot store, as one without them', async () => {
    const untouched = {
      dialect: 'sqlite' as const,
      query: async () => expect.unreachable('no query for an ignored message'),
      execute: async () => expect.unreachable('no statement for an ignored message'),
      transaction: async () => undefined,
    }
    const tracker = createFlowTracker({ db: untouched as never, flows: [flow] })
    for (const headers of [
      { 'correlation-id': 'c\u00001', 'event-type': 'order-placed' },
      { 'correlation-id': 'c1', 'event-type': 'order\u0000placed' },
    ]) {
      expect(await tracker.observe({ id: 'm1', payload: '{}', headers })).toBe(false)
    }
  })
})

describe('createFlowTracker', () => {
  it('refuses a flow not made by defineFlow (its string steps matched no event, silently)', () => {
    const db = { dialect: 'sqlite', transaction: async () => undefined } as never
    for (const flows of [
      [{ name: 'order', steps: ['order-placed', 'order-shipped'] }],
      [{ name: 'order', steps: [{ event: 'order-placed' }] }],
    ]) {
      try {
        createFlowTracker({ db, flows: flows as never })
        expect.unreachable()
      } catch (error) {
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe('flows[0]')
      }
    }
    expect(() => createFlowTracker({ db, flows: [flow] })).not.toThrow()
  })

  it('refuses an empty flows list (state() and stalled() could place no event), naming flows', () => {
    const db = { dialect: 'sqlite', transaction: async () => undefined } as never
    try {
      createFlowTracker({ db, flows: [] })
      expect.unreachable()
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'flows', value: [] })
      expect((error as InvalidOptionError).message).toContain('at least one flow')
    }
  })
})

describe('reconstructFlow input', () => {
  it('refuses a flow not made by defineFlow with InvalidOptionError (INVALID_OPTION)', () => {
    const events = [ev('order-placed', 0)]
    for (const flows of [
      // A declaration as it is: its string steps matched no event, and the flow read as undeclared.
      [{ name: 'order', steps: ['order-placed', 'order-shipped'] }],
      // A look-alike of defineFlow's shape, skipping its checks (here: an event used twice).
      [
        {
          name: 'order',
          steps: [
            { event: 'order-placed', withinMs: 1, failsOn: [] },
            { event: 'order-placed', withinMs: 1, failsOn: [] },
          ],
          compensation: [],
        },
      ],
      [{ ...flow }],
      'order',
    ]) {
      try {
        reconstructFlow(flows as never, 'c1', events, 1)
        expect.unreachable()
      } catch (error) {
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).code).toBe('INVALID_OPTION')
        expect((error as InvalidOptionError).option).toMatch(/^flows/)
      }
    }
    expect(reconstructFlow([flow], 'c1', events, 1).flow).toBe('order')
  })

  // Events "read from anywhere" were not looked at: a null event failed with a bare TypeError,
  // a string was taken character by character as events, and an `at` that is no number (a
  // column read as text) or a missing type gave a state that looked right and was not.
  it.each([
    ['events not an array', 'order-placed', 'events'],
    ['a null event', [null], 'events[0]'],
    ['a hole', holeAt(0, [ev('order-placed', 0)]), 'events[0]'],
    ['an event without a type', [{ id: 'e1', correlationId: 'c1', at: 0 }], 'events[0].type'],
    ['an id that is no string', [{ ...ev('order-placed', 0), id: 7 }], 'events[0].id'],
    [
      'an at read as text',
      [ev('order-placed', 0), { ...ev('payment-charged', 5), at: '5' }],
      'events[1].at',
    ],
    ['an at of NaN', [{ ...ev('order-placed', 0), at: Number.NaN }], 'events[0].at'],
  ])('refuses %s with InvalidOptionError naming it', (_label, events, option) => {
    try {
      reconstructFlow([flow], 'c1', events as never, 10)
      expect.unreachable()
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })

  it('refuses a now that is not a time', () => {
    expect(() => reconstructFlow([flow], 'c1', [ev('order-placed', 0)], Number.NaN)).toThrow(
      InvalidOptionError,
    )
  })

  it('a defined flow cannot be changed afterwards', () => {
    expect(Object.isFrozen(flow.steps)).toBe(true)
    expect(Object.isFrozen(flow.steps[0])).toBe(true)
    expect(Object.isFrozen(flow.steps[0]!.failsOn)).toBe(true)
  })
})
