// A model-based hunt for races in projections, on real SQLite and PostgreSQL. fast-check
// generates command sequences over two event stores on two connections (as two processes would
// have) and one projector of the same projection on each: appends (at any version or at the
// exact one, awaited or left in flight) of events the projection applies, ignores, or fails on
// the first time it applies them to its live tables and to a rebuild's; catchUp; start and stop
// of the background loops; rebuilds with small batches (awaited or left in flight, so they race
// each other, the loops and the appends); clock ticks for the loops' polls and retries. Each run
// picks whether the projection runs async (projectors) or inline (in the appends'
// transactions). `npm test` runs 60 sequences per database, BREAKWATER_SCALE=full 1000.
//
// At each check, once every operation in flight has settled and the loops are stopped: both
// projectors read one checkpoint, and it never goes back; the read model is the pure fold of
// the log up to it (each event applied once, none missing, per-stream totals exact); no rebuild
// left its fresh (`__r`) or old (`__old`) tables or its generation in the checkpoint row, failed
// or superseded or not; a rebuild never swapped in a checkpoint behind the one checked before
// it began; operations failed only for the reasons the run provokes. At the end the projection
// catches up to the log's head.
//
// Every run has its own projection, tables and event types, on a log emptied before it (a
// rebuild reads the whole log).
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  type Projector,
  type RecordedEvent,
} from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { scaled } from '../support/scale.js'
import { dbTargets, rebuildGenerationOf, type TestDb, tablesLike, useTestDb } from './databases.js'

type Kind = 'add' | 'other' | 'boom'
type Event = { type: string; data: { v: number } }

/** Errors an operation may end with in these runs; anything else fails the run. */
const expectedCodes = new Set([
  // An append at the exact version raced another append to its stream.
  'WRONG_EXPECTED_VERSION',
  // A `boom` event failed its first apply (a live batch or a rebuild; an inline append rejects
  // with the apply's own error).
  'PROJECTION_FAILED',
  // A later rebuild took over.
  'REBUILD_SUPERSEDED',
  // An inline swap kept finding its tables held by appends (PostgreSQL).
  'REBUILD_CONTENDED',
])

/** How often the runs reached the situations this test is after (checked at the end). */
const newCoverage = () => ({
  runs: 0,
  inline: 0,
  rebuilt: 0,
  /** A rebuild failed on an event's apply (its clean-up ran). */
  rebuildFailed: 0,
  rebuildSuperseded: 0,
  /** A live batch or inline append failed on an event's apply. */
  liveFailed: 0,
})

const streams = ['a', 'b', 'c'] as const

/** The system under test for one generated sequence. */
class World {
  readonly clock = new ManualClock(1_700_000_000_000)
  readonly name: string
  readonly stores: readonly EventStore[]
  readonly projectors: readonly Projector[]
  readonly running = [false, false]
  readonly inflight = new Set<Promise<void>>()
  readonly trace: string[] = []
  /**
   * `boom` events whose apply has thrown: each throws the first time it is applied to the live
   * tables and the first time to a rebuild's fresh ones.
   */
  readonly #thrown = new Set<string>()
  /** The checkpoint seen by the last check. */
  checkpoint = 0
  #seq = 0
  readonly outcomes = { rebuilt: 0, rebuildFailed: 0, rebuildSuperseded: 0, liveFailed: 0 }

  constructor(
    readonly db: SqlDriver,
    drivers: readonly SqlDriver[],
    readonly run: number,
    readonly inline: boolean,
  ) {
    this.name = `pm${run}`
    const projection = this.#projection()
    this.stores = drivers.map((d) =>
      createEventStore(d, inline ? { inlineProjections: [projection] } : {}),
    )
    this.projectors = this.stores.map((store) =>
      createProjector(store, projection, {
        batchSize: 3,
        pollIntervalMs: 10,
        retryBaseDelayMs: 2,
        retryMaxDelayMs: 10,
        clock: this.clock,
        onError: (error) => {
          this.outcomes.liveFailed++
          this.trace.push(`  live batch failed: ${describeError(error)}`)
        },
      }),
    )
  }

  type(kind: Kind): string {
    return `${this.name}.${kind}`
  }

  get tables(): readonly string[] {
    return [`${this.name}_applied`, `${this.name}_totals`]
  }

  #projection() {
    const [applied, totals] = [`${this.name}_applied`, `${this.name}_totals`]
    return defineProjection<Event>({
      name: this.name,
      eventTypes: [this.type('add'), this.type('boom')],
      tables: {
        [applied]: (t) => [
          `CREATE TABLE ${t} (position BIGINT NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL)`,
        ],
        [totals]: (t) => [
          `CREATE TABLE ${t} (stream TEXT PRIMARY KEY, n INTEGER NOT NULL, sum INTEGER NOT NULL)`,
        ],
      },
      apply: async (event, { tx, table }) => {
        const once = `${event.id} ${table(applied) === applied ? 'live' : 'fresh'}`
        if (event.type === this.type('boom') && !this.#thrown.has(once)) {
          this.#thrown.add(once)
          throw new Error(`boom once at ${event.position}`)
        }
        await tx.execute(
          `INSERT INTO ${table(applied)} (position, stream, version) VALUES ($1, $2, $3)`,
          [event.position, event.stream, event.version],
        )
        const t = table(totals)
        await tx.execute(
          `INSERT INTO ${t} (stream, n, sum) VALUES ($1, 1, $2) ON CONFLICT (stream) DO UPDATE SET n = ${t}.n + 1, sum = ${t}.sum + $2`,
          [event.stream, event.data.v],
        )
      },
    })
  }

  /** Tracks `work` (labelled) until it settles; awaits it when `wait`. */
  async track(label: string, work: Promise<unknown>, wait: boolean): Promise<void> {
    this.trace.push(`${label}${wait ? '' : ' (in flight)'}`)
    const settled = work.then(
      () => {},
      (error: unknown) => {
        const code = (error as { code?: unknown } | null)?.code
        this.trace.push(`  ${label} failed: ${describeError(error)}`)
        // An inline append rejects with what its projection's apply threw, as it is.
        const inlineApply =
          this.inline &&
          label.startsWith('append') &&
          error instanceof Error &&
          /^boom once at \d+$/.test(error.message)
        if (label.startsWith('rebuild')) {
          if (code === 'PROJECTION_FAILED') this.outcomes.rebuildFailed++
          if (code === 'REBUILD_SUPERSEDED') this.outcomes.rebuildSuperseded++
        } else if (code === 'PROJECTION_FAILED' || inlineApply) this.outcomes.liveFailed++
        expect(
          inlineApply || expectedCodes.has(String(code)),
          `${label} failed unexpectedly: ${describeError(error)}\n${this.describe()}`,
        ).toBe(true)
      },
    )
    this.inflight.add(settled)
    const forget = () => void this.inflight.delete(settled)
    settled.then(forget, forget)
    if (wait) await settled
  }

  async append(who: number, stream: string, n: number, kind: Kind, exact: boolean, wait: boolean) {
    const store = this.stores[who]!
    const name = `${this.name}-${stream}`
    const events = Array.from({ length: n }, () => ({
      type: this.type(kind),
      data: { v: ++this.#seq },
    }))
    const label = `append ${n} ${kind} to ${stream} on s${who}${exact ? ' at its version' : ''}`
    if (exact) {
      const { version } = await store.readStream(name, { limit: 0 })
      await this.track(label, store.append(name, events, { expectedVersion: version }), wait)
    } else await this.track(label, store.append(name, events), wait)
  }

  async rebuild(who: number, batchSize: number, wait: boolean) {
    const before = this.checkpoint
    const label = `rebuild on p${who} (batches of ${batchSize})`
    const rebuilt = this.projectors[who]!.rebuild({ batchSize }).then((result) => {
      this.outcomes.rebuilt++
      this.trace.push(`  ${label} swapped in ${result.position}`)
      expect(
        result.position,
        `${label} swapped in a checkpoint behind ${before}\n${this.describe()}`,
      ).toBeGreaterThanOrEqual(before)
    })
    await this.track(label, rebuilt, wait)
  }

  start(who: number): boolean {
    if (this.inline || this.running[who]) return false
    this.trace.push(`start p${who}`)
    this.projectors[who]!.start()
    this.running[who] = true
    return true
  }

  async stop(who: number): Promise<boolean> {
    if (this.inline || !this.running[who]) return false
    this.trace.push(`stop p${who}`)
    this.running[who] = false
    await this.projectors[who]!.stop()
    return true
  }

  /** Settles every operation in flight; rejects with the first failure among them. */
  async settle(): Promise<void> {
    let failure: { error: unknown } | undefined
    while (this.inflight.size > 0) {
      for (const outcome of await Promise.allSettled([...this.inflight])) {
        if (outcome.status === 'rejected') failure ??= { error: outcome.reason }
      }
    }
    if (failure !== undefined) throw failure.error
  }

  describe(): string {
    return `run ${this.run} (${this.inline ? 'inline' : 'async'}):\n${this.trace.join('\n')}`
  }

  /** The invariants; see the file comment. `final`: catch up first, and reach the head. */
  async check(final: boolean): Promise<void> {
    await this.settle()
    const wasRunning = [...this.running]
    for (const who of [0, 1]) await this.stop(who)
    if (final) {
      // Each `boom` event fails once on the live tables: catch-ups get past every one of them.
      for (let i = 0; ; i++) {
        try {
          await this.projectors[0]!.catchUp()
          break
        } catch (error) {
          const code = (error as { code?: unknown } | null)?.code
          if (code !== 'PROJECTION_FAILED' || i > this.#seq) throw error
        }
      }
    }
    const why = this.describe()
    const [cp, cp1] = [await this.projectors[0]!.position(), await this.projectors[1]!.position()]
    expect(cp1, `the projectors read different checkpoints\n${why}`).toBe(cp)
    expect(cp, `the checkpoint went back\n${why}`).toBeGreaterThanOrEqual(this.checkpoint)
    this.checkpoint = cp
    this.trace.push(`  checked at ${cp}`)

    const log = await allEvents(this.stores[0]!)
    const folded = log.filter(
      (e) => e.position <= cp && (e.type === this.type('add') || e.type === this.type('boom')),
    )
    const [appliedTable, totalsTable] = this.tables
    const applied = await this.db.query<{ position: unknown }>(
      `SELECT position FROM ${appliedTable} ORDER BY position`,
    )
    expect(
      applied.map((r) => Number(r.position)),
      `the events applied are not the log's up to ${cp}\n${why}`,
    ).toEqual(folded.map((e) => e.position))
    const totals = new Map<string, { n: number; sum: number }>()
    for (const e of folded) {
      const t = totals.get(e.stream) ?? { n: 0, sum: 0 }
      totals.set(e.stream, { n: t.n + 1, sum: t.sum + e.data.v })
    }
    const rows = await this.db.query<{ stream: string; n: unknown; sum: unknown }>(
      `SELECT stream, n, sum FROM ${totalsTable} ORDER BY stream`,
    )
    expect(
      rows.map((r) => ({ stream: r.stream, n: Number(r.n), sum: Number(r.sum) })),
      `the totals are not the fold of the log up to ${cp}\n${why}`,
    ).toEqual([...totals].sort().map(([stream, t]) => ({ stream, ...t })))

    // No rebuild is in flight now: none may have left tables or its generation behind.
    expect(
      await tablesLike(this.db, `${this.name}_`),
      `tables left behind by a rebuild\n${why}`,
    ).toEqual([...this.tables].sort())
    expect(
      await rebuildGenerationOf(this.db, this.name),
      `a rebuild generation left in the checkpoint row\n${why}`,
    ).toBeNull()

    if (final) {
      const head = await this.stores[0]!.headPosition()
      expect(cp, `the projection did not reach the head\n${why}`).toBe(head)
    } else {
      for (const who of [0, 1]) if (wasRunning[who]) this.start(who)
    }
  }
}

function describeError(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code
  return `${String(code)} ${error instanceof Error ? error.message : String(error)}`
}

async function allEvents(store: EventStore): Promise<RecordedEvent<Event>[]> {
  const out: RecordedEvent<Event>[] = []
  for (let from = 0; ; ) {
    const page = (await store.readAll({
      fromPosition: from,
      limit: 1000,
    })) as RecordedEvent<Event>[]
    out.push(...page)
    if (page.length < 1000) return out
    from = page[page.length - 1]!.position + 1
  }
}

type Model = Record<string, never>

/** A command: `act` on the world (checks are commands of their own). */
class Step implements fc.AsyncCommand<Model, World> {
  constructor(
    readonly label: string,
    readonly act: (w: World) => Promise<unknown> | unknown,
  ) {}
  check = () => true
  async run(_m: Model, w: World): Promise<void> {
    await this.act(w)
  }
  toString = () => this.label
}

const who = fc.nat(1)
const wait = fc.boolean()
const commands = [
  fc
    .record({
      who,
      stream: fc.constantFrom(...streams),
      n: fc.integer({ min: 1, max: 3 }),
      kind: fc.constantFrom<Kind>('add', 'add', 'add', 'other', 'boom'),
      exact: fc.boolean(),
      wait,
    })
    .map(
      (c) =>
        new Step(
          `append ${c.n} ${c.kind} to ${c.stream} on s${c.who}${c.exact ? ' at its version' : ''}${c.wait ? '' : ' (in flight)'}`,
          (w) => w.append(c.who, c.stream, c.n, c.kind, c.exact, c.wait),
        ),
    ),
  fc
    .record({ who, wait })
    .map(
      (c) =>
        new Step(`catchUp on p${c.who}${c.wait ? '' : ' (in flight)'}`, (w) =>
          w.track(`catchUp on p${c.who}`, w.projectors[c.who]!.catchUp(), c.wait),
        ),
    ),
  who.map((i) => new Step(`start p${i}`, (w) => w.start(i))),
  who.map((i) => new Step(`stop p${i}`, (w) => w.stop(i))),
  fc
    .record({ who, batch: fc.integer({ min: 1, max: 4 }), wait })
    .map(
      (c) =>
        new Step(
          `rebuild on p${c.who} (batches of ${c.batch})${c.wait ? '' : ' (in flight)'}`,
          (w) => w.rebuild(c.who, c.batch, c.wait),
        ),
    ),
  fc
    .integer({ min: 1, max: 20 })
    .map((ms) => new Step(`advance the clock ${ms} ms`, (w) => w.clock.advance(ms))),
  fc.constant(new Step('check', (w) => w.check(false))),
]

describe.each(dbTargets)('projections against a fold of the log on $dialect', (target) => {
  const t: TestDb = useTestDb(target, 'cqrs_projections_model')
  let other: SqlDriver
  let run = 0
  const coverage = newCoverage()

  beforeAll(async () => {
    other = await t.connect()
  })
  it(
    'appends, projectors, catch-ups and rebuilds racing: the read model is the fold of the log',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.boolean(),
          // Appends weigh most: the others act on what they wrote.
          fc.commands(
            [commands[0]!, commands[0]!, commands[0]!, ...commands, commands[4]!, commands[6]!],
            { maxCommands: 30 },
          ),
          async (inline, cmds) => {
            await t.db.execute('DELETE FROM breakwater_events')
            await t.db.execute('DELETE FROM breakwater_streams')
            const w = new World(t.db, [t.db, other], ++run, inline)
            try {
              // Registered (its tables created) before the first event.
              await w.projectors[0]!.catchUp()
              await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds)
              await w.check(true)
              coverage.runs++
              if (inline) coverage.inline++
              if (w.outcomes.rebuilt > 0) coverage.rebuilt++
              if (w.outcomes.rebuildFailed > 0) coverage.rebuildFailed++
              if (w.outcomes.rebuildSuperseded > 0) coverage.rebuildSuperseded++
              if (w.outcomes.liveFailed > 0) coverage.liveFailed++
            } finally {
              await w.settle().catch(() => {})
              for (const who of [0, 1]) await w.stop(who).catch(() => {})
            }
          },
        ),
        { numRuns: scaled(1_000, 60) },
      )
      for (const [key, n] of Object.entries(coverage)) {
        expect(n, `${key} in ${JSON.stringify(coverage)}`).toBeGreaterThan(0)
      }
    },
    scaled(1_800_000, 120_000),
  )
})
