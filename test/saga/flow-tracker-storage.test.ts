// What the flow tracker and a reacting service store from the wire, on real SQLite and
// PostgreSQL. The tracker's event id and correlation id are index keys: PostgreSQL refuses an
// entry over about 2,700 bytes with a bare "index row size" driver error (54000) while SQLite
// stores any length, so tracker.record failed the caller's transaction naming no field, and a
// tracker that observes (or a reactor with a tracker) rejected such a message on every delivery,
// so the broker redelivered it for ever. A reactor also rejected for ever an event whose
// correlation-id or event-type header was empty (the tracker and the outbox refuse an empty
// name) instead of reading it as absent, as its TSDoc says.
import { randomBytes, randomUUID } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/index.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createOutbox,
  migrateInbox,
  migrateOutbox,
  PoisonMessageError,
} from '../../src/outbox/index.js'
import { createFlowTracker, createReactor, defineFlow } from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

// Incompressible text (PostgreSQL compresses index entries that compress well).
function noise(bytes: number): string {
  return randomBytes(Math.ceil(bytes / 2))
    .toString('hex')
    .slice(0, bytes)
}

const flow = defineFlow({ name: 'order', steps: ['order-placed', 'payment-charged'] })

function message(headers: Record<string, string>, id = `m-${randomUUID()}`): IncomingMessage {
  return {
    id,
    topic: 'orders',
    key: 'o1',
    payload: new TextEncoder().encode('{}'),
    headers,
    deliveryCount: 1,
  }
}

describe.each(dbTargets)('flow tracker storage on $dialect', (target) => {
  let t: TestDb
  const clock = new ManualClock(1_000)

  beforeAll(async () => {
    t = await target.open('flow_storage')
    await migrateOutbox(t.db)
    await migrateInbox(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  it('record takes an id and a correlation id of 2048 bytes', async () => {
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const correlationId = noise(2048)
    const recorded = await t.db.transaction((tx) =>
      tracker.record(tx, { id: noise(2048), correlationId, type: 'order-placed', at: 1 }),
    )
    expect(recorded).toBe(true)
    expect((await tracker.state(correlationId))?.flow).toBe('order')
  })

  it.each([
    ['id', 'event.id'],
    ['correlationId', 'event.correlationId'],
  ] as const)(
    'record refuses a longer %s with InvalidOptionError naming it',
    async (field, option) => {
      const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
      const event = {
        id: `e-${randomUUID()}`,
        correlationId: 'c-long',
        type: 'order-placed',
        at: 1,
      }
      const error = await t.db
        .transaction((tx) => tracker.record(tx, { ...event, [field]: noise(3000) }))
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    },
  )

  it('observe ignores a message whose id or correlation id is too long to record', async () => {
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const before = await countRows(t.db, 'breakwater_flow_events')
    const long = noise(3000)
    expect(
      await tracker.observe(
        message({ 'correlation-id': long, 'event-type': 'order-placed' }),
        'observer',
      ),
    ).toBe(false)
    expect(
      await tracker.observe(
        message({ 'correlation-id': 'c1', 'event-type': 'order-placed' }, long),
      ),
    ).toBe(false)
    expect(await countRows(t.db, 'breakwater_flow_events')).toBe(before)
  })

  it('a reactor reads an empty correlation-id or event-type header as absent', async () => {
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const seen: { type: string; correlationId: string }[] = []
    const reactor = createReactor({
      db: t.db,
      consumer: `empty-${randomUUID().slice(0, 6)}`,
      outbox: createOutbox({ clock }),
      tracker,
      clock,
      reactions: {
        orders: async ({ event, emit }) => {
          seen.push({ type: event.type, correlationId: event.correlationId })
          await emit({
            aggregateType: 'order',
            aggregateId: event.key,
            type: 'noticed',
            payload: {},
          })
        },
      },
    })
    const m = message({ 'correlation-id': '', 'event-type': '' })
    await reactor(m)
    expect(seen).toEqual([{ type: 'orders', correlationId: m.id }])
    expect((await tracker.state(m.id))?.events.map((e) => e.type)).toEqual(['orders', 'noticed'])
  })

  // The correlation id of the flow goes into the tracker and onto every event the reaction
  // emits: one no database can store as it is (a NUL, a lone surrogate) or index (over 2048
  // bytes) made the reaction's transaction fail on every delivery (the tracker, or the outbox
  // at emit, refused it), so the broker redelivered the event for ever, holding back its key.
  // Over 2048 bytes only the tracker cannot hold it: an untracked reactor carries it on (the
  // outbox stores it in the headers), and reacts. A correlation id, or a message id (the
  // causation-id of what the reaction emits), with a CR, LF or whitespace at an end is one the
  // outbox refuses at emit, as a header value some broker cannot carry (NATS): another
  // producer's message, on a broker that carries it. Each delivery failed alike.
  it.each([
    ['a NUL', 'flow\u00001', [true, false]],
    ['a lone surrogate', 'flow\ud800', [true, false]],
    ['over 2048 bytes (tracked)', noise(3000), [true]],
    ['a trailing blank', 'flow-1 ', [true, false]],
    ['a line break', 'flow\n1', [true, false]],
    ['nothing wrong (its message id has a leading blank)', 'flow-1', [true, false], ' m-1'],
    ['nothing wrong (its message id holds a CR)', 'flow-1', [true, false], 'm\r1'],
  ] as const)(
    'a reactor refuses for good an event whose correlation id holds %s',
    async (_label, correlationId, trackings, id?: string) => {
      for (const tracked of trackings) {
        const consumer = `bad-corr-${randomUUID().slice(0, 6)}`
        let runs = 0
        const reactor = createReactor({
          db: t.db,
          consumer,
          outbox: createOutbox({ clock }),
          ...(tracked ? { tracker: createFlowTracker({ db: t.db, flows: [flow], clock }) } : {}),
          clock,
          reactions: {
            'order-placed': async ({ event, emit }) => {
              runs++
              await emit({
                aggregateType: 'order',
                aggregateId: event.key,
                type: 'noticed',
                payload: {},
              })
            },
          },
        })
        const refused: unknown[] = []
        const listen = (report: unknown) => refused.push(report)
        subscribe('breakwater:outbox:message-refused', listen)
        try {
          const m = message({ 'correlation-id': correlationId, 'event-type': 'order-placed' }, id)
          await expect(reactor(m)).resolves.toBeUndefined()
          expect(runs).toBe(0)
          expect(await countRows(t.db, 'breakwater_inbox', 'WHERE consumer = $1', [consumer])).toBe(
            0,
          )
          expect(refused).toHaveLength(1)
          const { error } = refused[0] as { error: PoisonMessageError }
          expect(error).toBeInstanceOf(PoisonMessageError)
          expect(error.code).toBe('POISON_MESSAGE')
          expect(error.message).toContain(id === undefined ? 'correlation-id' : 'message id')
        } finally {
          unsubscribe('breakwater:outbox:message-refused', listen)
        }
      }
    },
  )

  it('an untracked reactor reacts to an event whose correlation id is over 2048 bytes', async () => {
    const correlationId = noise(3000)
    const seen: string[] = []
    const reactor = createReactor({
      db: t.db,
      consumer: `long-corr-${randomUUID().slice(0, 6)}`,
      outbox: createOutbox({ clock }),
      clock,
      reactions: {
        'order-placed': async ({ event, emit }) => {
          seen.push(event.correlationId)
          await emit({
            aggregateType: 'order',
            aggregateId: event.key,
            type: 'noticed',
            payload: {},
          })
        },
      },
    })
    await reactor(message({ 'correlation-id': correlationId, 'event-type': 'order-placed' }))
    expect(seen).toEqual([correlationId])
  })

  // A payload changed outside breakwater so that it is not JSON: state() threw a bare
  // SyntaxError naming nothing, and stalled() failed as a whole, so one such row hid every
  // stalled flow. state() now names the event; stalled() still lists its flow (the payload
  // plays no part in where a flow is), that event without its payload, and the others.
  it('a payload that is not JSON: state() names the event, stalled() lists every stalled flow', async () => {
    const payFlow = defineFlow({ name: 'pay', steps: ['pay-asked', 'pay-settled'], withinMs: 1 })
    const tracker = createFlowTracker({ db: t.db, flows: [payFlow], clock: new ManualClock(9) })
    const spoilt = `pay-${randomUUID()}`
    const fine = `pay-${randomUUID()}`
    for (const correlationId of [spoilt, fine]) {
      const event = { id: `${correlationId}-1`, correlationId, type: 'pay-asked', at: 5 }
      await tracker.record(t.db, { ...event, payload: { amount: 5 } })
    }
    await t.db.execute('UPDATE breakwater_flow_events SET payload = $1 WHERE correlation_id = $2', [
      '{bad',
      spoilt,
    ])
    const error = await tracker.state(spoilt).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({
      table: 'breakwater_flow_events',
      row: `event "${spoilt}-1" (correlation id "${spoilt}")`,
      column: 'payload',
    })
    const stalled = await tracker.stalled()
    expect(new Set(stalled.map((s) => s.correlationId))).toEqual(new Set([spoilt, fine]))
    expect(stalled.find((s) => s.correlationId === spoilt)?.events).toEqual([
      { id: `${spoilt}-1`, correlationId: spoilt, type: 'pay-asked', at: 5 },
    ])
    expect(stalled.find((s) => s.correlationId === fine)?.events[0]?.payload).toEqual({ amount: 5 })
  })
})
