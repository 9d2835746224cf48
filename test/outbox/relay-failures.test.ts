// The relay when things go wrong, with time on a ManualClock: a broker outage (events pile up,
// the breaker opens, lag rises, the relay recovers by itself and lag falls), a poison event
// (dead-lettered without blocking other aggregates, redriven later), and retention.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BrokerError } from '../../src/brokers/errors.js'
import { BreakwaterError } from '../../src/core/errors.js'
import {
  createOutbox,
  createRelay,
  listDead,
  type Outbox,
  outboxStats,
  pruneOutbox,
  type RelayEvent,
  redrive,
} from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { QueueChecker } from '../support/queue-checker.js'
import { StallableDriver } from '../support/stall.js'
import {
  brokerDown,
  type Collector,
  collect,
  count,
  dbTargets,
  delay,
  type OutboxDb,
  pendingCount,
  testPublisher,
  testQueue,
  until,
} from './support.js'

const T0 = 1_700_000_000_000

/** Moves a ManualClock forward in steps, letting real I/O run between steps. */
async function advanceUntil(
  clock: ManualClock,
  check: () => boolean | Promise<boolean>,
  what: string,
  stepMs = 50,
  each?: () => void | Promise<void>,
): Promise<void> {
  const deadline = Date.now() + 30_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await clock.advance(stepMs)
    await each?.()
    await delay(2)
  }
}

async function enqueueAll(
  db: OutboxDb['db'],
  outbox: Outbox,
  ids: string[],
  checker?: QueueChecker,
) {
  for (const id of ids) {
    const aggregateId = id.replace(/-\d+$/, '')
    checker?.invoke(id, aggregateId)
    await db.transaction((tx) =>
      outbox.enqueue(tx, {
        id,
        aggregateType: 'thing',
        aggregateId,
        type: 'changed',
        payload: { id },
      }),
    )
    checker?.complete(id, 'ok')
  }
}

/**
 * The real driver, except that the first run of one statement waits at a gate until
 * `release()`; with `loseReply` it then commits on the real database and the caller is told it
 * failed (as when the connection drops after COMMIT was sent).
 */
class HeldStatement extends StallableDriver {
  /** Runs of the statement, the held one included. */
  runs = 0
  readonly #sql: string
  readonly #loseReply: boolean
  readonly #held = gate()
  readonly #arrived = gate()
  readonly #done = gate()

  constructor(inner: SqlDriver, sql: string, options: { loseReply?: boolean } = {}) {
    super(inner)
    this.#sql = sql
    this.#loseReply = options.loseReply ?? false
  }

  /** Resolves once the held run arrived (and waits). */
  get arrived(): Promise<void> {
    return this.#arrived.promise
  }

  /** Resolves once the held run has run on the database. */
  get done(): Promise<void> {
    return this.#done.promise
  }

  release(): void {
    this.#held.open()
  }

  override query<R = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<R[]> {
    return this.#run(sql, () => super.query<R>(sql, params))
  }

  override execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    return this.#run(sql, () => super.execute(sql, params))
  }

  async #run<T>(sql: string, run: () => Promise<T>): Promise<T> {
    if (sql !== this.#sql) return run()
    if (++this.runs > 1) return run()
    this.#arrived.open()
    await this.#held.promise
    const result = await run()
    this.#done.open()
    if (this.#loseReply) throw new Error('connection terminated after COMMIT was sent')
    return result
  }
}

/**
 * The real driver, counting the runs of one statement; at the first run it queues a task
 * (setImmediate) and records how many runs had started when that task ran.
 */
class YieldWatch extends StallableDriver {
  runs = 0
  taskRanBeforeRun: number | undefined
  readonly #sql: string

  constructor(inner: SqlDriver, sql: string) {
    super(inner)
    this.#sql = sql
  }

  override execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    if (sql === this.#sql && ++this.runs === 1) {
      setImmediate(() => {
        this.taskRanBeforeRun = this.runs
      })
    }
    return super.execute(sql, params)
  }
}

function publishedIds(collector: Collector, prefix: string): string[] {
  return collector.received.map((r) => r.id).filter((id) => id.startsWith(prefix))
}

describe.each(dbTargets)('relay failures on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('relay_failures')
  })
  afterAll(async () => {
    await t?.close()
  })

  async function setup(clock: ManualClock, extra: Partial<Parameters<typeof createRelay>[0]> = {}) {
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    const relay = createRelay({
      db: t.db,
      publisher,
      clock,
      pollIntervalMs: 10,
      maxPollIntervalMs: 100,
      retryBackoff: { baseDelayMs: 100, maxDelayMs: 1_000, jitter: 'none' },
      circuitBreaker: { window: { kind: 'consecutive', failures: 3 }, cooldownMs: 5_000 },
      retention: false,
      ...extra,
    })
    const events: RelayEvent[] = []
    relay.events.on((e) => events.push(e))
    return { queue, publisher, relay, events }
  }

  /**
   * `rows` events already published (due for pruning), and a relay pruning them in batches of 2
   * every 5 s through `wrap` around the database, which is given the prune statement.
   */
  async function retentionRelay<D extends SqlDriver>(
    clock: ManualClock,
    prefix: string,
    rows: number,
    wrap: (inner: SqlDriver, prune: string) => D,
  ) {
    const outbox = createOutbox({ clock, topic: `${prefix}-retention` })
    await t.db.execute('DELETE FROM breakwater_outbox')
    await enqueueAll(
      t.db,
      outbox,
      Array.from({ length: rows }, (_, i) => `${prefix}-${i}-0`),
    )
    await t.db.execute('UPDATE breakwater_outbox SET published_at = $1', [clock.now()])
    const db = wrap(t.db, outboxStatements[t.db.dialect].prune)
    const { relay, events } = await setup(clock, {
      db,
      retention: { olderThanMs: 1_000, everyMs: 5_000, batchSize: 2 },
    })
    return { db, relay, events }
  }

  it('marks the rounds confirmed while a failed mark was under way, without waiting for more traffic', async () => {
    const clock = new ManualClock(T0 + 6_000_000)
    const outbox = createOutbox({ clock, topic: 'lost-mark' })
    const db = new HeldStatement(t.db, outboxStatements[t.db.dialect].markPublished, {
      loseReply: true,
    })
    const { publisher, relay, events } = await setup(clock, { db, batchSize: 4 })
    try {
      await relay.start()
      // Round 1 (lm-a-0) is confirmed; its mark is held.
      await enqueueAll(t.db, outbox, ['lm-a-0'])
      relay.wake()
      await advanceUntil(clock, () => publisher.confirmed.includes('lm-a-0'), 'round 1', 10)
      await db.arrived
      // Round 2 (lm-b-0) is confirmed while that mark is under way: it waits for the next one.
      await enqueueAll(t.db, outbox, ['lm-b-0'])
      relay.wake()
      await advanceUntil(clock, () => publisher.confirmed.includes('lm-b-0'), 'round 2', 10)
      // The held mark commits, and its reply is lost.
      db.release()
      await db.done
      await advanceUntil(
        clock,
        () => events.some((e) => e.type === 'error' && e.phase === 'mark'),
        'the mark failure',
        10,
      )
      // No more traffic comes. Round 2 must still be marked, not left pending for good.
      await advanceUntil(clock, async () => (await pendingCount(t.db)) === 0, 'round 2 marked', 50)
      expect(publisher.confirmed.filter((id) => id.startsWith('lm-'))).toEqual(['lm-a-0', 'lm-b-0'])
    } finally {
      db.release()
      await relay.stop()
    }
  })

  it('counts each round in batches and in its own published event, also when one mark covers several', async () => {
    const clock = new ManualClock(T0 + 8_000_000)
    const outbox = createOutbox({ clock, topic: 'rounds' })
    const db = new HeldStatement(t.db, outboxStatements[t.db.dialect].markPublished)
    const { publisher, relay, events } = await setup(clock, { db, batchSize: 8 })
    try {
      await relay.start()
      // Round 1's mark is held; rounds 2 and 3 are confirmed meanwhile and share the next one.
      for (const id of ['rd-a-0', 'rd-b-0', 'rd-c-0']) {
        await enqueueAll(t.db, outbox, [id])
        relay.wake()
        await advanceUntil(clock, () => publisher.confirmed.includes(id), id, 10)
        if (id === 'rd-a-0') await db.arrived
      }
      db.release()
      await advanceUntil(clock, async () => (await pendingCount(t.db)) === 0, 'the marks', 10)
      await advanceUntil(clock, () => relay.metrics().published === 3, 'the count', 10)
      expect(db.runs).toBe(2)
      const published = events.filter((e) => e.type === 'published')
      expect(published.map((e) => e.count)).toEqual([1, 1, 1])
      expect(relay.metrics()).toMatchObject({ published: 3, batches: 3 })
    } finally {
      db.release()
      await relay.stop()
    }
  })

  it('reports no published event and no batch for a mark its lost lease refused', async () => {
    const clock = new ManualClock(T0 + 9_000_000)
    const outbox = createOutbox({ clock, topic: 'refused' })
    const held = gate()
    let holding = true
    const { publisher, relay, events } = await setup(clock, {
      faults: async (point) => {
        if (point === 'after-publish' && holding) await held.promise
      },
    })
    try {
      await relay.start()
      await enqueueAll(t.db, outbox, ['rf-a-0'])
      relay.wake()
      await advanceUntil(clock, () => publisher.confirmed.includes('rf-a-0'), 'the publish', 10)
      // Another relay takes every partition over before the mark.
      await t.db.execute(
        "UPDATE breakwater_outbox_partitions SET owner = 'thief', token = token + 1, lease_expires_at = $1",
        [clock.now() + 3_600_000],
      )
      holding = false
      held.open()
      await advanceUntil(clock, () => relay.partitions().length === 0, 'the lost lease', 10)
      // The mark in hand has run (stop settles it) and was refused.
      await relay.stop()
      expect(await pendingCount(t.db)).toBe(1)
      expect(events.filter((e) => e.type === 'published')).toEqual([])
      expect(relay.metrics()).toMatchObject({ published: 0, batches: 0 })
    } finally {
      held.open()
      await relay.stop()
      await t.db.execute(
        'UPDATE breakwater_outbox_partitions SET owner = NULL, lease_expires_at = NULL',
      )
      await t.db.execute("DELETE FROM breakwater_outbox WHERE event_id = 'rf-a-0'")
    }
  })

  it('rides out a broker outage: breaker opens, lag rises, recovers by itself, lag falls', async () => {
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'outage' })
    const { queue, publisher, relay, events } = await setup(clock)
    const collector = await collect(queue, 'outage', 'outage')
    const checker = new QueueChecker()
    let down = true
    publisher.before = () => {
      if (down) throw brokerDown()
    }
    try {
      await relay.start()
      const first = Array.from({ length: 10 }, (_, i) => `out-${i % 2}-${Math.floor(i / 2)}`)
      await enqueueAll(t.db, outbox, first, checker)
      await advanceUntil(clock, () => relay.breaker.state === 'open', 'the breaker to open')
      const callsWhenOpened = publisher.calls
      // While the broker stays down: events accumulate, the lag grows, the breaker only lets
      // a probe through once per cooldown.
      const lags: number[] = []
      await advanceUntil(
        clock,
        () => clock.now() - T0 >= 30_000,
        '30 s of outage',
        250,
        () => void lags.push(relay.metrics().lagMs),
      )
      const more = Array.from({ length: 10 }, (_, i) => `out-${2 + (i % 2)}-${Math.floor(i / 2)}`)
      await enqueueAll(t.db, outbox, more, checker)
      expect(await pendingCount(t.db)).toBe(20)
      expect(Math.max(...lags)).toBeGreaterThan(20_000)
      expect(publisher.calls - callsWhenOpened).toBeLessThanOrEqual(8)
      expect(publisher.confirmed).toEqual([])
      // An outage is not the events' fault: nothing charged, nothing dead.
      expect(
        await count(t.db, 'breakwater_outbox', 'WHERE attempts > 0 OR dead_at IS NOT NULL'),
      ).toBe(0)

      down = false
      await advanceUntil(
        clock,
        async () => (await pendingCount(t.db)) === 0,
        'the backlog to drain',
      )
      await advanceUntil(clock, () => relay.metrics().lagMs === 0, 'the lag to fall', 10)
      expect(relay.breaker.state).toBe('closed')
      await advanceUntil(clock, () => publishedIds(collector, 'out-').length === 20, 'delivery', 10)
      for (const id of publishedIds(collector, 'out-')) checker.deliver(id)
      expect(checker.check().valid).toBe(true)
      expect(relay.metrics()).toMatchObject({
        published: 20,
        deadLettered: 0,
        breakerState: 'closed',
      })
      expect(relay.metrics().publishFailures).toBeGreaterThanOrEqual(3)
      expect(events.some((e) => e.type === 'publishFailed')).toBe(true)
    } finally {
      await relay.stop()
      await collector.close()
    }
  })

  it('dead-letters an event whose error text holds a NUL (which PostgreSQL text cannot store)', async () => {
    const clock = new ManualClock(T0 + 1_000_000)
    const prefix = 'nul-error'
    const outbox = createOutbox({ clock, topic: prefix })
    const { publisher, relay, events } = await setup(clock, { maxAttempts: 1 })
    publisher.before = (messages) => {
      if (messages.some((m) => m.id === `${prefix}-0`))
        throw new BreakwaterError('BROKER_REJECTED', 'bad byte \u0000 in subject')
    }
    try {
      await relay.start()
      await enqueueAll(t.db, outbox, [`${prefix}-0`])
      await advanceUntil(
        clock,
        async () => (await listDead(t.db)).some((d) => d.eventId === `${prefix}-0`),
        'the event to be dead-lettered',
      )
      const dead = (await listDead(t.db)).find((d) => d.eventId === `${prefix}-0`)
      expect(dead?.lastError).toContain('bad byte \\0 in subject')
      expect(events.filter((e) => e.type === 'error')).toEqual([])
    } finally {
      await relay.stop()
      await t.db.execute('DELETE FROM breakwater_outbox WHERE event_id = $1', [`${prefix}-0`])
    }
  })

  it.each(['rejected', 'unclear'] as const)(
    'dead-letters a poison event (%s error) without blocking other aggregates; redrive publishes it',
    async (kind) => {
      const clock = new ManualClock(T0 + 1_000_000)
      const prefix = `poison-${kind}`
      const outbox = createOutbox({ clock, topic: prefix })
      const { queue, publisher, relay, events } = await setup(clock, { maxAttempts: 3 })
      const collector = await collect(queue, prefix, 'poison')
      const checker = new QueueChecker()
      const poisoned = new Set([`${prefix}-p-0`])
      publisher.before = (messages) => {
        if (!messages.some((m) => poisoned.has(m.id))) return
        throw kind === 'rejected'
          ? new BreakwaterError('BROKER_REJECTED', 'message too large')
          : new Error('boom')
      }
      try {
        await relay.start()
        const others = 4
        const ids = ['p', 'a', 'b'].flatMap((agg) =>
          Array.from({ length: others }, (_, n) => `${prefix}-${agg}-${n}`),
        )
        await enqueueAll(t.db, outbox, ids, checker)
        // An unclear error is charged to the event only when other events get through around
        // it, so in that case keep a trickle of other traffic flowing.
        let trickle = 0
        const keepTraffic = async () => {
          if (kind === 'unclear')
            await enqueueAll(t.db, outbox, [`${prefix}-c-${trickle++}`], checker)
        }
        await advanceUntil(
          clock,
          async () => (await listDead(t.db)).some((d) => d.eventId === `${prefix}-p-0`),
          'the poison event to be dead-lettered',
          50,
          keepTraffic,
        )
        await advanceUntil(
          clock,
          () =>
            ['a', 'b'].every(
              (agg) => publishedIds(collector, `${prefix}-${agg}`).length === others,
            ),
          'the other aggregates',
        )
        const [dead] = await listDead(t.db)
        expect(dead).toMatchObject({
          eventId: `${prefix}-p-0`,
          aggregateId: `${prefix}-p`,
          attempts: 3,
        })
        expect(dead!.lastError).toContain(kind === 'rejected' ? 'message too large' : 'boom')
        expect(relay.metrics().deadLettered).toBe(1)
        expect(events.filter((e) => e.type === 'retryScheduled')).toHaveLength(2)
        expect(events.find((e) => e.type === 'deadLettered')).toMatchObject({
          eventId: `${prefix}-p-0`,
          attempts: 3,
        })
        // The rest of the poisoned aggregate waits behind it.
        await clock.advance(5_000)
        await delay(50)
        expect(publishedIds(collector, `${prefix}-p`)).toEqual([])
        expect(await outboxStats(t.db, { clock })).toMatchObject({ dead: 1 })
        expect(
          await count(
            t.db,
            'breakwater_outbox',
            `WHERE aggregate_id = '${prefix}-p' AND published_at IS NULL`,
          ),
        ).toBe(4)

        poisoned.clear()
        expect(await redrive(t.db, [`${prefix}-p-0`, 'unknown-id'])).toBe(1)
        expect(await redrive(t.db, 'all')).toBe(0)
        await advanceUntil(
          clock,
          () => publishedIds(collector, `${prefix}-p`).length === 4,
          'the redriven aggregate',
        )
        const everything = ids.length + trickle
        await advanceUntil(
          clock,
          () => new Set(publishedIds(collector, prefix)).size === everything,
          'every event',
        )
        for (const id of publishedIds(collector, prefix)) checker.deliver(id)
        const verdict = checker.check()
        expect(verdict.lost).toEqual([])
        expect(verdict.valid).toBe(true)
        expect(publishedIds(collector, `${prefix}-p`)).toEqual(
          [0, 1, 2, 3].map((n) => `${prefix}-p-${n}`),
        )
        expect(await listDead(t.db)).toEqual([])
      } finally {
        await relay.stop()
        await collector.close()
      }
    },
  )

  it("treats an unclear failure with no other traffic as an outage, never as the event's fault", async () => {
    const clock = new ManualClock(T0 + 2_000_000)
    const outbox = createOutbox({ clock, topic: 'lonely' })
    const { publisher, relay } = await setup(clock, { maxAttempts: 2 })
    publisher.before = () => {
      throw new Error('boom')
    }
    try {
      await relay.start()
      await enqueueAll(t.db, outbox, ['lonely-x-0'])
      await advanceUntil(clock, () => publisher.calls >= 6, 'several failed calls', 500)
      expect(await listDead(t.db)).toEqual([])
      expect(
        await count(t.db, 'breakwater_outbox', "WHERE event_id = 'lonely-x-0' AND attempts = 0"),
      ).toBe(1)
      expect(relay.breaker.state).not.toBe('closed')
    } finally {
      await relay.stop()
      await t.db.execute("DELETE FROM breakwater_outbox WHERE event_id = 'lonely-x-0'")
    }
  })

  // BROKER_UNROUTABLE is the broker answering that nothing takes the topic (no queue bound):
  // evidence that it is up. A lone such event used to count against the breaker (open every
  // few seconds, holding back every other event for the cooldown) and its outage pause was not
  // cut short by new events, so it was never charged while traffic was sparse.
  it('keeps an event nothing takes (BROKER_UNROUTABLE) from holding back the others, and dead-letters it', async () => {
    const clock = new ManualClock(T0 + 2_500_000)
    const poison = createOutbox({ clock, topic: 'nobody-bound' })
    const healthy = createOutbox({ clock, topic: 'bound' })
    const { publisher, relay } = await setup(clock, { maxAttempts: 3 })
    publisher.before = (messages) => {
      if (messages.some((m) => m.topic === 'nobody-bound'))
        throw new BrokerError('BROKER_UNROUTABLE', 'rabbitmq', 'no queue bound to nobody-bound')
    }
    try {
      await relay.start()
      await enqueueAll(t.db, poison, ['unroutable-p-0'])
      await advanceUntil(clock, () => publisher.calls >= 6, 'several failed calls', 500)
      // Alone, it is not charged (it may be the broker's), but the breaker stays closed.
      expect(relay.breaker.state).toBe('closed')
      expect(await listDead(t.db)).toEqual([])
      // A new event goes out when it is enqueued, without waiting for the clock (the relay is
      // woken as a notification would); each one lets the poison's next failure be charged.
      const isDead = async () => (await listDead(t.db)).length > 0
      for (let i = 0; !(await isDead()); i++) {
        expect(i).toBeLessThan(10)
        const id = `unroutable-h${i}-0`
        await enqueueAll(t.db, healthy, [id])
        // Woken again at each look, not once: on PostgreSQL a transaction anywhere on the
        // server (another test's, in another database) can hold the row back past the horizon
        // for a moment, and the relay's next look at it is on the clock this test holds still.
        // A relay stuck in a backoff pause ignores every wake, so this still catches that.
        await until(() => {
          relay.wake()
          return publisher.confirmed.includes(id)
        }, `${id} published`)
        const calls = publisher.calls
        await advanceUntil(
          clock,
          async () => publisher.calls > calls || (await isDead()),
          'the poison tried again',
          100,
        )
      }
      expect((await listDead(t.db)).map((d) => d.eventId)).toEqual(['unroutable-p-0'])
      expect(relay.breaker.state).toBe('closed')
    } finally {
      await relay.stop()
      await t.db.execute("DELETE FROM breakwater_outbox WHERE event_id LIKE 'unroutable-%'")
    }
  })

  it("treats a misconfigured broker (refused login) as an outage, never as the event's fault", async () => {
    const clock = new ManualClock(T0 + 3_000_000)
    const outbox = createOutbox({ clock, topic: 'refused' })
    const { publisher, relay } = await setup(clock, { maxAttempts: 2 })
    publisher.before = () => {
      throw new BrokerError('BROKER_MISCONFIGURED', 'rabbitmq', 'login refused for user "app"')
    }
    try {
      await relay.start()
      await enqueueAll(t.db, outbox, ['refused-x-0'])
      await advanceUntil(clock, () => relay.breaker.state === 'open', 'the breaker to open', 500)
      await advanceUntil(clock, () => publisher.calls >= 6, 'several failed calls', 500)
      expect(await listDead(t.db)).toEqual([])
      expect(
        await count(t.db, 'breakwater_outbox', "WHERE event_id = 'refused-x-0' AND attempts = 0"),
      ).toBe(1)
    } finally {
      await relay.stop()
      await t.db.execute("DELETE FROM breakwater_outbox WHERE event_id = 'refused-x-0'")
    }
  })

  it('prunes published rows past the age in bounded batches, or archives them', async () => {
    const clock = new ManualClock(T0 + 3_000_000)
    const outbox = createOutbox({ clock, topic: 'retention' })
    await t.db.execute('DELETE FROM breakwater_outbox')
    const ids = Array.from({ length: 40 }, (_, i) => `ret-${i}`)
    await t.db.transaction((tx) =>
      outbox.enqueue(
        tx,
        ids.map((id) => ({ id, aggregateType: 'x', aggregateId: id, type: 't', payload: {} })),
      ),
    )
    const old = clock.now()
    const setPublished = (from: number, to: number, at: number) =>
      t.db.execute(
        `UPDATE breakwater_outbox SET published_at = $1 WHERE event_id IN (${ids
          .slice(from, to)
          .map((id) => `'${id}'`)
          .join(', ')})`,
        [at],
      )
    await setPublished(0, 30, old) // old enough
    await setPublished(30, 35, old + 9_000) // too young
    await t.db.execute(
      "UPDATE breakwater_outbox SET dead_at = $1 WHERE event_id IN ('ret-35', 'ret-36')",
      [old],
    )
    await clock.advance(10_000)
    expect(
      await pruneOutbox(t.db, { olderThanMs: 5_000, batchSize: 10, maxBatches: 1, clock }),
    ).toBe(10)
    expect(await pruneOutbox(t.db, { olderThanMs: 5_000, batchSize: 7, clock })).toBe(20)
    expect(await count(t.db, 'breakwater_outbox')).toBe(10)
    // Young, unpublished and dead rows are untouched.
    expect(await count(t.db, 'breakwater_outbox', 'WHERE published_at IS NOT NULL')).toBe(5)
    expect(await pendingCount(t.db)).toBe(3)
    await clock.advance(10_000)
    expect(
      await pruneOutbox(t.db, { olderThanMs: 5_000, batchSize: 2, archive: true, clock }),
    ).toBe(5)
    const archived = await t.db.query<{
      event_id: string
      archived_at: number
      published_at: number
    }>('SELECT event_id, archived_at, published_at FROM breakwater_outbox_archive ORDER BY id')
    expect(archived.map((r) => r.event_id)).toEqual(ids.slice(30, 35))
    expect(
      archived.every((r) => r.archived_at === clock.now() && r.published_at === old + 9_000),
    ).toBe(true)
    expect(await count(t.db, 'breakwater_outbox')).toBe(5)
  })

  if (target.dialect === 'postgres') {
    it('prunes while a writer holds an open transaction on the outbox (no table lock)', async () => {
      const clock = new ManualClock(T0 + 4_000_000)
      const outbox = createOutbox({ clock })
      await t.db.transaction((tx) =>
        outbox.enqueue(tx, {
          id: 'lock-old',
          aggregateType: 'x',
          aggregateId: 'l',
          type: 't',
          payload: {},
        }),
      )
      await t.db.execute(
        "UPDATE breakwater_outbox SET published_at = $1 WHERE event_id = 'lock-old'",
        [clock.now()],
      )
      await clock.advance(60_000)
      const writer = await holdOpenTransaction(t.db, (tx) =>
        outbox.enqueue(tx, { aggregateType: 'x', aggregateId: 'w', type: 't', payload: {} }),
      )
      const pruned = await Promise.race([
        pruneOutbox(t.db, { olderThanMs: 1_000, clock }),
        delay(3_000).then(() => 'blocked'),
      ])
      await writer.commit()
      expect(pruned).toBe(1)
    })
  }

  it('stop() waits for a retention run under way, and no batch of it starts afterwards', async () => {
    const clock = new ManualClock(T0 + 7_000_000)
    const { db, relay, events } = await retentionRelay(
      clock,
      'ps',
      10,
      (inner, prune) => new HeldStatement(inner, prune),
    )
    try {
      await relay.start()
      await clock.advance(5_000)
      // The first batch of the run is held at the database.
      await db.arrived
      const stopping = relay.stop()
      db.release()
      await stopping
      const types = events.map((e) => e.type)
      // The run ended before the relay reported itself stopped (the caller may close the
      // database right after), and it stopped after the batch in hand.
      expect(types.indexOf('pruned')).toBeGreaterThanOrEqual(0)
      expect(types.indexOf('pruned')).toBeLessThan(types.indexOf('stopped'))
      expect(types.filter((type) => type === 'error')).toEqual([])
      expect(db.runs).toBe(1)
      expect(await count(t.db, 'breakwater_outbox')).toBe(8)
    } finally {
      db.release()
      await relay.stop()
    }
  })

  it('a retention run goes on while batches come back full, yielding between them', async () => {
    const clock = new ManualClock(T0 + 8_000_000)
    // More than the ten batches a run used to stop at: 15 full batches of 2, then a short one.
    const { db, relay, events } = await retentionRelay(
      clock,
      'pa',
      30,
      (inner, prune) => new YieldWatch(inner, prune),
    )
    try {
      await relay.start()
      // One run, and only one: the clock is not moved again.
      await clock.advance(5_000)
      await until(() => events.some((e) => e.type === 'pruned'), 'the run to report')
      expect(events.filter((e) => e.type === 'pruned')).toEqual([{ type: 'pruned', count: 30 }])
      expect(await count(t.db, 'breakwater_outbox')).toBe(0)
      expect(db.runs).toBe(16)
      // The event loop ran between batches (a task queued at the first batch ran before the
      // last one), so a run over a large backlog never holds the relay up; on SQLite, whose
      // statements resolve without I/O, nothing else would run until the whole run ended.
      expect(db.taskRanBeforeRun).toBeGreaterThan(0)
      expect(db.taskRanBeforeRun).toBeLessThan(db.runs)
    } finally {
      await relay.stop()
    }
  })

  it('a relay prunes by itself with its retention option', async () => {
    const clock = new ManualClock(T0 + 5_000_000)
    const outbox = createOutbox({ clock, topic: 'self-prune' })
    await t.db.execute('DELETE FROM breakwater_outbox')
    const { relay, events } = await setup(clock, {
      retention: { olderThanMs: 60_000, everyMs: 500, batchSize: 2 },
    })
    try {
      await relay.start()
      await enqueueAll(t.db, outbox, ['sp-a-0', 'sp-a-1', 'sp-b-0'])
      await advanceUntil(clock, async () => (await pendingCount(t.db)) === 0, 'publishing', 10)
      expect(await count(t.db, 'breakwater_outbox')).toBe(3)
      const prunedSoFar = () => events.reduce((n, e) => n + (e.type === 'pruned' ? e.count : 0), 0)
      // The table can read empty before the run that emptied it has reported: a run goes on
      // deleting until a batch comes back short, and only then emits its total. So the wait
      // is for the report, and the table is checked after it.
      await advanceUntil(clock, () => prunedSoFar() >= 3, 'pruning', 1_000)
      expect(await count(t.db, 'breakwater_outbox')).toBe(0)
      expect(prunedSoFar()).toBe(3)
    } finally {
      await relay.stop()
    }
  })
})
