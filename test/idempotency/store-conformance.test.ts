// One behaviour for every IdempotencyStore: the in-memory store, real SQLite and real PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type ClaimInput,
  createMemoryIdempotencyStore,
  createSqlIdempotencyStore,
  IdempotencyInProgressError,
  type IdempotencyStore,
  idempotencyTable,
  type StoredResult,
} from '../../src/idempotency/index.js'
import { dbTargets, type TestDb } from './databases.js'

interface StoreTarget {
  readonly name: string
  open(): Promise<{ store: IdempotencyStore; close(): Promise<void>; db?: TestDb['db'] }>
}

const storeTargets: StoreTarget[] = [
  {
    name: 'memory',
    open: async () => ({ store: createMemoryIdempotencyStore(), close: async () => {} }),
  },
  ...dbTargets.map((target) => ({
    name: target.dialect,
    async open() {
      const opened = await target.open('idem_store')
      return { store: createSqlIdempotencyStore(opened.db), close: opened.close, db: opened.db }
    },
  })),
]

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

describe.each(storeTargets)('$name idempotency store', (target) => {
  let store: IdempotencyStore
  let close: () => Promise<void>
  let db: TestDb['db'] | undefined

  beforeAll(async () => {
    const opened = await target.open()
    store = opened.store
    close = opened.close
    db = opened.db
  })
  afterAll(async () => {
    await close?.()
  })

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
  })

  // complete() is a transaction's last statement and may commit (or, when the lease is lost,
  // roll back) the transaction with it: the transaction then settles with that outcome.
  async function completeAlone(
    lease: { scope: string; key: string; leaseToken: string },
    nowMs: number,
    expiresAtMs: number,
  ): Promise<boolean> {
    let held: boolean | undefined
    await store
      .transaction(async (tx) => {
        held = await store.complete(tx, lease, result, nowMs, expiresAtMs)
      })
      .catch((error: unknown) => {
        if (held !== false) throw error
      })
    if (held === undefined) throw new Error('complete() did not settle')
    return held
  }

  it.runIf(target.name !== 'memory')(
    'commits the result with the business writes of its transaction, or neither',
    async () => {
      const key = nextKey()
      const table = `idem_business_${keys}`
      await db!.execute(`CREATE TABLE ${table} (id TEXT PRIMARY KEY)`)
      await store.claim(claimInput(key))
      const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
      const inTransaction = (leaseRef: typeof lease, id: string) =>
        store
          .transaction(async (tx) => {
            await tx.execute(`INSERT INTO ${table} (id) VALUES ($1)`, [id])
            if (!(await store.complete(tx, leaseRef, result, 2_000, 9_000))) {
              throw new Error('lease lost')
            }
          })
          .then(
            () => 'committed',
            (error: Error) => error.message,
          )
      expect(await inTransaction({ ...lease, leaseToken: 'stale' }, 'lost')).toBe('lease lost')
      expect(await db!.query(`SELECT id FROM ${table}`)).toEqual([])
      expect((await store.get('tenant:a', key))?.state).toBe('in_progress')
      expect(await inTransaction(lease, 'kept')).toBe('committed')
      expect(await db!.query(`SELECT id FROM ${table}`)).toEqual([{ id: 'kept' }])
      expect((await store.get('tenant:a', key))?.state).toBe('completed')
    },
  )

  // What becomes of the transaction when complete() finds the lease lost: PostgreSQL's complete
  // commits with its write (tx.finish), so the transaction has already been rolled back and
  // rejects with the lease-lost error; elsewhere the transaction is the callback's to end.
  it('settles a transaction whose complete() found the lease lost as documented', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const stale = { scope: 'tenant:a', key, leaseToken: 'someone-else' }
    let held: boolean | undefined
    const outcome = await store
      .transaction(async (tx) => {
        held = await store.complete(tx, stale, result, 2_000, 9_000)
        return 'callback value'
      })
      .catch((error: unknown) => error)
    expect(held).toBe(false)
    if (target.name === 'postgres') {
      expect(outcome).toBeInstanceOf(IdempotencyInProgressError)
      expect(outcome).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS', reason: 'lease-lost', key })
    } else {
      expect(outcome).toBe('callback value')
    }
    expect((await store.get('tenant:a', key))?.state).toBe('in_progress')
  })

  it('records a result only under the current lease, inside the transaction', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    const stale = { ...lease, leaseToken: 'someone-else' }
    expect(await completeAlone(stale, 2_000, 9_000)).toBe(false)
    expect((await store.get('tenant:a', key))?.state).toBe('in_progress')
    if (db === undefined) {
      // The in-memory store writes at commit: a callback failing after complete() undoes it.
      await expect(
        store.transaction(async (tx) => {
          expect(await store.complete(tx, lease, result, 2_000, 9_000)).toBe(true)
          throw new Error('rolled back')
        }),
      ).rejects.toThrow('rolled back')
      expect((await store.get('tenant:a', key))?.state).toBe('in_progress')
    }
    expect(await completeAlone(lease, 2_000, 9_000)).toBe(true)
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
    // Completed is final: neither a second completion nor a release changes it.
    expect(await completeAlone(lease, 3_000, 9_000)).toBe(false)
    expect(await store.release(lease)).toBe(false)
  })

  it('keeps its own copy of what it records: changing the input or a read does not change it', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    const phases = { charged: { id: 'ch_1', lines: [1, 2] } }
    await store.transaction((tx) => store.savePhase(tx, lease, 'charged', phases, 2_000, 61_000))
    phases.charged.lines.push(3)
    const body = Uint8Array.from([1, 2, 3])
    const links = ['<a>']
    await store.transaction((tx) =>
      store.complete(tx, lease, { status: 200, headers: { link: links }, body }, 2_000, 9_000),
    )
    body[0] = 9
    links.push('<b>')
    const first = await store.get('tenant:a', key)
    ;(first!.result!.body as Uint8Array)[1] = 9
    ;(first!.phases.charged as { lines: number[] }).lines.push(4)
    const again = await store.get('tenant:a', key)
    expect([...again!.result!.body]).toEqual([1, 2, 3])
    expect(again!.result!.headers).toEqual({ link: ['<a>'] })
    expect(again!.phases).toEqual({ charged: { id: 'ch_1', lines: [1, 2] } })
  })

  it('stores a result without status (idempotent()) and an empty body', async () => {
    const key = nextKey()
    await store.claim(claimInput(key))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    await store.transaction((tx) =>
      store.complete(tx, lease, { status: undefined, headers: {}, body: new Uint8Array() }, 2, 3),
    )
    const stored = (await store.get('tenant:a', key))?.result
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
    const record = await store.get('tenant:a', key)
    expect(record).toMatchObject({
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
    expect(await completeAlone(old, 5_001, 9_000)).toBe(false)
    expect(await store.release(old)).toBe(false)
    expect(await store.release({ ...old, leaseToken: winner })).toBe(true)
    expect(await store.get('tenant:a', key)).toBeUndefined()
  })

  it("moves a record's expiry up to the lease end on a takeover or a phase, never down", async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { leaseExpiresAtMs: 5_000, expiresAtMs: 20_000 }))
    const taken = { scope: 'tenant:a', key, leaseToken: 'taker' }
    expect(
      await store.takeOver({
        ...claimInput(key, { leaseToken: 'taker', nowMs: 15_000, leaseExpiresAtMs: 25_000 }),
        previousLeaseToken: `token-${key}`,
      }),
    ).toBe(true)
    expect(await store.get('tenant:a', key)).toMatchObject({ expiresAtMs: 25_000 })
    expect(
      await store.transaction((tx) => store.savePhase(tx, taken, 'p', {}, 24_000, 34_000)),
    ).toBe(true)
    expect(await store.get('tenant:a', key)).toMatchObject({ expiresAtMs: 34_000 })
    expect(
      await store.transaction((tx) => store.savePhase(tx, taken, 'q', {}, 24_500, 30_000)),
    ).toBe(true)
    expect(await store.get('tenant:a', key)).toMatchObject({
      leaseExpiresAtMs: 30_000,
      expiresAtMs: 34_000,
    })
  })

  it('recycles a record only after its retention ended', async () => {
    const key = nextKey()
    await store.claim(claimInput(key, { expiresAtMs: 10_000 }))
    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    await store.transaction((tx) => store.complete(tx, lease, result, 2_000, 10_000))
    const recycle = (nowMs: number) =>
      store.recycle({
        ...claimInput(key, {
          leaseToken: 'new',
          fingerprint: 'other',
          nowMs,
          leaseExpiresAtMs: nowMs + 1,
          expiresAtMs: nowMs + 2,
        }),
        previousLeaseToken: `token-${key}`,
      })
    expect(await recycle(9_999)).toBe(false)
    expect(await recycle(10_000)).toBe(true)
    expect(await store.get('tenant:a', key)).toMatchObject({
      state: 'in_progress',
      fingerprint: 'other',
      leaseToken: 'new',
      attempt: 1,
      result: undefined,
      phases: {},
      createdAtMs: 10_000,
      expiresAtMs: 10_002,
    })
  })

  it('sweeps only expired records, at most the batch size per call', async () => {
    const scope = `sweep-${target.name}`
    const before = await store.sweep(50_000, 1_000_000)
    expect(before).toBeGreaterThanOrEqual(0)
    for (let i = 0; i < 7; i++) {
      await store.claim({ ...claimInput(`s${i}`), scope, expiresAtMs: i < 5 ? 60_000 : 90_000 })
    }
    expect(await store.sweep(59_999, 100)).toBe(0)
    expect(await store.sweep(60_000, 3)).toBe(3)
    expect(await store.sweep(60_000, 3)).toBe(2)
    expect(await store.sweep(60_000, 3)).toBe(0)
    expect(await store.get(scope, 's5')).toBeDefined()
    expect(await store.get(scope, 's6')).toBeDefined()
  })

  // Only the SQL stores have a table (the memory store's size is checked in core.test.ts).
  if (target.name === 'memory') return
  it('keeps its rows in the documented table', async () => {
    const rows = await db!.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${idempotencyTable}`)
    expect(Number(rows[0]?.n)).toBeGreaterThan(0)
  })

  // claim: 'in-transaction': the claim steps run as statements of a transaction the caller holds.
  it('claims inside a transaction: the claim commits with it, or a rollback leaves no trace', async () => {
    const key = nextKey()
    await expect(
      store.transaction(async (tx) => {
        expect(await store.inTransaction!(tx).claim(claimInput(key))).toEqual({ claimed: true })
        throw new Error('rolled back')
      }),
    ).rejects.toThrow('rolled back')
    expect(await store.get('tenant:a', key)).toBeUndefined()

    const lease = { scope: 'tenant:a', key, leaseToken: `token-${key}` }
    await store.transaction(async (tx) => {
      expect(await store.inTransaction!(tx).claim(claimInput(key))).toEqual({ claimed: true })
      expect(await store.complete(tx, lease, result, 2_000, 9_000)).toBe(true)
    })
    // A later claim in a transaction gets the completed record in the same statement.
    const later = await store.transaction((tx) =>
      store.inTransaction!(tx).claim(claimInput(key, { leaseToken: 'later' })),
    )
    expect(later.claimed).toBe(false)
    expect(later.claimed === false && later.existing).toMatchObject({
      state: 'completed',
      leaseToken: `token-${key}`,
    })
  })

  it('makes a claim in another transaction wait for the holder to end, then see its outcome', async () => {
    for (const outcome of ['commit', 'rollback'] as const) {
      const key = nextKey()
      let release!: () => void
      const held = new Promise<void>((resolve) => {
        release = resolve
      })
      let claimedFirst!: () => void
      const firstClaimed = new Promise<void>((resolve) => {
        claimedFirst = resolve
      })
      const first = store
        .transaction(async (tx) => {
          await store.inTransaction!(tx).claim(claimInput(key))
          claimedFirst()
          await held
          if (outcome === 'rollback') throw new Error('rolled back')
          await store.complete(
            tx,
            { scope: 'tenant:a', key, leaseToken: `token-${key}` },
            result,
            2,
            9,
          )
        })
        .catch(() => 'rolled back')
      await firstClaimed
      let settled = false
      const second = store
        .transaction((tx) =>
          store.inTransaction!(tx).claim(claimInput(key, { leaseToken: 'second' })),
        )
        .finally(() => {
          settled = true
        })
      // PostgreSQL: the second INSERT waits on the key's unique index; SQLite: the second
      // transaction waits for the only writer.
      await new Promise((resolve) => setTimeout(resolve, 100))
      expect(settled, outcome).toBe(false)
      release()
      await first
      const claim = await second
      if (outcome === 'commit') {
        expect(claim.claimed).toBe(false)
        expect(claim.claimed === false && claim.existing?.state).toBe('completed')
      } else {
        expect(claim).toEqual({ claimed: true })
      }
    }
  })
})
