// The Redis idempotency store against the real redis-server of the test run (never a mock):
// the store contracts of store-conformance.test.ts (minus what needs SQL), Redis-specific
// behaviour (TTL = retention, no-op sweep, no SQL in ctx.tx), a 200-claim race, and records
// changed outside breakwater.
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { type AddressInfo, createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  type ClaimInput,
  createIdempotency,
  createRedisIdempotencyStore,
  IdempotencyInProgressError,
  idempotent,
  type RedisIdempotencyStore,
  type StoredResult,
} from '../../src/idempotency/index.js'
import { StoreClosedError, StoredDataError } from '../../src/stores/index.js'
import { brokerUrl } from '../support/brokers.js'

const unreachable = fileURLToPath(new URL('./fixtures/redis-unreachable.ts', import.meta.url))

// Unique per run, so reruns against a long-lived server never see old keys.
const prefix = `bw-test:${randomUUID()}:`
let keys = 0
const nextKey = () => `key-${++keys}`

function claimInput(key: string, overrides: Partial<ClaimInput> = {}): ClaimInput {
  return {
    scope: 'tenant:a',
    key,
    leaseToken: `token-${key}`,
    fingerprint: 'fp',
    nowMs: 1_000,
    leaseExpiresAtMs: 61_000,
    expiresAtMs: 86_401_000,
    ...overrides,
  }
}

const result: StoredResult = {
  status: 201,
  headers: { 'content-type': 'application/octet-stream', link: ['<a>', '<b>'] },
  // Every byte value, including NUL and invalid UTF-8, must come back exactly.
  body: Uint8Array.from({ length: 256 }, (_, i) => i),
}

let url: string
let store: RedisIdempotencyStore
let raw: Redis

beforeAll(async () => {
  url = await brokerUrl('redis')
  store = createRedisIdempotencyStore({ url, keyPrefix: prefix })
  raw = new Redis(url, { enableAutoPipelining: false })
})
afterAll(async () => {
  await store?.close()
  const left = (await raw?.keys(`${prefix}*`)) ?? []
  if (left.length > 0) await raw.del(...left)
  await raw?.quit()
})

describe('Redis idempotency store: the store contracts', () => {
  it('lets exactly one of many concurrent claims win; the others read its record', async () => {
    const key = nextKey()
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, (_, i) => store.claim(claimInput(key, { leaseToken: `t${i}` }))),
    )
    const winners = outcomes.flatMap((o, i) => (o.claimed ? [i] : []))
    expect(winners).toHaveLength(1)
    for (const outcome of outcomes) {
      if (outcome.claimed) continue
      expect(outcome.existing).toMatchObject({
        state: 'in_progress',
        leaseToken: `t${winners[0]}`,
        fingerprint: 'fp',
        attempt: 1,
      })
    }
  })

  it('lets exactly one of 200 concurrent claims of one key win, over separate connections', async () => {
    const key = nextKey()
    // Several clients, so the claims really interleave on the server, not on one socket.
    const stores = Array.from({ length: 4 }, () =>
      createRedisIdempotencyStore({ url, keyPrefix: prefix }),
    )
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          stores[i % stores.length]!.claim(claimInput(key, { leaseToken: `c${i}` })),
        ),
      )
      const winners = outcomes.flatMap((o, i) => (o.claimed ? [i] : []))
      expect(winners).toHaveLength(1)
      const losers = outcomes.filter((o) => !o.claimed)
      expect(losers).toHaveLength(199)
      for (const outcome of losers) {
        expect(outcome.claimed === false && outcome.existing?.leaseToken).toBe(`c${winners[0]}`)
      }
      expect((await store.get('tenant:a', key))?.leaseToken).toBe(`c${winners[0]}`)
    } finally {
      await Promise.all(stores.map((s) => s.close()))
    }
  })

  it('reads a record back with integer-millisecond timestamps', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    expect(await store.get('tenant:a', key)).toEqual({
      scope: 'tenant:a',
      key,
      fingerprint: 'fp',
      state: 'in_progress',
      leaseToken: `token-${key}`,
      leaseExpiresAtMs: 61_000,
      attempt: 1,
      recoveryPoint: undefined,
      phases: {},
      result: undefined,
      createdAtMs: 1_000,
      updatedAtMs: 1_000,
      expiresAtMs: 86_401_000,
    })
    expect(await store.get('tenant:b', key)).toBeUndefined()
    // Scope and key cannot be confused by moving a separator between them.
    expect(await store.get('tenant', `a:${key}`)).toBeUndefined()
  })

  it('records a result only under the current lease, inside the transaction', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    const stale = { ...lease, leaseToken: 'someone-else' }
    expect(await store.transaction((tx) => store.complete(tx, stale, result, 2_000, 9_000))).toBe(
      false,
    )
    await expect(
      store.transaction(async (tx) => {
        expect(await store.complete(tx, lease, result, 2_000, 9_000)).toBe(true)
        throw new Error('rolled back')
      }),
    ).rejects.toThrow('rolled back')
    expect((await store.get('tenant:a', key))?.state).toBe('in_progress')
    expect(await store.transaction((tx) => store.complete(tx, lease, result, 2_000, 9_000))).toBe(
      true,
    )
    const record = await store.get('tenant:a', key)
    expect(record).toMatchObject({
      state: 'completed',
      leaseExpiresAtMs: undefined,
      updatedAtMs: 2_000,
      expiresAtMs: 9_000,
    })
    expect(record?.result?.status).toBe(201)
    expect(record?.result?.headers).toEqual(result.headers)
    expect(Buffer.compare(Buffer.from(record!.result!.body), Buffer.from(result.body))).toBe(0)
    expect(await store.transaction((tx) => store.complete(tx, lease, result, 3_000, 9_000))).toBe(
      false,
    )
    expect(await store.release(lease)).toBe(false)
  })

  it('stores a result without status (idempotent()) and an empty body', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    await store.transaction((tx) =>
      store.complete(
        tx,
        lease,
        { status: undefined, headers: {}, body: new Uint8Array() },
        2_000,
        60_000,
      ),
    )
    const stored = (await store.get('tenant:a', key))?.result
    expect(stored).toBeDefined()
    expect(stored?.status).toBeUndefined()
    expect(stored?.body.byteLength).toBe(0)
  })

  it('takes over an expired lease once, keeping phases, and fences the old holder', async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { leaseExpiresAtMs: 5_000 }))
    const old = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    expect(
      await store.transaction((tx) =>
        store.savePhase(tx, old, 'charged', { charged: { v: 'ch_1' } }, 2_000, 5_000),
      ),
    ).toBe(true)
    const takeover = (token: string, nowMs: number) =>
      store.takeOver({
        ...claimInput(key, { leaseToken: token, nowMs, leaseExpiresAtMs: nowMs + 60_000 }),
        previousLeaseToken: `token-${key}`,
      })
    expect(await takeover('early', 4_999)).toBe(false)
    const racers = await Promise.all(['r1', 'r2', 'r3', 'r4'].map((t) => takeover(t, 5_000)))
    expect(racers.filter(Boolean)).toHaveLength(1)
    const winner = `r${racers.indexOf(true) + 1}`
    expect(await store.get('tenant:a', key)).toMatchObject({
      leaseToken: winner,
      attempt: 2,
      recoveryPoint: 'charged',
      phases: { charged: { v: 'ch_1' } },
      leaseExpiresAtMs: 65_000,
      createdAtMs: 1_000,
    })
    expect(await store.transaction((tx) => store.savePhase(tx, old, 'x', {}, 5_001, 70_000))).toBe(
      false,
    )
    expect(await store.transaction((tx) => store.complete(tx, old, result, 5_001, 9_000))).toBe(
      false,
    )
    expect(await store.release(old)).toBe(false)
    expect(await store.release({ ...old, leaseToken: winner })).toBe(true)
    expect(await store.get('tenant:a', key)).toBeUndefined()
  })

  it('recycles a record only after its retention ended', async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { expiresAtMs: 10_000 }))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    // The logical clock says retention ends at 10 000 ms; the real TTL is a minute, so the
    // record is still there for the recycle below.
    await store.transaction((tx) => store.complete(tx, lease, result, 2_000, 62_000))
    const recycle = (nowMs: number) =>
      store.recycle({
        ...claimInput(key, {
          leaseToken: 'new',
          fingerprint: 'other',
          nowMs,
          leaseExpiresAtMs: nowMs + 1,
          expiresAtMs: nowMs + 60_000,
        }),
        previousLeaseToken: `token-${key}`,
      })
    expect(await recycle(61_999)).toBe(false)
    expect(await recycle(62_000)).toBe(true)
    expect(await store.get('tenant:a', key)).toEqual({
      scope: 'tenant:a',
      key,
      state: 'in_progress',
      fingerprint: 'other',
      leaseToken: 'new',
      leaseExpiresAtMs: 62_001,
      attempt: 1,
      recoveryPoint: undefined,
      result: undefined,
      phases: {},
      createdAtMs: 62_000,
      updatedAtMs: 62_000,
      expiresAtMs: 122_000,
    })
  })

  it('applies all of a transaction’s writes or none when one lease was lost', async () => {
    const [a, b] = [nextKey(), nextKey()]
    await store.claim(claimInput(a))
    await store.claim(claimInput(b))
    const leaseA = { scope: 'tenant:a', key: a, leaseToken: `token-${a}` }
    const leaseB = { scope: 'tenant:a', key: b, leaseToken: `token-${b}` }
    await expect(
      store.transaction(async (tx) => {
        expect(await store.complete(tx, leaseA, result, 2_000, 60_000)).toBe(true)
        expect(await store.complete(tx, leaseB, result, 2_000, 60_000)).toBe(true)
        // Another holder releases b between the check and the commit.
        expect(await store.release(leaseB)).toBe(true)
      }),
    ).rejects.toBeInstanceOf(IdempotencyInProgressError)
    expect((await store.get('tenant:a', a))?.state).toBe('in_progress')
    expect(await store.get('tenant:a', b)).toBeUndefined()
  })
})

describe('Redis idempotency store: what differs from SQL', () => {
  it('gives every key a TTL equal to its retention, renewed when the result is recorded', async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { nowMs: 1_000, expiresAtMs: 1_000 + 3_600_000 }))
    const [redisKey] = await raw.keys(`${prefix}*:${key}`)
    expect(redisKey).toBeDefined()
    const claimedTtl = await raw.pttl(redisKey!)
    expect(claimedTtl).toBeGreaterThan(3_500_000)
    expect(claimedTtl).toBeLessThanOrEqual(3_600_000)
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    await store.transaction((tx) => store.complete(tx, lease, result, 2_000, 2_000 + 120_000))
    const completedTtl = await raw.pttl(redisKey!)
    expect(completedTtl).toBeGreaterThan(60_000)
    expect(completedTtl).toBeLessThanOrEqual(120_000)
  })

  it('moves expiry and TTL up to the lease end on a takeover or a phase, so a live lease never expires', async () => {
    const key = nextKey()
    await store.claim(
      claimInput(key, { nowMs: 1_000, leaseExpiresAtMs: 2_000, expiresAtMs: 61_000 }),
    )
    const [redisKey] = await raw.keys(`${prefix}*:${key}`)
    expect(
      await store.takeOver({
        ...claimInput(key, { leaseToken: 'taker', nowMs: 50_000, leaseExpiresAtMs: 3_650_000 }),
        previousLeaseToken: `token-${key}`,
      }),
    ).toBe(true)
    expect(await store.get('tenant:a', key)).toMatchObject({ expiresAtMs: 3_650_000 })
    expect(await raw.pttl(redisKey!)).toBeGreaterThan(3_500_000)
    const lease = { scope: 'tenant:a', key, leaseToken: 'taker' }
    await store.transaction((tx) => store.savePhase(tx, lease, 'p', {}, 60_000, 7_260_000))
    expect(await store.get('tenant:a', key)).toMatchObject({ expiresAtMs: 7_260_000 })
    expect(await raw.pttl(redisKey!)).toBeGreaterThan(7_100_000)
  })

  it('lets Redis delete a key whose retention ended, freeing it for a new claim', async () => {
    const key = nextKey()
    // Retention already over at the claim: the smallest TTL, 1 ms on the server's clock.
    await store.claim(claimInput(key, { nowMs: 1_000, expiresAtMs: 1_000 }))
    // Redis expires keys on its own clock, which no ManualClock drives: poll, bounded.
    let rounds = 0
    while ((await raw.exists(`${prefix}8:tenant:a:${key}`)) === 1 && rounds < 10_000) rounds++
    expect(rounds).toBeLessThan(10_000)
    expect(await store.get('tenant:a', key)).toBeUndefined()
    expect(await store.claim(claimInput(key, { leaseToken: 'again' }))).toEqual({ claimed: true })
  })

  it('has nothing to sweep: sweep() is a no-op that deletes nothing', async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { expiresAtMs: 60_000 }))
    expect(await store.sweep(1_000_000, 100)).toBe(0)
    expect(await store.get('tenant:a', key)).toBeDefined()
  })

  it("refuses claim: 'in-transaction', naming the store option", () => {
    expect(store.inTransaction).toBeUndefined()
    expect(() => createIdempotency({ store, claim: 'in-transaction' })).toThrow(InvalidOptionError)
  })

  it('rejects statements on ctx.tx, so no business write runs unprotected', async () => {
    const key = randomUUID()
    let runs = 0
    const work = () =>
      idempotent(
        key,
        async (ctx) => {
          runs++
          await ctx.tx.execute('INSERT INTO t VALUES (1)')
          return 'unreachable'
        },
        { store, scope: 'redis-ctx' },
      )
    await expect(work()).rejects.toThrow(/no SQL database/)
    // The failed run released its claim: the work can be retried.
    await expect(work()).rejects.toThrow(/no SQL database/)
    expect(runs).toBe(2)
  })

  it('runs idempotent() work once and replays its result', async () => {
    const key = randomUUID()
    let runs = 0
    const work = () =>
      idempotent(
        key,
        async (ctx) => {
          runs++
          return { attempt: ctx.attempt, at: runs }
        },
        { store, scope: 'redis-once' },
      )
    const first = await work()
    expect(await work()).toEqual(first)
    expect(first).toEqual({ attempt: 1, at: 1 })
    expect(runs).toBe(1)
  })

  it('validates its options once, naming the option', () => {
    expect(() => createRedisIdempotencyStore({})).toThrow(InvalidOptionError)
    expect(() => createRedisIdempotencyStore({ url: 'http://localhost' })).toThrow(/url/)
    // The refused URL is named in the message, never its password.
    for (const wrong of ['http://:hunter2@localhost:6379', 'redis+tcp://:hunter2@localhost:6379']) {
      let error: unknown
      try {
        createRedisIdempotencyStore({ url: wrong })
      } catch (e) {
        error = e
      }
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as Error).message).toContain('localhost:6379')
      expect((error as Error).message).not.toContain('hunter2')
      expect(JSON.stringify(error)).not.toContain('hunter2')
    }
    expect(() => createRedisIdempotencyStore({ url, keyPrefix: 42 as unknown as string })).toThrow(
      /keyPrefix/,
    )
  })

  it('takes the redis:// scheme in any case, as openBroker does', async () => {
    const upper = createRedisIdempotencyStore({
      url: url.replace(/^redis:/i, 'REDIS:'),
      keyPrefix: prefix,
    })
    try {
      expect(await upper.claim(claimInput(nextKey()))).toEqual({ claimed: true })
    } finally {
      await upper.close()
    }
  })

  // A connection that fails left its ioredis client reconnecting in the background forever:
  // one more client per failed call, none of them closed by close(), and a process that never
  // ended. Here the server accepts and drops every connection, counting them: one per call.
  it('gives up a connection that failed: no client reconnects behind the store, the process ends', async () => {
    let connections = 0
    let tooMany!: (count: number) => void
    const reconnected = new Promise<number>((resolve) => {
      tooMany = resolve
    })
    const refusing = createServer((socket) => {
      connections++
      socket.destroy()
      if (connections > 2) tooMany(connections)
    })
    await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve))
    const { port } = refusing.address() as AddressInfo
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', unreachable, `redis://127.0.0.1:${port}`],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.stderr!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
    try {
      const outcome = await Promise.race([
        exited.then((code) => ({ exited: code })),
        reconnected.then((count) => ({ reconnected: count })),
      ])
      expect(outcome).toEqual({ exited: 0 })
      expect(output).toBe('claim failed: true\nclaim failed: true\nclosed\n')
      expect(connections).toBe(2)
    } finally {
      child.kill('SIGKILL')
      await new Promise<void>((resolve) => refusing.close(() => resolve()))
    }
  })

  // The SQL drivers answer every call after close() with StoreClosedError (STORE_CLOSED); this
  // store threw a plain TypeError, which callers that check codes (and the retry classifier)
  // could not tell from a programming error.
  it('answers every call after close() with StoreClosedError (STORE_CLOSED)', async () => {
    const used = createRedisIdempotencyStore({ url, keyPrefix: prefix })
    const key = nextKey()
    expect(await used.claim(claimInput(key))).toEqual({ claimed: true })
    const never = createRedisIdempotencyStore({ url, keyPrefix: prefix })
    await used.close()
    await never.close()
    for (const closed of [used, never]) {
      const takeover = {
        ...claimInput(key, { leaseToken: 'other' }),
        previousLeaseToken: `token-${key}`,
      }
      const calls: [string, Promise<unknown>][] = [
        ['claim', closed.claim(claimInput(nextKey()))],
        ['get', closed.get('tenant:a', key)],
        ['takeOver', closed.takeOver(takeover)],
        ['recycle', closed.recycle(takeover)],
        ['release', closed.release({ scope: 'tenant:a', key, leaseToken: `token-${key}` })],
        ['idempotent', idempotent(nextKey(), () => 1, { store: closed })],
      ]
      for (const [name, call] of calls) {
        const error = await call.then(
          () => undefined,
          (e: unknown) => e,
        )
        expect(error, name).toBeInstanceOf(StoreClosedError)
        expect(error, name).toMatchObject({ code: 'STORE_CLOSED' })
      }
    }
    // Nothing was written after close().
    expect(await store.get('tenant:a', key)).toMatchObject({ state: 'in_progress' })
  })

  it('uses a client the caller owns and leaves it open on close()', async () => {
    const client = new Redis(url, { enableAutoPipelining: false })
    try {
      const shared = createRedisIdempotencyStore({ client, keyPrefix: prefix })
      const key = nextKey()
      expect(await shared.claim(claimInput(key))).toEqual({ claimed: true })
      await shared.close()
      expect(await client.ping()).toBe('PONG')
      await expect(shared.get('tenant:a', key)).rejects.toThrow(/closed/)
    } finally {
      await client.quit()
    }
  })
})

// A record hash changed outside breakwater (an HSET by hand, another tool's bug): its JSON fields
// failed every request with that key with a bare SyntaxError naming nothing, JSON of the wrong
// shape was taken as it came (`null` headers failed the replay with a TypeError), a number field
// that is not a number became NaN (a NaN status failed every replay, a NaN lease end kept callers
// polling NaN ms), a missing fingerprint read as '' (a mismatch blamed on the client). Each is now
// STORED_DATA_INVALID naming the key prefix, the key and the field, as the SQL store names table,
// key and column; the hash is left as it is.
describe('Redis idempotency store: a record changed outside breakwater', () => {
  const scope = 'tenant:a'
  // The hash of a key, as the store names it (scope length first).
  const hashOf = (key: string) => `${prefix}${scope.length}:${scope}:${key}`

  /** Calls `idempotent` for `key` again: what it threw, and how often its work ran. */
  async function callAgain(key: string): Promise<{ error: unknown; ran: number }> {
    let ran = 0
    const error = await idempotent(key, () => ++ran, { store, scope }).catch((e: unknown) => e)
    return { error, ran }
  }

  function expectNamed(error: unknown, key: string, field: string, problem: string): void {
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({ code: 'STORED_DATA_INVALID', table: prefix, column: field })
    const { message } = error as StoredDataError
    expect(message).toContain(`key "${key}"`)
    expect(message).toContain(problem)
    // The key only, as the SQL store: a scope may be derived from a caller's credential.
    expect(message).not.toContain(scope)
  }

  it.each([
    ['rh', '{not json', 'is not JSON'],
    ['rh', 'null', 'is not a JSON object'],
    ['rh', '["content-type"]', 'is not a JSON object'],
    ['rs', 'abc', 'is not an HTTP status'],
    ['rs', '42', 'is not an HTTP status'],
    ['at', 'two', 'is not a number'],
    ['at', '0', 'is not a positive whole number'],
    ['ea', 'tomorrow', 'is not a number'],
    ['ca', '', 'is not a number'],
    ['ua', ' ', 'is not a number'],
    ['st', 'done', 'is not in_progress or completed'],
    // The result idempotent() recorded, read back by the replay: named as the field, not as a
    // store that does not say where it keeps the body.
    ['rb', '{not json', 'is not JSON'],
  ])(
    'completed: names the key and the field %s set to %j, leaving it as it is',
    async (field, value, problem) => {
      const key = nextKey()
      expect(await idempotent(key, () => ({ charged: 1 }), { store, scope })).toEqual({
        charged: 1,
      })
      await raw.hset(hashOf(key), field, value)

      const { error, ran } = await callAgain(key)
      expectNamed(error, key, field, problem)
      expect(ran).toBe(0)
      expect(await raw.hget(hashOf(key), field)).toBe(value)
    },
  )

  it.each(['fp', 'lt', 'rr', 'rb'])(
    'completed: names the field %s when it is missing',
    async (field) => {
      const key = nextKey()
      await idempotent(key, () => 1, { store, scope })
      await raw.hdel(hashOf(key), field)

      const { error, ran } = await callAgain(key)
      expectNamed(error, key, field, 'is missing')
      expect(ran).toBe(0)
    },
  )

  it.each([
    ['ph', '{not json', 'is not JSON'],
    ['ph', '[1,2]', 'is not a JSON object'],
    ['le', 'soon', 'is not a number'],
  ])(
    'in progress: names the key and the field %s set to %j, on claim and get',
    async (field, value, problem) => {
      const key = nextKey()
      const now = Date.now()
      const input = { fingerprint: '', nowMs: now, leaseExpiresAtMs: now + 60_000 }
      expect(
        await store.claim(claimInput(key, { ...input, expiresAtMs: now + 3_600_000 })),
      ).toEqual({ claimed: true })
      await raw.hset(hashOf(key), field, value)

      const { error, ran } = await callAgain(key)
      expectNamed(error, key, field, problem)
      expect(ran).toBe(0)
      expectNamed(await store.get(scope, key).catch((e: unknown) => e), key, field, problem)
      expect(await raw.hget(hashOf(key), field)).toBe(value)
    },
  )
})
