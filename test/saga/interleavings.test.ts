// A model-based hunt for races in the saga engine, on real SQLite and PostgreSQL. fast-check
// generates command sequences over a few instances of one three-step saga and two workers,
// each with its own clock (a paused or skewed process): polls, polls whose action hangs
// mid-step while the other worker runs on, clock jumps past timeouts, leases and retry delays,
// scripted transient and permanent failures of actions and compensations, operator cancels and
// retries.
//
// Every action and compensation records its effect with ctx.atCommit, so the effect commits in
// the transaction that records the step. After every command, and again once both workers
// have drained everything, each instance's committed effects must read as one run of the saga:
// each step done at most once and in order, compensations at most once, only of done steps (and
// first of the step after them when an attempt of it recorded no outcome or was cut off at its
// timeoutMs), in reverse order, nothing done after compensating began; and the stored step
// states must agree with those effects (they are written in the same transaction). At the end
// every instance must be finished or parked, and its status must match its effects.
import { randomUUID } from 'node:crypto'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  retrySaga,
  type SagaDefinition,
  SagaStateConflictError,
  type SagaWorker,
  type StepContext,
  sagaTable,
  startSaga,
} from '../../src/saga/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

const stepNames = ['reserve', 'charge', 'ship'] as const
type StepName = (typeof stepNames)[number]
/** Steps with a compensation; `ship` has none (it is the last step). */
const compensable: readonly StepName[] = ['reserve', 'charge']
type WorkerName = 'A' | 'B'
type Failure = 'transient' | 'permanent'
type Target = `do:${StepName}` | `undo:${StepName}`

const leaseMs = 1_000

/** A retryable failure, as a 503 would be. */
function transient(what: string): Error {
  return Object.assign(new Error(`${what}: unavailable`), { status: 503 })
}

/** The system under test for one generated sequence, and what the commands script. */
class World {
  readonly saga: SagaDefinition<Record<string, never>, unknown>
  readonly clocks: Record<WorkerName, ManualClock>
  readonly workers: Record<WorkerName, SagaWorker>
  readonly ids: string[] = []
  /** Outcomes for the next invocations of each action or compensation (default: success). */
  readonly failures = new Map<Target, Failure[]>()
  /** Set to make the next invocation (of anything) hang until released. */
  hangNext: { entered(): void; release: Promise<void> } | undefined
  /** The poll whose invocation hangs, and how to release it. */
  pending: { worker: WorkerName; poll: Promise<number>; release(): void } | undefined
  readonly log: string[] = []

  constructor(
    readonly db: SqlDriver,
    dbB: SqlDriver,
  ) {
    const invoke =
      (target: Target) =>
      async (ctx: StepContext<Record<string, never>, unknown>): Promise<void> => {
        const hang = this.hangNext
        if (hang !== undefined) {
          this.hangNext = undefined
          hang.entered()
          await hang.release
        }
        const failure = this.failures.get(target)?.shift()
        this.log.push(
          `${ctx.sagaId.slice(0, 4)} ${target} attempt ${ctx.attempt}: ${failure ?? 'ok'}`,
        )
        if (failure === 'transient') throw transient(target)
        if (failure === 'permanent') throw new Error(`${target}: refused for good`)
        ctx.atCommit(async (tx) => {
          await tx.execute('INSERT INTO model_effects (saga_id, what) VALUES ($1, $2)', [
            ctx.sagaId,
            target,
          ])
        })
      }
    const quick = { maxAttempts: 2, baseDelayMs: 100, jitter: 'none' } as const
    this.saga = defineSaga({
      name: `model-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: stepNames.map((name) => ({
        name,
        action: invoke(`do:${name}`),
        // compensationRetry only with a compensation: defineSaga refuses it on a step without.
        ...(compensable.includes(name)
          ? { compensation: invoke(`undo:${name}`), compensationRetry: quick }
          : {}),
        retry: quick,
        // Shorter than a lease: a hang and a clock jump cut the attempt off at it (an unknown
        // outcome, compensated as a lost attempt is) while the worker still holds the lease.
        timeoutMs: 300,
      })),
    }) as unknown as SagaDefinition<Record<string, never>, unknown>
    this.clocks = { A: new ManualClock(1_000_000), B: new ManualClock(1_000_000) }
    const worker = (name: WorkerName, db: SqlDriver) =>
      createSagaWorker({
        db,
        sagas: [this.saga],
        clock: this.clocks[name],
        leaseMs,
        workerId: `${name}-${this.saga.name}`,
        listen: false,
        concurrency: 2,
      })
    this.workers = { A: worker('A', db), B: worker('B', dbB) }
  }

  async releasePending(): Promise<void> {
    const pending = this.pending
    if (pending === undefined) return
    this.pending = undefined
    pending.release()
    await pending.poll
  }
}

/** A step's stored state, as far as the checks read it. */
interface StoredStep {
  readonly name: string
  readonly status: string
  readonly outcomeUnknown?: boolean
}

interface Snapshot {
  readonly status: string
  readonly steps: readonly StoredStep[]
  readonly effects: Target[]
}

/**
 * Each instance's status, step states and committed effects, read by one statement so that
 * they come from one snapshot: runs of a poll whose other invocation hangs go on meanwhile.
 */
async function snapshot(world: World): Promise<Map<string, Snapshot>> {
  const rows = await world.db.query<{
    id: string
    status: string
    steps: string
    what: Target | null
  }>(
    `SELECT s.id, s.status, s.steps, e.what FROM ${sagaTable} s
LEFT JOIN model_effects e ON e.saga_id = s.id
WHERE s.name = $1 ORDER BY s.id, e.seq`,
    [world.saga.name],
  )
  const byId = new Map<string, Snapshot>()
  for (const row of rows) {
    let entry = byId.get(row.id)
    if (entry === undefined) {
      entry = { status: row.status, steps: JSON.parse(row.steps), effects: [] }
      byId.set(row.id, entry)
    }
    if (row.what !== null) entry.effects.push(row.what)
  }
  expect([...byId.keys()].sort()).toEqual([...world.ids].sort())
  return byId
}

/**
 * Checks that `effects` read as one run of the saga, and that the stored step states agree
 * with them. Returns the steps done and the compensations a finished run has, for the final
 * status checks.
 */
function checkRun(
  id: string,
  effects: readonly Target[],
  steps: readonly StoredStep[],
): { done: StepName[]; toUndo: StepName[] } {
  const done: StepName[] = []
  const undone: StepName[] = []
  // A step an attempt of which recorded no outcome (a hang that lost its lease) or was cut off
  // at its timeoutMs is compensated too, first, though its effect (committed only with its
  // outcome) is not there.
  const unknown = (name: StepName | undefined): boolean =>
    name !== undefined &&
    compensable.includes(name) &&
    steps.find((s) => s.name === name)?.outcomeUnknown === true
  const toUndo = (): StepName[] => {
    const next = stepNames[done.length]
    return [
      ...(unknown(next) ? [next!] : []),
      ...done.filter((s) => compensable.includes(s)).reverse(),
    ]
  }
  for (const effect of effects) {
    const [kind, step] = effect.split(':') as ['do' | 'undo', StepName]
    if (kind === 'do') {
      expect(undone, `${id}: ${effect} after compensating began (${effects})`).toEqual([])
      expect(step, `${id}: steps out of order or repeated (${effects})`).toBe(
        stepNames[done.length],
      )
      done.push(step)
    } else {
      const expected = toUndo()[undone.length]
      expect(
        step,
        `${id}: compensation out of order, repeated or of a step not done (${effects})`,
      ).toBe(expected)
      undone.push(step)
    }
  }
  for (const name of stepNames) {
    const status = steps.find((s) => s.name === name)?.status
    const wasDone = done.includes(name)
    expect(
      status === 'completed' || (status === 'compensated' && !(unknown(name) && !wasDone)),
      `${id}: step ${name} is ${status} but its effect was ${wasDone ? '' : 'not '}committed (${effects})`,
    ).toBe(wasDone)
    expect(
      status === 'compensated',
      `${id}: step ${name} is ${status}, its compensation was ${undone.includes(name) ? '' : 'not '}committed (${effects})`,
    ).toBe(undone.includes(name))
  }
  return { done, toUndo: toUndo() }
}

async function checkAll(world: World): Promise<void> {
  for (const [id, { effects, steps }] of await snapshot(world)) checkRun(id, effects, steps)
}

type Command = fc.AsyncCommand<Record<string, never>, World>

class Start implements Command {
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    const { id } = await startSaga(w.db, w.saga, {}, { clock: w.clocks.A })
    w.ids.push(id)
    await checkAll(w)
  }
  toString = () => 'start'
}

class Poll implements Command {
  constructor(readonly worker: WorkerName) {}
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    // The worker with a hung invocation polls again only for its free slot.
    await w.workers[this.worker].poll()
    await checkAll(w)
  }
  toString = () => `poll ${this.worker}`
}

class PollHanging implements Command {
  constructor(readonly worker: WorkerName) {}
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    if (w.pending !== undefined) return
    const entered = gate()
    const release = gate()
    w.hangNext = { entered: entered.open, release: release.promise }
    const poll = w.workers[this.worker].poll()
    const hung = await Promise.race([entered.promise.then(() => true), poll.then(() => false)])
    if (hung) w.pending = { worker: this.worker, poll, release: release.open }
    else w.hangNext = undefined
    await checkAll(w)
  }
  toString = () => `poll ${this.worker}, its next invocation hangs`
}

class Release implements Command {
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    await w.releasePending()
    await checkAll(w)
  }
  toString = () => 'release the hung invocation'
}

class Advance implements Command {
  constructor(
    readonly worker: WorkerName,
    readonly ms: number,
  ) {}
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    await w.clocks[this.worker].advance(this.ms)
    await checkAll(w)
  }
  toString = () => `advance ${this.worker}'s clock ${this.ms} ms`
}

class Fail implements Command {
  constructor(
    readonly target: Target,
    readonly failure: Failure,
    readonly times: number,
  ) {}
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    const queue = w.failures.get(this.target) ?? []
    for (let i = 0; i < this.times; i++) queue.push(this.failure)
    w.failures.set(this.target, queue)
  }
  toString = () => `next ${this.times} ${this.target} fail (${this.failure})`
}

class Operator implements Command {
  constructor(
    readonly action: 'cancel' | 'retry',
    readonly index: number,
  ) {}
  check = (_m: Record<string, never>) => true
  async run(_m: Record<string, never>, w: World): Promise<void> {
    if (w.ids.length === 0) return
    const id = w.ids[this.index % w.ids.length]!
    const act = this.action === 'cancel' ? cancelSaga : retrySaga
    try {
      await act(w.db, id, { clock: w.clocks.A })
    } catch (error) {
      // Refused when the instance is not in a state that allows it: that is the contract.
      if (!(error instanceof SagaStateConflictError)) throw error
    }
    await checkAll(w)
  }
  toString = () => `${this.action} instance #${this.index}`
}

const workerArb = fc.constantFrom<WorkerName>('A', 'B')
const targets: Target[] = [
  ...stepNames.map((s) => `do:${s}` as const),
  ...compensable.map((s) => `undo:${s}` as const),
]
const advance = fc
  .tuple(workerArb, fc.constantFrom(50, 400, leaseMs + 1, 5 * leaseMs))
  .map(([w, ms]) => new Advance(w, ms))
// Listed twice: hangs, releases and clock jumps are what a takeover needs, in that order, and
// repeated failures are what parks a compensation (it has two attempts).
const commands = [
  fc.constant(new Start()),
  workerArb.map((w) => new Poll(w)),
  workerArb.map((w) => new PollHanging(w)),
  workerArb.map((w) => new PollHanging(w)),
  fc.constant(new Release()),
  advance,
  advance,
  fc
    .tuple(
      fc.constantFrom(...targets),
      fc.constantFrom<Failure>('transient', 'permanent'),
      fc.integer({ min: 1, max: 3 }),
    )
    .map(([t, f, times]) => new Fail(t, f, times)),
  fc
    .tuple(fc.constantFrom<'cancel' | 'retry'>('cancel', 'retry'), fc.nat(3))
    .map(([a, i]) => new Operator(a, i)),
]

/** Releases what hangs, then polls on both workers, past every lease and delay, until idle. */
async function drain(world: World): Promise<void> {
  await world.releasePending()
  world.failures.clear()
  for (let round = 0; round < 40; round++) {
    await world.clocks.A.advance(10 * leaseMs)
    await world.clocks.B.advance(10 * leaseMs)
    const claimed = (await world.workers.A.poll()) + (await world.workers.B.poll())
    if (claimed === 0) return
  }
  throw new Error(`the instances did not settle:\n${world.log.join('\n')}`)
}

async function checkSettled(world: World): Promise<void> {
  for (const [id, saga] of await snapshot(world)) {
    const run = checkRun(id, saga.effects, saga.steps)
    const done = run.done
    const undone = saga.effects.filter((e) => e.startsWith('undo:')).length
    const toUndo = run.toUndo.length
    switch (saga.status) {
      case 'completed':
        expect(done, id).toEqual([...stepNames])
        expect(undone, id).toBe(0)
        break
      case 'compensated':
      case 'cancelled':
        expect(done.length, `${id} ${saga.status}`).toBeLessThan(stepNames.length)
        expect(undone, `${id} ${saga.status}: every done step compensated`).toBe(toUndo)
        break
      case 'failed':
        // Parked: a compensation ran out of attempts (the failures were cleared only now).
        expect(undone, `${id} parked`).toBeLessThan(toUndo)
        break
      default:
        throw new Error(`${id} is still ${saga.status} after draining:\n${world.log.join('\n')}`)
    }
  }
}

describe.each(dbTargets)('saga engine interleavings on $dialect', (target) => {
  let t: TestDb
  let dbB: SqlDriver

  beforeAll(async () => {
    t = await target.open('saga_interleavings')
    dbB = await t.reopen()
    await t.db.execute(
      `CREATE TABLE model_effects (seq ${target.dialect === 'sqlite' ? 'INTEGER PRIMARY KEY AUTOINCREMENT' : 'BIGSERIAL PRIMARY KEY'}, saga_id TEXT NOT NULL, what TEXT NOT NULL)`,
    )
  })
  afterAll(async () => {
    await t?.close()
  })

  it('every interleaving of polls, hangs, clock jumps, failures and operators leaves each instance one valid run', async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 30 }), async (cmds) => {
        const world = new World(t.db, dbB)
        try {
          await fc.asyncModelRun(() => ({ model: {}, real: world }), cmds)
          await drain(world)
          await checkSettled(world)
        } finally {
          await world.releasePending().catch(() => {})
        }
      }),
      { numRuns: target.dialect === 'sqlite' ? 300 : 100 },
    )
  }, 240_000)
})
