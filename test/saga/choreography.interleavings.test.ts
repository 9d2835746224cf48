// A model-based hunt for duplicate effects in saga choreography and command replies, on real
// SQLite and PostgreSQL. Three reacting services (payments, shipping, orders: createReactor with
// a flow tracker) and a saga waiting for the reply to its command (commandStep, fed through
// sagaReplyHandler and deliverReply) are driven directly with IncomingMessage objects built as
// a broker hands them over, so the test decides what a broker may do: deliver the same message
// several times at once (fc.scheduler interleaves the copies inside their reactions), redeliver
// after a failed handler, redeliver after a lost acknowledgement, and deliver a flow's events to
// a service in any order.
//
// After every command: each reaction's business effect is committed exactly once per
// (consumer, event id) that the consumer's inbox recorded, and never without one; each committed
// reaction emitted exactly one follow-up event (same correlation, caused by the event); at most
// one reply is recorded per saga step, and a further one reports 'duplicate'; and each flow's
// tracked steps agree with the events in the outbox. At the end, the tracker's state of each flow
// must be what a second tracker rebuilds from the same events recorded in another (generated)
// order with duplicates, and what reconstructFlow rebuilds from them in that order (events at
// the same millisecond may be listed in either order: the tracker breaks such ties by arrival),
// and each saga with a recorded reply must complete with exactly that reply as its result.
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/index.js'
import {
  createOutbox,
  migrateInbox,
  migrateOutbox,
  type Outbox,
  type OutboxEvent,
} from '../../src/outbox/index.js'
import type { OutboxRow as StoredOutboxRow } from '../../src/outbox/sql.js'
import {
  commandStep,
  createFlowTracker,
  createReactor,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  emitEvent,
  type FlowState,
  type FlowTracker,
  getSaga,
  type ReactionContext,
  reconstructFlow,
  replyTo,
  type SagaDefinition,
  type SagaWorker,
  sagaReplyHandler,
  startSaga,
  type TrackedEvent,
} from '../../src/saga/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

type Consumer = 'payments' | 'shipping' | 'orders'
const consumers: readonly Consumer[] = ['payments', 'shipping', 'orders']

/** What each service reacts to, and the event it emits in return (by the cause's payload). */
const reactsTo: Record<Consumer, string> = {
  payments: 'order-placed',
  shipping: 'payment-charged',
  orders: 'payment-declined',
}

const orderFlow = defineFlow({
  name: 'order',
  steps: [
    'order-placed',
    { event: 'payment-charged', failsOn: ['payment-declined'], withinMs: 1_000 },
    { event: 'order-shipped', withinMs: 2_000 },
  ],
  compensation: [{ event: 'order-cancelled', withinMs: 1_000 }],
})

/** The outbox columns a delivery is built from (PostgreSQL returns the BIGINT id as text). */
type OutboxRow = Omit<
  Pick<
    StoredOutboxRow,
    | 'id'
    | 'event_id'
    | 'aggregate_type'
    | 'aggregate_id'
    | 'event_type'
    | 'topic'
    | 'payload'
    | 'headers'
  >,
  'id'
> & { readonly id: number | string }

/** An outbox row as a broker delivers it (the relay's `toMessage`, plus a delivery count). */
function toIncoming(row: OutboxRow, deliveryCount: number): IncomingMessage {
  const headers = JSON.parse(row.headers) as Record<string, string>
  headers['event-type'] = row.event_type
  headers['aggregate-type'] = row.aggregate_type
  return {
    id: row.event_id,
    topic: row.topic,
    key: row.aggregate_id,
    payload: new TextEncoder().encode(row.payload),
    headers,
    deliveryCount,
  }
}

/** Counters over every run, so that the property cannot pass without exercising its point. */
const coverage = {
  duplicateDeliveries: 0,
  redeliveredAfterAck: 0,
  concurrentDeliveries: 0,
  concurrentDifferentMessages: 0,
  outOfOrderDeliveries: 0,
  redeliveredAfterFailure: 0,
  concurrentReplies: 0,
  concurrentRepliesOfTwoAttempts: 0,
  duplicateReplies: 0,
  reorderedFlows: 0,
}

/** The system under test for one generated sequence. */
class World {
  readonly clock = new ManualClock(1_000_000)
  readonly outbox: Outbox = createOutbox()
  readonly tracker: FlowTracker
  readonly reactors: Record<Consumer, (message: IncomingMessage) => Promise<void>>
  readonly replies: (message: IncomingMessage) => Promise<void>
  readonly worker: SagaWorker
  readonly orders: string[] = []
  readonly sagaIds: string[] = []
  /** Injected failures still to come per service (the reaction throws after its writes). */
  readonly failNext = new Map<Consumer, number>()
  /** Deliveries whose handler failed, per `${consumer} ${event id}`. */
  readonly failed = new Set<string>()
  /** Replies that were handed to the handler per saga, to check the one recorded. */
  readonly offered = new Map<string, unknown[]>()
  /** The scheduler of the command under way: reactions wait for it before writing. */
  scheduler: fc.Scheduler | undefined
  readonly log: string[] = []

  constructor(
    readonly db: SqlDriver,
    readonly saga: SagaDefinition<{ orderId: string }, unknown>,
  ) {
    this.tracker = createFlowTracker({ db, flows: [orderFlow], clock: this.clock })
    const reactor = (consumer: Consumer) =>
      createReactor({
        db,
        consumer,
        outbox: this.outbox,
        tracker: this.tracker,
        clock: this.clock,
        reactions: { [reactsTo[consumer]]: (ctx) => this.react(consumer, ctx) },
      })
    this.reactors = {
      payments: reactor('payments'),
      shipping: reactor('shipping'),
      orders: reactor('orders'),
    }
    this.replies = sagaReplyHandler(db, { clock: this.clock })
    this.worker = createSagaWorker({
      db,
      sagas: [saga],
      clock: this.clock,
      listen: false,
      workerId: `w-${randomUUID().slice(0, 8)}`,
    })
  }

  /** One service's reaction: its business write, its follow-up event, maybe a failure. */
  async react(consumer: Consumer, { tx, event, emit }: ReactionContext): Promise<void> {
    await this.scheduler?.schedule(Promise.resolve(), `${consumer} reacts to ${event.type}`)
    await tx.execute('INSERT INTO model_effects (consumer, event_id) VALUES ($1, $2)', [
      consumer,
      event.id,
    ])
    const declined = (event.payload as { amount?: number }).amount === 402
    const type =
      consumer === 'payments'
        ? declined
          ? 'payment-declined'
          : 'payment-charged'
        : consumer === 'shipping'
          ? 'order-shipped'
          : 'order-cancelled'
    await emit({
      aggregateType: 'order',
      aggregateId: event.key,
      type,
      topic: 'shop',
      payload: { amount: declined ? 402 : 10 },
    })
    const left = this.failNext.get(consumer) ?? 0
    if (left > 0) {
      this.failNext.set(consumer, left - 1)
      throw new Error(`injected failure of ${consumer}`)
    }
  }
}

/** Whether an error is one the test injected (the broker then redelivers). */
function injected(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith('injected failure')
}

/**
 * Checks the exactly-once invariants against what is committed: effects against inbox records,
 * follow-up events against effects, replies per saga step, and tracked flow steps against the
 * outbox.
 */
async function checkAll(w: World): Promise<void> {
  const effects = await w.db.query<{ consumer: string; event_id: string; n: number | string }>(
    'SELECT consumer, event_id, COUNT(*) AS n FROM model_effects GROUP BY consumer, event_id',
  )
  const inbox = await w.db.query<{ consumer: string; message_id: string }>(
    'SELECT consumer, message_id FROM breakwater_inbox',
  )
  const rows = await w.db.query<OutboxRow>('SELECT * FROM breakwater_outbox ORDER BY id')
  const typeOf = new Map(rows.map((r) => [r.event_id, r.event_type]))
  const effectCount = new Map(effects.map((e) => [`${e.consumer} ${e.event_id}`, Number(e.n)]))
  const recorded = new Set(inbox.map((r) => `${r.consumer} ${r.message_id}`))
  for (const [key, n] of effectCount) {
    expect(n, `effect of ${key} committed ${n} times\n${w.log.join('\n')}`).toBe(1)
    expect(recorded.has(key), `effect of ${key} without its inbox record`).toBe(true)
  }
  for (const { consumer, message_id } of inbox) {
    if (!(consumers as readonly string[]).includes(consumer)) continue
    const reacts = typeOf.get(message_id) === reactsTo[consumer as Consumer]
    expect(
      effectCount.get(`${consumer} ${message_id}`) ?? 0,
      `${consumer} recorded ${message_id} (${typeOf.get(message_id)}) in its inbox\n${w.log.join('\n')}`,
    ).toBe(reacts ? 1 : 0)
  }
  // Follow-ups: exactly one per committed reaction, carrying the cause's correlation id.
  const followUps = new Map<string, { type: string; correlation: string | undefined }[]>()
  const correlationOf = new Map<string, string | undefined>()
  for (const row of rows) {
    const headers = JSON.parse(row.headers) as Record<string, string>
    correlationOf.set(row.event_id, headers['correlation-id'])
    const cause = headers['causation-id']
    if (cause === undefined || row.topic !== 'shop') continue
    const list = followUps.get(cause) ?? []
    list.push({ type: row.event_type, correlation: headers['correlation-id'] })
    followUps.set(cause, list)
  }
  for (const row of rows) {
    if (row.topic !== 'shop') continue
    const reactions = consumers.filter((c) => effectCount.has(`${c} ${row.event_id}`)).length
    const emitted = followUps.get(row.event_id) ?? []
    expect(
      emitted.length,
      `${row.event_type} ${row.event_id}: ${emitted.length} follow-ups for ${reactions} reactions\n${w.log.join('\n')}`,
    ).toBe(reactions)
    for (const f of emitted) {
      expect(f.correlation, `${f.type} caused by ${row.event_id} keeps the flow's id`).toBe(
        correlationOf.get(row.event_id),
      )
    }
  }
  // Replies: at most one per saga step.
  const replies = await w.db.query<{ saga_id: string; step: string; reply: string }>(
    'SELECT saga_id, step, reply FROM breakwater_saga_replies',
  )
  const perStep = new Map<string, number>()
  for (const r of replies) {
    if (!w.sagaIds.includes(r.saga_id)) continue
    const key = `${r.saga_id} ${r.step}`
    perStep.set(key, (perStep.get(key) ?? 0) + 1)
    expect(w.offered.get(r.saga_id) ?? [], `the reply recorded for ${key}`).toContainEqual(
      JSON.parse(r.reply),
    )
  }
  for (const [key, n] of perStep) expect(n, `replies recorded for ${key}`).toBe(1)
  // Each flow's tracked steps are the events of its flow in the outbox (same transactions).
  for (const order of w.orders) {
    const state = await w.tracker.state(order)
    const inOutbox = new Set(
      rows.filter((r) => correlationOf.get(r.event_id) === order).map((r) => r.event_type),
    )
    expect(state?.flow).toBe('order')
    for (const step of [...state!.steps, ...state!.compensation])
      expect(step.done, `${order}: ${step.event}`).toBe(inOutbox.has(step.event))
    expect(state!.failure !== undefined).toBe(inOutbox.has('payment-declined'))
  }
}

type Model = Record<string, never>
type Command = fc.AsyncCommand<Model, World>

/** A service places an order: `order-placed` emitted through the outbox and tracked. */
class Place implements Command {
  constructor(readonly declined: boolean) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    const order = `o${w.orders.length + 1}`
    await w.db.transaction((tx) =>
      emitEvent(
        tx,
        { outbox: w.outbox, tracker: w.tracker, consumer: 'shop', clock: w.clock },
        {
          aggregateType: 'order',
          aggregateId: order,
          type: 'order-placed',
          topic: 'shop',
          payload: { amount: this.declined ? 402 : 10 },
          correlationId: order,
        },
      ),
    )
    w.orders.push(order)
    await checkAll(w)
  }
  toString = () => `place an order${this.declined ? ' (declined)' : ''}`
}

/** One message for one service in a {@link Deliver} command. */
interface Target {
  readonly consumer: Consumer
  /** Pick among the events the service reacts to, rather than among all events. */
  readonly reacting: boolean
  readonly index: number
  /** How many copies of the message arrive at once. */
  readonly copies: number
}

/**
 * Hands every copy of every target's message to its service at once; the scheduler decides
 * the order in which the reactions (which wait for it before writing) go on.
 */
async function deliverAll(
  w: World,
  targets: readonly Target[],
  scheduler: fc.Scheduler | undefined,
): Promise<void> {
  const rows = await w.db.query<OutboxRow>(
    "SELECT * FROM breakwater_outbox WHERE topic = 'shop' ORDER BY id",
  )
  const deliveries: { key: string; wasFailed: boolean; run: () => Promise<void>[] }[] = []
  for (const target of targets) {
    const candidates = target.reacting
      ? rows.filter((r) => r.event_type === reactsTo[target.consumer])
      : rows
    if (candidates.length === 0) continue
    const row = candidates[target.index % candidates.length]!
    const key = `${target.consumer} ${row.event_id}`
    const handled = await w.db.query<{ message_id: string }>(
      'SELECT message_id FROM breakwater_inbox WHERE consumer = $1',
      [target.consumer],
    )
    const done = new Set(handled.map((h) => h.message_id))
    if (done.has(row.event_id) || target.copies > 1) coverage.duplicateDeliveries++
    if (done.has(row.event_id)) coverage.redeliveredAfterAck++
    if (target.copies > 1) coverage.concurrentDeliveries++
    // Out of order: the service already handled a later event of the same flow.
    const later = (r: OutboxRow) =>
      Number(r.id) > Number(row.id) && r.aggregate_id === row.aggregate_id
    if (rows.some((r) => later(r) && done.has(r.event_id))) coverage.outOfOrderDeliveries++
    w.log.push(`deliver ${row.event_type} ${row.event_id} to ${target.consumer} x${target.copies}`)
    deliveries.push({
      key,
      wasFailed: w.failed.has(key),
      run: () =>
        Array.from({ length: target.copies }, (_, i) =>
          w.reactors[target.consumer](toIncoming(row, i + 1)),
        ),
    })
  }
  if (deliveries.length > 1) coverage.concurrentDifferentMessages++
  w.scheduler = scheduler
  try {
    const all = Promise.all(deliveries.map((d) => Promise.allSettled(d.run())))
    const outcomes = scheduler === undefined ? await all : await scheduler.waitFor(all)
    outcomes.forEach((copies, i) => {
      const { key, wasFailed } = deliveries[i]!
      let ok = false
      for (const outcome of copies) {
        if (outcome.status === 'fulfilled') ok = true
        else if (injected(outcome.reason)) w.failed.add(key)
        else throw outcome.reason
      }
      if (ok && wasFailed) coverage.redeliveredAfterFailure++
    })
  } finally {
    w.scheduler = undefined
  }
}

/** Several messages (and copies of them) arriving at once; see {@link deliverAll}. */
class Deliver implements Command {
  constructor(
    readonly targets: readonly Target[],
    readonly scheduler: fc.Scheduler,
  ) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    await deliverAll(w, this.targets, this.scheduler)
    await checkAll(w)
  }
  toString = () =>
    `deliver at once: ${this.targets
      .map(
        (t) =>
          `${t.reacting ? `${reactsTo[t.consumer]} event` : 'outbox event'} #${t.index} to ${t.consumer}${t.copies > 1 ? ` x${t.copies}` : ''}`,
      )
      .join(', ')} (${this.scheduler.report().length} reactions scheduled)`
}

/** A flow's events handed to one service one by one, newest first. */
class DeliverBackwards implements Command {
  constructor(
    readonly consumer: Consumer,
    readonly order: number,
  ) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    if (w.orders.length === 0) return
    const order = w.orders[this.order % w.orders.length]!
    const rows = await w.db.query<OutboxRow>(
      "SELECT * FROM breakwater_outbox WHERE topic = 'shop' ORDER BY id",
    )
    const indexes = rows.flatMap((r, i) => (r.aggregate_id === order ? [i] : [])).reverse()
    for (const index of indexes)
      await deliverAll(
        w,
        [{ consumer: this.consumer, reacting: false, index, copies: 1 }],
        undefined,
      )
    await checkAll(w)
  }
  toString = () => `deliver the events of order #${this.order} to ${this.consumer}, newest first`
}

/** Scripts failures of a service's next reactions (after their writes, so they roll back). */
class FailNext implements Command {
  constructor(
    readonly consumer: Consumer,
    readonly times: number,
  ) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    w.failNext.set(this.consumer, (w.failNext.get(this.consumer) ?? 0) + this.times)
  }
  toString = () => `the next ${this.times} reactions of ${this.consumer} fail after their writes`
}

/** Moves the clock of inbox, tracker and saga timestamps. */
class Advance implements Command {
  constructor(readonly ms: number) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    await w.clock.advance(this.ms)
  }
  toString = () => `advance the clock ${this.ms} ms`
}

/** Replies to a saga's command through sagaReplyHandler, several copies at once. */
class Reply implements Command {
  constructor(
    readonly saga: number,
    readonly attempt: number,
    readonly ok: boolean,
    readonly copies: number,
    readonly mixed: boolean,
    readonly scheduler: fc.Scheduler,
  ) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    const sagaId = w.sagaIds[this.saga % w.sagaIds.length]!
    if (this.copies > 1) coverage.concurrentReplies++
    if (this.copies > 1 && this.mixed) coverage.concurrentRepliesOfTwoAttempts++
    // Copy i answers attempt `attempt`, or with `mixed` the two attempts in turn (the reply to
    // a resent command racing the reply to the first one).
    const message = (i: number): IncomingMessage => {
      const attempt = this.mixed ? ((this.attempt + i) % 2) + 1 : this.attempt
      const command = {
        id: `${sagaId}:charge:${attempt}`,
        headers: { 'correlation-id': sagaId, 'saga-step': 'charge' },
      }
      const payload = { ok: this.ok, attempt }
      const offered = w.offered.get(sagaId) ?? []
      offered.push(payload)
      w.offered.set(sagaId, offered)
      const event = replyTo(command, { type: 'card-charged', topic: 'saga.replies', payload })
      return toReplyMessage(event, i + 1)
    }
    // Each copy goes through the scheduler before reaching the handler.
    const all = Promise.all(
      Array.from({ length: this.copies }, (_, i) =>
        this.scheduler
          .schedule(Promise.resolve(), `reply copy ${i + 1}`)
          .then(() => w.replies(message(i))),
      ),
    )
    await this.scheduler.waitFor(all)
    await checkAll(w)
  }
  toString = () =>
    `reply ${this.ok ? 'ok' : 'declined'} to saga #${this.saga} attempt ${this.attempt}${this.copies > 1 ? ` ${this.copies} times at once${this.mixed ? ', alternating attempts' : ''}` : ''}`
}

/** A reply event (from replyTo) as the broker delivers it. */
function toReplyMessage(event: OutboxEvent, deliveryCount: number): IncomingMessage {
  return {
    id: event.id!,
    topic: event.topic!,
    key: event.aggregateId,
    payload: new TextEncoder().encode(JSON.stringify(event.payload)),
    headers: {
      ...event.headers,
      'correlation-id': event.correlationId!,
      'causation-id': event.causationId!,
      'event-type': event.type,
    },
    deliveryCount,
  }
}

/** A reply through deliverReply: 'delivered' for the first, 'duplicate' after. */
class DirectReply implements Command {
  constructor(readonly saga: number) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    const sagaId = w.sagaIds[this.saga % w.sagaIds.length]!
    const before = await w.db.query<{ saga_id: string }>(
      'SELECT saga_id FROM breakwater_saga_replies WHERE saga_id = $1',
      [sagaId],
    )
    const payload = { ok: true, direct: true }
    if (before.length === 0) {
      const offered = w.offered.get(sagaId) ?? []
      offered.push(payload)
      w.offered.set(sagaId, offered)
    }
    const result = await deliverReply(w.db, sagaId, 'charge', payload, { clock: w.clock })
    expect(result).toBe(before.length === 0 ? 'delivered' : 'duplicate')
    if (result === 'duplicate') coverage.duplicateReplies++
    await checkAll(w)
  }
  toString = () => `deliverReply directly to saga #${this.saga}`
}

const consumerArb = fc.constantFrom<Consumer>(...consumers)
const copiesArb = fc.constantFrom(1, 1, 2, 3)
const targetArb = fc.record({
  consumer: consumerArb,
  reacting: fc.boolean(),
  index: fc.nat(11),
  copies: copiesArb,
})
const deliver = fc
  .tuple(fc.array(targetArb, { minLength: 1, maxLength: 3 }), fc.scheduler())
  .map(([targets, s]) => new Deliver(targets, s))
const commands = [
  fc.boolean().map((d) => new Place(d)),
  deliver,
  deliver,
  deliver,
  fc.tuple(consumerArb, fc.integer({ min: 1, max: 2 })).map(([c, n]) => new FailNext(c, n)),
  fc.tuple(consumerArb, fc.integer({ min: 1, max: 2 })).map(([c, n]) => new FailNext(c, n)),
  fc.tuple(consumerArb, fc.nat(3)).map(([c, o]) => new DeliverBackwards(c, o)),
  fc.constantFrom(0, 1, 700).map((ms) => new Advance(ms)),
  fc
    .tuple(
      fc.nat(1),
      fc.integer({ min: 1, max: 2 }),
      fc.boolean(),
      copiesArb,
      fc.boolean(),
      fc.scheduler(),
    )
    .map(([i, a, ok, n, mixed, s]) => new Reply(i, a, ok, n, mixed, s)),
  fc.nat(1).map((i) => new DirectReply(i)),
]

/**
 * A flow state for comparison: its events must be oldest first, and events recorded at the
 * same millisecond may come in any order (the tracker breaks such ties by arrival; see the
 * report), so they are put in id order.
 */
function normalized(state: FlowState | undefined): unknown {
  if (state === undefined) return undefined
  const times = state.events.map((e) => e.at)
  expect(times, `${state.correlationId}: events oldest first`).toEqual(
    [...times].sort((a, b) => a - b),
  )
  const byTimeThenId = (a: TrackedEvent, b: TrackedEvent) => a.at - b.at || (a.id < b.id ? -1 : 1)
  return {
    ...state,
    events: [...state.events].sort(byTimeThenId),
    unexpected: [...state.unexpected].sort(byTimeThenId),
  }
}

/**
 * Rebuilds every flow from its tracked events recorded again, in the order `keys` gives and
 * with duplicates, into the mirror database; both the mirror tracker and reconstructFlow must
 * agree with the world's tracker.
 */
async function checkFlows(
  w: World,
  mirror: SqlDriver,
  keys: readonly { rank: number; dup: boolean }[],
): Promise<void> {
  await mirror.execute('DELETE FROM breakwater_flow_events')
  const tracker = createFlowTracker({ db: mirror, flows: [orderFlow], clock: w.clock })
  for (const order of w.orders) {
    const state = await w.tracker.state(order)
    const events = state!.events
    const ranked = events.map((e, i) => ({ e, key: keys[i % Math.max(keys.length, 1)] }))
    const shuffled = [...ranked].sort((a, b) => (a.key?.rank ?? 0) - (b.key?.rank ?? 0))
    const arrivals = shuffled.flatMap(({ e, key }) => (key?.dup ? [e, e] : [e]))
    if (shuffled.some((s, i) => s.e !== events[i])) coverage.reorderedFlows++
    for (const e of arrivals) await tracker.record(mirror, e)
    const rebuilt = await tracker.state(order)
    expect(normalized(rebuilt), `${order} rebuilt from another arrival order`).toEqual(
      normalized(state),
    )
    const pure = reconstructFlow(
      [orderFlow],
      order,
      shuffled.map((s) => s.e),
      w.clock.now(),
    )
    expect(normalized(pure), `${order} reconstructed from another order`).toEqual(normalized(state))
  }
}

/**
 * Lets the worker read the recorded replies: each saga with one completes with that reply as
 * its step's result (the reply was delivered once); a saga without one still waits.
 */
async function checkSagas(w: World): Promise<void> {
  await w.clock.advance(1)
  await w.worker.poll()
  for (const id of w.sagaIds) {
    const rows = await w.db.query<{ reply: string }>(
      'SELECT reply FROM breakwater_saga_replies WHERE saga_id = $1',
      [id],
    )
    const saga = await getSaga(w.db, id)
    if (rows.length === 0) {
      expect(saga!.status, `${id} has no reply`).toBe('running')
      continue
    }
    expect(saga!.status, `${id} read its reply`).toBe('completed')
    expect(saga!.context).toEqual(JSON.parse(rows[0]!.reply))
    expect(saga!.steps[0]).toMatchObject({ status: 'completed', attempts: 1 })
  }
}

describe.each(dbTargets)('choreography interleavings on $dialect', (target) => {
  let t: TestDb
  let mirror: TestDb
  let saga: SagaDefinition<{ orderId: string }, unknown>

  beforeAll(async () => {
    t = await target.open('choreography_interleavings')
    mirror = await target.open('choreography_mirror')
    await migrateOutbox(t.db)
    await migrateInbox(t.db)
    await t.db.execute(
      'CREATE TABLE model_effects (consumer TEXT NOT NULL, event_id TEXT NOT NULL)',
    )
    const outbox = createOutbox()
    saga = defineSaga({
      name: `pay-${randomUUID().slice(0, 8)}`,
      version: 1,
      input: (raw) => raw as { orderId: string },
      steps: [
        commandStep<{ orderId: string }, Partial<Record<string, unknown>>, { ok: boolean }>({
          name: 'charge',
          outbox,
          timeoutMs: 60_000,
          command: (ctx) => ({
            aggregateType: 'payment',
            aggregateId: ctx.input.orderId,
            type: 'charge-card',
            topic: 'payments.commands',
            payload: {},
          }),
        }),
      ],
    }) as unknown as SagaDefinition<{ orderId: string }, unknown>
  })
  afterAll(async () => {
    await mirror?.close()
    await t?.close()
  })

  it('duplicated, concurrent, failed and reordered deliveries commit each reaction and reply once', async () => {
    for (const k of Object.keys(coverage) as (keyof typeof coverage)[]) coverage[k] = 0
    await fc.assert(
      fc.asyncProperty(
        fc.commands(commands, { maxCommands: 40 }),
        fc.array(fc.record({ rank: fc.nat(100), dup: fc.boolean() }), {
          minLength: 1,
          maxLength: 8,
        }),
        async (cmds, keys) => {
          for (const table of [
            'model_effects',
            'breakwater_outbox',
            'breakwater_inbox',
            'breakwater_flow_events',
          ])
            await t.db.execute(`DELETE FROM ${table}`)
          const w = new World(t.db, saga)
          for (let i = 0; i < 2; i++) {
            const { id } = await startSaga(t.db, saga, { orderId: `s${i}` }, { clock: w.clock })
            w.sagaIds.push(id)
          }
          // Both send their command and wait (earlier runs' woken sagas may be claimed too).
          await w.worker.poll()
          await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds)
          await checkAll(w)
          await checkFlows(w, mirror.db, keys)
          await checkSagas(w)
        },
      ),
      { numRuns: target.dialect === 'sqlite' ? 300 : 80 },
    )
    expect(coverage.duplicateDeliveries).toBeGreaterThan(0)
    expect(coverage.concurrentDeliveries).toBeGreaterThan(0)
    expect(coverage.concurrentDifferentMessages).toBeGreaterThan(0)
    expect(coverage.redeliveredAfterAck).toBeGreaterThan(0)
    expect(coverage.concurrentRepliesOfTwoAttempts).toBeGreaterThan(0)
    expect(coverage.outOfOrderDeliveries).toBeGreaterThan(0)
    expect(coverage.redeliveredAfterFailure).toBeGreaterThan(0)
    expect(coverage.concurrentReplies).toBeGreaterThan(0)
    expect(coverage.duplicateReplies).toBeGreaterThan(0)
    expect(coverage.reorderedFlows).toBeGreaterThan(0)
  }, 120_000)
})
