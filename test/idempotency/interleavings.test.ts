// Property: whatever the interleaving of requests over a few keys and scopes (explored with
// fast-check's scheduler between every store statement and inside handlers), the handler runs
// at most once per (scope, key), and every response is that run's response or a 409. On the
// in-memory store, a real SQLite file and a real PostgreSQL database, both claim modes.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Clock } from '../../src/core/clock.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  createSqlIdempotencyStore,
  type IdempotencyContext,
  type IdempotencyResponse,
  type IdempotencyStore,
} from '../../src/idempotency/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { postgresDb, sqliteDb, type TestDb } from './databases.js'

type Scheduler = fc.Scheduler

/** Every store call first waits for the scheduler to let it through. */
function scheduledStore(store: IdempotencyStore, s: Scheduler): IdempotencyStore {
  const gated =
    <A extends unknown[], R>(label: string, fn: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      await s.schedule(Promise.resolve(), label)
      return fn(...args)
    }
  return {
    ...(store.dialect === undefined ? {} : { dialect: store.dialect }),
    claim: gated('claim', (input) => store.claim(input)),
    get: gated('get', (scope: string, key: string) => store.get(scope, key)),
    takeOver: gated('takeOver', (input) => store.takeOver(input)),
    recycle: gated('recycle', (input) => store.recycle(input)),
    transaction: (fn) => gated('transaction', () => store.transaction(fn))(),
    complete: gated('complete', (tx, lease, result, now: number, expires: number) =>
      store.complete(tx, lease, result, now, expires),
    ),
    savePhase: gated('savePhase', (tx, lease, point: string, phases, now: number, until: number) =>
      store.savePhase(tx, lease, point, phases, now, until),
    ),
    release: gated('release', (lease) => store.release(lease)),
    sweep: gated('sweep', (now: number, limit: number) => store.sweep(now, limit)),
    // claim: 'in-transaction': the claim steps, as statements of the caller's transaction.
    ...(store.inTransaction === undefined
      ? {}
      : {
          inTransaction: (tx) => {
            const steps = store.inTransaction!(tx)
            return {
              claim: gated('claim in tx', (input) => steps.claim(input)),
              get: gated('get in tx', (scope: string, key: string) => steps.get(scope, key)),
              takeOver: gated('takeOver in tx', (input) => steps.takeOver(input)),
              recycle: gated('recycle in tx', (input) => steps.recycle(input)),
            }
          },
        }),
  }
}

/**
 * A clock whose time stands still. Short timers (the polls of 'wait' mode) fire when the
 * scheduler picks them; long ones (the lease timer) never do, so no lease expires here and
 * every run is a legitimate "at most once" case.
 */
function scheduledClock(s: Scheduler): Clock {
  const cancelled = new Set<unknown>()
  let next = 0
  return {
    now: () => 1_000_000,
    setTimeout(callback, delayMs) {
      const handle = ++next
      if (delayMs < 60_000) {
        void s.schedule(Promise.resolve(), `timer ${delayMs} ms`).then(() => {
          if (!cancelled.delete(handle)) callback()
        })
      }
      return handle
    },
    clearTimeout(handle) {
      cancelled.add(handle)
    },
  }
}

/**
 * A clock whose time moves only when the scheduler fires a timer: then it jumps to that
 * timer's due time. Lease timers fire too, so leases expire and retries take keys over.
 */
function expiringClock(s: Scheduler): Clock {
  const cancelled = new Set<unknown>()
  let now = 1_000_000
  let next = 0
  return {
    now: () => now,
    setTimeout(callback, delayMs) {
      const handle = ++next
      const due = now + delayMs
      void s.schedule(Promise.resolve(), `timer +${delayMs} ms`).then(() => {
        if (cancelled.delete(handle)) return
        now = Math.max(now, due)
        callback()
      })
      return handle
    },
    clearTimeout(handle) {
      cancelled.add(handle)
    },
  }
}

interface Call {
  readonly scope: 's1' | 's2'
  readonly key: 'a' | 'b' | 'c'
  readonly outcome: 'ok' | 'client-error'
}

const callArb: fc.Arbitrary<Call> = fc.record({
  scope: fc.constantFrom('s1' as const, 's2' as const),
  key: fc.constantFrom('a' as const, 'b' as const, 'c' as const),
  outcome: fc.constantFrom('ok' as const, 'client-error' as const),
})

const text = (r: IdempotencyResponse) => Buffer.from(r.body).toString('utf8')

interface Target {
  readonly name: string
  readonly numRuns: number
  store(): IdempotencyStore
  /** Business effects recorded in ctx.tx, per "scope/key". */
  effects(run: number): Promise<Map<string, number>>
  write(ctx: IdempotencyContext, run: number): Promise<void>
}

describe('interleavings of keyed requests', () => {
  let sqlite: TestDb
  let postgres: TestDb
  // PostgreSQL: a pool larger than the most transactions a run can hold open at once (one per
  // call), so a statement never waits for a connection that only a later step would free.
  let postgresPool: SqlDriver

  beforeAll(async () => {
    sqlite = await sqliteDb.open('idem_interleavings')
    postgres = await postgresDb.open('idem_interleavings')
    postgresPool = await openDatabase(postgres.url, { postgres: { maxConnections: 24 } })
    for (const db of [sqlite.db, postgresPool]) {
      await db.execute('CREATE TABLE effects (run INTEGER, scope TEXT, idem_key TEXT)')
    }
  })
  afterAll(async () => {
    await postgresPool?.close()
    await postgres?.close()
    await sqlite?.close()
  })

  const memoryEffects = new Map<number, Map<string, number>>()
  /** A store on a real database; its effects are rows written through ctx.tx. */
  const sqlTarget = (name: string, numRuns: number, db: () => SqlDriver): Target => ({
    name,
    numRuns,
    store: () => createSqlIdempotencyStore(db()),
    async effects(run) {
      const rows = await db().query<{ scope: string; idem_key: string }>(
        'SELECT scope, idem_key FROM effects WHERE run = $1',
        [run],
      )
      const effects = new Map<string, number>()
      for (const row of rows) {
        const name = `${row.scope.replace(/^r\d+:/, '')}/${row.idem_key}`
        effects.set(name, (effects.get(name) ?? 0) + 1)
      }
      return effects
    },
    async write(ctx, run) {
      await ctx.tx.execute('INSERT INTO effects (run, scope, idem_key) VALUES ($1, $2, $3)', [
        run,
        ctx.scope,
        ctx.key,
      ])
    },
  })
  // Every SQL store: only these can roll business writes back with the handler's transaction,
  // and only they run claim: 'in-transaction'.
  const sqlTargets: Target[] = [
    sqlTarget('SQLite store', 100, () => sqlite.db),
    sqlTarget('PostgreSQL store', 100, () => postgresPool),
  ]
  const targets: Target[] = [
    {
      name: 'memory store',
      numRuns: 300,
      store: () => createMemoryIdempotencyStore(),
      async effects(run) {
        return memoryEffects.get(run) ?? new Map()
      },
      async write(ctx, run) {
        const effects = memoryEffects.get(run) ?? new Map<string, number>()
        memoryEffects.set(run, effects)
        const name = `${ctx.scope.replace(/^r\d+:/, '')}/${ctx.key}`
        effects.set(name, (effects.get(name) ?? 0) + 1)
      },
    },
    ...sqlTargets,
  ]

  let runs = 0

  it.each(targets)(
    'runs the handler at most once per (scope, key) on the $name',
    async (target) => {
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.array(callArb, { minLength: 1, maxLength: 10 }),
          fc.constantFrom('reject' as const, 'wait' as const),
          async (s, calls, onConcurrent) => {
            const run = ++runs
            // A fresh scope prefix per run keeps runs apart in the shared SQLite file.
            const prefix = `r${run}:`
            const idempotency = createIdempotency({
              store: scheduledStore(target.store(), s),
              clock: scheduledClock(s),
              leaseMs: 3_600_000,
              onConcurrent,
              scope: (request) => `${prefix}${request.header('x-scope')}`,
            })
            const handlerRuns = new Map<string, number>()
            const active = new Set<string>()
            const responses = await s.waitFor(
              Promise.all(
                calls.map((call, index) =>
                  idempotency.handle(
                    {
                      method: 'POST',
                      route: '/work',
                      header: (name) =>
                        name === 'idempotency-key'
                          ? call.key
                          : name === 'x-scope'
                            ? call.scope
                            : undefined,
                      body: new Uint8Array(),
                    },
                    async (ctx) => {
                      const name = `${call.scope}/${call.key}`
                      expect(active.has(name), `two handlers at once for ${name}`).toBe(false)
                      active.add(name)
                      handlerRuns.set(name, (handlerRuns.get(name) ?? 0) + 1)
                      await s.schedule(Promise.resolve(), `handler ${index} before write`)
                      await target.write(ctx!, run)
                      await s.schedule(Promise.resolve(), `handler ${index} after write`)
                      active.delete(name)
                      return {
                        status: call.outcome === 'ok' ? 201 : 409,
                        headers: { 'content-type': 'text/plain' },
                        body: Buffer.from(`${name} by call ${index}`),
                      }
                    },
                  ),
                ),
              ),
            )
            const effects = await target.effects(run)
            const touched = new Set(calls.map((c) => `${c.scope}/${c.key}`))
            for (const name of touched) {
              expect(handlerRuns.get(name), name).toBe(1)
              expect(effects.get(name), name).toBe(1)
            }
            calls.forEach((call, index) => {
              const response = responses[index]!
              const name = `${call.scope}/${call.key}`
              if (response.headers['content-type'] === 'application/problem+json') {
                expect(onConcurrent).toBe('reject')
                expect(response.status).toBe(409)
                return
              }
              // The executed response or its replay: both name the same (only) run.
              const owner = responses.find(
                (r, i) =>
                  calls[i]!.scope === call.scope &&
                  calls[i]!.key === call.key &&
                  r.headers['idempotent-replayed'] === undefined &&
                  r.headers['content-type'] === 'text/plain',
              )
              expect(owner, name).toBeDefined()
              expect(text(response)).toBe(text(owner!))
              expect(response.status).toBe(owner!.status)
            })
          },
        ),
        { numRuns: target.numRuns },
      )
    },
    180_000,
  )

  it.each(sqlTargets)(
    'commits at most one effect per (scope, key) with failures, 5xx and lease takeovers on the $name',
    async (target) => {
      let takeovers = 0
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.array(
            fc.record({
              key: fc.constantFrom('a', 'b'),
              outcome: fc.constantFrom('ok' as const, 'throw' as const, 'unavailable' as const),
            }),
            { minLength: 1, maxLength: 8 },
          ),
          fc.constantFrom('reject' as const, 'wait' as const),
          async (s, calls, onConcurrent) => {
            const run = ++runs
            const store = target.store()
            const idempotency = createIdempotency({
              store: scheduledStore(store, s),
              clock: expiringClock(s),
              leaseMs: 1_000,
              waitTimeoutMs: 5_000,
              onConcurrent,
              scope: () => `r${run}:s1`,
            })
            const responses = await s.waitFor(
              Promise.all(
                calls.map((call, index) =>
                  idempotency
                    .handle(
                      {
                        method: 'POST',
                        route: '/work',
                        header: (name) => (name === 'idempotency-key' ? call.key : undefined),
                        body: new Uint8Array(),
                      },
                      async (ctx) => {
                        if (ctx!.attempt > 1) takeovers++
                        await s.schedule(Promise.resolve(), `handler ${index} before write`)
                        await target.write(ctx!, run)
                        await s.schedule(Promise.resolve(), `handler ${index} after write`)
                        if (call.outcome === 'throw') throw new Error('handler failed')
                        return {
                          status: call.outcome === 'ok' ? 201 : 503,
                          headers: {},
                          body: Buffer.from(`call ${index}`),
                        }
                      },
                    )
                    .catch((error: Error) => error),
                ),
              ),
            )
            const effects = await target.effects(run)
            for (const key of ['a', 'b']) {
              const committed = effects.get(`s1/${key}`) ?? 0
              expect(committed, key).toBeLessThanOrEqual(1)
              const successes = new Set(
                responses
                  .filter((r, i) => calls[i]!.key === key && !(r instanceof Error))
                  .filter((r) => (r as IdempotencyResponse).status === 201)
                  .map((r) => text(r as IdempotencyResponse)),
              )
              // A 201 reaches a client only once its result (and effect) committed.
              expect(successes.size, key).toBe(committed)
              const record = await store.get(`r${run}:s1`, key)
              if (committed === 1) {
                expect(record?.state).toBe('completed')
                expect(text(record!.result! as IdempotencyResponse)).toBe([...successes][0])
              } else {
                expect(record?.state).not.toBe('completed')
              }
            }
          },
        ),
        { numRuns: target.numRuns },
      )
      // The runs did exercise expired leases being taken over.
      expect(takeovers).toBeGreaterThan(0)
    },
    180_000,
  )

  // claim: 'in-transaction': the claim is the first statement of the handler's transaction, so
  // duplicates queue behind it (SQLite: the one writer; PostgreSQL: the key's unique index)
  // and replay; nothing is leased.
  it.each(sqlTargets)(
    "runs the handler once per (scope, key) with claim: 'in-transaction' on the $name",
    async (target) => {
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.array(callArb, { minLength: 1, maxLength: 10 }),
          async (s, calls) => {
            const run = ++runs
            const idempotency = createIdempotency({
              store: scheduledStore(target.store(), s),
              clock: scheduledClock(s),
              claim: 'in-transaction',
              leaseMs: 3_600_000,
              scope: (request) => `r${run}:${request.header('x-scope')}`,
            })
            const handlerRuns = new Map<string, number>()
            const responses = await s.waitFor(
              Promise.all(
                calls.map((call, index) =>
                  idempotency.handle(
                    {
                      method: 'POST',
                      route: '/work',
                      header: (name) =>
                        name === 'idempotency-key'
                          ? call.key
                          : name === 'x-scope'
                            ? call.scope
                            : undefined,
                      body: new Uint8Array(),
                    },
                    async (ctx) => {
                      const name = `${call.scope}/${call.key}`
                      handlerRuns.set(name, (handlerRuns.get(name) ?? 0) + 1)
                      await s.schedule(Promise.resolve(), `handler ${index} before write`)
                      await target.write(ctx!, run)
                      await s.schedule(Promise.resolve(), `handler ${index} after write`)
                      return {
                        status: call.outcome === 'ok' ? 201 : 409,
                        headers: { 'content-type': 'text/plain' },
                        body: Buffer.from(`${name} by call ${index}`),
                      }
                    },
                  ),
                ),
              ),
            )
            const effects = await target.effects(run)
            for (const name of new Set(calls.map((c) => `${c.scope}/${c.key}`))) {
              expect(handlerRuns.get(name), name).toBe(1)
              expect(effects.get(name), name).toBe(1)
            }
            // Duplicates waited and replayed: every response is the one run's response.
            calls.forEach((call, index) => {
              const owner = responses.find(
                (r, i) =>
                  calls[i]!.scope === call.scope &&
                  calls[i]!.key === call.key &&
                  r.headers['idempotent-replayed'] === undefined,
              )
              expect(responses[index]!.headers['content-type']).toBe('text/plain')
              expect(text(responses[index]!)).toBe(text(owner!))
            })
          },
        ),
        { numRuns: target.numRuns },
      )
    },
    180_000,
  )

  it.each(sqlTargets)(
    "commits at most one effect per (scope, key) with failures, 5xx and expired holders with claim: 'in-transaction' on the $name",
    async (target) => {
      let leaseLosses = 0
      await fc.assert(
        fc.asyncProperty(
          fc.scheduler(),
          fc.array(
            fc.record({
              key: fc.constantFrom('a', 'b'),
              outcome: fc.constantFrom('ok' as const, 'throw' as const, 'unavailable' as const),
            }),
            { minLength: 1, maxLength: 8 },
          ),
          async (s, calls) => {
            const run = ++runs
            const store = target.store()
            const idempotency = createIdempotency({
              store: scheduledStore(store, s),
              // Lease timers fire when the scheduler picks them: a holder past its lease has its
              // transaction rolled back, and a waiting duplicate then runs.
              clock: expiringClock(s),
              claim: 'in-transaction',
              leaseMs: 1_000,
              scope: () => `r${run}:s1`,
            })
            const responses = await s.waitFor(
              Promise.all(
                calls.map((call, index) =>
                  idempotency
                    .handle(
                      {
                        method: 'POST',
                        route: '/work',
                        header: (name) => (name === 'idempotency-key' ? call.key : undefined),
                        body: new Uint8Array(),
                      },
                      async (ctx) => {
                        expect(ctx!.attempt).toBe(1)
                        await s.schedule(Promise.resolve(), `handler ${index} before write`)
                        await target.write(ctx!, run)
                        await s.schedule(Promise.resolve(), `handler ${index} after write`)
                        if (call.outcome === 'throw') throw new Error('handler failed')
                        return {
                          status: call.outcome === 'ok' ? 201 : 503,
                          headers: {},
                          body: Buffer.from(`call ${index}`),
                        }
                      },
                    )
                    .catch((error: Error) => error),
                ),
              ),
            )
            leaseLosses += responses.filter(
              (r) => !(r instanceof Error) && r.status === 409 && text(r).includes('expired'),
            ).length
            const effects = await target.effects(run)
            for (const key of ['a', 'b']) {
              const committed = effects.get(`s1/${key}`) ?? 0
              expect(committed, key).toBeLessThanOrEqual(1)
              const successes = new Set(
                responses
                  .filter((r, i) => calls[i]!.key === key && !(r instanceof Error))
                  .filter((r) => (r as IdempotencyResponse).status === 201)
                  .map((r) => text(r as IdempotencyResponse)),
              )
              expect(successes.size, key).toBe(committed)
              const record = await store.get(`r${run}:s1`, key)
              if (committed === 1) {
                expect(record?.state).toBe('completed')
                expect(text(record!.result! as IdempotencyResponse)).toBe([...successes][0])
              } else {
                // Nothing committed leaves nothing behind: no in-progress record to wait out.
                expect(record).toBeUndefined()
              }
            }
          },
        ),
        { numRuns: target.numRuns },
      )
      // The runs did exercise holders rolled back at the end of their lease.
      expect(leaseLosses).toBeGreaterThan(0)
    },
    180_000,
  )

  it('is a check that can fail: a store whose claim is not atomic is caught', async () => {
    // The broken store reads, then inserts: two concurrent claims can both see "absent".
    const broken = (s: Scheduler): IdempotencyStore => {
      const inner = createMemoryIdempotencyStore()
      return {
        ...inner,
        async claim(input) {
          const existing = await inner.get(input.scope, input.key)
          if (existing !== undefined) return { claimed: false, existing }
          await s.schedule(Promise.resolve(), 'between read and insert')
          await inner.claim(input)
          return { claimed: true }
        },
      }
    }
    const found = await fc.check(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const idempotency = createIdempotency({
          store: scheduledStore(broken(s), s),
          clock: scheduledClock(s),
        })
        let handlerRuns = 0
        await s.waitFor(
          Promise.all(
            [0, 1].map(() =>
              idempotency.handle(
                {
                  method: 'POST',
                  route: '/',
                  header: (name) => (name === 'idempotency-key' ? 'k' : undefined),
                  body: new Uint8Array(),
                },
                async () => {
                  handlerRuns++
                  return { status: 200, headers: {}, body: new Uint8Array() }
                },
              ),
            ),
          ),
        )
        expect(handlerRuns).toBe(1)
      }),
      { numRuns: 200 },
    )
    expect(found.failed).toBe(true)
    expect(String(found.errorInstance)).toMatch(/expected 2 to be 1/)
  })
})
