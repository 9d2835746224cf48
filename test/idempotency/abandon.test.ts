// execution.abort({ release: false }): the outcome of the work is unknown (the proxy's sidecar
// after a read timeout), so the key stays held until its lease expires instead of being given
// back. Against the memory store and real SQLite and PostgreSQL, on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyBegin,
  type IdempotencyOptions,
  type IdempotencyRequest,
  type IdempotencyStore,
} from '../../src/idempotency/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

function request(key: string): IdempotencyRequest {
  return {
    method: 'POST',
    route: '/charges',
    header: (name) => (name.toLowerCase() === 'idempotency-key' ? key : undefined),
    body: Buffer.from('{"amount":10}'),
  }
}

function executing(begun: IdempotencyBegin) {
  if (begun.kind !== 'execute') throw new Error(`expected to execute, got ${begun.kind}`)
  return begun.execution
}

const created = { status: 201, headers: {}, body: Buffer.from('{"ok":true}') }

function protocol(store: IdempotencyStore | SqlDriver, extra: Partial<IdempotencyOptions> = {}) {
  const clock = new ManualClock(1_000_000)
  const idempotency = createIdempotency({
    store,
    clock,
    leaseMs: 30_000,
    retryAfterMs: 2_000,
    ...extra,
  })
  return { clock, idempotency }
}

describe('abort({ release: false }) on the memory store', () => {
  it('keeps the key in progress until the lease expires, then a duplicate takes it over', async () => {
    const { clock, idempotency } = protocol(createMemoryIdempotencyStore())
    const first = executing(await idempotency.begin(request('k')))
    await clock.advance(5_000)
    await first.abort({ release: false })

    const duplicate = await idempotency.begin(request('k'))
    expect(duplicate.kind).toBe('respond')
    if (duplicate.kind !== 'respond') return
    expect(duplicate.response.status).toBe(409)
    expect(duplicate.response.headers['retry-after']).toBe('2')
    expect(duplicate.error?.code).toBe('IDEMPOTENCY_IN_PROGRESS')

    // The lease ran from the claim: 30 s after it, not after the abort.
    await clock.advance(24_999)
    expect((await idempotency.begin(request('k'))).kind).toBe('respond')
    await clock.advance(1)
    const takeover = executing(await idempotency.begin(request('k')))
    expect(takeover.context.attempt).toBe(2)
    await takeover.complete(created)
    const replay = await idempotency.begin(request('k'))
    expect(replay.kind === 'respond' && replay.replayed).toBe(true)
  })

  it('releases at once by default, and with release: true', async () => {
    const { idempotency } = protocol(createMemoryIdempotencyStore())
    await executing(await idempotency.begin(request('a'))).abort()
    expect(executing(await idempotency.begin(request('a'))).context.attempt).toBe(1)
    await executing(await idempotency.begin(request('b'))).abort({ release: true })
    expect(executing(await idempotency.begin(request('b'))).context.attempt).toBe(1)
  })

  it('refuses options it cannot take, and keeps the key held rather than guess', async () => {
    const { clock, idempotency } = protocol(createMemoryIdempotencyStore())
    for (const [key, options, option] of [
      ['misspelt', { relase: false }, 'options.relase'],
      ['text', { release: 'false' }, 'release'],
      ['null', null, 'options'],
    ] as const) {
      const first = executing(await idempotency.begin(request(key)))
      await expect(first.abort(options as never)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option,
      })
      // Held, as with release: false: a duplicate is told to come back, it does not run.
      const duplicate = await idempotency.begin(request(key))
      expect(duplicate.kind === 'respond' && duplicate.response.status).toBe(409)
    }
    await clock.advance(30_000)
    expect(executing(await idempotency.begin(request('text'))).context.attempt).toBe(2)
  })

  it('stops the abandoned holder’s lease timer (nothing left pending on the clock)', async () => {
    const { clock, idempotency } = protocol(createMemoryIdempotencyStore())
    const first = executing(await idempotency.begin(request('t')))
    expect(clock.pendingTimers).toBe(1)
    await first.abort({ release: false })
    expect(clock.pendingTimers).toBe(0)
  })
})

describe.each(dbTargets)('abort({ release: false }) on $dialect', (target) => {
  let testDb: TestDb
  beforeAll(async () => {
    testDb = await target.open('abandon')
    await testDb.db.execute('CREATE TABLE abandon_effects (id TEXT PRIMARY KEY)')
  })
  afterAll(() => testDb?.close())

  it('rolls ctx.tx back and holds the key (leased claim) until the lease expires', async () => {
    const { clock, idempotency } = protocol(testDb.db)
    const first = executing(await idempotency.begin(request('sql-1')))
    await first.context.tx.execute('INSERT INTO abandon_effects (id) VALUES ($1)', ['sql-1'])
    await first.abort({ release: false })
    expect(await countRows(testDb.db, 'abandon_effects')).toBe(0)

    const duplicate = await idempotency.begin(request('sql-1'))
    expect(duplicate.kind === 'respond' && duplicate.response.status).toBe(409)
    await clock.advance(30_000)
    const takeover = executing(await idempotency.begin(request('sql-1')))
    expect(takeover.context.attempt).toBe(2)
    await takeover.complete(created)
  })

  it("frees the key at once with claim: 'in-transaction' (the claim rolls back with ctx.tx)", async () => {
    const { idempotency } = protocol(testDb.db, { claim: 'in-transaction' })
    const first = executing(await idempotency.begin(request('sql-2')))
    await first.context.tx.execute('INSERT INTO abandon_effects (id) VALUES ($1)', ['sql-2'])
    await first.abort({ release: false })
    expect(await countRows(testDb.db, 'abandon_effects')).toBe(0)
    const again = executing(await idempotency.begin(request('sql-2')))
    expect(again.context.attempt).toBe(1)
    await again.abort()
  })
})
