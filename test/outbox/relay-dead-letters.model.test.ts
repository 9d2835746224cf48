// A model-based hunt for races between dead letters and the relay's leases, on a real SQLite
// file. fast-check generates command sequences over three relay slots, A, B and C (each relay
// with its own connection to the same file, as three processes would have): committed writes
// to a few aggregates (two of them in one partition), some of whose events are poison (the
// broker refuses them, BROKER_REJECTED, until healed) so that they are dead-lettered after
// maxAttempts; the next unpublished event of an aggregate turned poison; all poison healed;
// redrive of all dead events or of one of them (listDead's n-th); relays started, stopped
// gracefully and crashed at a fault point (a throwing fault hook halts the relay as a dead
// process would: no mark, no lease release); clock jumps below and past the lease; and the next
// publish calls failing transiently (broker down).
//
// The broker is an in-memory recording publisher (a stand-in for a broker at unit level, not a
// broker integration test): it logs every message it stores, in order. After every command,
// and again once everything is healed, redriven and drained, these must hold: a relay starts a
// publish only while it holds the partition's lease in the database with at least
// publishTimeoutMs of it left; no event is handed to the broker while an earlier event of its
// aggregate is dead (a dead event holds its aggregate back until redrive); per aggregate, first
// publications follow the commit order (a redriven event goes out before the events it held
// back); every row marked published was published; and no partition is held in memory by two
// running relays, nor by one the database says another relay's live lease holds. At the end
// every committed event must have been published and marked (nothing lost, dead letters
// included once redriven), no row may be left parked, and the running relays must share all 64
// partitions.
//
// Parking: the events a relay reads held back behind a dead or retrying event are parked
// (parked_behind set, left out of later reads) and unparked when that event is published. The
// sequences write several events per aggregate behind poison ones, so runs park events and
// publish them after they were unparked (both counted and required below); the ordering checks
// above are what proves that parking never lets an event overtake one it waits for.
//
// All relays run on one ManualClock: the relay documents that processes sharing a database need
// synced clocks. PostgreSQL is left out for the reason relay.model.test.ts gives (a ManualClock
// jump does not wait for real I/O).
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OutgoingMessage, Publisher } from '../../src/brokers/types.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { listDead, outboxTable, type RelayEvent, redrive } from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { flushJobs } from '../../src/testing/index.js'
import { scaled } from '../support/scale.js'
import {
  type CrashPoint,
  expectCovered,
  expectPublishedInOrder,
  leaseViolations,
  PartitionHolders,
  RelayModelWorld,
  RelayProcess,
  readLeases,
  resetOutbox,
  Step,
} from './model.js'
import { brokerDown, type OutboxDb, sqliteTarget } from './support.js'

const leaseMs = 1_000
const publishTimeoutMs = 400
/** Rounds of two rows: several rounds, waves and pipelined marks per backlog. */
const batchSize = 4
/** Two refusals of a poison event dead-letter it: dead letters come early in a sequence. */
const maxAttempts = 2
const T0 = 1_700_000_000_000
const partitionCount = 64

/**
 * The aggregates written to. order-9 and order-30 share partition 21, so a dead event of one
 * sits in a partition whose other aggregate must go on.
 */
const aggregates = ['order-3', 'order-9', 'order-30', 'order-1', 'order-2'] as const

const slotNames = ['A', 'B', 'C'] as const
type SlotName = (typeof slotNames)[number]
/** How often the runs reached the situations this test is after (checked at the end). */
const coverage = {
  runs: 0,
  withDeadLetter: 0,
  /** A dead event redriven by a command (not the final drain) while relays ran. */
  withRedriveCommand: 0,
  /** An event published after an earlier (dead) event of its aggregate was redriven. */
  withHeldBackReleased: 0,
  withCrash: 0,
  withTakeover: 0,
  /** Events were parked behind a held event at some step. */
  withParked: 0,
  /** An event published after it had been parked (so it was unparked). */
  withParkedReleased: 0,
}

/** The system under test for one generated sequence, and what the commands script. */
class World extends RelayModelWorld {
  readonly slots: Record<SlotName, RelayProcess | undefined> = {
    A: undefined,
    B: undefined,
    C: undefined,
  }
  /** Events the broker refuses now. */
  readonly poison = new Set<string>()
  /** Publish calls that broke an invariant when they started (must stay empty). */
  readonly violations: string[] = []
  /** Publish calls still to fail as if the broker were down. */
  transientFailures = 0
  /** Events reported dead-lettered, and redriven (by any command). */
  readonly deadLettered = new Set<string>()
  readonly redriven = new Set<string>()
  /** Events published after an earlier event of their aggregate had been redriven. */
  heldBackReleased = 0
  /** Dead events the redrive commands (not the final drain) brought back. */
  commandRedrives = 0
  crashes = 0
  takeovers = 0
  /** Events seen parked after some step, and those published afterwards. */
  readonly parkedEver = new Set<string>()
  parkedReleased = 0
  readonly #holders = new PartitionHolders()
  #incarnations = 0

  constructor(
    readonly run: number,
    /** The observer's and the operator's (redrive) connection. */
    readonly db: SqlDriver,
    readonly writer: SqlDriver,
    readonly relayDbs: Record<SlotName, SqlDriver>,
  ) {
    super(T0)
  }

  /** A publisher for the relay `by`: every call goes through the scripted broker. */
  publisherFor(by: string): Publisher {
    return {
      publish: (messages) => this.#publish(by, messages),
      close: async () => {},
    }
  }

  async #publish(by: string, messages: readonly OutgoingMessage[]): Promise<void> {
    await this.#checkStart(by, messages)
    const ids = messages.map((m) => m.id).join(',')
    if (this.transientFailures > 0) {
      this.transientFailures--
      this.trace.push(`  ${by}: publish ${ids} fails (broker down)`)
      throw brokerDown()
    }
    const bad = messages.find((m) => this.poison.has(m.id))
    if (bad !== undefined) {
      this.trace.push(`  ${by}: publish ${ids} rejected (${bad.id} is poison)`)
      throw new BreakwaterError('BROKER_REJECTED', `the broker refused ${bad.id}`)
    }
    this.trace.push(`  ${by}: published ${ids}`)
    for (const m of messages) {
      if (this.#behindRedriven(m)) this.heldBackReleased++
      if (this.parkedEver.has(m.id)) this.parkedReleased++
      this.log.push({ id: m.id, key: m.key, by })
    }
  }

  /** Whether an earlier event of `m`'s aggregate was redriven (so `m` was held back by it). */
  #behindRedriven(m: OutgoingMessage): boolean {
    const events = this.committed.get(m.key) ?? []
    const at = events.indexOf(m.id)
    return events.slice(0, at).some((id) => this.redriven.has(id))
  }

  /**
   * Invariants at the start of a publish call: the relay holds, in the database, the lease of
   * the partition of every message with at least publishTimeoutMs of it left, and no earlier
   * event of the message's aggregate is dead. SQLite reads run synchronously, so this reads the
   * database as it is when the call starts.
   */
  async #checkStart(by: string, messages: readonly OutgoingMessage[]): Promise<void> {
    const leases = await readLeases(this.db)
    const now = this.clock.now()
    this.violations.push(...leaseViolations(leases, by, messages, now, publishTimeoutMs, T0))
    for (const m of messages) {
      const deadAhead = await this.db.query<{ event_id: string }>(
        `SELECT event_id FROM ${outboxTable} WHERE aggregate_id = $1 AND dead_at IS NOT NULL
           AND published_at IS NULL AND id < (SELECT id FROM ${outboxTable} WHERE event_id = $2)`,
        [m.key, m.id],
      )
      if (deadAhead.length > 0) {
        this.violations.push(
          `${by} started publishing ${m.id} while ${deadAhead.map((r) => r.event_id).join(', ')} was dead ahead of it`,
        )
      }
    }
  }

  /** Follows what each relay reports: dead letters, crashes, takeovers. */
  observe(name: string, event: RelayEvent): void {
    const takenOver = this.#holders.follow(name, event).size > 0
    switch (event.type) {
      case 'deadLettered':
        this.deadLettered.add(event.eventId)
        this.trace.push(`  ${name}: dead-lettered ${event.eventId}`)
        break
      case 'crashed':
        this.crashes++
        this.trace.push(`  ${name}: crashed at ${event.point}`)
        break
      case 'partitionsChanged':
        if (takenOver) this.takeovers++
        this.trace.push(
          `  ${name}: claimed ${event.claimed.length}, released ${event.released.length}, lost ${event.lost.length}${takenOver ? ' (a takeover)' : ''}`,
        )
        break
      case 'stopped':
        this.trace.push(`  ${name}: stopped`)
        break
      case 'failed':
        this.trace.push(`  ${name}: failed (${String(event.error)})`)
        break
      default:
        break
    }
  }

  /** Commits one event per entry of `keys`; the one at `poisonAt` (if any) is poison. */
  async write(keys: readonly string[], poisonAt: number): Promise<void> {
    const next = new Map<string, number>()
    const events = keys.map((key, i) => {
      const n = (this.committed.get(key)?.length ?? 0) + (next.get(key) ?? 0)
      next.set(key, (next.get(key) ?? 0) + 1)
      const id = `${key}/${n}`
      if (i === poisonAt) this.poison.add(id)
      return { id, aggregateType: 'order', aggregateId: key, type: 'changed', payload: { id } }
    })
    await this.writer.transaction((tx) => this.outbox.enqueue(tx, events))
    this.noteCommitted(events)
  }

  /** Redrives the given dead events (or all), as an operator would, and notes which. */
  async redrive(eventIds: readonly string[] | 'all'): Promise<number> {
    const dead =
      eventIds === 'all' ? (await listDead(this.db, { limit: 1_000 })).map((e) => e.eventId) : []
    const n = await redrive(this.db, eventIds)
    for (const id of eventIds === 'all' ? dead : eventIds) this.redriven.add(id)
    return n
  }

  /** Starts a new relay process in `slot`, unless one is alive there. */
  async start(slot: SlotName): Promise<void> {
    if (this.slots[slot]?.alive === true) return
    const name = `${slot}${++this.#incarnations}`
    const process = new RelayProcess(
      name,
      {
        db: this.relayDbs[slot],
        publisher: this.publisherFor(name),
        clock: this.clock,
        relayId: `${name}-run${this.run}`,
        leaseMs,
        publishTimeoutMs,
        batchSize,
        ordering: 'confirmed',
        pollIntervalMs: 20,
        maxPollIntervalMs: 200,
        maxAttempts,
        retryBackoff: { baseDelayMs: 50, maxDelayMs: 200, jitter: 'none' },
        circuitBreaker: { window: { kind: 'consecutive', failures: 3 }, cooldownMs: 500 },
        retention: false,
      },
      (by, event) => this.observe(by, event),
    )
    this.slots[slot] = process
    this.trace.push(`  ${process.name}: starts`)
    await process.relay.start().catch((error: unknown) => {
      this.trace.push(`  ${process.name}: could not start (${String(error)})`)
    })
  }

  override processes(): RelayProcess[] {
    return slotNames
      .map((slot) => this.slots[slot])
      .filter((p): p is RelayProcess => p !== undefined)
  }
}

/** The invariants that must hold at any moment; see the file comment. */
async function checkInvariants(w: World): Promise<void> {
  expect(w.violations, `publishes that should not have started\n${w.describe()}`).toEqual([])
  await expectPublishedInOrder(w.db, w.log, w.committed, () => w.describe())
  // What the running relays believe they own agrees with each other and with the database.
  const leases = await readLeases(w.db)
  const now = w.clock.now()
  const heldBy = new Map<number, string>()
  const disagreements: string[] = []
  for (const process of w.processes()) {
    if (process.relay.state !== 'running') continue
    for (const partition of process.relay.partitions()) {
      const other = heldBy.get(partition)
      if (other !== undefined) {
        disagreements.push(`partition ${partition} held by ${other} and ${process.name}`)
      }
      heldBy.set(partition, process.name)
      const lease = leases.find((l) => Number(l.partition_no) === partition)
      const leftMs = Number(lease?.lease_expires_at ?? 0) - now
      if (lease?.owner !== `${process.name}-run${w.run}` && leftMs > 0) {
        disagreements.push(
          `${process.name} holds partition ${partition}, the database says ${lease?.owner}'s for ${leftMs} ms more`,
        )
      }
    }
  }
  expect(disagreements, `partition ownership\n${w.describe()}`).toEqual([])
}

/** Notes which events are parked now. */
async function noteParked(w: World): Promise<void> {
  const parked = await w.db.query<{ event_id: string }>(
    `SELECT event_id FROM ${outboxTable} WHERE parked_behind IS NOT NULL`,
  )
  for (const row of parked) {
    if (!w.parkedEver.has(row.event_id)) w.trace.push(`  ${row.event_id} is parked`)
    w.parkedEver.add(row.event_id)
  }
}

/** A command that does `act`, lets the relays run what it woke, and checks the invariants. */
const step = (label: string, act: (w: World) => Promise<void> | void) =>
  new Step<World>(
    label,
    (w) => {
      w.trace.push(label)
      return act(w)
    },
    async (w) => {
      await flushJobs()
      await checkInvariants(w)
      await noteParked(w)
    },
  )

const write = ([keys, poisonAt]: [string[], number]) =>
  step(
    `commit events of ${keys.join(', ')}${poisonAt < keys.length ? ` (#${poisonAt} poison)` : ''}`,
    (w) => w.write(keys, poisonAt),
  )

const poisonNext = (key: string) =>
  step(`poison the next unpublished event of ${key}`, (w) => {
    const published = new Set(w.log.map((p) => p.id))
    const next = (w.committed.get(key) ?? []).find((id) => !published.has(id) && !w.poison.has(id))
    if (next === undefined) return
    w.poison.add(next)
    w.trace.push(`  ${next} is poison`)
  })

const heal = step('heal all poison', (w) => w.poison.clear())

const redriveAll = step('redrive all', async (w) => {
  const n = await w.redrive('all')
  w.commandRedrives += n
  w.trace.push(`  redrove ${n}`)
})

const redriveOne = (i: number) =>
  step(`redrive the dead event listed ${i}th`, async (w) => {
    const dead = await listDead(w.db)
    const event = dead[i % Math.max(1, dead.length)]
    if (event === undefined) return
    const n = await w.redrive([event.eventId])
    w.commandRedrives += n
    w.trace.push(`  redrove ${event.eventId}: ${n}`)
  })

const start = (slot: SlotName) => step(`start relay ${slot}`, (w) => w.start(slot))

const stop = (slot: SlotName) =>
  step(`stop relay ${slot}`, (w) => {
    const process = w.slots[slot]
    if (process?.relay.state !== 'running') return
    // stop() finishes the batch in hand: the sequence goes on meanwhile.
    process.stopping = process.relay.stop()
    process.stopping.catch(() => {})
  })

const crash = ([slot, at]: [SlotName, CrashPoint]) =>
  step(`crash relay ${slot} at ${at === 'next' ? 'its next step' : at}`, (w) => {
    const process = w.slots[slot]
    if (process === undefined || !['new', 'running'].includes(process.relay.state)) return
    process.crash(at)
  })

const advance = (ms: number) => step(`advance the clock ${ms} ms`, (w) => w.clock.advance(ms))

const failNext = (times: number) =>
  step(`next ${times} publish calls fail (broker down)`, (w) => {
    w.transientFailures += times
  })

const slotArb = fc.constantFrom(...slotNames)
/** One event per key; the poison index lands on an event about half the time. */
const writeArb = fc
  .tuple(fc.array(fc.constantFrom(...aggregates), { minLength: 1, maxLength: 4 }), fc.nat(6))
  .map(write)
// Writes, starts and clock jumps weigh more: dead letters need a backlog, a relay and time.
const commands = [
  writeArb,
  writeArb,
  fc.constantFrom(...aggregates).map(poisonNext),
  fc.constant(heal),
  fc.constant(redriveAll),
  fc.nat(5).map(redriveOne),
  slotArb.map(start),
  slotArb.map(start),
  slotArb.map(stop),
  fc
    .tuple(
      slotArb,
      fc.constantFrom<CrashPoint>('next', 'after-claim', 'after-publish', 'after-mark'),
    )
    .map(crash),
  fc.constantFrom(10, 100, 300, leaseMs + 1, 3 * leaseMs).map(advance),
  fc.constantFrom(10, 100, 300).map(advance),
  fc.integer({ min: 1, max: 3 }).map(failNext),
]

/**
 * Heals every poison event, ends pending crashes and stops in progress, makes sure a relay
 * runs, and moves the clock (redriving what is dead) until every committed event is marked
 * published; then checks nothing was lost and the running relays share every partition.
 */
async function drain(w: World): Promise<void> {
  w.trace.push('drain')
  w.poison.clear()
  w.transientFailures = 0
  for (const process of w.processes()) {
    process.crashAt = undefined
    if (process.stopping !== undefined) await w.settle(process.stopping, `${process.name}'s stop`)
  }
  if (!w.processes().some((p) => p.relay.state === 'running')) await w.start('A')
  const unmarked = () =>
    w.db.query<{ event_id: string; dead_at: number | null }>(
      `SELECT event_id, dead_at FROM ${outboxTable} WHERE published_at IS NULL ORDER BY id`,
    )
  for (let step = 0; step < 300; step++) {
    const left = await unmarked()
    if (left.length === 0) break
    if (left.some((r) => r.dead_at !== null)) await w.redrive('all')
    await w.clock.advance(100)
  }
  const left = (await unmarked()).map((r) => `${r.event_id}${r.dead_at === null ? '' : ' (dead)'}`)
  expect(left, `events never marked published\n${w.describe()}`).toEqual([])
  // Every event is published, so none can be parked (a read never takes a parked row); and no
  // published row keeps a blocker either.
  const parked = await w.db.query<{ event_id: string }>(
    `SELECT event_id FROM ${outboxTable} WHERE parked_behind IS NOT NULL`,
  )
  expect(parked, `rows left parked\n${w.describe()}`).toEqual([])
  await checkInvariants(w)
  const everPublished = new Set(w.log.map((p) => p.id))
  const lost = [...w.committed.values()].flat().filter((id) => !everPublished.has(id))
  expect(lost, `committed events never published\n${w.describe()}`).toEqual([])
  // A few lease rounds later the running relays have rebalanced over every partition.
  await w.clock.advance(2 * leaseMs)
  const running = w.processes().filter((p) => p.relay.state === 'running')
  const owned = running.map((p) => `${p.name}: ${p.relay.partitions().length}`)
  expect(
    running.reduce((n, p) => n + p.relay.partitions().length, 0),
    `partitions owned by the running relays (${owned.join(', ')})\n${w.describe()}`,
  ).toBe(partitionCount)
}

/** Stops whatever still runs, so that nothing of this sequence outlives it. */
async function shutDown(w: World): Promise<void> {
  w.poison.clear()
  w.transientFailures = 0
  await w.stopAll()
}

function tally(w: World): void {
  coverage.runs++
  if (w.deadLettered.size > 0) coverage.withDeadLetter++
  if (w.commandRedrives > 0) coverage.withRedriveCommand++
  if (w.heldBackReleased > 0) coverage.withHeldBackReleased++
  if (w.crashes > 0) coverage.withCrash++
  if (w.takeovers > 0) coverage.withTakeover++
  if (w.parkedEver.size > 0) coverage.withParked++
  if (w.parkedReleased > 0) coverage.withParkedReleased++
}

describe('outbox relay dead letters and redrive, interleaved, on sqlite', () => {
  let t: OutboxDb
  let writer: SqlDriver
  let relayDbs: Record<SlotName, SqlDriver>
  let run = 0

  beforeAll(async () => {
    t = await sqliteTarget.open('relay_dead_letters_model')
    writer = await t.another()
    relayDbs = { A: await t.another(), B: await t.another(), C: await t.another() }
  })
  afterAll(async () => {
    await t?.close()
  })

  it(
    'poison events dead-letter, hold back only their aggregate, and are published in order once redriven',
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.commands(commands, { maxCommands: 40 }), async (cmds) => {
          await resetOutbox(t.db)
          const world = new World(++run, t.db, writer, relayDbs)
          try {
            await fc.asyncModelRun(() => ({ model: {}, real: world }), cmds)
            await drain(world)
            tally(world)
          } finally {
            await shutDown(world)
          }
        }),
        { numRuns: scaled(1_000, 200) },
      )
      expectCovered(coverage, [
        'withDeadLetter',
        'withRedriveCommand',
        'withHeldBackReleased',
        'withCrash',
        'withTakeover',
        'withParked',
        'withParkedReleased',
      ])
    },
    scaled(1_800_000, 120_000),
  )
})
