// The projection process SIGKILLed at random while it catches up over thousands of events, on
// real SQLite and PostgreSQL, restarted after every kill: the read model must end exactly equal
// to the fold computed directly from the events (no event applied twice, none skipped). The
// same check is shown to fail for a deliberately broken projector that stores its checkpoint
// in a separate transaction, crashed at the point between the two.
import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { beforeAll, describe, expect, it } from 'vitest'
import { createEventStore, type EventStore, type NewEvent } from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { compiledFixture } from '../support/compiled-fixture.js'
import { scaled } from '../support/scale.js'
import { type AccountEvent, type BalanceRow, balancesProjection, foldBalances } from './accounts.js'
import { dbTargets, useTestDb } from './databases.js'

const eventCount = scaled(20_000, 2_000)
const accounts = scaled(200, 40)
const kills = scaled(25, 5)
const batchSize = 20
const crashSeed = Number(process.env.BREAKWATER_CRASH_SEED ?? Date.now() % 2 ** 31)
// Bundled once (compiledFixture), not run through tsx: the test starts a process per life.
const fixture = await compiledFixture(
  fileURLToPath(new URL('../fixtures/cqrs/projector-process.ts', import.meta.url)),
)

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

interface Life {
  /** How the process ended: finished on its own, or killed by the test. */
  readonly ended: 'done' | 'killed'
}

/** Starts the projection process; kills it `killAfterMs` after it is ready (if still running). */
function live(
  url: string,
  mode: 'correct' | 'broken',
  killAfterMs: number | undefined,
  env: Record<string, string> = {},
): Promise<Life> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [fixture, url, mode, String(batchSize)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    })
    let out = ''
    let err = ''
    let killed = false
    let timer: NodeJS.Timeout | undefined
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (killAfterMs !== undefined && timer === undefined && out.includes('ready\n')) {
        timer = setTimeout(() => {
          killed = child.kill('SIGKILL')
        }, killAfterMs)
      }
    })
    child.stderr!.on('data', (chunk: Buffer) => {
      err += chunk.toString()
    })
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      if (timer !== undefined) clearTimeout(timer)
      if (code === 0 && out.includes('done\n')) resolve({ ended: 'done' })
      else if (signal === 'SIGKILL') resolve({ ended: 'killed' })
      else reject(new Error(`projection process exited with ${code ?? signal}: ${err}`))
      void killed
    })
  })
}

/** Seeds the log with `eventCount` account events over `accounts` streams. */
async function seedLog(store: EventStore, rng: () => number): Promise<void> {
  const pending = new Map<string, NewEvent<AccountEvent>[]>()
  for (let a = 0; a < accounts; a++) {
    pending.set(`acc-${a}`, [{ type: 'opened', data: { owner: `owner-${a % 7}` } }])
  }
  for (let i = accounts; i < eventCount; i++) {
    const stream = `acc-${Math.floor(rng() * accounts)}`
    const amount = 1 + Math.floor(rng() * 100)
    pending
      .get(stream)!
      .push(
        rng() < 0.7
          ? { type: 'deposited', data: { amount } }
          : { type: 'withdrawn', data: { amount } },
      )
  }
  // Interleave the streams in the log: append each account's events in slices, round robin.
  const slices = [...pending.entries()].map(([stream, events]) => ({ stream, events, at: 0 }))
  while (slices.some((s) => s.at < s.events.length)) {
    for (const slice of slices) {
      if (slice.at >= slice.events.length) continue
      const size = 1 + Math.floor(rng() * 50)
      await store.append(slice.stream, slice.events.slice(slice.at, slice.at + size))
      slice.at += size
    }
  }
}

async function readAllEvents(store: EventStore) {
  const events = []
  for (let from = 0; ; ) {
    const page = await store.readAll({ fromPosition: from, limit: 5000 })
    events.push(...page)
    if (page.length < 5000) return events
    from = page[page.length - 1]!.position + 1
  }
}

async function readModel(db: SqlDriver, table: string): Promise<BalanceRow[]> {
  const rows = await db.query<BalanceRow>(
    `SELECT account_id, owner, balance, events FROM ${table} ORDER BY account_id`,
  )
  return rows.map((r) => ({ ...r, balance: Number(r.balance), events: Number(r.events) }))
}

/** Accounts whose row differs from the fold: what a crash made the projector get wrong. */
function violations(actual: BalanceRow[], expected: BalanceRow[]): string[] {
  const byId = new Map(actual.map((r) => [r.account_id, r]))
  const found: string[] = []
  for (const row of expected) {
    const got = byId.get(row.account_id)
    if (got === undefined) found.push(`${row.account_id}: missing`)
    else if (got.balance !== row.balance || got.events !== row.events) {
      found.push(
        `${row.account_id}: ${got.events} events / balance ${got.balance}, expected ${row.events} / ${row.balance}`,
      )
    }
  }
  if (actual.length !== expected.length)
    found.push(`${actual.length} rows, expected ${expected.length}`)
  return found
}

describe.each(dbTargets)('projection process SIGKILLed while catching up on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_crash')
  let store: EventStore
  let expected: BalanceRow[]
  const rng = random(crashSeed + (target.dialect === 'sqlite' ? 0 : 1))

  beforeAll(async () => {
    store = createEventStore(t.db)
    await seedLog(store, rng)
    expected = foldBalances(await readAllEvents(store))
    expect(expected.reduce((sum, r) => sum + r.events, 0)).toBe(eventCount)
    // The broken projector's table (the correct one creates its own on first use).
    for (const statement of balancesProjection('x', 'broken_balances').tables.broken_balances!(
      'broken_balances',
      t.db.dialect,
      (name) => name,
    )) {
      await t.db.execute(statement)
    }
  }, 120_000)

  it(`the read model is exact after ${kills} random kills (seed ${crashSeed})`, async () => {
    let landed = 0
    for (let i = 0; i < kills; i++) {
      // The first kill comes within 10 ms of ready, so at least one lands mid-catch-up even on
      // a fast machine (a later random delay can outlast the whole catch-up of the small log).
      const delayMs = Math.floor(rng() * (i === 0 ? 10 : 120))
      const life = await live(t.url, 'correct', delayMs)
      if (life.ended === 'done') break
      landed++
    }
    expect(await live(t.url, 'correct', undefined)).toEqual({ ended: 'done' })
    // Kills that landed mid-catch-up are what this test is about.
    expect(landed).toBeGreaterThan(0)
    expect(violations(await readModel(t.db, 'crash_balances'), expected)).toEqual([])
    const checkpoint = await t.db.query<{ position: number }>(
      "SELECT position FROM breakwater_projections WHERE name = 'crash-balances'",
    )
    expect(Number(checkpoint[0]!.position)).toBe(await store.headPosition())
  }, 180_000)

  it('the same check catches a projector that stores its checkpoint separately', async () => {
    // Killed between its read-model commit and its checkpoint commit, then restarted: the
    // batch is applied again.
    expect(
      await live(t.url, 'broken', undefined, { BREAKWATER_CRASH_AT: 'after-apply:3' }),
    ).toEqual({ ended: 'killed' })
    expect(await live(t.url, 'broken', undefined)).toEqual({ ended: 'done' })
    const found = violations(await readModel(t.db, 'broken_balances'), expected)
    expect(found.length).toBeGreaterThan(0)
    expect(found.join('\n')).toMatch(/expected \d+ \/ -?\d+/)
  }, 120_000)
})
