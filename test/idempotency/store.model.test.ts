// A model-based check of the SQL idempotency store's steps on real SQLite and PostgreSQL: claim,
// takeOver, recycle, savePhase, complete, release and sweep on two keys, with explicit time
// (each step moves it forward), issued one at a time or two at once. Each step's results and
// the records after it must be those of running its operations one after the other, in one
// of the two orders, on a plain in-memory model. Operations name the current holder's lease
// or a stale one (any token seen before). `npm test` runs 60 sequences per database,
// BREAKWATER_SCALE=full 1000.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlIdempotencyStore, type IdempotencyStore } from '../../src/idempotency/index.js'
import { scaled } from '../support/scale.js'
import { dbTargets, type TestDb } from './databases.js'

type Kind = 'claim' | 'takeOver' | 'recycle' | 'savePhase' | 'complete' | 'release' | 'sweep'

/** An operation as generated; `stale` names an old token rather than the holder's. */
interface OpPick {
  readonly kind: Kind
  readonly key: 'x' | 'y'
  readonly leaseMs: number
  readonly retentionMs: number
  readonly fingerprint: string
  readonly stale: boolean
}

/** An operation to run: its own new token, and the lease it names (`previous`). */
interface Op extends OpPick {
  readonly token: string
  readonly previous: string
}

/** A record as the model keeps it (and as the store's record is compared with it). */
interface ModelRecord {
  state: 'in_progress' | 'completed'
  token: string
  lease: number | undefined
  attempt: number
  point: string | undefined
  expires: number
  fingerprint: string
}

type Model = Map<string, ModelRecord>
type Outcome = boolean | 'swept'

function claimed(op: Op, now: number): ModelRecord {
  return {
    state: 'in_progress',
    token: op.token,
    lease: now + op.leaseMs,
    attempt: 1,
    point: undefined,
    expires: now + op.retentionMs,
    fingerprint: op.fingerprint,
  }
}

/**
 * Runs `op` on the model at `now`, as the store's documentation says it works. A sweep passes
 * over the key `skipped` (see the steps: on PostgreSQL it skips a row locked right now).
 */
function applyToModel(m: Model, op: Op, now: number, skipped?: string): Outcome {
  const r = m.get(op.key)
  const holds = r !== undefined && r.token === op.previous && r.state === 'in_progress'
  switch (op.kind) {
    case 'claim':
      if (r !== undefined) return false
      m.set(op.key, claimed(op, now))
      return true
    case 'takeOver':
      if (!holds || r.lease! > now) return false
      r.token = op.token
      r.lease = now + op.leaseMs
      r.attempt++
      r.expires = Math.max(r.expires, r.lease)
      return true
    case 'recycle':
      if (r === undefined || r.token !== op.previous || r.expires > now) return false
      m.set(op.key, claimed(op, now))
      return true
    case 'savePhase':
      if (!holds) return false
      r.point = op.token
      r.lease = now + op.leaseMs
      r.expires = Math.max(r.expires, r.lease)
      return true
    case 'complete':
      if (!holds) return false
      r.state = 'completed'
      r.lease = undefined
      r.expires = now + op.retentionMs
      return true
    case 'release':
      if (!holds) return false
      m.delete(op.key)
      return true
    case 'sweep':
      for (const [key, record] of m) if (key !== skipped && record.expires <= now) m.delete(key)
      return 'swept'
  }
}

/** Runs `op` on the store at `now`. */
async function applyToStore(
  store: IdempotencyStore,
  scope: string,
  op: Op,
  now: number,
): Promise<Outcome> {
  const input = {
    scope,
    key: op.key,
    leaseToken: op.token,
    fingerprint: op.fingerprint,
    nowMs: now,
    leaseExpiresAtMs: now + op.leaseMs,
    expiresAtMs: now + op.retentionMs,
  }
  const lease = { scope, key: op.key, leaseToken: op.previous }
  switch (op.kind) {
    case 'claim':
      return (await store.claim(input)).claimed
    case 'takeOver':
      return store.takeOver({ ...input, previousLeaseToken: op.previous })
    case 'recycle':
      return store.recycle({ ...input, previousLeaseToken: op.previous })
    case 'savePhase':
      return store.transaction((tx) =>
        store.savePhase(tx, lease, op.token, { [op.token]: 1 }, now, now + op.leaseMs),
      )
    case 'complete': {
      const result = { status: 200, headers: {}, body: new Uint8Array([1]) }
      let held: boolean | undefined
      // A lost lease: the callback throws, as the protocol does, so both databases roll back.
      await store
        .transaction(async (tx) => {
          held = await store.complete(tx, lease, result, now, now + op.retentionMs)
          if (!held) throw new Error('lease lost')
        })
        .catch((error: unknown) => {
          if (held !== false) throw error
        })
      return held!
    }
    case 'release':
      return store.release(lease)
    case 'sweep':
      while ((await store.sweep(now, 1000)) === 1000) {}
      return 'swept'
  }
}

async function storeState(store: IdempotencyStore, scope: string): Promise<Model> {
  const m: Model = new Map()
  for (const key of ['x', 'y']) {
    const r = await store.get(scope, key)
    if (r === undefined) continue
    m.set(key, {
      state: r.state,
      token: r.leaseToken,
      lease: r.leaseExpiresAtMs,
      attempt: r.attempt,
      point: r.recoveryPoint,
      expires: r.expiresAtMs,
      fingerprint: r.fingerprint,
    })
  }
  return m
}

const sorted = (m: Model) => [...m].sort(([a], [b]) => a.localeCompare(b))

const opArb: fc.Arbitrary<OpPick> = fc.record({
  kind: fc.constantFrom<Kind>(
    'claim',
    'claim',
    'takeOver',
    'recycle',
    'savePhase',
    'complete',
    'release',
    'sweep',
  ),
  key: fc.constantFrom('x' as const, 'y' as const),
  leaseMs: fc.integer({ min: 1, max: 30 }),
  retentionMs: fc.integer({ min: 0, max: 40 }),
  fingerprint: fc.constantFrom('f1', 'f2'),
  stale: fc.boolean(),
})
const stepArb = fc.record({
  elapseMs: fc.integer({ min: 0, max: 25 }),
  first: opArb,
  second: fc.option(opArb, { nil: undefined }),
})

describe.each(dbTargets)('the SQL idempotency store against a model on $dialect', (target) => {
  let t: TestDb
  let store: IdempotencyStore
  let runs = 0
  let tokens = 0

  beforeAll(async () => {
    t = await target.open('idem_store_model')
    store = createSqlIdempotencyStore(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  it(
    'steps alone or two at once end as the model run in one of their orders',
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 25 }), async (steps) => {
          const scope = `run${++runs}`
          let now = 1000
          let model: Model = new Map()
          const seen: string[] = []
          const trace: string[] = []
          for (const step of steps) {
            now += step.elapseMs
            const ops = [step.first, step.second].flatMap((pick): Op[] => {
              if (pick === undefined) return []
              const holder = model.get(pick.key)?.token ?? 'none'
              const previous = pick.stale && seen.length > 0 ? seen[tokens % seen.length]! : holder
              const op = { ...pick, token: `t${++tokens}`, previous }
              seen.push(op.token)
              return [op]
            })
            const results = await Promise.all(ops.map((op) => applyToStore(store, scope, op, now)))
            const got = sorted(await storeState(store, scope))
            trace.push(`at ${now}: ${JSON.stringify(ops)} -> ${JSON.stringify(results)}`)
            const orders =
              ops.length === 2
                ? [
                    [0, 1],
                    [1, 0],
                  ]
                : [[0]]
            // On PostgreSQL the sweep's FOR UPDATE SKIP LOCKED passes over a row the other
            // operation holds locked at that moment (documented in sql.ts: it does not queue
            // behind a handler recording its result): an expired key then outlives this sweep,
            // which no serial order gives. So a sweep that skipped the other's key is accepted
            // there too, in either order.
            const skips =
              target.dialect === 'postgres' &&
              ops.length === 2 &&
              ops.some((o) => o.kind === 'sweep')
                ? [undefined, ...ops.filter((o) => o.kind !== 'sweep').map((o) => o.key)]
                : [undefined]
            const tried = orders.flatMap((order) =>
              skips.map((skipped) => {
                const next: Model = structuredClone(model)
                const expected: Outcome[] = []
                for (const i of order) expected[i] = applyToModel(next, ops[i]!, now, skipped)
                return { next, expected }
              }),
            )
            const match = tried.find(
              (c) =>
                JSON.stringify(c.expected) === JSON.stringify(results) &&
                JSON.stringify(sorted(c.next)) === JSON.stringify(got),
            )
            expect(
              match,
              `no serial order explains the results and records\n${trace.join('\n')}\nrecords: ${JSON.stringify(got)}\nmodel: ${JSON.stringify(tried.map((c) => ({ results: c.expected, records: sorted(c.next) })))}`,
            ).toBeDefined()
            model = match!.next
          }
        }),
        { numRuns: scaled(1_000, 60) },
      )
    },
    scaled(1_800_000, 120_000),
  )
})
