// The relay on real SQLite and PostgreSQL, publishing through the real SQL queue: everything
// arrives in per-aggregate order, several relays share the partitions without publishing an
// event twice, stop() finishes the batch in hand, wake-ups, fault points.
import { execFileSync } from 'node:child_process'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  crashAtFromEnv,
  createOutbox,
  createRelay,
  OUTBOX_PARTITIONS,
  type Outbox,
  type Relay,
  type RelayFaultPoint,
  relayFaultPoints,
} from '../../src/outbox/index.js'
import { splitIntoWaves } from '../../src/outbox/relay.js'
import type { SqlDriver, SqlExecutor } from '../../src/stores/index.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { QueueChecker } from '../support/queue-checker.js'
import {
  collect,
  count,
  dbTargets,
  delay,
  type OutboxDb,
  pendingCount,
  repeated,
  type TestPublisher,
  testPublisher,
  testQueue,
  until,
} from './support.js'

/**
 * Writes `perAggregate` events for each aggregate, one transaction each, aggregates in parallel;
 * with `oneTransaction`, all of them in a single transaction (so they become readable at once).
 */
async function writeEvents(
  db: SqlDriver,
  outbox: Outbox,
  options: {
    prefix: string
    aggregates: number
    perAggregate: number
    checker?: QueueChecker
    firstAggregate?: number
    oneTransaction?: boolean
  },
): Promise<string[]> {
  const ids: string[] = []
  const enqueue = (tx: SqlExecutor, a: number, n: number) =>
    outbox.enqueue(tx, {
      id: `${options.prefix}-${a}-${n}`,
      aggregateType: 'order',
      aggregateId: `${options.prefix}-agg-${a}`,
      type: n === 0 ? 'order-placed' : 'line-added',
      payload: { n },
      correlationId: `flow-${a}`,
    })
  const first = options.firstAggregate ?? 0
  if (options.oneTransaction === true) {
    await db.transaction(async (tx) => {
      for (let n = 0; n < options.perAggregate; n++) {
        for (let a = first; a < first + options.aggregates; a++) {
          options.checker?.invoke(`${options.prefix}-${a}-${n}`, `${options.prefix}-agg-${a}`)
          await enqueue(tx, a, n)
          ids.push(`${options.prefix}-${a}-${n}`)
        }
      }
    })
    for (const id of ids) options.checker?.complete(id, 'ok')
    return ids
  }
  await Promise.all(
    Array.from({ length: options.aggregates }, async (_, i) => {
      const a = i + first
      for (let n = 0; n < options.perAggregate; n++) {
        const id = `${options.prefix}-${a}-${n}`
        options.checker?.invoke(id, `${options.prefix}-agg-${a}`)
        await db.transaction((tx) => enqueue(tx, a, n))
        options.checker?.complete(id, 'ok')
        ids.push(id)
      }
    }),
  )
  return ids
}

describe('splitIntoWaves', () => {
  it('puts the n-th event of each aggregate in wave n, keeping id order within a wave', () => {
    const rows = ['a', 'b', 'a', 'c', 'a', 'b'].map((aggregate_id, id) => ({ id, aggregate_id }))
    expect(splitIntoWaves(rows).map((wave) => wave.map((r) => r.id))).toEqual([
      [0, 1, 3],
      [2, 5],
      [4],
    ])
    expect(splitIntoWaves([])).toEqual([])
  })
})

describe('relay options and fault hooks', () => {
  it('validates options at construction, naming the option', () => {
    const db = { dialect: 'sqlite', query: async () => [], execute: async () => ({ rowCount: 0 }) }
    const publisher = { publish: async () => {}, close: async () => {} }
    const build = (extra: object) => () =>
      createRelay({ db: db as never, publisher, ...extra } as never)
    expect(build({})).not.toThrow()
    expect(build({ leaseMs: 1000, publishTimeoutMs: 600 })).toThrow(/relay\.publishTimeoutMs/)
    expect(build({ batchSize: 0 })).toThrow(InvalidOptionError)
    expect(build({ ordering: 'random' })).toThrow(/relay\.ordering/)
    expect(build({ maxPollIntervalMs: 1, pollIntervalMs: 5 })).toThrow(/relay\.maxPollIntervalMs/)
    expect(build({ publisher: {} })).toThrow(/relay\.publisher/)
    expect(build({ retention: { olderThanMs: -1 } })).toThrow(/relay\.retention\.olderThanMs/)
  })

  it('crashAtFromEnv reads BREAKWATER_CRASH_AT and kills the process at the n-th time', () => {
    expect(crashAtFromEnv(undefined)).toBeUndefined()
    expect(crashAtFromEnv('saga:after-step')).toBeUndefined()
    expect(() => crashAtFromEnv('relay:after-lunch')).toThrow(/BREAKWATER_CRASH_AT/)
    expect(() => crashAtFromEnv('relay:after-mark:0')).toThrow(/BREAKWATER_CRASH_AT/)
    const script = `
      import { crashAtFromEnv } from './src/outbox/faults.ts'
      const faults = crashAtFromEnv(process.env.BREAKWATER_CRASH_AT)
      faults('after-publish'); faults('after-mark'); process.stdout.write('alive;')
      faults('after-mark'); process.stdout.write('not reached')`
    let error: { signal?: string; stdout?: string } = {}
    try {
      execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: new URL('../..', import.meta.url),
        env: { ...process.env, BREAKWATER_CRASH_AT: 'relay:after-mark:2' },
        encoding: 'utf8',
        stdio: 'pipe',
      })
    } catch (e) {
      error = e as typeof error
    }
    expect(error.signal).toBe('SIGKILL')
    expect(error.stdout).toBe('alive;')
  })
})

describe.each(dbTargets)('relay on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox({ topic: 'orders' })
  const relays: Relay[] = []

  function relay(publisher: TestPublisher, extra: Partial<Parameters<typeof createRelay>[0]> = {}) {
    const r = createRelay({
      db: t.db,
      publisher,
      pollIntervalMs: 2,
      maxPollIntervalMs: 20,
      leaseMs: 1_500,
      batchSize: 50,
      ...extra,
    })
    relays.push(r)
    return r
  }

  beforeAll(async () => {
    t = await target.open('relay')
  })
  // Every relay a test started stops when it ends, passed or failed, so that a failure does
  // not leave a relay holding the partitions the next tests need.
  afterEach(async () => {
    for (const r of relays.splice(0)) await r.stop()
  })
  afterAll(async () => {
    await t?.close()
  })

  it('publishes every event through the SQL queue in per-aggregate order, each once', async () => {
    const queue = testQueue(t.db)
    const collector = await collect(queue, 'orders', 'single')
    const publisher = testPublisher(queue.publisher)
    const checker = new QueueChecker()
    const points: RelayFaultPoint[] = []
    const r = relay(publisher, { faults: (point) => void points.push(point) })
    await r.start()
    expect(r.partitions()).toHaveLength(OUTBOX_PARTITIONS)
    await writeEvents(t.db, outbox, { prefix: 'one', aggregates: 12, perAggregate: 30, checker })
    await until(() => collector.ids().size === 360, 'all 360 events at the consumer')
    for (const received of collector.received) checker.deliver(received.id)
    const verdict = checker.check()
    expect(verdict.valid).toBe(true)
    expect(verdict.lost).toEqual([])
    expect(verdict.duplicated.size).toBe(0)
    expect(repeated(publisher.confirmed)).toEqual([])
    expect(await pendingCount(t.db)).toBe(0)
    // The lag gauge is read at each read: the relay's next (empty) read brings it to 0.
    await until(() => r.metrics().lagMs === 0, 'the lag gauge to fall to 0')
    expect(r.metrics()).toMatchObject({ published: 360, deadLettered: 0, lagMs: 0 })
    const first = collector.received.find((m) => m.id === 'one-0-0')!
    expect(first).toMatchObject({ key: 'one-agg-0', type: 'order-placed', payload: { n: 0 } })
    // Each round passes claim, publish and hands its rows to the marker in order; the next
    // round's claim may run ahead of this round's publish, and marks run in the background,
    // one statement at a time. So, at every point of the run, no more publishes than
    // completed claims and no more marks than publishes, whatever the interleaving.
    expect(points[0]).toBe('before-claim')
    let claims = 0
    let publishes = 0
    let marks = 0
    for (const point of points) {
      if (point === 'after-claim') claims++
      if (point === 'after-publish') expect(++publishes).toBeLessThanOrEqual(claims)
      if (point === 'after-mark') expect(++marks).toBeLessThanOrEqual(publishes)
    }
    expect(new Set(points)).toEqual(new Set(relayFaultPoints))
    await r.stop()
    expect(r.state).toBe('stopped')
    expect(await count(t.db, 'breakwater_outbox_partitions', 'WHERE owner IS NOT NULL')).toBe(0)
    await collector.close()
  })

  it.each([2, 4])(
    '%i relays in parallel share the partitions, publish nothing twice and keep order',
    async (n) => {
      const queue = testQueue(t.db)
      const prefix = `par${n}`
      const collector = await collect(queue, 'orders', `parallel-${n}`)
      const checker = new QueueChecker()
      const publishers: TestPublisher[] = []
      const group: Relay[] = []
      for (let i = 0; i < n; i++) {
        // PostgreSQL relays get their own pools; SQLite relays in one process share the
        // connection (separate better-sqlite3 connections would block the thread on locks).
        const db = target.dialect === 'postgres' ? await t.another() : t.db
        const publisher = testPublisher(queue.publisher)
        publishers.push(publisher)
        group.push(relay(publisher, { db, leaseMs: 1_500, batchSize: 20 }))
      }
      // A publish that outlives its timeout is retried although the broker may have stored
      // it: the one legitimate source of a second copy. Counted, to tell it from a real bug.
      let timeouts = 0
      for (const r of group) {
        r.events.on((e) => {
          if (e.type === 'publishFailed' && (e.error as { code?: string }).code === 'TIMEOUT')
            timeouts++
        })
      }
      try {
        await Promise.all(group.map((r) => r.start()))
        const common = { prefix, aggregates: 10, perAggregate: 25, checker }
        // Half the events flow while the relays converge on their fair shares...
        const writing = writeEvents(t.db, outbox, common)
        await until(
          () => group.every((r) => r.partitions().length === OUTBOX_PARTITIONS / n),
          'a fair share each',
        )
        const owned = group.flatMap((r) => r.partitions())
        expect(new Set(owned).size).toBe(OUTBOX_PARTITIONS)
        await writing
        // ...and half once they have.
        await writeEvents(t.db, outbox, { ...common, firstAggregate: 10 })
        await until(
          () => [...collector.ids()].filter((id) => id.startsWith(prefix)).length === 500,
          'all 500 events',
        )
        for (const received of collector.received) {
          if (received.id.startsWith(prefix)) checker.deliver(received.id)
        }
        const verdict = checker.check()
        expect(verdict.lost).toEqual([])
        expect(verdict.orderViolations).toEqual([])
        expect(verdict.valid).toBe(true)
        // Across all relays, the broker confirmed each event exactly once.
        const confirmed = publishers
          .flatMap((p) => p.confirmed)
          .filter((id) => id.startsWith(prefix))
        expect(repeated(confirmed).length).toBeLessThanOrEqual(timeouts * 20)
        if (timeouts === 0) expect(confirmed).toHaveLength(500)
        expect(publishers.filter((p) => p.confirmed.length > 0).length).toBeGreaterThan(1)
      } finally {
        await Promise.all(group.map((r) => r.stop()))
        await collector.close()
      }
    },
  )

  it.each(['confirmed', 'batch'] as const)(
    "ordering '%s': a hot aggregate's events in waves, or in one call",
    async (ordering) => {
      const queue = testQueue(t.db)
      const publisher = testPublisher(queue.publisher)
      const prefix = `hot-${ordering}`
      // One transaction: on PostgreSQL the relay reads only rows older than every running
      // transaction in the cluster (other test files share it), so events written in separate
      // transactions could become readable in two parts, and 'batch' would rightly take two calls.
      await writeEvents(t.db, outbox, {
        prefix,
        aggregates: 3,
        perAggregate: 10,
        oneTransaction: true,
      })
      const r = relay(publisher, { ordering, batchSize: 100 })
      await r.start()
      await until(
        () => publisher.confirmed.filter((id) => id.startsWith(prefix)).length === 30,
        'all',
      )
      await r.stop()
      const calls = publisher.batches.filter((b) => b.some((m) => m.id.startsWith(prefix)))
      for (let a = 0; a < 3; a++) {
        const ids = calls.flat().filter((m) => m.key === `${prefix}-agg-${a}`)
        expect(ids.map((m) => m.id)).toEqual(
          Array.from({ length: 10 }, (_, n) => `${prefix}-${a}-${n}`),
        )
      }
      if (ordering === 'confirmed') {
        // Never two events of one aggregate in flight in the same call.
        for (const call of calls) expect(new Set(call.map((m) => m.key)).size).toBe(call.length)
        expect(calls.length).toBeGreaterThanOrEqual(10)
      } else {
        expect(calls).toHaveLength(1)
      }
    },
  )

  it('stop() finishes the batch in hand, releases its partitions, then publishes nothing', async () => {
    const queue = testQueue(t.db)
    const publisher = testPublisher(queue.publisher)
    let release = (): void => {}
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let entered = false
    publisher.before = async () => {
      entered = true
      await gate
    }
    // Written first, in one transaction, so that the first batch holds all five. (In five, on
    // PostgreSQL a transaction of a test file running alongside could hold some of them back
    // past the first read (the horizon is server-wide), and stop() then published fewer.)
    await writeEvents(t.db, outbox, {
      prefix: 'stop',
      aggregates: 5,
      perAggregate: 1,
      oneTransaction: true,
    })
    const r = relay(publisher)
    await r.start()
    await until(() => entered, 'a publish in flight')
    const stopping = r.stop()
    await delay(30)
    expect(r.state).toBe('stopping')
    expect(await pendingCount(t.db)).toBe(5)
    release()
    await stopping
    expect(r.state).toBe('stopped')
    expect(await pendingCount(t.db)).toBe(0)
    expect(publisher.confirmed.filter((id) => id.startsWith('stop'))).toHaveLength(5)
    expect(await count(t.db, 'breakwater_outbox_partitions', `WHERE owner = '${r.id}'`)).toBe(0)
    expect(await count(t.db, 'breakwater_outbox_relays', `WHERE relay_id = '${r.id}'`)).toBe(0)
    await writeEvents(t.db, outbox, { prefix: 'after-stop', aggregates: 1, perAggregate: 1 })
    await delay(100)
    expect(await pendingCount(t.db)).toBe(1)
    await t.db.execute("DELETE FROM breakwater_outbox WHERE event_id LIKE 'after-stop%'")
  })

  // better-sqlite3 is synchronous: with the SQL queue in the same database, a round never
  // waits for I/O, so only the relay's own yield lets timers, signals and requests through.
  it.runIf(target.dialect === 'sqlite')(
    'lets the event loop turn between rounds while it drains a backlog',
    async () => {
      const queue = testQueue(t.db)
      const publisher = testPublisher(queue.publisher)
      await writeEvents(t.db, outbox, { prefix: 'yield', aggregates: 4, perAggregate: 50 })
      const r = relay(publisher, { batchSize: 20 })
      await r.start()
      await new Promise((resolve) => setImmediate(resolve))
      // 200 events in rounds of 10: the event loop turned after the first round or two
      // (without the yield, all 200 were published before it turned).
      const publishedAtFirstTurn = publisher.confirmed.length
      await until(async () => (await pendingCount(t.db)) === 0, 'the backlog to drain')
      expect(publishedAtFirstTurn).toBeLessThanOrEqual(20)
      expect(publisher.confirmed).toHaveLength(200)
      await r.stop()
    },
  )

  /** A started relay whose idle polls are a minute apart: only a wake-up or a recheck helps. */
  async function startIdleRelay() {
    const publisher = testPublisher(testQueue(t.db).publisher)
    const started = relay(publisher, {
      pollIntervalMs: 60_000,
      maxPollIntervalMs: 60_000,
      leaseMs: 120_000,
    })
    await started.start()
    return { publisher, relay: started }
  }

  if (target.dialect === 'postgres') {
    it('publishes soon after a running transaction that held its rows back ends, without a notification', async () => {
      const { publisher } = await startIdleRelay()
      // A writing transaction (it has an xid) older than the event, left open.
      const blocker = await t.another()
      await blocker.execute('CREATE TABLE IF NOT EXISTS horizon_blocker (id INTEGER)')
      const open = await holdOpenTransaction(blocker, (tx) =>
        tx.execute('INSERT INTO horizon_blocker (id) VALUES (1)'),
      )
      // The event commits and notifies; the relay wakes, but the row is behind the horizon.
      await writeEvents(t.db, outbox, { prefix: 'horizon', aggregates: 1, perAggregate: 1 })
      await delay(100)
      expect(publisher.confirmed).not.toContain('horizon-0-0')
      await open.commit()
      // No notification now, and the idle wait is a minute: only the horizon recheck finds it.
      await until(
        () => publisher.confirmed.includes('horizon-0-0'),
        'the held-back publish',
        15_000,
      )
    })
  }

  it('wakes at once instead of waiting out a long poll interval', async () => {
    const { publisher, relay: r } = await startIdleRelay()
    await delay(50) // the first read found nothing; the relay now waits a minute
    const writer = target.dialect === 'postgres' ? await t.another() : t.db
    await writeEvents(writer, outbox, { prefix: 'wake', aggregates: 1, perAggregate: 1 })
    // PostgreSQL: the enqueue's NOTIFY wakes it. SQLite has no notifications: the writer in
    // the same process says so with wake().
    if (target.dialect === 'sqlite') r.wake()
    // Without the wake-up it would wait for its next poll or rebalance: 40 s or more.
    await until(() => publisher.confirmed.includes('wake-0-0'), 'the woken publish', 15_000)
    await r.stop()
  })
})
