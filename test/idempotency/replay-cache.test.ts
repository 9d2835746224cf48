// Replays from memory (`replayCache`), on real SQLite and real PostgreSQL: a completed result
// read from the store is replayed without reading it again, for maxAgeMs at most and never past
// its retention; the fingerprint is still checked; `false` turns it off. Each test deletes the
// record behind the core's back: a replay that still answers came from memory, one that runs
// the function again read the store.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  IdempotencyMismatchError,
  type IdempotencyOptions,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('replays from memory on $dialect', (target) => {
  let testDb: TestDb

  beforeAll(async () => {
    testDb = await target.open('idem_replay_cache')
  })
  afterAll(async () => {
    await testDb?.close()
  })

  const forget = (key: string) =>
    testDb.db.execute('DELETE FROM breakwater_idempotency WHERE idem_key = $1', [key])

  /** A core whose function counts its runs and returns the run number. */
  function counted(options: Partial<IdempotencyOptions> = {}) {
    const clock = new ManualClock()
    const idempotency = createIdempotency({ store: testDb.db, clock, ...options })
    let runs = 0
    const call = (key: string, fingerprint?: string) =>
      idempotency.run(key, () => ++runs, fingerprint === undefined ? {} : { fingerprint })
    return { clock, call, runs: () => runs }
  }

  it('replays from memory the result this process recorded, without a read', async () => {
    const key = randomUUID()
    const { call } = counted()
    expect(await call(key)).toBe(1)
    await forget(key)
    expect(await call(key)).toBe(1)
  })

  it('replays from memory once a replay has read the result, until maxAgeMs has passed', async () => {
    const key = randomUUID()
    const { clock, call, runs } = counted({ replayCache: { maxAgeMs: 5_000 } })
    const other = counted({ replayCache: { maxAgeMs: 5_000 } })
    // Recorded by another core (another process): this one has nothing in memory yet.
    expect(await other.call(key)).toBe(1)
    await clock.advance(1_000)
    expect(await call(key)).toBe(1) // read from the store, and kept
    expect(runs()).toBe(0)
    await forget(key)
    expect(await call(key)).toBe(1) // from memory
    await clock.advance(4_999)
    expect(await call(key)).toBe(1)
    expect(runs()).toBe(0)
    await clock.advance(1)
    // maxAgeMs has passed: the store is read, the record is gone, the function runs again.
    expect(await call(key)).toBe(1)
    expect(runs()).toBe(1)
  })

  it('does not extend an entry while it is replayed from memory', async () => {
    const key = randomUUID()
    const { clock, call } = counted({ replayCache: { maxAgeMs: 5_000 } })
    await call(key)
    await call(key)
    await forget(key)
    for (let i = 0; i < 4; i++) {
      await clock.advance(1_000)
      expect(await call(key)).toBe(1)
    }
    await clock.advance(1_000)
    expect(await call(key)).toBe(2)
  })

  it('never replays from memory past the result retention', async () => {
    const key = randomUUID()
    const { clock, call } = counted({ retentionMs: 2_000, replayCache: { maxAgeMs: 60_000 } })
    await call(key)
    await call(key)
    await forget(key)
    await clock.advance(1_999)
    expect(await call(key)).toBe(1)
    await clock.advance(1)
    expect(await call(key)).toBe(2)
  })

  it('still refuses the key with another fingerprint', async () => {
    const key = randomUUID()
    const { call } = counted()
    await call(key, 'a')
    await call(key, 'a')
    await forget(key)
    await expect(call(key, 'b')).rejects.toBeInstanceOf(IdempotencyMismatchError)
    expect(await call(key, 'a')).toBe(1)
  })

  it('reads the store for every replay with replayCache: false', async () => {
    const key = randomUUID()
    const { call } = counted({ replayCache: false })
    await call(key)
    await call(key)
    await forget(key)
    expect(await call(key)).toBe(2)
  })

  it('keeps at most maxEntries results, the least recently replayed going first', async () => {
    const [a, b] = [randomUUID(), randomUUID()]
    const { call } = counted({ replayCache: { maxEntries: 1 } })
    await call(a)
    await call(b)
    await call(a) // a kept
    await call(b) // b kept, a evicted
    await forget(a)
    await forget(b)
    expect(await call(b)).toBe(2)
    expect(await call(a)).toBe(3)
  })

  it('does not keep a result whose body is larger than maxBodyBytes', async () => {
    const key = randomUUID()
    const { call } = counted({ replayCache: { maxBodyBytes: 0 } })
    await call(key)
    await call(key)
    await forget(key)
    expect(await call(key)).toBe(2)
  })
})

describe('replayCache option', () => {
  const store = createMemoryIdempotencyStore()
  const make = (replayCache: unknown) =>
    createIdempotency({ store, replayCache } as unknown as IdempotencyOptions)

  it.each([
    ['yes', 'replayCache'],
    [1, 'replayCache'],
    [null, 'replayCache'],
    [{ maxEntries: 0 }, 'replayCache.maxEntries'],
    [{ maxAgeMs: 1.5 }, 'replayCache.maxAgeMs'],
    [{ maxBodyBytes: -1 }, 'replayCache.maxBodyBytes'],
    [{ maxAge: 1_000 }, 'replayCache.maxAge'],
  ])('refuses %j naming %s', (value, option) => {
    expect(() => make(value)).toThrow(expect.objectContaining({ code: 'INVALID_OPTION', option }))
  })
})
