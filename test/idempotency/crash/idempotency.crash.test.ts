// Exactly once under crashes, on real SQLite and real PostgreSQL: a child server makes charges
// under the Idempotency-Key protocol while it is SIGKILLed at random moments and at every named
// step boundary (after the claim, after the business write, between the result UPDATE and
// COMMIT, between COMMIT and the response), and restarted. Clients retry every key with the
// same key until it gets a final answer. The checker then reads the database: one charge per
// key, a completed record describing it, and a replay equal to the first answer. It runs in both
// claim modes: 'leased' (a crashed holder's key is taken over after its lease) and
// 'in-transaction' (a crash rolls the claim back with the charge; nothing is taken over). Two
// broken handlers show that the checker does catch duplicates and lost effects.
import { Agent, request } from 'undici'
import { describe, expect, it } from 'vitest'
import type { SqlDriver } from '../../../src/stores/index.js'
import { scaled } from '../../support/scale.js'
import { type DbTarget, dbTargets } from '../databases.js'
import {
  checkExactlyOnce,
  History,
  type Reply,
  readDatabaseState,
  type Violation,
} from './checker.js'
import { CrashingServer, type LifePlan, type LifeRecord, type Target } from './supervisor.js'

const keyCount = scaled(500, 50)
const concurrency = scaled(16, 8)
const plannedCrashes = scaled(60, 8)
// Generous: a request may wait for a dead holder's lease (500 ms) and a restart (~0.5 s).
const maxAttemptsPerKey = 200

const crashPoints = [
  'idempotency:after-claim',
  'idempotency:after-business-write',
  'idempotency:before-commit',
  'idempotency:after-commit-before-response',
] as const

const seed = Number(process.env.BREAKWATER_CRASH_SEED ?? Date.now() % 2 ** 31)

// A small seeded generator (mulberry32), so a failing run can be repeated with its seed.
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

/**
 * A random SIGKILL early (life 1, while most keys are still to do, so it surely lands) and every
 * named crash point in the first lives (each life dies at its n-th visit of the point, so only a
 * few keys finish per life and every point is reached), then random SIGKILLs alternating with
 * the points again.
 */
function crashPlan(count: number, rng: () => number): LifePlan[] {
  const maxVisits = scaled(12, 3)
  const plans: LifePlan[] = []
  for (let life = 0, point = 0; life < count; life++) {
    if (life === 1 || (life > crashPoints.length && life % 2 === 1)) {
      plans.push({ killAfterMs: 5 + Math.floor(rng() * 40) })
    } else {
      const crashAt = crashPoints[point++ % crashPoints.length]!
      plans.push({ crashAt, crashAfter: 1 + Math.floor(rng() * maxVisits) })
    }
  }
  return plans
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : String(error)
}

async function post(agent: Agent, url: string, key: string, amount: number): Promise<Reply> {
  const response = await request(`${url}/charges`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: JSON.stringify({ amount }),
    dispatcher: agent,
  })
  const body = Buffer.from(await response.body.arrayBuffer())
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(response.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return { status: response.statusCode, headers, body }
}

/** Sends `key` until it gets a final answer, recording every attempt. */
async function settleKey(
  agent: Agent,
  server: CrashingServer,
  history: History,
  key: string,
  amount: number,
): Promise<void> {
  let target: Target = await server.ready()
  for (let attempt = 1; attempt <= maxAttemptsPerKey; attempt++) {
    const op = history.invoke(key, target.generation)
    let reply: Reply
    try {
      reply = await post(agent, target.url, key, amount)
    } catch (error) {
      // Refused: the request never reached a server. Anything else (reset, closed socket) may
      // have been executed: an unknown outcome.
      const code = errorCode(error)
      history.complete(op, key, target.generation, code === 'ECONNREFUSED' ? 'fail' : 'info', {
        error: code,
      })
      target = await server.afterFailure(target.generation)
      continue
    }
    if (reply.status >= 200 && reply.status < 300) {
      history.complete(op, key, target.generation, 'ok', { reply })
      return
    }
    if (reply.status === 409) {
      // The key's holder is still in flight (or ran out of its lease): the server already waited
      // up to its wait timeout, so pause briefly as Retry-After asks, then try again.
      history.complete(op, key, target.generation, 'fail', { reply })
      await delay(100)
      target = await server.ready()
      continue
    }
    if (reply.status >= 500) {
      history.complete(op, key, target.generation, 'info', { reply })
      target = await server.ready()
      continue
    }
    // Any other answer is final: the checker reports the key as never answered.
    history.complete(op, key, target.generation, 'fail', { reply })
    return
  }
  throw new Error(`key ${key} got no final answer in ${maxAttemptsPerKey} attempts`)
}

/** Runs `work` for every key with `concurrency` clients. */
async function forEachKey(
  keys: readonly string[],
  work: (key: string) => Promise<void>,
): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(concurrency, keys.length) }, async () => {
      while (next < keys.length) await work(keys[next++]!)
    }),
  )
}

interface Scenario {
  readonly target: DbTarget
  /** The claim mode of the charge server. */
  readonly claim?: 'leased' | 'in-transaction'
  readonly keys: number
  readonly plans: readonly LifePlan[]
  readonly broken?: string
}

interface Outcome {
  readonly violations: Violation[]
  readonly lives: readonly LifeRecord[]
  readonly history: History
  readonly takeovers: number
  /** Seed, lives and outcome counts, for failure messages. */
  readonly report: string
}

async function createChargesTable(db: SqlDriver): Promise<void> {
  // No unique constraint on request_key on purpose: a second charge for a key must be
  // observable, not prevented by the schema, so the checker judges the protocol alone.
  await db.execute(
    'CREATE TABLE charges (id TEXT PRIMARY KEY, request_key TEXT NOT NULL, amount INTEGER NOT NULL, attempt INTEGER NOT NULL)',
  )
}

/** Makes the charges under crashes, replays every key on a fresh server, and checks. */
async function runScenario(scenario: Scenario): Promise<Outcome> {
  const database = await scenario.target.open('crash')
  const env: Record<string, string> = {
    CRASH_DB_URL: database.url,
    CRASH_LEASE_MS: '500',
    CRASH_CLAIM: scenario.claim ?? 'leased',
  }
  if (scenario.broken !== undefined) env.BREAKWATER_BROKEN = scenario.broken
  const requests = new Map<string, number>()
  for (let i = 0; i < scenario.keys; i++) requests.set(`charge-${i}`, 100 + ((i * 37) % 900))
  const keys = [...requests.keys()]
  const history = new History()
  const agent = new Agent({ connections: concurrency, headersTimeout: 30_000 })
  const crashing = new CrashingServer(env, scenario.plans)
  const clean = new CrashingServer(env, [])
  try {
    await createChargesTable(database.db)
    await crashing.start()
    await forEachKey(keys, (key) => settleKey(agent, crashing, history, key, requests.get(key)!))
    await crashing.stop()

    // The replays come from a fresh process: what they return can only come from the database.
    const replays = new Map<string, Reply>()
    await clean.start()
    const { url } = await clean.ready()
    await forEachKey(keys, async (key) => {
      replays.set(key, await post(agent, url, key, requests.get(key)!))
    })
    await clean.stop()

    const state = await readDatabaseState(database.db)
    const violations = checkExactlyOnce({ requests, firstOk: history.firstOk(), replays, state })
    const takeovers = state.records.filter((r) => r.attempt > 1).length
    const lives = crashing.lives
    const report = [
      `seed ${seed} (BREAKWATER_CRASH_SEED), ${scenario.target.dialect}, claim ${scenario.claim ?? 'leased'}, ${scenario.keys} keys`,
      `lives: ${lives.map((l) => l.crashedAt ?? (l.killedByTest ? `killed@${l.plan.killAfterMs}ms` : 'stopped')).join(', ')}`,
      `history: ${JSON.stringify(history.summary())}, takeovers ${takeovers}`,
      `violations: ${violations
        .slice(0, 10)
        .map((v) => `${v.kind} ${v.key}: ${v.detail}`)
        .join('\n  ')}`,
      `server stderr:\n${crashing.stderrTail}`,
    ].join('\n')
    return { violations, lives, history, takeovers, report }
  } finally {
    await crashing.stop().catch(() => {})
    await clean.stop().catch(() => {})
    await agent.close()
    await database.close()
  }
}

const timeoutMs = scaled(600_000, 120_000)

const claimTargets = dbTargets.flatMap((target) =>
  (['leased', 'in-transaction'] as const).map((claim) => ({ target, claim })),
)

describe.each(claimTargets)(
  'idempotency under SIGKILL on $target.dialect, claim $claim',
  ({ target, claim }) => {
    it(
      `makes every charge exactly once while the server is killed and restarted (${keyCount} keys)`,
      async () => {
        const outcome = await runScenario({
          target,
          claim,
          keys: keyCount,
          plans: crashPlan(plannedCrashes, random(seed)),
        })
        expect(outcome.violations, outcome.report).toEqual([])
        // The crashes really happened where they were meant to, so the verdict means something.
        const crashedAt = new Set(outcome.lives.map((l) => l.crashedAt))
        for (const point of crashPoints) expect(crashedAt.has(point), outcome.report).toBe(true)
        expect(
          outcome.lives.filter((l) => l.killedByTest).length,
          outcome.report,
        ).toBeGreaterThanOrEqual(1)
        const summary = outcome.history.summary()
        expect(summary.info, outcome.report).toBeGreaterThan(0)
        expect(summary.recovered, outcome.report).toBeGreaterThan(0)
        if (claim === 'leased') {
          expect(outcome.takeovers, outcome.report).toBeGreaterThan(0)
        } else {
          // A crash rolled the claim back with the charge: no key was ever left to take over.
          expect(outcome.takeovers, outcome.report).toBe(0)
        }
      },
      timeoutMs,
    )
  },
)

describe.each(dbTargets)('the crash checker on $dialect', (target) => {
  it(
    'the checker catches a charge committed outside ctx.tx (duplicates after a crash)',
    async () => {
      const outcome = await runScenario({
        target,
        keys: 8,
        broken: 'business-outside-tx',
        // The charge has committed on its own and the result has not: the retry charges again.
        plans: [{ crashAt: 'idempotency:after-business-write', crashAfter: 1 }],
      })
      const kinds = new Set(outcome.violations.map((v) => v.kind))
      expect(kinds.has('duplicate-effect'), outcome.report).toBe(true)
    },
    timeoutMs,
  )

  it.each(['leased', 'in-transaction'] as const)(
    'the checker catches a result recorded before the charge is written (lost effects), claim %s',
    async (claim) => {
      const outcome = await runScenario({
        target,
        claim,
        keys: 8,
        broken: 'respond-before-business',
        plans: [{ crashAt: 'idempotency:after-response-before-business-write', crashAfter: 1 }],
      })
      const kinds = new Set(outcome.violations.map((v) => v.kind))
      expect(kinds.has('lost-effect'), outcome.report).toBe(true)
    },
    timeoutMs,
  )
})
