// A small in-process crash test, judged by the queue checker: a relay halts at each fault
// point as a killed process would (or stops gracefully there), a new relay takes over, and
// nothing is lost, nothing unexpected arrives, per-aggregate order holds, duplicates stay
// within one batch, and the inbox-backed consumer applies every event once. Then the proof
// that the checker can fail: a relay that marks rows published before publishing them loses
// the batch in hand when it crashes between the two steps, and the checker reports it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import {
  createOutbox,
  createRelay,
  inboxHandler,
  type Relay,
  type RelayFaultPoint,
  relayFaultPoints,
} from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { QueueChecker } from '../support/queue-checker.js'
import {
  count,
  dbTargets,
  type OutboxDb,
  pendingCount,
  type TestPublisher,
  testPublisher,
  testQueue,
  until,
} from './support.js'

const batchSize = 10
const aggregates = 6
const perAggregate = 20
const total = aggregates * perAggregate

describe.each(dbTargets)('relay crash test on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox()

  beforeAll(async () => {
    t = await target.open('relay_crash')
    await t.db.execute(
      'CREATE TABLE applied (message_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL)',
    )
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Enqueues every aggregate's events in order (aggregates in parallel), recording them. */
  async function write(prefix: string, checkers: QueueChecker[]): Promise<void> {
    await Promise.all(
      Array.from({ length: aggregates }, async (_, a) => {
        const key = `${prefix}-agg-${a}`
        for (let n = 0; n < perAggregate; n++) {
          const id = `${prefix}-${a}-${n}`
          for (const c of checkers) c.invoke(id, key)
          await t.db.transaction((tx) =>
            outbox.enqueue(tx, {
              id,
              topic: prefix,
              aggregateType: 'account',
              aggregateId: key,
              type: 'changed',
              payload: { n },
            }),
          )
          for (const c of checkers) c.complete(id, 'ok')
        }
      }),
    )
  }

  function relay(db: SqlDriver, publisher: TestPublisher, faults?: (p: RelayFaultPoint) => void) {
    return createRelay({
      db,
      publisher,
      batchSize,
      leaseMs: 1_000,
      pollIntervalMs: 2,
      maxPollIntervalMs: 10,
      ...(faults === undefined ? {} : { faults }),
    })
  }

  const scenarios = relayFaultPoints.flatMap((point) =>
    (['crash', 'stop'] as const).map((mode) => ({ point, mode })),
  )

  it.each(scenarios)(
    'relay A halted ($mode) at $point is replaced without loss',
    async ({ point, mode }) => {
      const prefix = `${mode}-${point}`
      const queue = testQueue(t.db)
      const brokerView = new QueueChecker()
      const consumerView = new QueueChecker()
      const consume = inboxHandler(t.db, prefix, async (tx, m) => {
        await tx.execute('INSERT INTO applied (message_id, aggregate_id) VALUES ($1, $2)', [
          m.id,
          m.key,
        ])
      })
      const subscription = await queue.subscriber.subscribe(prefix, 'consumer', async (m) => {
        consumerView.deliver(m.id, m.key)
        await consume(m)
      })
      const first = testPublisher(queue.publisher)
      const second = testPublisher(queue.publisher)
      let reached = 0
      let crashedAt: RelayFaultPoint | undefined
      const a: Relay = relay(t.db, first, (p) => {
        if (p !== point || ++reached !== 3) return
        if (mode === 'crash') throw new Error(`simulated crash at ${p}`)
        void a.stop()
      })
      a.events.on((e) => {
        if (e.type === 'crashed') crashedAt = e.point
      })
      // A publish that outlives its timeout (a loaded machine) is retried although the broker
      // may have stored it: the one legitimate extra copy outside a crash. Counted.
      let timeouts = 0
      const countTimeouts = (r: Relay) =>
        r.events.on((e) => {
          if (e.type === 'publishFailed' && (e.error as { code?: string }).code === 'TIMEOUT')
            timeouts++
        })
      countTimeouts(a)
      let b: Relay | undefined
      try {
        await a.start()
        const writing = write(prefix, [brokerView, consumerView])
        await until(
          () => a.state === (mode === 'crash' ? 'crashed' : 'stopped'),
          `relay A to ${mode}`,
        )
        if (mode === 'crash') {
          expect(crashedAt).toBe(point)
          // A crashed relay releases nothing: its partitions wait for their leases to run out.
          expect(await count(t.db, 'breakwater_outbox_partitions', `WHERE owner = '${a.id}'`)).toBe(
            64,
          )
        } else {
          expect(await count(t.db, 'breakwater_outbox_partitions', `WHERE owner = '${a.id}'`)).toBe(
            0,
          )
        }
        const confirmedByA = first.confirmed.length
        b = relay(target.dialect === 'postgres' ? await t.another() : t.db, second)
        countTimeouts(b)
        await b.start()
        await writing
        await until(
          async () => (await pendingCount(t.db)) === 0,
          'the new relay to publish the rest',
        )
        await until(
          async () =>
            (await count(t.db, 'applied', `WHERE message_id LIKE '${prefix}-%'`)) === total,
          'the consumer to apply every event',
        )
        expect(first.confirmed).toHaveLength(confirmedByA) // A published nothing after it halted
        for (const id of [...first.confirmed, ...second.confirmed]) brokerView.deliver(id)

        const broker = brokerView.check()
        expect(broker.lost).toEqual([])
        expect(broker.unexpected).toEqual([])
        expect(broker.orderViolations).toEqual([])
        expect(broker.valid).toBe(true)
        // Only a crash between publish and mark publishes anything twice: at most that batch.
        const crashBetween = mode === 'crash' && point === 'after-publish'
        if (crashBetween) expect(broker.duplicated.size).toBeGreaterThan(0)
        expect(broker.duplicated.size).toBeLessThanOrEqual(
          (crashBetween ? batchSize : 0) + timeouts * batchSize,
        )
        const consumer = consumerView.check()
        expect(consumer.valid).toBe(true)
        expect(consumer.lost).toEqual([])
        // The inbox applied each event exactly once (the table's primary key would refuse a
        // second row; the count shows none is missing).
        expect(await count(t.db, 'applied', `WHERE message_id LIKE '${prefix}-%'`)).toBe(total)
      } finally {
        if (a.state === 'running') await a.stop()
        await b?.stop()
        await subscription.close()
      }
    },
  )

  it('the checker catches a relay that marks rows published before publishing them', async () => {
    const prefix = 'wrong'
    const queue = testQueue(t.db)
    const checker = new QueueChecker()
    const received: string[] = []
    const subscription = await queue.subscriber.subscribe(prefix, 'consumer', async (m) => {
      received.push(m.id)
    })
    try {
      await write(prefix, [checker])
      // The wrong relay: mark first, then publish; its process dies between the two steps of
      // its second round.
      let lostBatch: string[] = []
      for (let round = 1; ; round++) {
        const rows = await t.db.query<{
          id: number
          event_id: string
          aggregate_id: string
          topic: string
          payload: string
          headers: string
        }>(
          `SELECT id, event_id, aggregate_id, topic, payload, headers FROM breakwater_outbox
           WHERE published_at IS NULL AND topic = $1 ORDER BY id LIMIT ${batchSize}`,
          [prefix],
        )
        if (rows.length === 0) break
        await t.db.execute(
          `UPDATE breakwater_outbox SET published_at = $1 WHERE id IN (${rows.map((r) => r.id).join(', ')})`,
          [Date.now()],
        )
        if (round === 2) {
          lostBatch = rows.map((r) => r.event_id)
          break // killed here
        }
        const messages: OutgoingMessage[] = rows.map((r) => ({
          id: r.event_id,
          topic: r.topic,
          key: r.aggregate_id,
          payload: r.payload,
          headers: JSON.parse(r.headers) as Record<string, string>,
        }))
        await queue.publisher.publish(messages)
      }
      // A correct relay takes over and publishes whatever is still unpublished.
      const b = relay(t.db, testPublisher(queue.publisher))
      await b.start()
      await until(async () => (await pendingCount(t.db)) === 0, 'the takeover relay')
      await until(() => new Set(received).size === total - batchSize, 'the deliveries')
      await b.stop()
      for (const id of received) checker.deliver(id)
      const verdict = checker.check()
      expect(verdict.valid).toBe(false)
      expect([...verdict.lost].sort()).toEqual([...lostBatch].sort())
      expect(verdict.lost).toHaveLength(batchSize)
      expect(verdict.unexpected).toEqual([])
    } finally {
      await subscription.close()
    }
  })
})

describe('queue checker', () => {
  it('reports lost, unexpected, duplicated, recovered and order violations', () => {
    const checker = new QueueChecker()
    checker.enqueue('a1', 'a', 'ok')
    checker.enqueue('a2', 'a', 'ok')
    checker.enqueue('a3', 'a', 'ok')
    checker.enqueue('b1', 'b', 'failed')
    checker.enqueue('c1', 'c', 'unknown')
    checker.enqueue('d1', 'd', 'unknown')
    checker.invoke('e1', 'e') // never completed: unknown
    checker.deliver('a2')
    checker.deliver('a1') // a1 first arrives after a2: order violation
    checker.deliver('a2') // duplicate, not a new violation
    checker.deliver('b1') // rolled back, yet delivered
    checker.deliver('c1') // unknown outcome, delivered: recovered
    checker.deliver('zz') // never enqueued
    checker.deliver('e1')
    const verdict = checker.check()
    expect(verdict.lost).toEqual(['a3'])
    expect([...verdict.unexpected].sort()).toEqual(['b1', 'zz'])
    expect([...verdict.duplicated]).toEqual([['a2', 2]])
    expect([...verdict.recovered].sort()).toEqual(['c1', 'e1'])
    expect(verdict.orderViolations).toEqual([{ key: 'a', id: 'a1', overtakenBy: 'a2' }])
    expect(verdict).toMatchObject({ attempted: 7, committed: 3, unknown: 3, deliveries: 7 })
    expect(verdict.valid).toBe(false)
  })

  it('accepts a clean at-least-once history with redeliveries', () => {
    const checker = new QueueChecker()
    for (const id of ['a1', 'a2', 'b1']) checker.enqueue(id, id[0]!, 'ok')
    for (const id of ['a1', 'b1', 'a1', 'a2', 'b1']) checker.deliver(id)
    const verdict = checker.check()
    expect(verdict.valid).toBe(true)
    expect(verdict.duplicated.size).toBe(2)
  })
})
