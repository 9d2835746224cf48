// What the cqrs types check at compile time (`npm run typecheck` checks this file): a store,
// projection or decider typed by a union of events refuses a wrong payload or an unknown type,
// and `switch (event.type)` narrows `event.data`; left untyped, everything compiles as before
// (data `unknown`). Calls that must not compile sit in functions that are never called. One
// round trip on real SQLite shows a typed store hands back the events as written.
import { describe, expect, expectTypeOf, it } from 'vitest'
import {
  createCommandHandler,
  createEventStore,
  createProjector,
  type Decider,
  defineProjection,
  type Event,
  type EventOfTypes,
  type EventShape,
  type EventStore,
  type ProjectionDefinition,
  type RecordedEvent,
  type Upcaster,
} from '../../src/cqrs/index.js'
import { sqliteDb, useTestDb } from './databases.js'

type OrderPlaced = Event<'order-placed', { readonly total: number; readonly lines: string[] }>
type OrderCancelled = Event<'order-cancelled', { readonly reason: string }>
type OrderEvent = OrderPlaced | OrderCancelled
type CartEvent = Event<'item-added', { readonly sku: string }> | Event<'checked-out', null>
/** Everything the application's store holds. */
type AppEvent = OrderEvent | CartEvent

/** Whether `switch (event.type)` over an OrderEvent narrows each case and is exhaustive. */
function describeOrder(event: RecordedEvent<OrderEvent>): string {
  switch (event.type) {
    case 'order-placed':
      expectTypeOf(event.data).toEqualTypeOf<{ readonly total: number; readonly lines: string[] }>()
      return `placed ${event.data.total} (${event.data.lines.join(',')})`
    case 'order-cancelled':
      expectTypeOf(event.data).toEqualTypeOf<{ readonly reason: string }>()
      // @ts-expect-error a cancellation has no total
      void event.data.total
      return `cancelled: ${event.data.reason}`
    default:
      // Every type is handled: nothing is left.
      expectTypeOf(event).toBeNever()
      return 'unreachable'
  }
}

describe('cqrs event types', () => {
  it('Event<Type, Data> is a type tag and its data; its defaults are EventShape', () => {
    expectTypeOf<OrderCancelled>().toEqualTypeOf<{
      readonly type: 'order-cancelled'
      readonly data: { readonly reason: string }
    }>()
    expectTypeOf<Event>().toEqualTypeOf<{ readonly type: string; readonly data: unknown }>()
    expectTypeOf<Event>().toExtend<EventShape>()
    expectTypeOf<EventShape>().toExtend<Event>()
    expectTypeOf<AppEvent>().toExtend<EventShape>()
  })

  it('an untyped store keeps data unknown and takes any event, as before', () => {
    const untyped = (db: Parameters<typeof createEventStore>[0]) => createEventStore(db)
    expectTypeOf<ReturnType<typeof untyped>>().toEqualTypeOf<EventStore>()
    expectTypeOf<EventStore>().toEqualTypeOf<EventStore<EventShape>>()
    const unsent = async (store: EventStore): Promise<unknown> => {
      const { events } = await store.readStream('s')
      expectTypeOf(events[0]!.data).toBeUnknown()
      expectTypeOf(events[0]!.type).toBeString()
      expectTypeOf((await store.readAll())[0]!.data).toBeUnknown()
      store.subscribe((event) => {
        expectTypeOf(event.data).toBeUnknown()
      })
      // Any type and data, and a narrower union per call, exactly as before.
      await store.append('s', [
        { type: 'anything', data: { x: 1 } },
        { type: 'else', data: 2 },
      ])
      const read = await store.readStream<OrderEvent>('s')
      return read.events.map(describeOrder)
    }
    expect(typeof unsent).toBe('function')
  })

  it('a typed store checks appends and narrows what it reads', () => {
    const unsent = async (store: EventStore<AppEvent>): Promise<unknown> => {
      const appended = await store.append('order-1', [
        { type: 'order-placed', data: { total: 42, lines: ['a'] }, id: 'e1' },
        { type: 'order-cancelled', data: { reason: 'changed mind' }, metadata: { by: 'u1' } },
      ])
      expectTypeOf(appended.events).toEqualTypeOf<readonly RecordedEvent<AppEvent>[]>()
      // @ts-expect-error total is a number
      await store.append('o', [{ type: 'order-placed', data: { total: '42', lines: [] } }])
      // @ts-expect-error a field OrderPlaced does not have (a typo)
      await store.append('o', [{ type: 'order-placed', data: { total: 1, lines: [], totl: 1 } }])
      // @ts-expect-error lines is missing
      await store.append('o', [{ type: 'order-placed', data: { total: 42 } }])
      // @ts-expect-error the data of another type
      await store.append('o', [{ type: 'order-placed', data: { reason: 'x' } }])
      // @ts-expect-error not a type of the store
      await store.append('o', [{ type: 'order-shipped', data: {} }])
      // @ts-expect-error checked-out carries null
      await store.append('c', [{ type: 'checked-out', data: {} }])
      // @ts-expect-error a misspelt field of the event
      await store.append('c', [{ type: 'checked-out', data: null, metdata: {} }])

      const { events } = await store.readStream('order-1')
      expectTypeOf(events[0]!).toEqualTypeOf<RecordedEvent<AppEvent>>()
      for (const event of events) {
        if (event.type === 'item-added') expectTypeOf(event.data.sku).toBeString()
        if (event.type === 'checked-out') expectTypeOf(event.data).toBeNull()
      }
      // A narrower union per call, within the store's.
      const orders = await store.readStream<OrderEvent>('order-1')
      const described = orders.events.map(describeOrder)
      // @ts-expect-error not within the store's events
      await store.readStream<Event<'unrelated', number>>('x')
      for (const event of await store.readAll({ fromPosition: 0 })) {
        if (event.type === 'order-cancelled') expectTypeOf(event.data.reason).toBeString()
      }
      store.subscribe((event) => {
        if (event.type === 'order-placed') expectTypeOf(event.data.total).toBeNumber()
      })
      store.subscribe<CartEvent>((event) => {
        expectTypeOf(event.type).toEqualTypeOf<'item-added' | 'checked-out'>()
      })
      return described
    }
    expect(typeof unsent).toBe('function')
    // A typed store goes where a store is expected (command handlers, projectors).
    expectTypeOf<EventStore<AppEvent>>().toExtend<EventStore>()
  })

  it('a store typed by other events is not taken for a store of these', () => {
    // A store of a subset goes where a store of the whole union is read: what it holds is in it.
    expectTypeOf<EventStore<OrderEvent>>().toExtend<EventStore<AppEvent>>()
    expectTypeOf<EventStore<AppEvent>>().toExtend<EventStore>()
    // Other events, more events, or no claim at all (untyped) are not.
    expectTypeOf<EventStore<CartEvent>>().not.toExtend<EventStore<OrderEvent>>()
    expectTypeOf<EventStore<AppEvent>>().not.toExtend<EventStore<OrderEvent>>()
    expectTypeOf<EventStore>().not.toExtend<EventStore<OrderEvent>>()
    const readOrders = (store: EventStore<OrderEvent>) => store.readStream('order-1')
    const unsent = (carts: EventStore<CartEvent>, app: EventStore<AppEvent>): unknown => [
      // @ts-expect-error a store of cart events is not a store of order events
      readOrders(carts),
      // @ts-expect-error its reads would be typed as orders and hand carts too
      readOrders(app),
      createProjector(app, defineProjection<OrderEvent>({ name: 'p', tables: {}, apply() {} })),
      createCommandHandler(app, {
        decider: {
          initialState: () => 0,
          evolve: (n: number) => n,
          decide: (): CartEvent[] => [{ type: 'checked-out', data: null }],
        },
      }),
    ]
    expect(typeof unsent).toBe('function')
  })

  it('a typed projection narrows apply and checks its eventTypes', () => {
    const totals = defineProjection<OrderEvent>({
      name: 'order-totals',
      eventTypes: ['order-placed', 'order-cancelled'],
      tables: { order_totals: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY, total INTEGER)`] },
      async apply(event, { tx, table }) {
        if (event.type === 'order-placed') {
          expectTypeOf(event.data.total).toBeNumber()
          await tx.execute(`INSERT INTO ${table('order_totals')} VALUES ($1, $2)`, [
            event.stream,
            event.data.total,
          ])
        }
      },
    })
    expectTypeOf(totals).toEqualTypeOf<ProjectionDefinition<OrderEvent>>()
    const refused = (): unknown =>
      defineProjection<OrderEvent>({
        name: 'p',
        // @ts-expect-error not an OrderEvent type
        eventTypes: ['order-placed', 'order-shiped'],
        tables: {},
        apply() {},
      })
    expect(typeof refused).toBe('function')
    // Untyped, eventTypes is any strings and data unknown, as before.
    const untyped = defineProjection({
      name: 'p',
      eventTypes: ['whatever'],
      tables: {},
      apply(event) {
        expectTypeOf(event.data).toBeUnknown()
      },
    })
    expectTypeOf(untyped).toEqualTypeOf<ProjectionDefinition>()
    const unsent = (store: EventStore<AppEvent>): unknown => [
      createProjector(store, totals),
      createEventStore<AppEvent>(store.db, { inlineProjections: [totals] }),
    ]
    expect(typeof unsent).toBe('function')
  })

  it("a projection typed with its eventTypes is handed only those types' events", () => {
    type ItemAdded = Extract<CartEvent, { type: 'item-added' }>
    const placedAndAdded = defineProjection<AppEvent, 'order-placed' | 'item-added'>({
      name: 'placed-and-added',
      eventTypes: ['order-placed', 'item-added'],
      tables: {},
      apply(event) {
        expectTypeOf(event).toEqualTypeOf<RecordedEvent<OrderPlaced | ItemAdded>>()
        // @ts-expect-error order-cancelled is not among its eventTypes: it is never handed one
        if (event.type === 'order-cancelled') return
        if (event.type === 'order-placed') expectTypeOf(event.data.total).toBeNumber()
        else expectTypeOf(event.data.sku).toBeString()
      },
    })
    expectTypeOf(placedAndAdded).toExtend<ProjectionDefinition<AppEvent>>()
    expectTypeOf<EventOfTypes<AppEvent, 'order-placed' | 'item-added'>>().toEqualTypeOf<
      OrderPlaced | ItemAdded
    >()
    const refused = (): unknown => [
      defineProjection<AppEvent, 'order-placed'>({
        name: 'p',
        // @ts-expect-error item-added is not among the types the projection is typed by
        eventTypes: ['order-placed', 'item-added'],
        tables: {},
        apply() {},
      }),
      // @ts-expect-error without eventTypes it is a catch-all, handed every type, not only T
      defineProjection<AppEvent, 'order-placed'>({ name: 'p', tables: {}, apply() {} }),
    ]
    expect(typeof refused).toBe('function')
    // A member whose type is a wider string may carry one of the types: it is kept, not dropped
    // (Extract would drop it, and apply would be typed as never being handed what it is).
    defineProjection<OrderPlaced | EventShape, 'x'>({
      name: 'p',
      eventTypes: ['x'],
      tables: {},
      apply(event) {
        expectTypeOf(event).toEqualTypeOf<RecordedEvent<EventShape>>()
      },
    })
    // Typed by the union alone, apply is handed all of it, as before.
    defineProjection<AppEvent>({
      name: 'p',
      eventTypes: ['order-placed'],
      tables: {},
      apply(event) {
        expectTypeOf(event).toEqualTypeOf<RecordedEvent<AppEvent>>()
      },
    })
    // It goes where any projection goes.
    const unsent = (store: EventStore<AppEvent>): unknown => [
      createProjector(store, placedAndAdded),
      createEventStore<AppEvent>(store.db, { inlineProjections: [placedAndAdded] }),
    ]
    expect(typeof unsent).toBe('function')
  })

  it('an upcaster is typed by the events it produces and the data it reads', () => {
    // order-placed v2 stored the total as a string of cents; v3 is OrderPlaced's data.
    type PlacedV2 = { readonly cents: string }
    const placedV2: Upcaster<OrderEvent, PlacedV2> = {
      type: 'order-placed',
      fromVersion: 2,
      upcast: (data) => {
        expectTypeOf(data).toEqualTypeOf<PlacedV2>()
        return { total: Number(data.cents) / 100, lines: [] }
      },
    }
    // An earlier step produces an older version: typed by an event of that version's data.
    const placedV1: Upcaster<Event<'order-placed', PlacedV2>, { readonly amount: number }> = {
      type: 'order-placed',
      fromVersion: 1,
      upcast: (data) => ({ cents: String(data.amount * 100) }),
    }
    const refused = (): unknown => {
      const outside: Upcaster<OrderEvent, PlacedV2> = {
        // @ts-expect-error order-shipped is not an OrderEvent
        type: 'order-shipped',
        fromVersion: 2,
        upcast: () => ({ total: 1, lines: [] }),
      }
      const wrongData: Upcaster<OrderEvent, PlacedV2> = {
        type: 'order-placed',
        fromVersion: 2,
        // @ts-expect-error total is a number
        upcast: (data) => ({ total: data.cents, lines: [] }),
      }
      // @ts-expect-error the data of order-cancelled, not of order-placed
      const otherTypesData: Upcaster<OrderEvent, PlacedV2> = {
        type: 'order-placed',
        fromVersion: 2,
        upcast: () => ({ reason: 'x' }),
      }
      const missing: Upcaster<OrderEvent, PlacedV2> = {
        type: 'order-placed',
        fromVersion: 2,
        // @ts-expect-error lines is missing
        upcast: (data) => ({ total: Number(data.cents) }),
      }
      return [outside, wrongData, otherTypesData, missing]
    }
    expect(typeof refused).toBe('function')
    // Untyped, as before: any type, data unknown in and out.
    const untyped: Upcaster = { type: 'x', fromVersion: 1, upcast: (data) => data }
    expectTypeOf(untyped.type).toBeString()
    expectTypeOf(untyped.upcast).parameter(0).toBeUnknown()
    expectTypeOf(untyped.upcast).returns.toBeUnknown()
    // Typed ones go where upcasters go.
    const unsent = (store: EventStore<AppEvent>): unknown => [
      createEventStore<OrderEvent>(store.db, { upcasters: [placedV1, placedV2, untyped] }),
      createEventStore(store.db, { upcasters: [placedV2] }),
    ]
    expect(typeof unsent).toBe('function')
  })

  it('a typed decider checks decide and narrows evolve', () => {
    type Command = { kind: 'place'; total: number } | { kind: 'cancel' }
    interface Order {
      readonly total: number
      readonly cancelled: boolean
    }
    const order: Decider<Command, OrderEvent, Order> = {
      initialState: () => ({ total: 0, cancelled: false }),
      evolve: (state, event) => {
        expectTypeOf(event).toEqualTypeOf<RecordedEvent<OrderEvent>>()
        return event.type === 'order-placed'
          ? { ...state, total: event.data.total }
          : { ...state, cancelled: true }
      },
      decide: (command) =>
        command.kind === 'place'
          ? [{ type: 'order-placed', data: { total: command.total, lines: [] } }]
          : [{ type: 'order-cancelled', data: { reason: 'asked' } }],
    }
    const wrong: Decider<Command, OrderEvent, Order> = {
      ...order,
      // @ts-expect-error total is a number
      decide: () => [{ type: 'order-placed', data: { total: 'x', lines: [] } }],
    }
    const unknownType: Decider<Command, OrderEvent, Order> = {
      ...order,
      // @ts-expect-error not an OrderEvent type
      decide: () => [{ type: 'order-shipped', data: {} }],
    }
    const unsent = async (store: EventStore<AppEvent>): Promise<unknown> => {
      const orders = createCommandHandler(store, { decider: order })
      const result = await orders.handle('order-1', { kind: 'place', total: 3 })
      expectTypeOf(result.events).toEqualTypeOf<readonly RecordedEvent<OrderEvent>[]>()
      expectTypeOf(result.state).toEqualTypeOf<Order>()
      return [result.events.map(describeOrder), wrong, unknownType]
    }
    expect(typeof unsent).toBe('function')
  })

  describe('on SQLite', () => {
    const t = useTestDb(sqliteDb, 'cqrs-event-types')

    it('a typed store writes and reads events as an untyped one does', async () => {
      const store = createEventStore<AppEvent>(t.db)
      const appended = await store.append(
        'order-1',
        [
          { type: 'order-placed', data: { total: 42, lines: ['a', 'b'] } },
          { type: 'order-cancelled', data: { reason: 'changed mind' } },
        ],
        { expectedVersion: 'noStream' },
      )
      const { events } = await store.readStream<OrderEvent>('order-1')
      expect(events.map(describeOrder)).toEqual(['placed 42 (a,b)', 'cancelled: changed mind'])
      expect(events).toEqual(appended.events)
      // The same rows through an untyped store over the same database.
      const plain = await createEventStore(t.db).readStream('order-1')
      expect(plain.events).toEqual(events)
    })

    it('a typed upcaster reads an old event up into the union', async () => {
      const placedV1: Upcaster<OrderEvent, { readonly cents: string }> = {
        type: 'order-placed',
        fromVersion: 1,
        upcast: (data) => ({ total: Number(data.cents) / 100, lines: ['v1'] }),
      }
      await createEventStore(t.db).append('order-old', [
        { type: 'order-placed', data: { cents: '4200' }, schemaVersion: 1 },
      ])
      const store = createEventStore<OrderEvent>(t.db, { upcasters: [placedV1] })
      const { events } = await store.readStream('order-old')
      expect(events.map(describeOrder)).toEqual(['placed 42 (v1)'])
      expect(events[0]!.schemaVersion).toBe(2)
    })
  })
})
