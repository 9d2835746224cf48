// claim: 'in-transaction' end to end on real SQLite and real PostgreSQL: the key is claimed by
// the first statement of the handler's own transaction, which also records the result. Same
// protocol promises as the default (leased) claim, with duplicates waiting in the database.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createSqlIdempotencyStore,
  type IdempotencyOptions,
  type IdempotentRequestHandler,
  idempotent,
  idempotentHandler,
  sweepExpired,
} from '../../src/idempotency/index.js'
import {
  type SqlDriver,
  type SqlTransaction,
  TransactionMisuseError,
} from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  countRows,
  createChargesTable,
  dbTargets,
  insertCharge,
  statementLabel,
  type TestDb,
} from './databases.js'
import { gate, type Listening, listen, type Reply, send } from './servers.js'

/**
 * Passes every statement through to the real driver and notes what was sent, so a test can
 * state how many statements (round trips on PostgreSQL) a request costs.
 */
class RecordingDriver implements SqlDriver {
  readonly dialect: SqlDriver['dialect']
  readonly sent: string[] = []
  readonly #inner: SqlDriver

  constructor(inner: SqlDriver) {
    this.#inner = inner
    this.dialect = inner.dialect
  }

  #label(sql: string): string {
    return statementLabel(this.dialect, sql)
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    this.sent.push(this.#label(sql))
    return this.#inner.query<R>(sql, params)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    this.sent.push(this.#label(sql))
    return this.#inner.execute(sql, params)
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    this.sent.push('BEGIN')
    let finished = false
    try {
      const value = await this.#inner.transaction((tx) => {
        const recorded: SqlTransaction = {
          dialect: tx.dialect,
          query: (sql, params) => {
            this.sent.push(this.#label(sql))
            return tx.query(sql, params)
          },
          execute: (sql, params) => {
            this.sent.push(this.#label(sql))
            return tx.execute(sql, params)
          },
          transaction: (inner) => tx.transaction(inner),
        }
        const finish = tx.finish?.bind(tx)
        if (finish !== undefined) {
          recorded.finish = (sql, params) => {
            finished = true
            this.sent.push(`${this.#label(sql)} + COMMIT`)
            return finish(sql, params)
          }
        }
        return fn(recorded)
      })
      if (!finished) this.sent.push('COMMIT')
      return value
    } catch (error) {
      this.sent.push('ROLLBACK')
      throw error
    }
  }

  close(): Promise<void> {
    return this.#inner.close()
  }
}

describe.each(dbTargets)("claim: 'in-transaction' on $dialect", (target) => {
  let testDb: TestDb
  let server: Listening | undefined
  const errors: unknown[] = []

  beforeAll(async () => {
    testDb = await target.open('idem_in_tx')
    await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await server?.close()
    server = undefined
    expect(errors).toEqual([])
  })

  interface ServerSetup {
    readonly options?: Partial<IdempotencyOptions>
    readonly db?: SqlDriver
    /** Called by the handler after its business write (ctx.tx open), before it answers. */
    readonly afterWrite?: (ctx: { key: string; attempt: number }) => Promise<void>
    readonly onRequest?: (res: ServerResponse) => void
  }

  // The payments handler of http.test.ts, under claim: 'in-transaction'.
  async function start(setup: ServerSetup = {}) {
    let runs = 0
    const handler: IdempotentRequestHandler = async (req, res, { body, idempotency: ctx }) => {
      runs++
      const { amount } = JSON.parse(body.toString('utf8')) as { amount: number }
      const tenant = req.headers['x-tenant']?.toString() ?? '-'
      const id = randomUUID()
      await ctx!.tx.execute(insertCharge, [id, tenant, amount])
      await setup.afterWrite?.({ key: ctx!.key, attempt: ctx!.attempt })
      if (amount < 0) throw new Error('refused after the business write')
      if (amount === 503) {
        res.writeHead(503, { 'content-type': 'text/plain' }).end('try again')
        return
      }
      if (amount === 0) {
        res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"zero"}')
        return
      }
      res.writeHead(201, { 'content-type': 'application/json', location: `/charges/${id}` })
      res.end(JSON.stringify({ id, tenant, amount, attempt: ctx!.attempt }))
    }
    const idempotency = createIdempotency({
      store: setup.db ?? testDb.db,
      claim: 'in-transaction',
      ...setup.options,
    })
    const wrapped = idempotentHandler(
      {
        idempotency,
        onError: (error) => {
          if (!(error instanceof Error && error.message === 'refused after the business write')) {
            errors.push(error)
          }
        },
      },
      handler,
    )
    server = await listen((req: IncomingMessage, res: ServerResponse) => {
      setup.onRequest?.(res)
      wrapped(req, res)
    })
    return { url: `${server.url}/charges`, runs: () => runs }
  }

  const charges = (where = '') => countRows(testDb.db, 'charges', where)
  const recordOf = (scope: string, key: string) =>
    createSqlIdempotencyStore(testDb.db).get(scope, key)

  function isProblem(reply: Reply, status: number, type: string): boolean {
    return (
      reply.status === status &&
      reply.headers['content-type'] === 'application/problem+json' &&
      JSON.parse(reply.text).type === `https://breakwater.dev/problems/${type}`
    )
  }

  it('runs the handler exactly once for 1,000 concurrent requests with one key; every response equals the first', async () => {
    const total = 1_000
    const arrived = gate()
    let arrivals = 0
    const { url, runs } = await start({
      onRequest: () => {
        if (++arrivals === total) arrived.open()
      },
      // The winner holds its transaction (and the key) open until every request has arrived:
      // the others wait in the database (PostgreSQL: on the key's unique index, or for a pooled
      // connection; SQLite: behind the single writer), then replay.
      afterWrite: () => arrived.promise,
    })
    const key = randomUUID()
    const before = await charges()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":42}' })),
    )
    expect(runs()).toBe(1)
    expect((await charges()) - before).toBe(1)
    const original = replies.filter((r) => r.headers['idempotent-replayed'] === undefined)
    expect(original).toHaveLength(1)
    for (const reply of replies) {
      expect(reply.status).toBe(201)
      expect(reply.body.equals(original[0]!.body)).toBe(true)
      expect(reply.headers.location).toBe(original[0]!.headers.location)
    }
    expect((await recordOf('anonymous', key))?.state).toBe('completed')
  })

  it('commits the business write and the result together: a handler that throws after its write leaves neither', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const before = await charges()
    const failed = await send(url, { key, body: '{"amount":-1}' })
    expect(failed.status).toBe(500)
    expect(await charges()).toBe(before)
    // The claim was a statement of the rolled-back transaction: no record at all.
    expect(await recordOf('anonymous', key)).toBeUndefined()
    const retried = await send(url, { key, body: '{"amount":5}' })
    expect(retried.status).toBe(201)
    expect((await charges()) - before).toBe(1)
    expect(await recordOf('anonymous', key)).toMatchObject({ state: 'completed', attempt: 1 })
    expect(runs()).toBe(2)
  })

  it('releases the key after a 5xx by rolling its transaction back, and records a 4xx', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const before = await charges()
    expect((await send(url, { key, body: '{"amount":503}' })).status).toBe(503)
    expect(await recordOf('anonymous', key)).toBeUndefined()
    expect((await send(url, { key, body: '{"amount":503}' })).status).toBe(503)
    expect(runs()).toBe(2)
    expect(await charges()).toBe(before)

    const invalid = randomUUID()
    expect((await send(url, { key: invalid, body: '{"amount":0}' })).status).toBe(400)
    const replay = await send(url, { key: invalid, body: '{"amount":0}' })
    expect(replay.status).toBe(400)
    expect(replay.text).toBe('{"error":"zero"}')
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(runs()).toBe(3)
    expect((await charges()) - before).toBe(1)
  })

  it('answers 422 problem+json when a key is reused for a different request', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const first = await send(url, { key, body: '{"amount":10}' })
    expect(first.status).toBe(201)
    const other = await send(url, { key, body: '{"amount":11}' })
    expect(isProblem(other, 422, 'idempotency-key-mismatch')).toBe(true)
    const otherRoute = await send(`${url}/x`, { key, body: '{"amount":10}' })
    expect(isProblem(otherRoute, 422, 'idempotency-key-mismatch')).toBe(true)
    expect(runs()).toBe(1)
    // The refusals rolled back their transactions: the record is the first request's.
    const replay = await send(url, { key, body: '{"amount":10}' })
    expect(replay.body.equals(first.body)).toBe(true)
  })

  it("keeps tenants apart: tenant B never receives tenant A's response for the same key", async () => {
    const { url, runs } = await start({ options: { scope: { tenantHeader: 'x-tenant' } } })
    const key = randomUUID()
    const body = '{"amount":10}'
    const a = await send(url, { key, body, headers: { 'x-tenant': 'a' } })
    const b = await send(url, { key, body, headers: { 'x-tenant': 'b' } })
    expect(JSON.parse(a.text).tenant).toBe('a')
    expect(JSON.parse(b.text).tenant).toBe('b')
    expect(b.headers['idempotent-replayed']).toBeUndefined()
    const aAgain = await send(url, { key, body, headers: { 'x-tenant': 'a' } })
    expect(aAgain.body.equals(a.body)).toBe(true)
    expect(runs()).toBe(2)
  })

  it('forgets keys after the retention (recycled in the transaction); the sweeper deletes them', async () => {
    const clock = new ManualClock(Date.now())
    const { url, runs } = await start({ options: { clock, retentionMs: 60_000 } })
    const keys = Array.from({ length: 3 }, () => randomUUID())
    for (const key of keys) await send(url, { key, body: '{"amount":1}' })
    await clock.advance(59_999)
    expect((await send(url, { key: keys[0]!, body: '{"amount":1}' })).headers).toHaveProperty(
      'idempotent-replayed',
    )
    await clock.advance(1)
    // Expired but not swept: the key is free again, even for another request.
    const again = await send(url, { key: keys[0]!, body: '{"amount":2}' })
    expect(again.status).toBe(201)
    expect(again.headers['idempotent-replayed']).toBeUndefined()
    expect(runs()).toBe(4)
    expect(await sweepExpired(testDb.db, { clock })).toBe(2)
    expect(await recordOf('anonymous', keys[1]!)).toBeUndefined()
    expect((await recordOf('anonymous', keys[0]!))?.state).toBe('completed')
  })

  it('costs one transaction per new key: BEGIN, claim, business write, record, COMMIT; a replay: BEGIN, claim, ROLLBACK (SQLite: one read)', async () => {
    const db = new RecordingDriver(testDb.db)
    // The store's path: a replay from memory (replay-cache.test.ts) sends nothing at all.
    const { url } = await start({ db, options: { replayCache: false } })
    const key = randomUUID()
    expect((await send(url, { key, body: '{"amount":3}' })).status).toBe(201)
    if (target.dialect === 'sqlite') {
      // SQLite reads the key first (no round trip to pay): a replay then needs no write lock.
      expect(db.sent).toEqual(['select', 'BEGIN', 'claim', 'business write', 'record', 'COMMIT'])
    } else {
      // PostgreSQL: the record travels with COMMIT, BEGIN with the claim (three round trips).
      expect(db.sent).toEqual(['BEGIN', 'claim', 'business write', 'record + COMMIT'])
    }
    db.sent.length = 0
    const replay = await send(url, { key, body: '{"amount":3}' })
    expect(replay.headers['idempotent-replayed']).toBe('true')
    if (target.dialect === 'sqlite') {
      expect(db.sent).toEqual(['select'])
    } else {
      // The replay is answered before its ROLLBACK ends; wait for it to be noted.
      while (db.sent.length < 3) await new Promise((resolve) => setImmediate(resolve))
      expect(db.sent).toEqual(['BEGIN', 'claim', 'ROLLBACK'])
    }
  })

  it('rolls back a handler that outlives leaseMs, so the waiting duplicate runs; the late one gets 409', async () => {
    const clock = new ManualClock(Date.now())
    const hold = gate()
    let started = 0
    const { url, runs } = await start({
      options: { clock, leaseMs: 10_000 },
      afterWrite: async () => {
        if (++started === 1) await hold.promise
      },
    })
    const key = randomUUID()
    const before = await charges()
    const hung = send(url, { key, body: '{"amount":8}' })
    while (runs() === 0) await new Promise((resolve) => setImmediate(resolve))
    // Waits in the database for the hung request's transaction.
    const duplicate = send(url, { key, body: '{"amount":8}' })
    await clock.advance(10_000)
    const fresh = await duplicate
    expect(fresh.status).toBe(201)
    expect(fresh.headers['idempotent-replayed']).toBeUndefined()
    hold.open()
    const late = await hung
    expect(isProblem(late, 409, 'idempotency-key-in-progress')).toBe(true)
    expect(JSON.parse(late.text).detail).toMatch(/expired/)
    expect(runs()).toBe(2)
    expect((await charges()) - before).toBe(1)
    const replay = await send(url, { key, body: '{"amount":8}' })
    expect(replay.body.equals(fresh.body)).toBe(true)
  })

  it('waits for a holder of a leased claim on the same key, then replays its result', async () => {
    const leased = createIdempotency({ store: testDb.db })
    const inTx = createIdempotency({ store: testDb.db, claim: 'in-transaction' })
    const key = randomUUID()
    const hold = gate()
    const first = leased.run(key, async (ctx) => {
      // The leased claim has committed; the handler has not touched ctx.tx yet.
      await hold.promise
      await ctx.tx.execute(insertCharge, [randomUUID(), 'mixed', 1])
      return { by: 'leased' }
    })
    while ((await recordOf('default', key)) === undefined) {
      await new Promise((resolve) => setImmediate(resolve))
    }
    let secondRan = false
    const second = inTx.run(key, async () => {
      secondRan = true
      return { by: 'in-transaction' }
    })
    await new Promise((resolve) => setImmediate(resolve))
    hold.open()
    expect(await first).toEqual({ by: 'leased' })
    expect(await second).toEqual({ by: 'leased' })
    expect(secondRan).toBe(false)
  })

  it('idempotent(): 50 concurrent calls run fn once and all return its result', async () => {
    const key = randomUUID()
    let calls = 0
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        idempotent(
          key,
          async (ctx) => {
            calls++
            await ctx.tx.execute(insertCharge, [randomUUID(), 'step', 7])
            return { charged: 7, attempt: ctx.attempt }
          },
          { store: testDb.db, claim: 'in-transaction', scope: 'saga' },
        ),
      ),
    )
    expect(calls).toBe(1)
    for (const result of results) expect(result).toEqual({ charged: 7, attempt: 1 })
    expect(await charges(`WHERE tenant = 'step'`)).toBe(1)
  })

  it('refuses ctx.phase(): there is no recovery point to keep when the claim rolls back with everything', async () => {
    const idempotency = createIdempotency({ store: testDb.db, claim: 'in-transaction' })
    const key = randomUUID()
    await expect(idempotency.run(key, (ctx) => ctx.phase('charge', () => 1))).rejects.toThrow(
      TransactionMisuseError,
    )
    // The failed call released the key.
    expect(await recordOf('default', key)).toBeUndefined()
  })

  it("refuses onConcurrent: 'reject' at construction (duplicates wait in the database)", () => {
    let error: unknown
    try {
      createIdempotency({ store: testDb.db, claim: 'in-transaction', onConcurrent: 'reject' })
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('onConcurrent')
    expect(() =>
      createIdempotency({ store: testDb.db, claim: 'in-transaction', onConcurrent: 'wait' }),
    ).not.toThrow()
  })
})
