// A phase whose COMMIT reached PostgreSQL but whose answer was lost (the connection cut right
// after the server committed): the phase's write and its recorded result are in, but the
// handler sees a connection error and fails. Releasing the key then must not forget the
// committed phase, or the retry runs it (its charge) a second time. Likewise the release after
// the result's own COMMIT went unanswered must leave the completed record. Real PostgreSQL, with
// a TCP proxy that cuts the connection as the server answers COMMIT.
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  createIdempotency,
  createSqlIdempotencyStore,
  IdempotencyInProgressError,
  migrateIdempotency,
} from '../../src/idempotency/index.js'
import { createPostgresDriver, type PostgresDriver } from '../../src/stores/postgres.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { proxiedUrl, type TcpFaultProxy } from '../support/tcp-fault-proxy.js'

// One database behind one proxy for the file; its connections go through the proxy.
let setup: { database: TestDatabase; proxy: TcpFaultProxy; db: PostgresDriver } | undefined

function opened(): { proxy: TcpFaultProxy; db: PostgresDriver } {
  if (setup === undefined) throw new Error('beforeAll did not finish')
  return setup
}

beforeAll(async () => {
  const database = await createTestDatabase('phase_commit_ambiguous')
  const { proxy, url } = await proxiedUrl(database.url)
  const db = await createPostgresDriver({ connectionString: url })
  setup = { database, proxy, db }
  await migrateIdempotency(db)
  await db.execute('CREATE TABLE charges (key TEXT NOT NULL, phase TEXT NOT NULL)')
})
afterAll(async () => {
  await setup?.db.close()
  await setup?.proxy.close()
  await setup?.database.drop()
})

const leaseMs = 10_000

async function charges(key: string): Promise<string[]> {
  const rows = await opened().db.query<{ phase: string }>(
    'SELECT phase FROM charges WHERE key = $1 ORDER BY phase',
    [key],
  )
  return rows.map((row) => row.phase)
}

// Runs `key` with phases 'a' then 'b', each inserting a charge; the COMMIT of `cut` is cut.
function runner(key: string, cut: string | undefined) {
  const { db, proxy } = opened()
  const clock = new ManualClock(1_000_000)
  const idempotency = createIdempotency({
    store: createSqlIdempotencyStore(db),
    clock,
    leaseMs,
  })
  let armed = cut
  const run = () =>
    idempotency.run(key, async (ctx) => {
      for (const phase of ['a', 'b']) {
        await ctx.phase(phase, async (tx) => {
          await tx.execute('INSERT INTO charges (key, phase) VALUES ($1, $2)', [key, phase])
          if (armed === phase) {
            armed = undefined
            void proxy.cutAfterCommit()
          }
        })
      }
      return 'done'
    })
  return { run, clock }
}

for (const [cut, label] of [
  ['a', 'the first phase'],
  ['b', 'a phase after a committed one'],
] as const) {
  it(`never runs ${label} twice when its commit's answer was lost`, async () => {
    const key = `k-${cut}`
    const { run, clock } = runner(key, cut)
    const first = await run().catch((error: unknown) => error)
    expect(first).toBeInstanceOf(Error)
    expect(first).not.toBeInstanceOf(IdempotencyInProgressError)
    // The phase did commit.
    expect(await charges(key)).toContain(cut)
    // The outcome is unknown to the holder: the key stays held until its lease ends, then a
    // retry takes it over and resumes after the phases that committed.
    const second = await run().catch((error: unknown) => error)
    await clock.advance(leaseMs + 1)
    const third = await run().catch((error: unknown) => error)
    expect(await charges(key)).toEqual(['a', 'b'])
    expect(second).toBeInstanceOf(IdempotencyInProgressError)
    expect(third).toBe('done')
  })
}

it("never deletes the record whose result's COMMIT committed unanswered", async () => {
  const { db, proxy } = opened()
  const key = 'k-result'
  const idempotency = createIdempotency({ store: createSqlIdempotencyStore(db), leaseMs })
  let armed = true
  const run = () =>
    idempotency.run(key, async (ctx) => {
      await ctx.tx.execute('INSERT INTO charges (key, phase) VALUES ($1, $2)', [key, 'result'])
      // The result's write and COMMIT go out together once fn returns.
      if (armed) void proxy.cutAfterCommit()
      armed = false
      return 'charged'
    })
  const first = await run().catch((error: unknown) => error)
  expect(first).toBeInstanceOf(Error)
  // The server had the COMMIT before the cut; the release that followed the error waited for
  // its row lock, then found the record completed and left it.
  expect(await charges(key)).toEqual(['result'])
  await expect(run()).resolves.toBe('charged')
  expect(await charges(key)).toEqual(['result'])
})
