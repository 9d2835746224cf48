// Saga messaging on real SQLite and PostgreSQL with the outbox, its relay, the inbox and the
// SQL queue broker: a step that sends a command through the outbox (committed with the saga's
// state) and waits for the reply correlated by saga id, with a timeout and resend; and a
// choreographed flow of reacting services followed by the flow tracker, stalls included.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import type { IncomingMessage, Subscription } from '../../src/brokers/index.js'
import {
  createOutbox,
  createRelay,
  createSqlQueue,
  migrateInbox,
  migrateOutbox,
  migrateSqlQueue,
  type Outbox,
  type Relay,
  type SqlQueue,
} from '../../src/outbox/index.js'
import {
  commandStep,
  createFlowTracker,
  createReactor,
  createSagaWorker,
  defineFlow,
  defineSaga,
  emitEvent,
  getSaga,
  getSagaTimeline,
  IDEMPOTENCY_KEY_HEADER,
  replyTo,
  type SagaEvent,
  sagaReplyHandler,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

interface PaidOrder {
  readonly orderId: string
  readonly amount: number
}

describe.each(dbTargets)('saga messaging on $dialect', (target) => {
  let t: TestDb
  let queue: SqlQueue
  let relay: Relay
  let outbox: Outbox
  const subscriptions: Subscription[] = []

  beforeAll(async () => {
    t = await target.open('saga_messaging')
    await migrateOutbox(t.db)
    await migrateInbox(t.db)
    await migrateSqlQueue(t.db)
    await t.db.execute(
      'CREATE TABLE charges (idem_key TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount INTEGER NOT NULL)',
    )
    const seq = target.dialect === 'postgres' ? 'BIGINT GENERATED ALWAYS AS IDENTITY' : 'INTEGER'
    await t.db.execute(
      `CREATE TABLE shop_log (seq ${seq} PRIMARY KEY, order_id TEXT NOT NULL, what TEXT NOT NULL)`,
    )
    outbox = createOutbox()
    queue = createSqlQueue(t.db, { pollIntervalMs: 5, maxPollIntervalMs: 20, retryDelayMs: 20 })
    relay = createRelay({
      db: t.db,
      publisher: queue.publisher,
      pollIntervalMs: 5,
      maxPollIntervalMs: 20,
    })
    await relay.start()
  })
  afterAll(async () => {
    for (const s of subscriptions) await s.close()
    await relay?.stop()
    await queue?.close()
    await t?.close()
  })

  // Each saga's replies go to a topic of its own. On a shared topic every test's reply handler
  // (one consumer group each, all subscribed until afterAll) got every reply, and the first one
  // to take it in the shared 'saga-replies' inbox delivered it: the first test's handler, on the
  // system clock, woke the late-reply saga at the real time. Once more real time had passed
  // than that test's ManualClock had been advanced (5.1 s: only under load), that wake-up
  // lay in the ManualClock's future, which no poll reached: the saga stayed running.
  const repliesTopic = (saga: string) => `${saga}.replies`

  // The payments service: charges once per idempotency key (a resent command has no second
  // effect) and replies through its outbox in the same transaction, to the saga's reply topic.
  const paymentsHandler = (replies: string) => async (m: IncomingMessage) => {
    const body = JSON.parse(Buffer.from(m.payload).toString('utf8')) as PaidOrder
    const key = m.headers[IDEMPOTENCY_KEY_HEADER]!
    await t.db.transaction(async (tx) => {
      const ok = body.amount !== 402
      if (ok) {
        await tx.execute(
          'INSERT INTO charges (idem_key, order_id, amount) VALUES ($1, $2, $3) ON CONFLICT (idem_key) DO NOTHING',
          [key, body.orderId, body.amount],
        )
      }
      await outbox.enqueue(
        tx,
        replyTo(m, {
          type: ok ? 'card-charged' : 'card-declined',
          topic: replies,
          payload: ok ? { ok, chargeId: `ch-${body.orderId}` } : { ok },
        }),
      )
    })
  }

  function paidOrderSaga(name: string, timeoutMs: number) {
    return defineSaga({
      name,
      version: 1,
      input: (raw) => raw as PaidOrder,
      steps: [
        {
          name: 'reserve',
          action: async (ctx) => ({ reservationId: `r-${ctx.input.orderId}` }),
          compensation: async (ctx) => {
            await t.db.execute('INSERT INTO shop_log (order_id, what) VALUES ($1, $2)', [
              ctx.input.orderId,
              `release ${ctx.context.reservationId}`,
            ])
          },
        },
        commandStep<PaidOrder, { reservationId: string }, { chargeId: string }>({
          name: 'charge',
          outbox,
          timeoutMs,
          retry: { maxAttempts: 3, baseDelayMs: 100, jitter: 'none' },
          command: (ctx) => ({
            aggregateType: 'payment',
            aggregateId: ctx.input.orderId,
            type: 'charge-card',
            topic: `${name}.payments`,
            payload: { orderId: ctx.input.orderId, amount: ctx.input.amount },
          }),
          onReply: (reply) => {
            const r = reply as { ok: boolean; chargeId?: string }
            if (!r.ok) throw Object.assign(new Error('card declined'), { status: 402 })
            return { chargeId: r.chargeId! }
          },
        }),
        { name: 'ship', action: async (ctx) => ({ shipped: ctx.context.chargeId }) },
      ],
    })
  }

  it('a command step sends through the outbox, waits for the correlated reply, then goes on', async () => {
    const name = `paid-${randomUUID().slice(0, 6)}`
    const saga = paidOrderSaga(name, 60_000)
    subscriptions.push(
      await queue.subscriber.subscribe(
        `${name}.payments`,
        'payments',
        paymentsHandler(repliesTopic(name)),
      ),
    )
    subscriptions.push(
      await queue.subscriber.subscribe(repliesTopic(name), name, sagaReplyHandler(t.db)),
    )
    const worker = createSagaWorker({ db: t.db, sagas: [saga], pollIntervalMs: 10 })
    await worker.start()
    try {
      const ok = await worker.run(saga, { orderId: 'a1', amount: 50 })
      const declined = await worker.run(saga, { orderId: 'a2', amount: 402 })
      expect(ok.status).toBe('running') // waiting for its reply
      await vi.waitFor(async () => expect((await getSaga(t.db, ok.id))!.status).toBe('completed'), {
        timeout: 15_000,
      })
      await vi.waitFor(
        async () => expect((await getSaga(t.db, declined.id))!.status).toBe('compensated'),
        { timeout: 15_000 },
      )
      expect((await getSaga(t.db, ok.id))!.context).toEqual({
        reservationId: 'r-a1',
        chargeId: 'ch-a1',
        shipped: 'ch-a1',
      })
      const reason = (await getSaga(t.db, declined.id))!.reason
      expect(reason).toContain('step "charge" failed: Error: card declined')
      expect(await countRows(t.db, 'shop_log', "WHERE order_id = 'a2'")).toBe(1)
      const kinds = (await getSagaTimeline(t.db, ok.id)).map((e) => `${e.kind}:${e.step ?? ''}`)
      expect(kinds).toEqual([
        'step-completed:reserve',
        'step-waiting:charge',
        'reply-received:charge',
        'step-completed:charge',
        'step-completed:ship',
        'completed:',
      ])
      // The command carried the saga id as correlation id and the step's idempotency key.
      const commands = await t.db.query<{ event_id: string; headers: string }>(
        "SELECT event_id, headers FROM breakwater_outbox WHERE event_type = 'charge-card' AND aggregate_id = 'a1'",
      )
      expect(commands.map((c) => c.event_id)).toEqual([`${ok.id}:charge:1`])
      expect(JSON.parse(commands[0]!.headers)).toMatchObject({
        'correlation-id': ok.id,
        'saga-step': 'charge',
        [IDEMPOTENCY_KEY_HEADER]: `${ok.id}:charge`,
      })
    } finally {
      await worker.stop()
    }
  })

  it('a reply that does not come in time is a retryable timeout: the command is resent, charged once', async () => {
    const name = `late-${randomUUID().slice(0, 6)}`
    const saga = paidOrderSaga(name, 5_000)
    const clock = new ManualClock(Date.now())
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    subscriptions.push(
      await queue.subscriber.subscribe(repliesTopic(name), name, sagaReplyHandler(t.db, { clock })),
    )
    const { id } = await worker.run(saga, { orderId: `${name}-o`, amount: 20 })
    await clock.advance(5_000)
    expect(await worker.poll()).toBe(1) // the timeout: attempt 1 failed, retry in 100 ms
    const failed = await getSaga(t.db, id)
    expect(failed!.steps[1]).toMatchObject({
      status: 'failed',
      error: { code: 'SAGA_REPLY_TIMEOUT' },
    })
    await clock.advance(100)
    expect(await worker.poll()).toBe(1) // attempt 2: the command is sent again
    // Payments comes back and handles both commands; the second reply is a duplicate.
    subscriptions.push(
      await queue.subscriber.subscribe(
        `${name}.payments`,
        'payments',
        paymentsHandler(repliesTopic(name)),
      ),
    )
    // Both replies handled, each in its inbox transaction: the first recorded, the other a
    // duplicate. Polling while the duplicate's transaction was still open found the instance
    // locked by it (deliverReply's FOR KEY SHARE) and passed over it (SKIP LOCKED) that round.
    const replies = [`${id}:charge:1:reply`, `${id}:charge:2:reply`]
    await vi.waitFor(
      async () =>
        expect(
          await countRows(
            t.db,
            'breakwater_inbox',
            "WHERE consumer = 'saga-replies' AND message_id IN ($1, $2)",
            replies,
          ),
        ).toBe(2),
      { timeout: 15_000 },
    )
    expect(await countRows(t.db, 'breakwater_saga_replies', 'WHERE saga_id = $1', [id])).toBe(1)
    // The recorded reply made the saga due at the ManualClock's now: one poll finishes it.
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
    expect((await getSaga(t.db, id))!.steps[1]).toMatchObject({ status: 'completed', attempts: 2 })
    expect(await countRows(t.db, 'charges', 'WHERE order_id = $1', [`${name}-o`])).toBe(1)
    const sent = await countRows(
      t.db,
      'breakwater_outbox',
      "WHERE event_type = 'charge-card' AND aggregate_id = $1",
      [`${name}-o`],
    )
    expect(sent).toBe(2)
  })

  it('a command the outbox refuses fails the attempt with that error, at once, instead of giving the saga up', async () => {
    const saga = paidOrderSaga(`refused-${randomUUID().slice(0, 6)}`, 60_000)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    // An empty order id makes an empty aggregateId: enqueue() refuses the command.
    const outcome = await worker.run(saga, { orderId: '', amount: 10 })
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toMatch(/^step "charge" failed: InvalidOptionError: .*aggregateId/)
    expect(events.filter((e) => e.type === 'error')).toEqual([])
    expect(worker.metrics()).toMatchObject({ errors: 0, stepFailures: 1, compensated: 1 })
    const stored = await getSaga(t.db, outcome.id)
    expect(stored!.steps[1]).toMatchObject({ status: 'failed', error: { code: 'INVALID_OPTION' } })
    expect(
      await countRows(t.db, 'shop_log', "WHERE order_id = '' AND what = $1", ['release r-']),
    ).toBe(1)
  })

  it('a stale worker’s command is never written: the command commits only with a fenced state write', async () => {
    const name = `stale-${randomUUID().slice(0, 6)}`
    const saga = paidOrderSaga(name, 60_000)
    const clockA = new ManualClock(0)
    const clockB = new ManualClock(100_000)
    let holdA: (() => void) | undefined
    const reachedA = new Promise<void>((resolve) => {
      holdA = resolve
    })
    let releaseA!: () => void
    const released = new Promise<void>((resolve) => {
      releaseA = resolve
    })
    const a = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: clockA,
      leaseMs: 1_000,
      workerId: 'A',
      faults: async (point, site) => {
        if (point === 'before-step' && site.step === 'charge') {
          holdA?.()
          await released
        }
      },
    })
    const b = createSagaWorker({
      db: await t.reopen(),
      sagas: [saga],
      clock: clockB,
      leaseMs: 1_000,
      workerId: 'B',
    })
    const runA = a.run(saga, { orderId: `${name}-o`, amount: 10 })
    await reachedA
    expect(await b.poll()).toBe(1) // B took the expired lease over and sent its command
    releaseA()
    const outcome = await runA
    expect(outcome.status).toBe('running')
    expect(a.metrics().leaseLost).toBe(1)
    const commands = await t.db.query<{ event_id: string }>(
      "SELECT event_id FROM breakwater_outbox WHERE event_type = 'charge-card' AND aggregate_id = $1",
      [`${name}-o`],
    )
    expect(commands.map((c) => c.event_id)).toEqual([`${outcome.id}:charge:2`])
  })

  it('choreography: reacting services emit through outbox and inbox; the tracker rebuilds each flow, stalls included', async () => {
    const topic = `shop-${randomUUID().slice(0, 6)}`
    const trackerClock = new ManualClock(Date.now())
    const flow = defineFlow({
      name: 'order',
      steps: [
        'order-placed',
        { event: 'payment-charged', failsOn: ['payment-declined'], withinMs: 10_000 },
        { event: 'order-shipped', withinMs: 30_000 },
      ],
      compensation: ['order-cancelled'],
    })
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock: trackerClock })
    const event = (orderId: string, type: string, payload: unknown = {}) => ({
      aggregateType: 'order',
      aggregateId: orderId,
      type,
      topic,
      payload,
    })
    const payments = createReactor({
      db: t.db,
      consumer: 'payments',
      outbox,
      reactions: {
        'order-placed': async ({ event: e, emit }) => {
          const { amount } = e.payload as { amount: number }
          await emit(event(e.key, amount === 402 ? 'payment-declined' : 'payment-charged'))
        },
      },
    })
    const shipping = createReactor({
      db: t.db,
      consumer: 'shipping',
      outbox,
      reactions: {
        'payment-charged': async ({ event: e, emit, tx }) => {
          // The shipping service is "down" for this order: it acknowledges and does nothing.
          if (e.key.endsWith('-stuck')) return
          await tx.execute('INSERT INTO shop_log (order_id, what) VALUES ($1, $2)', [
            e.key,
            'shipped',
          ])
          await emit(event(e.key, 'order-shipped'))
        },
      },
    })
    const orders = createReactor({
      db: t.db,
      consumer: 'orders',
      outbox,
      reactions: {
        'payment-declined': async ({ event: e, emit }) => {
          await emit(event(e.key, 'order-cancelled'))
        },
      },
    })
    subscriptions.push(await queue.subscriber.subscribe(topic, 'payments', payments))
    subscriptions.push(await queue.subscriber.subscribe(topic, 'shipping', shipping))
    subscriptions.push(await queue.subscriber.subscribe(topic, 'orders', orders))
    subscriptions.push(
      await queue.subscriber.subscribe(topic, 'tracker', async (m) => {
        await tracker.observe(m, 'tap')
      }),
    )
    const place = (orderId: string, amount: number) =>
      t.db.transaction(async (tx) => {
        await tx.execute('INSERT INTO shop_log (order_id, what) VALUES ($1, $2)', [
          orderId,
          'placed',
        ])
        await emitEvent(
          tx,
          { outbox },
          { ...event(orderId, 'order-placed', { amount }), correlationId: orderId },
        )
      })
    const [good, declined, stuck] = [`${topic}-good`, `${topic}-declined`, `${topic}-stuck`]
    await place(good, 10)
    await place(declined, 402)
    await place(stuck, 10)

    await vi.waitFor(async () => expect((await tracker.state(good))?.status).toBe('completed'), {
      timeout: 15_000,
    })
    await vi.waitFor(
      async () => expect((await tracker.state(declined))?.status).toBe('compensated'),
      {
        timeout: 15_000,
      },
    )
    await vi.waitFor(async () => expect((await tracker.state(stuck))?.steps[1]?.done).toBe(true), {
      timeout: 15_000,
    })
    const goodState = await tracker.state(good)
    expect(goodState!.steps.map((s) => s.event)).toEqual([
      'order-placed',
      'payment-charged',
      'order-shipped',
    ])
    expect(goodState!.steps.every((s) => s.done)).toBe(true)
    const declinedState = await tracker.state(declined)
    expect(declinedState!.failure?.type).toBe('payment-declined')
    expect(declinedState!.compensation).toMatchObject([{ event: 'order-cancelled', done: true }])
    // Events carry the flow's correlation id and their cause.
    const emitted = await t.db.query<{ headers: string; event_type: string }>(
      'SELECT headers, event_type FROM breakwater_outbox WHERE aggregate_id = $1 ORDER BY id',
      [declined],
    )
    expect(emitted.map((e) => e.event_type)).toEqual([
      'order-placed',
      'payment-declined',
      'order-cancelled',
    ])
    expect(emitted.every((e) => JSON.parse(e.headers)['correlation-id'] === declined)).toBe(true)

    // The stuck flow is in progress until its shipment is overdue, then stalled.
    expect((await tracker.state(stuck))!.status).toBe('in-progress')
    expect(await tracker.stalled()).toEqual([])
    await trackerClock.advance(31_000)
    const stalled = await tracker.state(stuck)
    expect(stalled).toMatchObject({ status: 'stalled', next: 'order-shipped' })
    expect(stalled!.stalledAt!.event).toBe('order-shipped')
    expect(stalled!.stalledAt!.overdueMs).toBeGreaterThan(0)
    expect((await tracker.stalled()).map((s) => s.correlationId)).toEqual([stuck])
    expect((await tracker.state(good))!.status).toBe('completed')
  })

  it('stalled() finds a stalled flow behind more recently active ones than its limit', async () => {
    const clock = new ManualClock(1_000_000_000)
    const name = `busy-${randomUUID().slice(0, 6)}`
    const flow = defineFlow({
      name,
      steps: [`${name}-placed`, { event: `${name}-paid`, withinMs: 10_000 }],
    })
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const stuck = `${name}-stuck`
    // The stuck flow started first; then more flows than the default limit (1000) started,
    // all recently enough to be in progress.
    await tracker.record(t.db, {
      id: `${stuck}:placed`,
      correlationId: stuck,
      type: `${name}-placed`,
      at: clock.now() - 20_000,
    })
    await t.db.transaction(async (tx) => {
      for (let i = 0; i < 1_001; i++) {
        await tracker.record(tx, {
          id: `${name}-${i}:placed`,
          correlationId: `${name}-${i}`,
          type: `${name}-placed`,
          at: clock.now() - 1_000 + (i % 500),
        })
      }
    })
    expect((await tracker.state(stuck))!.status).toBe('stalled')
    expect((await tracker.stalled()).map((s) => s.correlationId)).toEqual([stuck])
    expect((await tracker.stalled({ limit: 1 })).map((s) => s.correlationId)).toEqual([stuck])
  })

  it('a reacting service skips event types that name Object.prototype members', async () => {
    const consumer = `proto-${randomUUID().slice(0, 6)}`
    const reactor = createReactor({
      db: t.db,
      consumer,
      outbox,
      reactions: { 'thing-happened': async () => {} },
    })
    for (const type of ['valueOf', 'hasOwnProperty', '__proto__', 'constructor', 'toString']) {
      await reactor({
        id: `m-${randomUUID()}`,
        topic: 'things',
        key: 'k1',
        payload: new TextEncoder().encode('{}'),
        headers: { 'event-type': type, 'correlation-id': 'flow-proto' },
        deliveryCount: 1,
      })
    }
    expect(await countRows(t.db, 'breakwater_inbox', 'WHERE consumer = $1', [consumer])).toBe(5)
  })

  it('a reacting service handles a redelivered event once (inbox)', async () => {
    let runs = 0
    const reactor = createReactor({
      db: t.db,
      consumer: `dup-${randomUUID().slice(0, 6)}`,
      outbox,
      reactions: {
        'thing-happened': async ({ emit, event }) => {
          runs++
          await emit({
            aggregateType: 'thing',
            aggregateId: event.key,
            type: 'thing-noticed',
            payload: {},
          })
        },
      },
    })
    const message: IncomingMessage = {
      id: `m-${randomUUID()}`,
      topic: 'things',
      key: 'k1',
      payload: new TextEncoder().encode('{"n":1}'),
      headers: { 'event-type': 'thing-happened', 'correlation-id': 'flow-1' },
      deliveryCount: 1,
    }
    await reactor(message)
    await reactor({ ...message, deliveryCount: 2 })
    expect(runs).toBe(1)
    const noticed = await t.db.query<{ headers: string }>(
      "SELECT headers FROM breakwater_outbox WHERE event_type = 'thing-noticed' AND aggregate_id = 'k1'",
    )
    expect(noticed).toHaveLength(1)
    expect(JSON.parse(noticed[0]!.headers)).toMatchObject({
      'correlation-id': 'flow-1',
      'causation-id': message.id,
    })
  })
})
