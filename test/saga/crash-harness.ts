// The crash test's moving parts: worker processes (test/fixtures/saga/worker.ts) that are
// SIGKILLed at named crash points and at random moments, a driver that keeps workers alive
// until every saga has ended, and the checker that judges the outcome from the databases.
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { getSaga, type SagaDefinition, startSaga } from '../../src/saga/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import type { OrderInput } from '../fixtures/saga/order-saga.js'
import { orderInput } from '../fixtures/saga/order-saga.js'
import { type EffectKind, effectCounts } from '../fixtures/saga/order-services.js'
import { compiledFixture } from '../support/compiled-fixture.js'

// Bundled once (compiledFixture), not run through tsx: dozens of workers start per run.
const workerFile = await compiledFixture(
  fileURLToPath(new URL('../fixtures/saga/worker.ts', import.meta.url)),
)

/** A worker process. */
export interface WorkerProcess {
  readonly child: ChildProcess
  readonly id: string
  readonly crashAt: string | undefined
  /** Parsed JSON lines it printed. */
  readonly lines: Record<string, unknown>[]
  /** Set when the test killed it. */
  killedByTest: boolean
  /** How many `step-completed` lines it printed: the progress it made. */
  stepsCompleted(): number
  /** Resolves with how it ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Whether it printed `ready`. */
  ready(): boolean
  /** Stderr, for diagnostics. */
  stderr(): string
}

/** Starts a worker process. */
export function spawnWorker(env: Record<string, string>): WorkerProcess {
  const id = env.SAGA_WORKER_ID ?? `w-${randomUUID().slice(0, 6)}`
  const child = spawn(process.execPath, [workerFile], {
    env: { ...process.env, ...env, SAGA_WORKER_ID: id },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: Record<string, unknown>[] = []
  let completed = 0
  let buffer = ''
  let err = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    buffer += chunk
    let nl = buffer.indexOf('\n')
    while (nl >= 0) {
      const line = buffer.slice(0, nl)
      buffer = buffer.slice(nl + 1)
      if (line.startsWith('{')) {
        const parsed = JSON.parse(line) as Record<string, unknown>
        lines.push(parsed)
        if (parsed.type === 'step-completed') completed++
      }
      nl = buffer.indexOf('\n')
    }
  })
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (chunk: string) => {
    err += chunk
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  )
  return {
    child,
    id,
    crashAt: env.CRASH_POINT,
    lines,
    killedByTest: false,
    stepsCompleted: () => completed,
    exited,
    ready: () => lines.some((l) => l.type === 'ready'),
    stderr: () => err,
  }
}

/** Stops workers: SIGTERM (graceful), then SIGKILL after a while. */
export async function stopWorkers(workers: Iterable<WorkerProcess>): Promise<void> {
  await Promise.all(
    [...workers].map(async (w) => {
      if (w.child.exitCode !== null || w.child.signalCode !== null) return
      w.child.kill('SIGTERM')
      const timer = setTimeout(() => w.child.kill('SIGKILL'), 5_000)
      await w.exited
      clearTimeout(timer)
    }),
  )
}

/** A saga started by the crash test, with the outcome its input calls for. */
export interface StartedOrder {
  readonly sagaId: string
  readonly orderId: string
  readonly failAt: 'reserve' | 'charge' | 'ship' | undefined
}

/** The outcome planned for the i-th order: mostly successes, some failures at each step. */
export function plannedFailure(i: number): StartedOrder['failAt'] {
  if (i % 7 === 3) return 'charge'
  if (i % 11 === 5) return 'ship'
  if (i % 13 === 8) return 'reserve'
  return undefined
}

/** Starts `n` order sagas, numbered from `from`. */
export async function startOrders(
  db: SqlDriver,
  saga: SagaDefinition<OrderInput, unknown>,
  n: number,
  from = 0,
): Promise<StartedOrder[]> {
  const started: StartedOrder[] = []
  for (let i = from; i < from + n; i++) {
    const orderId = `o${i}-${randomUUID().slice(0, 8)}`
    const failAt = plannedFailure(i)
    const { id } = await startSaga(db, saga, orderInput(orderId, failAt), {
      id: `order-${orderId}`,
    })
    started.push({ sagaId: id, orderId, failAt })
  }
  return started
}

/**
 * Every crash point of the order saga: the worker's named points (BREAKWATER_CRASH_AT values)
 * and, as `in-call:<step>`, a kill in the middle of each step's remote call.
 */
export const orderCrashPoints: readonly string[] = [
  'saga:after-claim',
  'in-call:reserve',
  'in-call:charge',
  'in-call:ship',
  ...['reserve', 'charge', 'ship'].flatMap((step) => [
    `saga:before-step:${step}`,
    `saga:after-step-action:${step}`,
    `saga:after-step-commit:${step}`,
  ]),
  ...['reserve', 'charge'].flatMap((step) => [
    `saga:before-compensation:${step}`,
    `saga:after-compensation-action:${step}`,
    `saga:after-compensation-commit:${step}`,
  ]),
]

/** Options of {@link runWithCrashes}. */
export interface CrashRunOptions {
  readonly db: SqlDriver
  readonly saga: SagaDefinition<OrderInput, unknown>
  readonly sagas: StartedOrder[]
  /** Env of every worker (db URL, services, lease). */
  readonly env: Record<string, string>
  /**
   * Crash points each to be hit at least once (a worker per point until it is): `saga:...`
   * values of BREAKWATER_CRASH_AT, or `in-call:<step>`.
   */
  readonly points: readonly string[]
  /** How many random SIGKILLs to deliver. */
  readonly randomKills: number
  /** Workers alive at once. */
  readonly workers: number
  /** Give up after this long. */
  readonly deadlineMs: number
}

/** What happened during a crash run. */
export interface CrashRunReport {
  /** Crash points a worker died at. */
  readonly covered: Set<string>
  /** Random kills delivered, and how many hit a worker that had just started a step. */
  readonly randomKills: number
  readonly killsInsideStep: number
  /** Worker processes started. */
  readonly spawned: number
  /** Extra sagas started to reach uncovered points. */
  readonly extraSagas: number
}

const realSleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

async function unfinished(db: SqlDriver, ids: readonly string[]): Promise<number> {
  const rows = await db.query<{ id: string; status: string }>(
    `SELECT id, status FROM breakwater_sagas WHERE status IN ('running', 'compensating')`,
  )
  const wanted = new Set(ids)
  return rows.filter((r) => wanted.has(r.id)).length
}

/**
 * Keeps `workers` worker processes alive until every saga has ended, every crash point was
 * hit and every random kill delivered. Each new worker takes the next uncovered crash point;
 * random kills go to workers without one, preferring one whose last event was a step start.
 */
export async function runWithCrashes(options: CrashRunOptions): Promise<CrashRunReport> {
  const pending = [...options.points]
  const covered = new Set<string>()
  const alive = new Set<WorkerProcess>()
  const all: WorkerProcess[] = []
  let randomKills = 0
  let killsInsideStep = 0
  let extraSagas = 0
  let nextKillAt = Date.now() + 300
  const deadline = Date.now() + options.deadlineMs
  try {
    for (;;) {
      for (const w of [...alive]) {
        if (w.child.exitCode === null && w.child.signalCode === null) continue
        alive.delete(w)
        const { signal } = await w.exited
        if (w.crashAt !== undefined && signal === 'SIGKILL' && !w.killedByTest)
          covered.add(w.crashAt)
        else if (w.crashAt !== undefined && !covered.has(w.crashAt)) pending.push(w.crashAt)
        if (signal !== 'SIGKILL' && !w.killedByTest) {
          throw new Error(`worker ${w.id} exited on its own (${signal ?? 'code'}): ${w.stderr()}`)
        }
      }
      const open = await unfinished(
        options.db,
        options.sagas.map((s) => s.sagaId),
      )
      const crashWorkersAlive = [...alive].some((w) => w.crashAt !== undefined)
      if (open === 0 && pending.length === 0 && !crashWorkersAlive) {
        if (randomKills >= options.randomKills) break
      }
      if (
        open === 0 &&
        (pending.length > 0 || crashWorkersAlive || randomKills < options.randomKills)
      ) {
        // Work ran out before every crash point (or kill) happened: give the workers more.
        const more = await startOrders(options.db, options.saga, 14, 100_000 + extraSagas)
        options.sagas.push(...more)
        extraSagas += more.length
      }
      while (alive.size < options.workers) {
        const crashAt = pending.shift()
        const w = spawnWorker({
          ...options.env,
          ...(crashAt === undefined
            ? {}
            : crashAt.startsWith('in-call:')
              ? { SAGA_CRASH_IN_CALL: crashAt.slice('in-call:'.length), CRASH_POINT: crashAt }
              : { BREAKWATER_CRASH_AT: crashAt, CRASH_POINT: crashAt }),
        })
        alive.add(w)
        all.push(w)
      }
      if (Date.now() >= nextKillAt && randomKills < options.randomKills) {
        // Only a worker that has completed a step, and not one already killed whose exit has
        // not been seen yet (that kill would count twice). Any ready worker was fair game before:
        // on an overloaded machine a worker took seconds to start, longer than the time between
        // kills, so each was killed as soon as it was ready, inside the first steps of the
        // instances its first claim took. Those were the same few every time (a claim takes the
        // longest-due first, and a dead worker's instances stay that): no step completed while
        // kills remained, and those instances spent their 50 attempts on kills alone.
        const candidates = [...alive].filter(
          (w) => w.crashAt === undefined && w.ready() && !w.killedByTest && w.stepsCompleted() > 0,
        )
        const inside = candidates.filter((w) => w.lines.at(-1)?.type === 'step-started')
        const pool = inside.length > 0 && randomKills % 2 === 0 ? inside : candidates
        const victim = pool[Math.floor(Math.random() * pool.length)]
        if (victim !== undefined) {
          if (victim.lines.at(-1)?.type === 'step-started') killsInsideStep++
          victim.killedByTest = true
          victim.child.kill('SIGKILL')
          randomKills++
          nextKillAt = Date.now() + 150 + Math.random() * 350
        }
      }
      if (Date.now() > deadline) {
        throw new Error(
          `crash run did not finish: ${open} sagas open, points left ${JSON.stringify(pending)}, ` +
            `covered ${covered.size}, kills ${randomKills}; stderr: ${all
              .map((w) => w.stderr())
              .join('\n')
              .slice(-2_000)}`,
        )
      }
      await realSleep(25)
    }
  } finally {
    await stopWorkers(alive)
  }
  return { covered, randomKills, killsInsideStep, spawned: all.length, extraSagas }
}

/**
 * Judges a finished run from the databases: every saga ended completed or compensated as its
 * input calls for; each remote effect exists exactly once for each step the saga recorded as
 * done; each completed step that was compensated has exactly one compensation effect; nothing
 * else happened. Returns the violations (empty when all is well).
 */
export async function checkOrderSagas(
  sagaDb: SqlDriver,
  servicesDb: SqlDriver,
  sagas: readonly StartedOrder[],
): Promise<string[]> {
  const violations: string[] = []
  const counts = await effectCounts(servicesDb)
  const known = new Set(sagas.map((s) => s.orderId))
  for (const orderId of counts.keys()) {
    if (!known.has(orderId)) violations.push(`${orderId}: effects for an order no saga started`)
  }
  const pairs: readonly [string, EffectKind, EffectKind | undefined][] = [
    ['reserve', 'reserve', 'release'],
    ['charge', 'charge', 'refund'],
    ['ship', 'ship', undefined],
  ]
  for (const order of sagas) {
    const instance = await getSaga(sagaDb, order.sagaId)
    const where = `${order.sagaId}`
    if (instance === undefined) {
      violations.push(`${where}: missing`)
      continue
    }
    const expected = order.failAt === undefined ? 'completed' : 'compensated'
    if (instance.status !== expected) {
      violations.push(
        `${where}: ended ${instance.status}, expected ${expected} (${instance.reason ?? ''})`,
      )
    }
    const perOrder = counts.get(order.orderId) ?? new Map<EffectKind, number>()
    for (const [step, effect, compensation] of pairs) {
      const state = instance.steps.find((s) => s.name === step)!
      const done = state.status === 'completed' || state.status === 'compensated'
      const n = perOrder.get(effect) ?? 0
      // A step compensated because an attempt of it recorded no outcome (a kill during it) may
      // or may not have had its effect; at most one, and its compensation ran once (below).
      const unknown = state.outcomeUnknown === true && state.status === 'compensated'
      if (unknown ? n > 1 : n !== (done ? 1 : 0)) {
        violations.push(`${where}: ${n} ${effect} effect(s) for a step that is ${state.status}`)
      }
      if (compensation !== undefined) {
        const c = perOrder.get(compensation) ?? 0
        const compensated = state.status === 'compensated'
        if (c !== (compensated ? 1 : 0)) {
          violations.push(
            `${where}: ${c} ${compensation} effect(s) for a step that is ${state.status}`,
          )
        }
      }
    }
  }
  return violations
}
