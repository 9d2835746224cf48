// The outbox crash scenario with real processes, shared by the PostgreSQL + NATS and the
// SQLite + SQL queue test files:
//
// - writers: several concurrent writer loops enqueue events, each in its own transaction with a
//   business row; every enqueue is recorded in a QueueChecker as ok, failed (the connection died
//   before COMMIT was sent: rolled back) or unknown (it died during COMMIT). Each aggregate
//   belongs to one writer, which enqueues its events one after the other, so per-aggregate
//   commit order is the enqueue order. On PostgreSQL, writer connections are also terminated
//   (pg_terminate_backend) at random moments.
// - the relay: test/fixtures/outbox/relay-process.ts, a child process, SIGKILLed at random
//   moments once it holds partitions (and, in some lives, killed by itself at the
//   `after-publish` fault point, the worst moment for duplicates), then started again. Its
//   confirmed batches are appended to a log, so republished events are counted.
// - the broker: a private NATS server SIGKILLed and restarted once mid-run.
// - the consumer: a subscriber whose handler records each delivery, then applies the event
//   through the inbox in a separate consumer database (per-aggregate counter, last sequence,
//   out-of-order count, and one row per application).
//
// The report holds the checker's verdict, everything read back from both databases and the
// measured figures; the test files assert on it.
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import type pg from 'pg'
import { createNatsBroker } from '../../../src/brokers/index.js'
import type { Broker, IncomingMessage, Subscription } from '../../../src/brokers/types.js'
import {
  createInbox,
  createOutbox,
  createSqlQueue,
  migrateInbox,
  migrateOutbox,
  migrateSqlQueue,
  type OutboxEvent,
} from '../../../src/outbox/index.js'
import { fromPgClient, openDatabase, type SqlDriver } from '../../../src/stores/index.js'
import { type StartedBroker, startPrivateBroker } from '../../support/brokers.js'
import { compiledFixture } from '../../support/compiled-fixture.js'
import { createTestDatabase } from '../../support/postgres.js'
import {
  type EnqueueOutcome,
  QueueChecker,
  type QueueCheckResult,
} from '../../support/queue-checker.js'
import { createTestSqlite } from '../../support/sqlite.js'

// Bundled once (compiledFixture), not run through tsx: a run starts a relay per life.
const fixture = await compiledFixture(
  fileURLToPath(new URL('../../fixtures/outbox/relay-process.ts', import.meta.url)),
)
const topic = 'outbox-crash'
const consumerName = 'crash-consumer'

/** What one run does. */
export interface CrashScenario {
  readonly name: string
  readonly engine: 'postgres-nats' | 'sqlite-sql-queue'
  /** Events the writers try to enqueue. */
  readonly events: number
  readonly aggregates: number
  /** Concurrent writer loops. */
  readonly writers: number
  /** Relay lives ended by a SIGKILL from the test at a random moment. */
  readonly randomKills: number
  /** Relay lives ended by the relay's own SIGKILL at `relay:after-publish:<n>`. */
  readonly pointKills: number
  readonly batchSize: number
  readonly leaseMs: number
  /** The longest random time a relay lives once it holds partitions. */
  readonly maxActiveMs: number
  /** The writers spread their events over about this long (slower if the database is). */
  readonly writeSpanMs: number
  /** PostgreSQL: writer connections terminated at random moments. */
  readonly writerConnectionKills: number
  /** Restart the broker (SIGKILL, then start) once, mid-run. */
  readonly restartBroker: boolean
  /** How long the last relay may take to deliver everything after the writers finished. */
  readonly drainTimeoutMs: number
  readonly seed: number
}

/** How each relay life ended. */
export interface KillCounts {
  /** SIGKILLed by the test at a random moment while holding partitions. */
  readonly random: number
  /** SIGKILLed itself at the after-publish fault point. */
  readonly atAfterPublish: number
  /** Kills (of either kind) that landed while the writers were still writing. */
  readonly duringWrites: number
  readonly total: number
}

/** A latency distribution, in ms. */
export interface LagFigures {
  readonly p50: number
  readonly p99: number
  readonly max: number
}

/** Everything the test files assert on, plus the figures for the summary line. */
export interface CrashReport {
  readonly scenario: CrashScenario
  readonly verdict: QueueCheckResult
  readonly outcomes: Readonly<Record<EnqueueOutcome, number>>
  readonly kills: KillCounts
  readonly brokerRestarts: number
  /** Event ids in the producer's outbox at the end: exactly the enqueues that committed. */
  readonly outboxIds: ReadonlySet<string>
  /** Event ids of the producer's business rows (committed with their outbox rows). */
  readonly businessIds: ReadonlySet<string>
  /** Outbox rows still unpublished after the last relay stopped. */
  readonly unpublished: number
  /** Ids recorded unknown that did commit, and those that did not. */
  readonly unknownCommitted: readonly string[]
  readonly unknownNotCommitted: readonly string[]
  /** Confirmations logged by the relays (with repeats) and the repeats among them. */
  readonly relayConfirms: number
  readonly relayDuplicates: number
  /**
   * The enqueues judged with the relays' first confirmations as deliveries: per-aggregate
   * order as the relays published it (confirmation log order).
   */
  readonly relayVerdict: QueueCheckResult
  /** Deliveries beyond the first, as the consumer saw them, and those the inbox dropped. */
  readonly consumerDuplicates: number
  readonly inboxDuplicates: number
  /** From the consumer database. */
  readonly consumer: {
    /** Rows of consumer_applied (one per application). */
    readonly applications: number
    /** Event ids applied more than once. */
    readonly appliedTwice: readonly string[]
    /** Distinct event ids applied. */
    readonly appliedIds: ReadonlySet<string>
    /** Sum of the per-aggregate counters. */
    readonly counterTotal: number
    /** Aggregates whose counter differs from the count of their delivered events. */
    readonly counterMismatches: readonly string[]
    /** Applications whose sequence was not above the aggregate's last one. */
    readonly outOfOrder: number
  }
  /** Commit (as the writer saw it return) to first delivery at the consumer. */
  readonly lagMs: LagFigures
  /** Commit to the broker's first confirmation (as the relay logged it). */
  readonly confirmLagMs: LagFigures
  /** The last relay exited 0 after SIGTERM, having printed `stopped`. */
  readonly gracefulStop: boolean
  readonly durationMs: number
  /** The one-line summary the test prints. */
  readonly summary: string
}

// mulberry32: a failing run can be repeated with BREAKWATER_CRASH_SEED.
function random(initial: number): () => number {
  let state = initial >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}

// Real-time waits: this test drives real processes and servers, nothing with a clock option.
function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index]!
}

function spread(values: number[]): LagFigures {
  const sorted = [...values].sort((a, b) => a - b)
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1] ?? 0,
  }
}

/** One relay process. */
class RelayLife {
  readonly child: ChildProcess
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  stdout = ''
  stderr = ''
  readonly #waiters: Array<{ line: string; resolve: (seen: boolean) => void }> = []
  #ended = false

  constructor(args: readonly string[], env: Record<string, string>) {
    this.child = spawn(process.execPath, [fixture, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    })
    this.child.stdout!.on('data', (chunk: Buffer) => {
      this.stdout += chunk.toString()
      for (const waiter of [...this.#waiters]) {
        if (this.stdout.includes(`${waiter.line}\n`)) {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
          waiter.resolve(true)
        }
      }
    })
    this.child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString()
    })
    this.exited = new Promise((resolve, reject) => {
      this.child.on('error', reject)
      this.child.on('exit', (code, signal) => {
        this.#ended = true
        for (const waiter of this.#waiters.splice(0)) waiter.resolve(false)
        resolve({ code, signal })
      })
    })
  }

  /** Resolves true once the process printed `line`, false if it exited first. */
  printed(line: string): Promise<boolean> {
    if (this.stdout.includes(`${line}\n`)) return Promise.resolve(true)
    if (this.#ended) return Promise.resolve(false)
    return new Promise((resolve) => this.#waiters.push({ line, resolve }))
  }

  describe(): string {
    return `stdout:\n${this.stdout}\nstderr:\n${this.stderr.slice(-3000)}`
  }
}

/** Polls `check` every 20 ms; resolves true once it holds, false after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) return false
    await delay(20)
  }
  return true
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** One writer's connection: enqueues one event per transaction with a business row. */
interface Writer {
  /** Resolves to the enqueue's outcome; never rejects. */
  write(event: OutboxEvent & { readonly id: string }, seq: number): Promise<EnqueueOutcome>
  /** PostgreSQL: the backend pid of its open connection, if any. */
  backendPid(): number | undefined
  close(): Promise<void>
}

const outbox = createOutbox({ topic })
const businessInsert = 'INSERT INTO crash_orders (event_id, aggregate_id, seq) VALUES ($1, $2, $3)'

/** A writer on its own pg connection, with explicit BEGIN/COMMIT so it knows which one failed. */
function pgWriter(pgModule: typeof pg, url: string): Writer {
  let client: pg.Client | undefined
  let pid: number | undefined
  const drop = (): void => {
    const old = client
    client = undefined
    pid = undefined
    void old?.end().catch(() => {})
  }
  return {
    async write(event, seq) {
      let phase: 'work' | 'commit' = 'work'
      try {
        if (client === undefined) {
          const fresh = new pgModule.Client({ connectionString: url })
          // A terminated connection reports here too; the failing query tells the writer.
          fresh.on('error', () => {})
          await fresh.connect()
          const rows = await fresh.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
          client = fresh
          pid = rows.rows[0]!.pid
        }
        await client.query('BEGIN')
        await client.query(businessInsert, [event.id, event.aggregateId, seq])
        await outbox.enqueue(fromPgClient(client), event)
        phase = 'commit'
        await client.query('COMMIT')
        return 'ok'
      } catch {
        drop()
        // Before COMMIT was sent, the server rolls the transaction back when the connection
        // dies; during COMMIT nobody can tell.
        return phase === 'commit' ? 'unknown' : 'failed'
      }
    },
    backendPid: () => pid,
    async close() {
      await client?.end().catch(() => {})
    },
  }
}

/**
 * A writer on the shared SQLite driver. better-sqlite3 is synchronous: two connections to one
 * file in one process would block the thread in the busy handler while the lock holder waits
 * for that same thread, so the writer loops of this process share one connection (SQLite has
 * one writer at a time anyway) and queue on the driver's lock; the relay is another process.
 */
function sqliteWriter(db: SqlDriver): Writer {
  return {
    async write(event, seq) {
      try {
        await db.transaction(async (tx) => {
          await tx.execute(businessInsert, [event.id, event.aggregateId, seq])
          await outbox.enqueue(tx, event)
        })
        return 'ok'
      } catch {
        // The driver cannot say whether COMMIT failed: the database decides afterwards.
        return 'unknown'
      }
    },
    backendPid: () => undefined,
    close: async () => {},
  }
}

interface Environment {
  readonly producerUrl: string
  /** The test process's own connection to the producer database. */
  readonly producer: SqlDriver
  readonly consumerDb: SqlDriver
  /** `nats://...` or `sql-queue`, for the relay process. */
  readonly brokerArg: string
  readonly consumerBroker: Broker
  readonly nats: StartedBroker | undefined
  newWriter(): Promise<Writer>
  cleanup(): Promise<void>
}

async function prepare(scenario: CrashScenario): Promise<Environment> {
  const cleanups: Array<() => Promise<void>> = []
  const cleanup = async (): Promise<void> => {
    for (const step of cleanups.reverse()) await step().catch(() => {})
  }
  try {
    if (scenario.engine === 'postgres-nats') {
      const producerDatabase = await createTestDatabase('outbox_crash_producer')
      cleanups.push(() => producerDatabase.drop())
      const consumerDatabase = await createTestDatabase('outbox_crash_consumer')
      cleanups.push(() => consumerDatabase.drop())
      const producer = await openDatabase(producerDatabase.url)
      cleanups.push(() => producer.close())
      const consumerDb = await openDatabase(consumerDatabase.url, {
        postgres: { maxConnections: 32 },
      })
      cleanups.push(() => consumerDb.close())
      const nats = await startPrivateBroker('nats')
      cleanups.push(() => nats.stop())
      const consumerBroker = createNatsBroker({
        url: nats.url,
        // Deliveries whose ack the broker restart swallowed come back soon.
        ackWaitMs: 2_000,
        // A realistic consumer: many deliveries in flight and several handlers at once. The
        // subscriber holds a key's later deliveries while an earlier one is unacknowledged, so
        // per-key order survives the broker restart and redeliveries.
        prefetch: 64,
        concurrency: 8,
        reconnectDelayMs: 50,
        maxReconnectDelayMs: 500,
        name: 'crash-consumer',
        onError: (event) => {
          if (event.phase !== 'handler') timeline(`consumer ${event.phase}: ${String(event.error)}`)
        },
      })
      cleanups.push(() => consumerBroker.close())
      await migrateOutbox(producer)
      const pgModule = (await import('pg')).default
      return {
        producerUrl: producerDatabase.url,
        producer,
        consumerDb,
        brokerArg: nats.url,
        consumerBroker,
        nats,
        newWriter: async () => {
          const writer = pgWriter(pgModule, producerDatabase.url)
          cleanups.push(() => writer.close())
          return writer
        },
        cleanup,
      }
    }
    const producerFile = createTestSqlite('outbox-crash-producer')
    cleanups.push(async () => producerFile.cleanup())
    const consumerFile = createTestSqlite('outbox-crash-consumer')
    cleanups.push(async () => consumerFile.cleanup())
    const producer = await openDatabase(producerFile.url)
    cleanups.push(() => producer.close())
    const consumerDb = await openDatabase(consumerFile.url)
    cleanups.push(() => consumerDb.close())
    await migrateOutbox(producer)
    await migrateSqlQueue(producer)
    // The consumer's side of the SQL queue reads the producer's file: on the shared connection
    // (see sqliteWriter).
    const consumerBroker = createSqlQueue(producer, {
      pollIntervalMs: 5,
      maxPollIntervalMs: 50,
      prefetch: 128,
      concurrency: 8,
    })
    cleanups.push(() => consumerBroker.close())
    return {
      producerUrl: producerFile.url,
      producer,
      consumerDb,
      brokerArg: 'sql-queue',
      consumerBroker,
      nats: undefined,
      newWriter: async () => sqliteWriter(producer),
      cleanup,
    }
  } catch (error) {
    await cleanup()
    throw error
  }
}

async function createConsumerTables(db: SqlDriver): Promise<void> {
  await migrateInbox(db)
  await db.execute(
    `CREATE TABLE consumer_counters (
  aggregate_id TEXT PRIMARY KEY,
  applied INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  out_of_order INTEGER NOT NULL
)`,
  )
  // No unique key on event_id: an event applied twice must show up as two rows, not as a
  // failed transaction that hides it.
  const id =
    db.dialect === 'postgres'
      ? 'id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY'
      : 'id INTEGER PRIMARY KEY AUTOINCREMENT'
  await db.execute(
    `CREATE TABLE consumer_applied (${id}, event_id TEXT NOT NULL, aggregate_id TEXT NOT NULL, seq INTEGER NOT NULL)`,
  )
}

// BREAKWATER_CRASH_DEBUG=1 prints a timeline: each relay life, and commits, broker confirmations
// and deliveries per second.
const debug = process.env.BREAKWATER_CRASH_DEBUG === '1'
function timeline(line: string): void {
  if (debug) console.error(line)
}

/** Runs the scenario; resolves to the report (assertions are the caller's). */
export async function runCrashScenario(scenario: CrashScenario): Promise<CrashReport> {
  const startedAt = performance.now()
  const rng = random(scenario.seed)
  const env = await prepare(scenario)
  const work = mkdtempSync(join(tmpdir(), 'breakwater-outbox-crash-'))
  const confirmLog = join(work, 'confirmed.log')
  writeFileSync(confirmLog, '')
  const lives: RelayLife[] = []
  let subscription: Subscription | undefined
  try {
    await env.producer.execute(
      'CREATE TABLE crash_orders (event_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL, seq INTEGER NOT NULL)',
    )
    await createConsumerTables(env.consumerDb)

    // The consumer's history, and the same enqueues with the relay's first confirmations as
    // deliveries (to tell a relay's order violation from a broker's or subscriber's).
    const checker = new QueueChecker()
    const relayView = new QueueChecker()
    const committedAt = new Map<string, number>()
    const firstDeliveredAt = new Map<string, number>()
    const deliveredPerKey = new Map<string, Set<string>>()
    let inboxDuplicates = 0
    const inbox = createInbox({ consumer: consumerName })
    const apply = async (message: IncomingMessage): Promise<void> => {
      const at = Date.now()
      checker.deliver(message.id, message.key)
      if (!firstDeliveredAt.has(message.id)) firstDeliveredAt.set(message.id, at)
      let ids = deliveredPerKey.get(message.key)
      if (ids === undefined) {
        ids = new Set()
        deliveredPerKey.set(message.key, ids)
      }
      ids.add(message.id)
      const { seq } = JSON.parse(Buffer.from(message.payload).toString('utf8')) as { seq: number }
      const result = await env.consumerDb.transaction((tx) =>
        inbox.handle(tx, message, async (tx) => {
          await tx.execute(
            `INSERT INTO consumer_counters (aggregate_id, applied, last_seq, out_of_order)
VALUES ($1, 1, $2, 0)
ON CONFLICT (aggregate_id) DO UPDATE SET applied = consumer_counters.applied + 1,
  last_seq = excluded.last_seq,
  out_of_order = consumer_counters.out_of_order
    + CASE WHEN excluded.last_seq <= consumer_counters.last_seq THEN 1 ELSE 0 END`,
            [message.key, seq],
          )
          await tx.execute(
            'INSERT INTO consumer_applied (event_id, aggregate_id, seq) VALUES ($1, $2, $3)',
            [message.id, message.key, seq],
          )
        }),
      )
      if (result.duplicate) inboxDuplicates++
    }
    subscription = await env.consumerBroker.subscriber.subscribe(topic, consumerName, apply)

    // The writers.
    const outcomes: Record<EnqueueOutcome, number> = { ok: 0, failed: 0, unknown: 0 }
    const unknownIds: string[] = []
    const writers = await Promise.all(
      Array.from({ length: scenario.writers }, () => env.newWriter()),
    )
    const perWriter = Math.ceil(scenario.events / scenario.writers)
    const writeStart = performance.now()
    const writeStartWall = Date.now()
    let writing = true
    const writeAll = Promise.all(
      writers.map(async (writer, w) => {
        const owned: number[] = []
        for (let a = w; a < scenario.aggregates; a += scenario.writers) owned.push(a)
        const seqs = owned.map(() => 0)
        const count = Math.min(perWriter, scenario.events - w * perWriter)
        for (let i = 0; i < count; i++) {
          const due = writeStart + (i / count) * scenario.writeSpanMs
          const wait = due - performance.now()
          if (wait > 1) await delay(wait)
          const slot = i % owned.length
          const seq = ++seqs[slot]!
          const aggregateId = `agg-${owned[slot]}`
          const id = `ev-${w}-${i}`
          const event = {
            id,
            aggregateType: 'order',
            aggregateId,
            type: 'order-changed',
            payload: { seq, writer: w },
          }
          checker.invoke(id, aggregateId)
          relayView.invoke(id, aggregateId)
          const outcome = await writer.write(event, seq)
          checker.complete(id, outcome)
          relayView.complete(id, outcome)
          outcomes[outcome]++
          if (outcome === 'ok') committedAt.set(id, Date.now())
          else if (outcome === 'unknown') unknownIds.push(id)
        }
      }),
    ).finally(() => {
      writing = false
    })
    // Awaited after the relay lives; a failure must not count as unhandled meanwhile.
    writeAll.catch(() => {})

    // Writer connections terminated at random moments (PostgreSQL).
    const connectionKiller = (async () => {
      if (scenario.engine !== 'postgres-nats') return
      for (let k = 0; k < scenario.writerConnectionKills && writing; k++) {
        await delay(rng() * ((2 * scenario.writeSpanMs) / scenario.writerConnectionKills))
        const writer = writers[Math.floor(rng() * writers.length)]!
        const pid = writer.backendPid()
        if (pid === undefined || !writing) continue
        await env.producer.query('SELECT pg_terminate_backend($1)', [pid]).catch(() => {})
      }
    })()

    // The relay lives.
    const plan: Array<'random' | 'point'> = [
      ...Array.from({ length: scenario.randomKills }, () => 'random' as const),
      ...Array.from({ length: scenario.pointKills }, () => 'point' as const),
    ]
    for (let i = plan.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1))
      ;[plan[i], plan[j]] = [plan[j]!, plan[i]!]
    }
    const relayArgs = [
      env.producerUrl,
      env.brokerArg,
      String(scenario.batchSize),
      String(scenario.leaseMs),
      confirmLog,
    ]
    // The broker restart happens in the first life from the middle on that the test kills.
    const restartAt =
      scenario.restartBroker && env.nats !== undefined
        ? plan.findIndex((kind, i) => kind === 'random' && i >= plan.length >> 1)
        : -1
    const written = (): number => outcomes.ok + outcomes.failed + outcomes.unknown
    const confirmations = (): number => statSync(confirmLog).size
    let brokerRestarts = 0
    let randomKills = 0
    let atAfterPublish = 0
    let duringWrites = 0
    for (let index = 0; index < plan.length; index++) {
      const kind = plan[index]!
      const crashEnv: Record<string, string> =
        kind === 'point'
          ? { BREAKWATER_CRASH_AT: `relay:after-publish:${1 + Math.floor(rng() * 4)}` }
          : { BREAKWATER_CRASH_AT: '' }
      const life = new RelayLife(relayArgs, crashEnv)
      lives.push(life)
      const spawnedAt = performance.now()
      const active = await within(life.printed('active'), 30_000, `relay life ${index} active`)
      const activeAt = performance.now()
      if (index === restartAt && env.nats !== undefined && active) {
        // The broker dies under the running relay and comes back; the relay must recover by
        // itself: this life is killed only after it published again.
        await delay(50 + rng() * 200)
        timeline(`broker killed at ${Date.now() - writeStartWall} ms`)
        await env.nats.kill('SIGKILL')
        await delay(500 + rng() * 500)
        await env.nats.restart()
        brokerRestarts++
        timeline(`broker restarted at ${Date.now() - writeStartWall} ms`)
        const before = confirmations()
        const recovered = await until(() => confirmations() > before, 20_000)
        if (!recovered) {
          throw new Error(
            `the relay published nothing after the broker restart\n${life.describe()}`,
          )
        }
      }
      let killedByTest = false
      if (kind === 'random' || !active) {
        killedByTest = true
        if (active) {
          // Kills are spread over the writing: life i lasts at least until (i + 1) / (lives + 1)
          // of the events were written, then a random while longer.
          const due = ((index + 1) / (plan.length + 1)) * scenario.events
          await until(() => !writing || written() >= due || life.child.exitCode !== null, 600_000)
          await delay(20 + rng() * scenario.maxActiveMs)
        }
        life.child.kill('SIGKILL')
      } else {
        // It kills itself at its n-th after-publish. If it does not get there (the writers are
        // done and nothing is left to publish), the test kills it, and counts a random kill.
        let quietSince = performance.now()
        let seen = confirmations()
        const reached = await until(() => {
          if (life.child.exitCode !== null || life.child.signalCode !== null) return true
          if (confirmations() !== seen || writing) {
            seen = confirmations()
            quietSince = performance.now()
          }
          return performance.now() - quietSince > 3_000
        }, 30_000)
        if (!reached || (life.child.exitCode === null && life.child.signalCode === null)) {
          killedByTest = true
          life.child.kill('SIGKILL')
        }
      }
      const { code, signal } = await within(life.exited, 30_000, `relay life ${index} exit`)
      if (signal !== 'SIGKILL') {
        throw new Error(`relay life ${index} exited with ${code ?? signal}\n${life.describe()}`)
      }
      if (!killedByTest && !life.stdout.includes('active\n')) {
        throw new Error(`relay life ${index} died before it was active\n${life.describe()}`)
      }
      timeline(
        `life ${index} (${kind}, ${killedByTest ? 'killed by the test' : 'killed itself'}): ` +
          `active ${(activeAt - spawnedAt).toFixed(0)} ms after spawn, lived ` +
          `${(performance.now() - activeAt).toFixed(0)} ms more; committed ${committedAt.size}, ` +
          `delivered ${firstDeliveredAt.size}`,
      )
      if (killedByTest) randomKills++
      else atAfterPublish++
      if (writing) duringWrites++
    }

    // The last relay publishes the rest; then it is stopped gracefully.
    const last = new RelayLife(relayArgs, { BREAKWATER_CRASH_AT: '' })
    lives.push(last)
    if (!(await within(last.printed('active'), 30_000, 'the last relay to be active'))) {
      throw new Error(`the last relay exited early\n${last.describe()}`)
    }
    await writeAll
    await connectionKiller
    await Promise.all(writers.map((writer) => writer.close()))
    const outboxRows = await env.producer.query<{ event_id: string }>(
      'SELECT event_id FROM breakwater_outbox',
    )
    const outboxIds = new Set(outboxRows.map((row) => row.event_id))
    const drainDeadline = performance.now() + scenario.drainTimeoutMs
    for (;;) {
      let missing = 0
      for (const id of outboxIds) if (!firstDeliveredAt.has(id)) missing++
      const pending = Number(
        (
          await env.producer.query<{ n: number | string }>(
            'SELECT COUNT(*) AS n FROM breakwater_outbox WHERE published_at IS NULL',
          )
        )[0]?.n ?? 0,
      )
      if (missing === 0 && pending === 0) break
      if (performance.now() > drainDeadline) {
        throw new Error(
          `not drained after ${scenario.drainTimeoutMs} ms: ${missing} undelivered, ${pending} unpublished\n${last.describe()}`,
        )
      }
      if (last.child.exitCode !== null || last.child.signalCode !== null) {
        throw new Error(`the last relay exited early\n${last.describe()}`)
      }
      await delay(100)
    }
    // Deliveries still in flight (a redelivery being applied) settle before the books close.
    await subscription.close()
    subscription = undefined
    last.child.kill('SIGTERM')
    const lastExit = await within(last.exited, 30_000, 'the last relay to stop')
    const gracefulStop = lastExit.code === 0 && last.stdout.includes('stopped\n')
    if (!gracefulStop) {
      console.error(`last relay: exit ${lastExit.code ?? lastExit.signal}\n${last.describe()}`)
    }

    // Read back both databases.
    const businessRows = await env.producer.query<{ event_id: string }>(
      'SELECT event_id FROM crash_orders',
    )
    const businessIds = new Set(businessRows.map((row) => row.event_id))
    const unpublished = Number(
      (
        await env.producer.query<{ n: number | string }>(
          'SELECT COUNT(*) AS n FROM breakwater_outbox WHERE published_at IS NULL',
        )
      )[0]?.n ?? 0,
    )
    const appliedRows = await env.consumerDb.query<{ event_id: string; n: number | string }>(
      'SELECT event_id, COUNT(*) AS n FROM consumer_applied GROUP BY event_id',
    )
    const appliedIds = new Set(appliedRows.map((row) => row.event_id))
    const applications = appliedRows.reduce((sum, row) => sum + Number(row.n), 0)
    const appliedTwice = appliedRows.filter((row) => Number(row.n) > 1).map((row) => row.event_id)
    const counters = await env.consumerDb.query<{
      aggregate_id: string
      applied: number | string
      out_of_order: number | string
    }>('SELECT aggregate_id, applied, out_of_order FROM consumer_counters')
    let counterTotal = 0
    let outOfOrder = 0
    const counterMismatches: string[] = []
    for (const row of counters) {
      counterTotal += Number(row.applied)
      outOfOrder += Number(row.out_of_order)
      if (Number(row.applied) !== (deliveredPerKey.get(row.aggregate_id)?.size ?? 0)) {
        counterMismatches.push(row.aggregate_id)
      }
    }
    for (const key of deliveredPerKey.keys()) {
      if (!counters.some((row) => row.aggregate_id === key)) counterMismatches.push(key)
    }

    // Relay-side repeats, from the confirmation log.
    const confirmed = readFileSync(confirmLog, 'utf8').split('\n').filter(Boolean)
    const firstConfirmedAt = new Map<string, number>()
    for (const line of confirmed) {
      const [id, at] = line.split(' ')
      if (!firstConfirmedAt.has(id!)) firstConfirmedAt.set(id!, Number(at))
    }
    const relayDuplicates = confirmed.length - firstConfirmedAt.size
    for (const id of firstConfirmedAt.keys()) relayView.deliver(id)
    const relayVerdict = relayView.check()

    const verdict = checker.check()
    const lags: number[] = []
    for (const [id, at] of committedAt) {
      const first = firstDeliveredAt.get(id)
      if (first !== undefined) lags.push(Math.max(0, first - at))
    }
    const lagMs = spread(lags)
    const confirmLags: number[] = []
    for (const [id, at] of committedAt) {
      const first = firstConfirmedAt.get(id)
      if (first !== undefined) confirmLags.push(Math.max(0, first - at))
    }
    const confirmLagMs = spread(confirmLags)
    if (debug) {
      for (const v of verdict.orderViolations.slice(0, 8)) {
        timeline(
          `order violation ${v.key}: ${v.id} first delivered at ${firstDeliveredAt.get(v.id)! - writeStartWall} ms ` +
            `(confirmed ${firstConfirmedAt.get(v.id)! - writeStartWall}, deliveries ${verdict.duplicated.get(v.id) ?? 1}), ` +
            `after ${v.overtakenBy} at ${firstDeliveredAt.get(v.overtakenBy)! - writeStartWall} ` +
            `(confirmed ${firstConfirmedAt.get(v.overtakenBy)! - writeStartWall})`,
        )
      }
      const base = Math.min(...committedAt.values())
      const perSecond = (times: Map<string, number>): string => {
        const counts: number[] = []
        for (const at of times.values()) {
          const second = Math.floor((at - base) / 1000)
          counts[second] = (counts[second] ?? 0) + 1
        }
        return Array.from(counts, (n) => n ?? 0).join(',')
      }
      timeline(`commits/s ${perSecond(committedAt)}`)
      timeline(`confirms/s ${perSecond(firstConfirmedAt)}`)
      timeline(`deliveries/s ${perSecond(firstDeliveredAt)}`)
    }
    const kills: KillCounts = {
      random: randomKills,
      atAfterPublish,
      duringWrites,
      total: randomKills + atAfterPublish,
    }
    const consumerDuplicates = verdict.deliveries - firstDeliveredAt.size
    const durationMs = performance.now() - startedAt
    const summary =
      `[outbox crash ${scenario.name}] events=${verdict.attempted} committed=${outcomes.ok} ` +
      `failed=${outcomes.failed} unknown=${outcomes.unknown} recovered=${verdict.recovered.length} ` +
      `kills=${kills.total} (random=${randomKills} at-after-publish=${atAfterPublish} during-writes=${duringWrites}) ` +
      `broker-restarts=${brokerRestarts} batch=${scenario.batchSize} ` +
      `relay-duplicates=${relayDuplicates} (bound kills*batch=${kills.total * scenario.batchSize}) ` +
      `consumer-duplicates=${consumerDuplicates} inbox-dropped=${inboxDuplicates} ` +
      `lost=${verdict.lost.length} unexpected=${verdict.unexpected.length} ` +
      `order-violations=${verdict.orderViolations.length} (relay-confirm-order=${relayVerdict.orderViolations.length}) ` +
      `applied-twice=${appliedTwice.length} out-of-order-applied=${outOfOrder} ` +
      `lag-ms commit->consumer p50=${lagMs.p50.toFixed(0)} p99=${lagMs.p99.toFixed(0)} max=${lagMs.max.toFixed(0)} ` +
      `commit->broker-confirm p50=${confirmLagMs.p50.toFixed(0)} p99=${confirmLagMs.p99.toFixed(0)} max=${confirmLagMs.max.toFixed(0)} ` +
      `duration=${(durationMs / 1000).toFixed(1)}s seed=${scenario.seed}`
    return {
      scenario,
      verdict,
      outcomes,
      kills,
      brokerRestarts,
      outboxIds,
      businessIds,
      unpublished,
      unknownCommitted: unknownIds.filter((id) => outboxIds.has(id)),
      unknownNotCommitted: unknownIds.filter((id) => !outboxIds.has(id)),
      relayConfirms: confirmed.length,
      relayDuplicates,
      relayVerdict,
      consumerDuplicates,
      inboxDuplicates,
      consumer: {
        applications,
        appliedTwice,
        appliedIds,
        counterTotal,
        counterMismatches,
        outOfOrder,
      },
      lagMs,
      confirmLagMs,
      gracefulStop,
      durationMs,
      summary,
    }
  } finally {
    for (const life of lives) {
      if (life.child.exitCode === null && life.child.signalCode === null) {
        life.child.kill('SIGKILL')
      }
    }
    await Promise.all(lives.map((life) => life.exited.catch(() => {})))
    await subscription?.close().catch(() => {})
    await env.cleanup()
    rmSync(work, { recursive: true, force: true })
  }
}
