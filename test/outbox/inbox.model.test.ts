// A model-based hunt for races in the inbox, on real SQLite and PostgreSQL. fast-check generates
// command sequences of deliveries of three message ids to two consumers over two connections
// (as two processes would have), through inbox.handle in a transaction or through
// inboxHandler, whose handler writes an effect row and then succeeds or throws; pruneInbox runs
// concurrently over either connection, with a trigger logging every inbox record it deletes.
// fc.scheduler decides when each handler goes on (before and after its effect), so transactions
// stay open across other deliveries, prunes and clock jumps.
//
// After every command, and at the end: per consumer and message, the effect committed at most
// once plus once per record pruned (the dedupe window is the only way to run it again); every
// effect committed is matched by a record still there or one pruned; an effect committed belongs
// to a delivery that reported it ran (never to one that reported a duplicate or a failure); a
// delivery that reported its effect has it committed; a failed delivery failed for its handler's
// error only. At the end, after every delivery settled and each message was delivered once more,
// every record has its effect and every message delivered had its effect.
//
// Results are copied before the database is read: a delivery settling meanwhile would otherwise
// be checked against a snapshot taken before it committed. On PostgreSQL the three tables are read
// in one statement (one snapshot): separate reads could see a record pruned between them neither
// in the inbox nor in the log.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createInbox, inboxHandler, inboxTable, pruneInbox } from '../../src/outbox/index.js'
import type { SqlDriver, SqlExecutor } from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { scaled } from '../support/scale.js'
import { expectCovered, Step } from './model.js'
import { dbTargets, delay, type OutboxDb } from './support.js'

const consumers = ['billing', 'emails'] as const
const messageIds = ['m1', 'm2', 'm3'] as const
type Consumer = (typeof consumers)[number]

/** How a delivery ended, as its caller saw it. */
interface Outcome {
  readonly consumer: Consumer
  readonly messageId: string
  /** The delivery's number, written into its effect row. */
  readonly n: number
  readonly outcome: 'effect' | 'duplicate' | 'failed'
  readonly error?: string
}

/** How often the runs reached the situations this test is after (checked at the end). */
const newCoverage = () => ({
  runs: 0,
  withDuplicate: 0,
  withFailure: 0,
  /** A message whose effect ran again after its record was pruned. */
  withRerunAfterPrune: 0,
  /** Two deliveries of one message to one consumer in flight at once. */
  withConcurrentCopies: 0,
})

/** The system under test for one generated sequence. */
class World {
  readonly clock = new ManualClock(1_700_000_000_000)
  readonly inboxes = {
    billing: createInbox({ consumer: 'billing', clock: this.clock }),
    emails: createInbox({ consumer: 'emails', clock: this.clock }),
  }
  readonly inflight = new Set<Promise<void>>()
  readonly results: Outcome[] = []
  readonly trace: string[] = []
  /** Deliveries started and not settled, per consumer/message. */
  readonly #open = new Map<string, number>()
  concurrentCopies = 0
  #deliveries = 0

  constructor(
    readonly s: fc.Scheduler,
    /** The observer's connection. */
    readonly db: SqlDriver,
    readonly drivers: readonly SqlDriver[],
  ) {}

  #track(work: Promise<void>): void {
    this.inflight.add(work)
    void work.finally(() => this.inflight.delete(work))
  }

  /** Delivers `messageId` to `consumer` over connection `d`; its handler throws if `fails`. */
  deliver(consumer: Consumer, messageId: string, fails: boolean, d: number, viaHandler: boolean) {
    const n = ++this.#deliveries
    const label = `#${n} ${consumer}/${messageId} on d${d}${fails ? ' (handler throws)' : ''}${viaHandler ? ' via inboxHandler' : ''}`
    this.trace.push(`deliver ${label}`)
    const key = `${consumer}/${messageId}`
    const open = (this.#open.get(key) ?? 0) + 1
    this.#open.set(key, open)
    if (open > 1) this.concurrentCopies++
    const handler = async (tx: SqlExecutor): Promise<number> => {
      await this.s.schedule(Promise.resolve(), `${label} handler starts`)
      await tx.execute('INSERT INTO effects (consumer, message_id, delivery) VALUES ($1, $2, $3)', [
        consumer,
        messageId,
        n,
      ])
      await this.s.schedule(Promise.resolve(), `${label} handler ends`)
      if (fails) throw new Error(`handler ${n} fails`)
      return n
    }
    const db = this.drivers[d]!
    let delivered: Promise<'effect' | 'duplicate'>
    if (viaHandler) {
      let ran = false
      const handle = inboxHandler(
        db,
        consumer,
        async (tx) => {
          ran = true
          await handler(tx)
        },
        { clock: this.clock },
      )
      const message = {
        id: messageId,
        topic: 't',
        key: 'k',
        payload: new Uint8Array(),
        headers: {},
      }
      delivered = handle({ ...message, deliveryCount: 1 }).then(() =>
        ran ? 'effect' : 'duplicate',
      )
    } else {
      delivered = db
        .transaction((tx) => this.inboxes[consumer].handle(tx, { id: messageId }, handler))
        .then((result) => (result.duplicate ? 'duplicate' : 'effect'))
    }
    const settled = delivered.then(
      (outcome) => {
        this.results.push({ consumer, messageId, n, outcome })
      },
      (error: unknown) => {
        const text = error instanceof Error ? error.message : String(error)
        this.results.push({ consumer, messageId, n, outcome: 'failed', error: text })
      },
    )
    this.#track(
      settled.then(() => {
        this.#open.set(key, (this.#open.get(key) ?? 1) - 1)
        this.trace.push(`  settled ${label}: ${this.results.at(-1)?.outcome}`)
      }),
    )
  }

  /** Prunes records older than `olderThanMs` over connection `d`, concurrently. */
  prune(olderThanMs: number, d: number): void {
    this.trace.push(`prune records older than ${olderThanMs} ms on d${d}`)
    const pruning = pruneInbox(this.drivers[d]!, { olderThanMs, clock: this.clock }).then(
      (count) => void this.trace.push(`  pruned ${count}`),
      (error: unknown) => void this.trace.push(`  prune failed: ${String(error)}`),
    )
    this.#track(pruning)
  }

  /** Lets `k` scheduled handler steps go on (waiting a little for the database between). */
  async step(k: number): Promise<void> {
    for (let i = 0; i < k; i++) {
      if (this.s.count() === 0) {
        await delay(2)
        await flushJobs()
      }
      if (this.s.count() === 0) return
      await this.s.waitOne()
    }
  }

  /** Lets every handler go on until every delivery and prune settled. */
  async settleAll(): Promise<void> {
    for (let i = 0; i < 2_000 && this.inflight.size > 0; i++) {
      if (this.s.count() > 0) await this.s.waitOne()
      else await delay(2)
    }
    expect(this.inflight.size, `deliveries never settled\n${this.describe()}`).toBe(0)
  }

  describe(): string {
    return `trace:\n${this.trace.join('\n')}\nresults: ${JSON.stringify(this.results)}`
  }
}

/** Counts rows per consumer/message. */
function countBy(rows: readonly { consumer: string; message_id: string }[]): Map<string, number> {
  const counts = new Map<string, number>()
  for (const r of rows) {
    const key = `${r.consumer}/${r.message_id}`
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  return counts
}

/** The invariants; see the file comment. `final`: every delivery has settled. */
async function checkInvariants(w: World, final: boolean): Promise<void> {
  const reported = [...w.results]
  const rows = await w.db.query<{
    t: string
    consumer: string
    message_id: string
    delivery: number | string
  }>(
    `SELECT 'e' AS t, consumer, message_id, delivery FROM effects
     UNION ALL SELECT 'p', consumer, message_id, 0 FROM pruned
     UNION ALL SELECT 'r', consumer, message_id, 0 FROM ${inboxTable}`,
  )
  const effects = rows.filter((r) => r.t === 'e')
  const effectCounts = countBy(effects)
  const pruned = countBy(rows.filter((r) => r.t === 'p'))
  const records = countBy(rows.filter((r) => r.t === 'r'))
  for (const [key, n] of effectCounts) {
    const prunedN = pruned.get(key) ?? 0
    const deliveries = effects.filter((e) => `${e.consumer}/${e.message_id}` === key)
    expect(
      n,
      `${key}: effect committed ${n} times with its record pruned ${prunedN} times (deliveries ${deliveries.map((e) => e.delivery).join(', ')})\n${w.describe()}`,
    ).toBeLessThanOrEqual(1 + prunedN)
    expect(
      (records.get(key) ?? 0) + prunedN,
      `${key}: ${n} effects but ${records.get(key) ?? 0} records and ${prunedN} pruned\n${w.describe()}`,
    ).toBeGreaterThanOrEqual(n)
  }
  const outcomes = new Map(w.results.map((r) => [r.n, r]))
  for (const e of effects) {
    const r = outcomes.get(Number(e.delivery))
    if (r === undefined) continue
    expect(
      r.outcome,
      `${e.consumer}/${e.message_id}: the effect of delivery ${e.delivery} committed, but it reported ${r.outcome} ${r.error ?? ''}\n${w.describe()}`,
    ).toBe('effect')
  }
  const committed = new Set(effects.map((e) => Number(e.delivery)))
  for (const r of reported) {
    if (r.outcome === 'effect') {
      expect(
        committed.has(r.n),
        `delivery ${r.n} reported its effect, none committed\n${w.describe()}`,
      ).toBe(true)
    }
    if (r.outcome === 'failed') {
      expect(
        r.error,
        `delivery ${r.n} of ${r.consumer}/${r.messageId} failed for another reason than its handler\n${w.describe()}`,
      ).toMatch(/^handler \d+ fails$/)
    }
  }
  if (final) {
    const withoutEffect = [...records.keys()].filter((key) => !effectCounts.has(key))
    expect(withoutEffect, `records without their effect\n${w.describe()}`).toEqual([])
  }
}

/** A command that does `act` and checks the invariants. */
const step = (label: string, act: (w: World) => Promise<void> | void) =>
  new Step<World>(label, act, (w) => checkInvariants(w, false))

const consumerArb = fc.constantFrom(...consumers)
const messageArb = fc.constantFrom(...messageIds)
const driverArb = fc.nat(1)
// Deliveries weigh most (one in four of them fails): duplicates need copies in flight.
const commands = [
  fc
    .tuple(consumerArb, messageArb, fc.boolean(), driverArb, fc.boolean())
    .map(([c, m, fails, d, viaHandler]) =>
      step(
        `deliver ${c}/${m}${fails ? ', failing,' : ''} on d${d}${viaHandler ? ' via inboxHandler' : ''}`,
        (w) => w.deliver(c, m, fails, d, viaHandler),
      ),
    ),
  fc
    .tuple(consumerArb, messageArb, driverArb)
    .map(([c, m, d]) =>
      step(`deliver ${c}/${m} on d${d}`, (w) => w.deliver(c, m, false, d, false)),
    ),
  fc.integer({ min: 1, max: 4 }).map((k) => step(`let ${k} handler steps go on`, (w) => w.step(k))),
  fc
    .tuple(fc.constantFrom(0, 50, 1_000), driverArb)
    .map(([ms, d]) => step(`prune older than ${ms} ms on d${d}`, (w) => w.prune(ms, d))),
  fc
    .constantFrom(10, 100, 2_000)
    .map((ms) => step(`advance the clock ${ms} ms`, (w) => w.clock.advance(ms))),
]

function tally(
  coverage: ReturnType<typeof newCoverage>,
  w: World,
  effectRuns: ReadonlyMap<string, number>,
): void {
  coverage.runs++
  if (w.results.some((r) => r.outcome === 'duplicate')) coverage.withDuplicate++
  if (w.results.some((r) => r.outcome === 'failed')) coverage.withFailure++
  if ([...effectRuns.values()].some((n) => n > 1)) coverage.withRerunAfterPrune++
  if (w.concurrentCopies > 0) coverage.withConcurrentCopies++
}

describe.each(dbTargets)('inbox interleavings on $dialect', (target) => {
  let t: OutboxDb
  let drivers: SqlDriver[]
  const coverage = newCoverage()

  beforeAll(async () => {
    t = await target.open('inbox_model')
    await t.db.execute(
      'CREATE TABLE effects (consumer TEXT NOT NULL, message_id TEXT NOT NULL, delivery INTEGER NOT NULL)',
    )
    await t.db.execute('CREATE TABLE pruned (consumer TEXT NOT NULL, message_id TEXT NOT NULL)')
    // A log of the records pruneInbox deletes: each one allows its effect to run once more.
    if (target.dialect === 'sqlite') {
      await t.db.execute(
        `CREATE TRIGGER log_prune AFTER DELETE ON ${inboxTable} BEGIN INSERT INTO pruned VALUES (old.consumer, old.message_id); END`,
      )
    } else {
      await t.db.execute(
        'CREATE FUNCTION log_prune() RETURNS trigger AS $$ BEGIN INSERT INTO pruned VALUES (OLD.consumer, OLD.message_id); RETURN OLD; END $$ LANGUAGE plpgsql',
      )
      await t.db.execute(
        `CREATE TRIGGER log_prune AFTER DELETE ON ${inboxTable} FOR EACH ROW EXECUTE FUNCTION log_prune()`,
      )
    }
    drivers = [await t.another(), await t.another()]
  })
  afterAll(async () => {
    await t?.close()
  })

  it(
    'every interleaving of deliveries, handler failures, prunes and clock jumps runs each effect once per dedupe window',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.commands(commands, { maxCommands: 25 }),
          async (s, cmds) => {
            for (const table of ['effects', 'pruned', inboxTable])
              await t.db.execute(`DELETE FROM ${table}`)
            const w = new World(s, t.db, drivers)
            try {
              await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds)
              await w.settleAll()
              await checkInvariants(w, false)
              // Each message delivered once more, successfully: each must end with its effect.
              const delivered = new Map(w.results.map((r) => [`${r.consumer}/${r.messageId}`, r]))
              for (const r of delivered.values())
                w.deliver(r.consumer, r.messageId, false, 0, false)
              await w.settleAll()
              await checkInvariants(w, true)
              const effects = await t.db.query<{ consumer: string; message_id: string }>(
                'SELECT consumer, message_id FROM effects',
              )
              const effectRuns = countBy(effects)
              expect(
                [...delivered.keys()].filter((key) => !effectRuns.has(key)),
                `messages delivered that never had their effect\n${w.describe()}`,
              ).toEqual([])
              tally(coverage, w, effectRuns)
            } finally {
              await w.settleAll().catch(() => {})
            }
          },
        ),
        { numRuns: scaled(1_000, 150) },
      )
      expectCovered(coverage, [
        'withDuplicate',
        'withFailure',
        'withRerunAfterPrune',
        'withConcurrentCopies',
      ])
    },
    scaled(1_800_000, 120_000),
  )
})
