// `npm run bench -- outbox`: the transactional outbox and one relay, from commit to the broker,
// on PostgreSQL -> NATS JetStream, -> RabbitMQ, -> Redis Streams, and SQLite -> SQL queue; with
// the raw rate of the same inserts without a relay as the ceiling, in the same run. Every server
// is real and started for the run (PostgreSQL with fsync on; NATS with JetStream; RabbitMQ with
// publisher confirms on a quorum queue; Redis with appendfsync always). Writes
// bench/results/outbox.json.
//
// The insert: one transaction per event, holding a business row and `outbox.enqueue(tx, event)`
// with a 256-byte JSON payload, from 16 concurrent writers (16 pooled connections on
// PostgreSQL; 16 async loops on the one SQLite connection), over 1,000 aggregates.
//
// Per broker case (one relay, in this process, default options: batches of 256, 'confirmed'
// ordering; woken by LISTEN/NOTIFY on PostgreSQL; on SQLite, where the relay polls, the writers
// call relay.wake() after each commit, as its TSDoc suggests for a relay in the same process):
// - events_per_s: relay throughput from commit to broker confirm. A backlog of committed events
//   (written beforehand in 1,000-event transactions) is drained by a relay that starts with it;
//   the figure is backlog / (last broker confirm - relay start). This is the goal's figure.
//   Where the drain's time goes: drain_{read,publish,mark}_ms_per_call (the relay's batch query,
//   the publisher call, the mark-published statement, per publish call) and drain_cpu_pct (CPU
//   of this process, which only runs the relay then, over the drain's wall time).
// - events_per_s_live / commits_per_s_live: the 16 writers and the relay running together for a
//   few seconds: events confirmed per second, and the writers' own commit rate meanwhile
//   (compare with the insert ceiling to see what the relay costs the writers). SQLite also
//   reports *_live_polling: the same without wake(), the relay only polling.
// - p50_ms / p99_ms: end-to-end lag at a steady 1,000 events/s (one event per transaction,
//   issued on a 1 ms schedule): from the writer's COMMIT returning to a subscriber of the broker
//   receiving the event, in this process (one clock), after a 1 s warmup;
//   commit_to_confirm_p50_ms / _p99_ms: the part up to the broker's confirm.
// Ceiling cases: events_per_s of the same 16 writers with no relay running
// (postgres-insert-ceiling, sqlite-insert-ceiling), and on PostgreSQL also with the outbox's
// NOTIFY turned off (postgres-insert-ceiling-no-notify) and with the writes made through
// outbox.transaction(), which notifies after each commit, coalesced
// (postgres-insert-ceiling-after-commit-notify).
//
// What a broker's confirm means: nats-server 2.9 acknowledges a JetStream publish once the
// message is in its file store, before fsync (it survives a broker crash, not a power loss);
// RabbitMQ confirms a quorum-queue message once it is fsynced; Redis with appendfsync always
// fsyncs the AOF before it replies to XADD.
//
// BREAKWATER_SCALE=full uses a larger backlog and longer windows. `npm run bench -- outbox
// <case...>` runs only the named cases and prints their figures without writing the file.
import { mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import type pg from 'pg'
import {
  type StartedBroker,
  startNats,
  startRabbitMq,
  startRedis,
} from '../scripts/lib/brokers.mjs'
import { startPostgres } from '../scripts/services.mjs'
import type { Broker, Publisher } from '../src/brokers/types.js'
import type { Outbox, OutboxEvent, Relay } from '../src/outbox/index.js'
import type { SqlDriver, SqlExecutor } from '../src/stores/index.js'
import { built } from './lib/built.js'
import { type ResultRow, writeResults } from './lib/harness.js'

const { createNatsBroker, createRabbitMqBroker, createRedisBroker } =
  await built<typeof import('../src/brokers/index.js')>('brokers/index.js')
const { createOutbox, createRelay, createSqlQueue, migrateOutbox, migrateSqlQueue } =
  await built<typeof import('../src/outbox/index.js')>('outbox/index.js')
const { openDatabase } = await built<typeof import('../src/stores/index.js')>('stores/index.js')

const full = process.env.BREAKWATER_SCALE === 'full'
const backlog = Number(process.env.BENCH_OUTBOX_BACKLOG ?? (full ? 100_000 : 30_000))
const writers = 16
const aggregates = 1_000
const liveMs = full ? 10_000 : 4_000
const liveWarmupMs = 1_000
const ceilingMs = full ? 10_000 : 4_000
const lagRate = 1_000
const lagWarmupMs = 1_000
const lagMeasureMs = full ? 15_000 : 8_000
const payloadSize = 256
const goalEventsPerS = 20_000
const goalP99Ms = 50

// Real-time waits: the benchmark measures real servers.
function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 120_000) {
  const deadline = performance.now() + timeoutMs
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await delay(2)
  }
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index]!
}

/** A JSON payload whose text is exactly 256 bytes. */
function payload(seq: number): { seq: number; pad: string } {
  const bare = JSON.stringify({ seq, pad: '' }).length
  return { seq, pad: 'x'.repeat(payloadSize - bare) }
}

let eventCounter = 0
function event(topic: string): OutboxEvent & { id: string } {
  const n = eventCounter++
  return {
    id: `e${n}`,
    topic,
    aggregateType: 'order',
    aggregateId: `order-${n % aggregates}`,
    type: 'order-changed',
    payload: payload(n),
  }
}

const outbox = createOutbox()
// The same inserts without the in-transaction NOTIFY (relays would only poll).
const silentOutbox = createOutbox({ notify: false })
// The same inserts in outbox.transaction(): NOTIFY right after each commit, coalesced.
const afterCommitOutbox = createOutbox()

/** One event in its own transaction with a business row. */
async function writeOne(db: SqlDriver, topic: string, into: Outbox = outbox): Promise<string> {
  const e = event(topic)
  const work = async (tx: SqlExecutor): Promise<void> => {
    await tx.execute('INSERT INTO bench_orders (id, aggregate_id, amount) VALUES ($1, $2, $3)', [
      e.id,
      e.aggregateId,
      42,
    ])
    await into.enqueue(tx, e)
  }
  if (into === afterCommitOutbox) await into.transaction(db, work)
  else await db.transaction(work)
  return e.id
}

/** The backlog, written in 1,000-event transactions (how it was written is not measured). */
async function fillBacklog(db: SqlDriver, topic: string, count: number): Promise<void> {
  for (let done = 0; done < count; done += 1_000) {
    const events = Array.from({ length: Math.min(1_000, count - done) }, () => event(topic))
    await db.transaction((tx) => outbox.enqueue(tx, events))
  }
}

/** Options of {@link writeFor}. */
interface WriteForOptions {
  /** Called after every commit (SQLite: wakes the relay in this process). */
  readonly afterCommit?: () => void
  /** Commits in the first `warmupMs` are not counted. */
  readonly warmupMs?: number
  /** Called once, when the warmup ends. */
  readonly onWarm?: () => void
  /** The outbox to enqueue with. */
  readonly outbox?: Outbox
}

/**
 * 16 writer loops for `ms`; resolves to commits per second. Each loop yields to the event loop
 * between transactions, as a server between requests does: on SQLite a transaction completes
 * in promise jobs alone, and without it no timer (the relay's polls, lease renewals) would run
 * until the writers stop.
 */
async function writeFor(
  db: SqlDriver,
  topic: string,
  ms: number,
  options: WriteForOptions = {},
): Promise<number> {
  const warmupMs = options.warmupMs ?? 0
  const start = performance.now()
  const end = start + ms
  let counted = 0
  let warm = warmupMs === 0
  if (warm) options.onWarm?.()
  await Promise.all(
    Array.from({ length: writers }, async () => {
      while (performance.now() < end) {
        await writeOne(db, topic, options.outbox)
        options.afterCommit?.()
        if (!warm && performance.now() - start >= warmupMs) {
          warm = true
          options.onWarm?.()
        }
        if (warm) counted++
        await new Promise((resolve) => setImmediate(resolve))
      }
    }),
  )
  return counted / ((performance.now() - start - warmupMs) / 1000)
}

/** Counts what the broker confirmed, and the time spent in publish calls. */
interface CountingPublisher extends Publisher {
  confirmed: number
  calls: number
  busyMs: number
  lastConfirmAt: number
  /** When each id was first confirmed (if `record`). */
  readonly confirmedAt: Map<string, number>
}

function counting(inner: Publisher, record = false): CountingPublisher {
  const publisher: CountingPublisher = {
    confirmed: 0,
    calls: 0,
    busyMs: 0,
    lastConfirmAt: 0,
    confirmedAt: new Map(),
    async publish(messages, signal) {
      const started = performance.now()
      await inner.publish(messages, signal)
      const now = performance.now()
      publisher.calls++
      publisher.busyMs += now - started
      publisher.confirmed += messages.length
      publisher.lastConfirmAt = now
      if (record) for (const m of messages) publisher.confirmedAt.set(m.id, now)
    },
    close: () => inner.close(),
  }
  return publisher
}

/**
 * Times the relay's statements by step: `read` (the batch query) and `mark` (marking published),
 * through a driver that forwards everything to the real one.
 */
class StepTimes {
  readonly #totals = new Map<string, number>()

  total(step: 'read' | 'mark'): number {
    return this.#totals.get(step) ?? 0
  }

  wrap(db: SqlDriver): SqlDriver {
    const step = (sql: string): string =>
      sql.includes('ORDER BY o.id') ? 'read' : /SET published_at = \$1/.test(sql) ? 'mark' : 'other'
    const timed = async <T>(sql: string, run: () => Promise<T>): Promise<T> => {
      const started = performance.now()
      try {
        return await run()
      } finally {
        const name = step(sql)
        this.#totals.set(name, (this.#totals.get(name) ?? 0) + performance.now() - started)
      }
    }
    const wrapped: SqlDriver = {
      dialect: db.dialect,
      query: (sql, params) => timed(sql, () => db.query(sql, params)),
      execute: (sql, params) => timed(sql, () => db.execute(sql, params)),
      transaction: (fn) => db.transaction(fn),
      close: () => db.close(),
      ...(db.listen === undefined
        ? {}
        : { listen: (channel, onNotify) => db.listen!(channel, onNotify) }),
    }
    return wrapped
  }
}

async function pending(db: SqlDriver): Promise<number> {
  const rows = await db.query<{ n: number | string }>(
    'SELECT COUNT(*) AS n FROM breakwater_outbox WHERE published_at IS NULL',
  )
  return Number(rows[0]?.n ?? 0)
}

/** One engine + broker under test. */
interface Target {
  readonly name: string
  readonly dialect: 'postgres' | 'sqlite'
  /** Opens a fresh, migrated database: the writers' driver and the relay's. */
  open(): Promise<{ writerDb: SqlDriver; relayDb: SqlDriver; close(): Promise<void> }>
  /** The broker for this case (the SQL queue lives in the relay's database). */
  broker(relayDb: SqlDriver): Broker
}

async function migrated(db: SqlDriver, sqlQueue: boolean): Promise<void> {
  await migrateOutbox(db)
  if (sqlQueue) await migrateSqlQueue(db)
  await db.execute(
    'CREATE TABLE bench_orders (id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL, amount INTEGER NOT NULL)',
  )
}

let databaseCounter = 0
function postgresTarget(
  name: string,
  adminUrl: () => string,
  broker: (() => Broker) | undefined,
): Target {
  return {
    name,
    dialect: 'postgres',
    async open() {
      const url = await createDatabase(adminUrl(), `bench_outbox_${databaseCounter++}`)
      const writerDb = await openDatabase(url, { postgres: { maxConnections: writers } })
      const relayDb = await openDatabase(url)
      await migrated(writerDb, false)
      return {
        writerDb,
        relayDb,
        async close() {
          await writerDb.close()
          await relayDb.close()
        },
      }
    },
    broker: () => {
      if (broker === undefined) throw new Error(`${name} has no broker`)
      return broker()
    },
  }
}

function sqliteTarget(name: string): Target {
  return {
    name,
    dialect: 'sqlite',
    async open() {
      const dir = mkdtempSync(join(tmpdir(), 'breakwater-outbox-bench-'))
      // One connection for writers, relay and queue subscriber: better-sqlite3 is synchronous,
      // so a second connection in this process would block the thread in SQLite's busy handler
      // while the lock holder waits for that same thread.
      const db = await openDatabase(`sqlite:${join(dir, 'outbox.db')}`)
      await migrated(db, true)
      return {
        writerDb: db,
        relayDb: db,
        async close() {
          await db.close()
          rmSync(dir, { recursive: true, force: true })
        },
      }
    },
    broker: (relayDb) => createSqlQueue(relayDb),
  }
}

async function createDatabase(adminUrl: string, name: string): Promise<string> {
  const pgModule = (await import('pg')).default
  const client: pg.Client = new pgModule.Client({ connectionString: adminUrl })
  await client.connect()
  try {
    await client.query(`CREATE DATABASE ${name}`)
  } finally {
    await client.end()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

function newRelay(db: SqlDriver, publisher: Publisher): Relay {
  return createRelay({ db, publisher, retention: false })
}

/** The three measurements of one broker case. */
async function measureCase(target: Target): Promise<ResultRow[]> {
  const rows: ResultRow[] = []
  const row = (metric: string, value: number) =>
    rows.push({ subject: 'breakwater', case: target.name, metric, value })
  const { writerDb, relayDb, close } = await target.open()
  const broker = target.broker(relayDb)
  try {
    const topic = (phase: string) => `bench-${phase}-${target.name}`
    // Queues and groups exist before anything is published (RabbitMQ refuses unroutable
    // messages), but nobody consumes during the throughput phases.
    for (const phase of ['drain', 'live']) {
      const subscription = await broker.subscriber.subscribe(topic(phase), 'bench', async () => {})
      await subscription.close()
    }

    // 1. Drain a committed backlog, timing the relay's steps and its CPU.
    await fillBacklog(writerDb, topic('drain'), backlog)
    const drainPublisher = counting(broker.publisher)
    const steps = new StepTimes()
    const drainRelay = newRelay(steps.wrap(relayDb), drainPublisher)
    const cpuBefore = process.cpuUsage()
    const drainStart = performance.now()
    await drainRelay.start()
    await until(() => drainPublisher.confirmed >= backlog, 'the backlog to be confirmed')
    const drainMs = drainPublisher.lastConfirmAt - drainStart
    const cpu = process.cpuUsage(cpuBefore)
    const drainRate = backlog / (drainMs / 1000)
    await until(async () => (await pending(relayDb)) === 0, 'the backlog to be marked')
    await drainRelay.stop()
    row('events_per_s', drainRate)
    const batches = drainPublisher.calls
    row('drain_publish_calls', batches)
    row('drain_read_ms_per_call', steps.total('read') / batches)
    row('drain_publish_ms_per_call', drainPublisher.busyMs / batches)
    row('drain_mark_ms_per_call', steps.total('mark') / batches)
    row('drain_cpu_pct', ((cpu.user + cpu.system) / 1000 / drainMs) * 100)
    console.log(
      `${target.name}: drained ${backlog} events at ${drainRate.toFixed(0)}/s; per publish call ` +
        `(${batches}): read ${(steps.total('read') / batches).toFixed(1)} ms, publish ` +
        `${(drainPublisher.busyMs / batches).toFixed(1)} ms, mark ${(steps.total('mark') / batches).toFixed(1)} ms; ` +
        `relay process CPU ${(((cpu.user + cpu.system) / 1000 / drainMs) * 100).toFixed(0)}%`,
    )

    // 2. Writers and relay together. On SQLite twice: the writers wake the relay after each
    // commit (what Relay.wake is for, in-process), and the relay only polling.
    const wakeModes = target.dialect === 'sqlite' ? [true, false] : [false]
    for (const wakeAfterCommit of wakeModes) {
      const livePublisher = counting(broker.publisher)
      const liveRelay = newRelay(relayDb, livePublisher)
      await liveRelay.start()
      let confirmedAtWarmup = 0
      let warmAt = 0
      const commitRate = await writeFor(writerDb, topic('live'), liveMs, {
        warmupMs: liveWarmupMs,
        onWarm: () => {
          confirmedAtWarmup = livePublisher.confirmed
          warmAt = performance.now()
        },
        ...(wakeAfterCommit ? { afterCommit: () => liveRelay.wake() } : {}),
      })
      const liveRate =
        (livePublisher.confirmed - confirmedAtWarmup) / ((performance.now() - warmAt) / 1000)
      await until(async () => (await pending(relayDb)) === 0, 'the live events to be published')
      await liveRelay.stop()
      const suffix = target.dialect === 'sqlite' && !wakeAfterCommit ? '_polling' : ''
      row(`events_per_s_live${suffix}`, liveRate)
      row(`commits_per_s_live${suffix}`, commitRate)
      console.log(
        `${target.name}: live${suffix} ${liveRate.toFixed(0)} events/s confirmed, writers ${commitRate.toFixed(0)} commits/s`,
      )
    }

    // 3. Lag at a steady 1,000 events/s.
    const committedAt = new Map<string, number>()
    const receivedAt = new Map<string, number>()
    const subscription = await broker.subscriber.subscribe(topic('lag'), 'bench', async (m) => {
      if (!receivedAt.has(m.id)) receivedAt.set(m.id, performance.now())
    })
    const lagPublisher = counting(broker.publisher, true)
    const lagRelay = newRelay(relayDb, lagPublisher)
    await lagRelay.start()
    const lagStart = performance.now()
    const lagEnd = lagStart + lagWarmupMs + lagMeasureMs
    let issued = 0
    // Writes that failed (on a machine this loaded, the pool can time out): not measured,
    // counted and reported.
    let failedWrites = 0
    const inFlight = new Set<Promise<void>>()
    const measured: string[] = []
    while (performance.now() < lagEnd) {
      const due = Math.floor(((performance.now() - lagStart) * lagRate) / 1000)
      while (issued < due) {
        issued++
        const inWindow = performance.now() - lagStart >= lagWarmupMs
        const write = writeOne(writerDb, topic('lag')).then(
          (id) => {
            committedAt.set(id, performance.now())
            if (target.dialect === 'sqlite') lagRelay.wake()
            if (inWindow) measured.push(id)
          },
          () => {
            failedWrites++
          },
        )
        inFlight.add(write)
        void write.finally(() => inFlight.delete(write))
      }
      await delay(1)
    }
    await Promise.all(inFlight)
    const achievedRate = (measured.length / lagMeasureMs) * 1000
    await until(
      () => measured.every((id) => receivedAt.has(id)),
      'the lag events to arrive',
      60_000,
    )
    await lagRelay.stop()
    await subscription.close()
    const lags = measured
      .map((id) => Math.max(0, receivedAt.get(id)! - committedAt.get(id)!))
      .sort((a, b) => a - b)
    const toConfirm = measured
      .map((id) => Math.max(0, lagPublisher.confirmedAt.get(id)! - committedAt.get(id)!))
      .sort((a, b) => a - b)
    row('p50_ms', percentile(lags, 50))
    row('p99_ms', percentile(lags, 99))
    row('commit_to_confirm_p50_ms', percentile(toConfirm, 50))
    row('commit_to_confirm_p99_ms', percentile(toConfirm, 99))
    row('lag_rate_per_s', achievedRate)
    row('lag_failed_writes', failedWrites)
    console.log(
      `${target.name}: lag at ${achievedRate.toFixed(0)} events/s p50 ${percentile(lags, 50).toFixed(1)} ms, p99 ${percentile(lags, 99).toFixed(1)} ms, max ${lags.at(-1)?.toFixed(1)} ms (commit to broker confirm p50 ${percentile(toConfirm, 50).toFixed(1)}, p99 ${percentile(toConfirm, 99).toFixed(1)} ms)${failedWrites > 0 ? `; ${failedWrites} writes failed` : ''}`,
    )
  } finally {
    await broker.close().catch(() => {})
    await close()
  }
  return rows
}

async function measureCeiling(
  target: Target,
  name: string,
  into: Outbox = outbox,
): Promise<ResultRow> {
  const { writerDb, close } = await target.open()
  try {
    const rate = await writeFor(writerDb, 'bench-ceiling', ceilingMs, {
      warmupMs: 500,
      outbox: into,
    })
    console.log(`${name}: ${rate.toFixed(0)} commits/s without a relay`)
    return { subject: 'breakwater', case: name, metric: 'events_per_s', value: rate }
  } finally {
    await close()
  }
}

/** One case of the benchmark, in run order. */
interface CaseRun {
  readonly name: string
  readonly run: (servers: Servers) => Promise<ResultRow[]>
}

interface Servers {
  postgres(): Promise<{ url: string }>
  broker(name: 'nats' | 'redis' | 'rabbitmq'): Promise<StartedBroker>
}

const cases: readonly CaseRun[] = [
  {
    name: 'sqlite-insert-ceiling',
    run: async () => [await measureCeiling(sqliteTarget('sqlite'), 'sqlite-insert-ceiling')],
  },
  { name: 'sqlite-sql-queue', run: () => measureCase(sqliteTarget('sqlite-sql-queue')) },
  {
    name: 'postgres-insert-ceiling',
    run: async (servers) => {
      const postgres = await servers.postgres()
      const target = postgresTarget('postgres', () => postgres.url, undefined)
      return [
        await measureCeiling(target, 'postgres-insert-ceiling'),
        // The outbox's NOTIFY takes a cluster-wide lock held through the commit's WAL flush,
        // so notifying commits cannot share a flush: this shows what that costs the writers.
        await measureCeiling(target, 'postgres-insert-ceiling-no-notify', silentOutbox),
        // outbox.transaction(): the NOTIFY leaves the writers' transactions.
        await measureCeiling(
          target,
          'postgres-insert-ceiling-after-commit-notify',
          afterCommitOutbox,
        ),
      ]
    },
  },
  ...(
    [
      ['postgres-nats', 'nats', (url: string) => createNatsBroker({ url })],
      ['postgres-redis', 'redis', (url: string) => createRedisBroker({ url })],
      ['postgres-rabbitmq', 'rabbitmq', (url: string) => createRabbitMqBroker({ url })],
    ] as const
  ).map(
    ([name, server, make]): CaseRun => ({
      name,
      run: async (servers) => {
        const postgres = await servers.postgres()
        const broker = await servers.broker(server)
        return measureCase(
          postgresTarget(
            name,
            () => postgres.url,
            () => make(broker.url),
          ),
        )
      },
    }),
  ),
]

/**
 * Runs every case (or those named in `args`; a partial run prints its figures but does not
 * write the results file) and writes bench/results/outbox.json.
 */
export async function main(args: string[]): Promise<void> {
  const startedAt = performance.now()
  const unknown = args.filter((name) => !cases.some((c) => c.name === name))
  if (unknown.length > 0) {
    throw new Error(
      `unknown case(s) ${unknown.join(', ')}; known: ${cases.map((c) => c.name).join(', ')}`,
    )
  }
  const selected = args.length === 0 ? cases : cases.filter((c) => args.includes(c.name))
  const usesPostgres = selected.some((c) => c.name.startsWith('postgres'))
  const log = (line: string) => process.stderr.write(`${line}\n`)
  const load = loadavg()[0]!
  console.log(`load average at start: ${load.toFixed(2)} (2 cores, shared)`)
  // Every server the selected cases need starts at once; RabbitMQ boots for seconds while
  // SQLite and the other brokers are measured.
  const started: Array<Promise<{ stop(): Promise<void> }>> = []
  const starting = <T extends { stop(): Promise<void> }>(server: Promise<T>): Promise<T> => {
    started.push(server)
    server.catch(() => {})
    return server
  }
  const postgresServer = usesPostgres
    ? starting(startPostgres({ watchPid: process.pid, log }))
    : undefined
  const brokerServers = {
    nats: selected.some((c) => c.name === 'postgres-nats')
      ? starting(startNats({ stopOnExit: true, log }))
      : undefined,
    redis: selected.some((c) => c.name === 'postgres-redis')
      ? starting(startRedis({ stopOnExit: true, log }))
      : undefined,
    rabbitmq: selected.some((c) => c.name === 'postgres-rabbitmq')
      ? starting(startRabbitMq({ stopOnExit: true, log }))
      : undefined,
  }
  const servers: Servers = {
    postgres: () => postgresServer ?? Promise.reject(new Error('PostgreSQL was not started')),
    broker: (name) => brokerServers[name] ?? Promise.reject(new Error(`${name} was not started`)),
  }
  const rows: ResultRow[] = [
    { subject: 'machine', case: 'load average (1 min) at start', metric: 'loadavg', value: load },
  ]
  try {
    for (const c of selected) rows.push(...(await c.run(servers)))

    const value = (kase: string, metric: string) =>
      rows.find((r) => r.case === kase && r.metric === metric)?.value ?? Number.NaN
    if (selected.some((c) => c.name === 'postgres-nats')) {
      rows.push({
        subject: 'goal',
        case: `postgres-nats events_per_s >= ${goalEventsPerS}`,
        metric: 'met',
        value: value('postgres-nats', 'events_per_s') >= goalEventsPerS ? 1 : 0,
      })
    }
    for (const c of selected) {
      if (c.name.includes('ceiling')) continue
      rows.push({
        subject: 'goal',
        case: `${c.name} p99_ms < ${goalP99Ms} at ${lagRate}/s`,
        metric: 'met',
        value: value(c.name, 'p99_ms') < goalP99Ms ? 1 : 0,
      })
    }
    if (args.length === 0) {
      writeResults('outbox', rows)
    } else {
      for (const r of rows) console.log(`${r.case}  ${r.metric}  ${r.value}`)
      console.log('partial run: bench/results/outbox.json not written')
    }
    console.log(`total ${((performance.now() - startedAt) / 1000).toFixed(0)} s`)
  } finally {
    await Promise.all(
      started.map((server) =>
        server.then(
          (s) => s.stop(),
          () => {},
        ),
      ),
    )
  }
}
