// ctx.deferWrite on real SQLite and real PostgreSQL: a write the handler does not wait for,
// committed with the recorded result or not at all, and on PostgreSQL sent in the same round
// trip as the result's write and COMMIT.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  type IdempotencyClaimMode,
  type IdempotencyContext,
  IdempotencyInProgressError,
  idempotentHandler,
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
import { listen, send } from './servers.js'

/**
 * Notes when each statement of a transaction is sent and when its answer arrives, so a test can
 * tell whether the result's write went out before the business write was answered (one round
 * trip for both) or only after (two).
 */
class TimelineDriver implements SqlDriver {
  readonly dialect: SqlDriver['dialect']
  readonly events: string[] = []
  readonly #inner: SqlDriver

  constructor(inner: SqlDriver) {
    this.#inner = inner
    this.dialect = inner.dialect
  }

  #traced<T>(sql: string, send: () => Promise<T>): Promise<T> {
    const label = statementLabel(this.dialect, sql)
    this.events.push(`sent ${label}`)
    const answered = send()
    answered.then(
      () => this.events.push(`answered ${label}`),
      () => this.events.push(`failed ${label}`),
    )
    return answered
  }

  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    return this.#inner.query<R>(sql, params)
  }

  execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    return this.#inner.execute(sql, params)
  }

  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    return this.#inner.transaction((tx) => {
      const traced: SqlTransaction = {
        dialect: tx.dialect,
        query: (sql, params) => this.#traced(sql, () => tx.query(sql, params)),
        execute: (sql, params) => this.#traced(sql, () => tx.execute(sql, params)),
        transaction: (inner) => tx.transaction(inner),
      }
      const finish = tx.finish?.bind(tx)
      if (finish !== undefined) {
        traced.finish = (sql, params) => this.#traced(sql, () => finish(sql, params))
      }
      return fn(traced)
    })
  }

  close(): Promise<void> {
    return this.#inner.close()
  }
}

const claimModes: readonly IdempotencyClaimMode[] = ['leased', 'in-transaction']

describe.each(dbTargets)('ctx.deferWrite on $dialect', (target) => {
  let testDb: TestDb

  beforeAll(async () => {
    testDb = await target.open('idem_deferred')
    await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })

  const charges = (tenant: string) => countRows(testDb.db, 'charges', `WHERE tenant = '${tenant}'`)

  describe.each(claimModes)("claim: '%s'", (claim) => {
    const core = (store: SqlDriver = testDb.db, clock?: ManualClock) =>
      createIdempotency({ store, claim, ...(clock === undefined ? {} : { clock }) })

    it('commits the write with the result; a replay returns the result without running fn', async () => {
      const tenant = randomUUID()
      const idempotency = core()
      let runs = 0
      const step = () =>
        idempotency.run(tenant, (ctx) => {
          runs++
          ctx.deferWrite(insertCharge, [randomUUID(), tenant, 42])
          return { charged: 42 }
        })
      expect(await step()).toEqual({ charged: 42 })
      expect(await step()).toEqual({ charged: 42 })
      expect(runs).toBe(1)
      expect(await charges(tenant)).toBe(1)
    })

    it('writes the values given when the write was deferred, not later changes to its array', async () => {
      const tenant = randomUUID()
      await core().run(tenant, (ctx) => {
        const params: unknown[] = [randomUUID(), tenant, 1]
        ctx.deferWrite(insertCharge, params)
        params[0] = randomUUID()
        params[2] = 2
        ctx.deferWrite(insertCharge, params)
        return 'charged'
      })
      const rows = await testDb.db.query<{ amount: number | string }>(
        'SELECT amount FROM charges WHERE tenant = $1 ORDER BY amount',
        [tenant],
      )
      expect(rows.map((row) => Number(row.amount))).toEqual([1, 2])
    })

    it('keeps the order of deferred and awaited statements', async () => {
      const tenant = randomUUID()
      const seen = await core().run(tenant, async (ctx) => {
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        const between = await ctx.tx.query<{ n: number | string }>(
          'SELECT COUNT(*) AS n FROM charges WHERE tenant = $1',
          [tenant],
        )
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 2])
        return Number(between[0]?.n)
      })
      expect(seen).toBe(1)
      expect(await charges(tenant)).toBe(2)
    })

    it('commits nothing when a deferred write fails, rethrows its own error and frees the key', async () => {
      const tenant = randomUUID()
      const taken = randomUUID()
      await testDb.db.execute(insertCharge, [taken, 'someone-else', 1])
      const idempotency = core()
      let runs = 0
      const failing = idempotency.run(tenant, (ctx) => {
        runs++
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        ctx.deferWrite(insertCharge, [taken, tenant, 2])
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 3])
        return 'charged'
      })
      await expect(failing).rejects.toThrow(/unique|duplicate/i)
      await expect(failing).rejects.not.toBeInstanceOf(TransactionMisuseError)
      expect(await charges(tenant)).toBe(0)
      // The key was released: the retry runs fn again, and this time everything commits.
      const retried = await idempotency.run(tenant, (ctx) => {
        runs++
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        return 'charged'
      })
      expect(retried).toBe('charged')
      expect(runs).toBe(2)
      expect(await charges(tenant)).toBe(1)
    })

    it('commits nothing when a deferred write made in a savepoint fails, even if the handler catches the savepoint failure', async () => {
      const tenant = randomUUID()
      const taken = randomUUID()
      await testDb.db.execute(insertCharge, [taken, 'someone-else', 1])
      const idempotency = core()
      let runs = 0
      const failing = idempotency.run(tenant, async (ctx) => {
        runs++
        await ctx.tx
          .transaction(async (savepoint) => {
            ctx.deferWrite(insertCharge, [taken, tenant, 1])
            // On PostgreSQL this fails (the transaction is aborted), rolling the savepoint back.
            await savepoint.execute(insertCharge, [randomUUID(), tenant, 2])
          })
          .catch(() => {})
        return 'charged'
      })
      await expect(failing).rejects.toThrow(/unique|duplicate/i)
      expect(await charges(tenant)).toBe(0)
      // Nothing was recorded either: the retry runs fn again rather than replaying 'charged'.
      const retried = await idempotency.run(tenant, () => {
        runs++
        return 'retried'
      })
      expect(retried).toBe('retried')
      expect(runs).toBe(2)
    })

    it('refuses a deferred write once the result is recorded, sending nothing', async () => {
      const tenant = randomUUID()
      let kept: IdempotencyContext | undefined
      await core().run(tenant, (ctx) => {
        kept = ctx
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
      })
      expect(() => kept!.deferWrite(insertCharge, [randomUUID(), tenant, 2])).toThrow(
        TransactionMisuseError,
      )
      // Detached, as the getter binds it.
      const { deferWrite } = kept!
      expect(() => deferWrite(insertCharge, [randomUUID(), tenant, 3])).toThrow(
        TransactionMisuseError,
      )
      expect(await charges(tenant)).toBe(1)
    })

    it('refuses a deferred write after the lease ran out, and commits nothing', async () => {
      const tenant = randomUUID()
      const clock = new ManualClock()
      const run = core(testDb.db, clock).run(tenant, async (ctx) => {
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        await clock.advance(60_001)
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 2])
      })
      await expect(run).rejects.toBeInstanceOf(IdempotencyInProgressError)
      expect(await charges(tenant)).toBe(0)
    })

    it.runIf(claim === 'leased')(
      "rolls the deferred writes back when the lease was taken at the result write, and not another request's",
      async () => {
        const tenant = randomUUID()
        const idempotency = core()
        let neighbour: Promise<unknown> | undefined
        const run = idempotency.run(tenant, async (ctx) => {
          ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
          // Another holder's token, as a takeover after a missed lease end would leave it.
          await testDb.db.execute(
            `UPDATE breakwater_idempotency SET lease_token = 'someone-else' WHERE idem_key = $1`,
            [ctx.key],
          )
          // Another request running meanwhile, through the same group commit on SQLite.
          neighbour = idempotency.run(`${tenant}-n`, (other) => {
            other.deferWrite(insertCharge, [randomUUID(), tenant, 2])
            return 'kept'
          })
          return 'lost'
        })
        await expect(run).rejects.toMatchObject({
          code: 'IDEMPOTENCY_IN_PROGRESS',
          reason: 'lease-lost',
        })
        expect(await neighbour).toBe('kept')
        const rows = await testDb.db.query<{ amount: number | string }>(
          'SELECT amount FROM charges WHERE tenant = $1',
          [tenant],
        )
        expect(rows.map((row) => Number(row.amount))).toEqual([2])
      },
    )

    it.runIf(target.dialect === 'postgres')(
      'sends the result write before the deferred write is answered (one round trip for both)',
      async () => {
        const tenant = randomUUID()
        const timeline = new TimelineDriver(testDb.db)
        await core(timeline).run(tenant, (ctx) => {
          ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
          return 'charged'
        })
        const { events } = timeline
        expect(events.indexOf('sent record')).toBeGreaterThan(events.indexOf('sent business write'))
        expect(events.indexOf('sent record')).toBeLessThan(
          events.indexOf('answered business write'),
        )
        // The awaited form, for contrast: the record goes out after the write was answered.
        const awaited = new TimelineDriver(testDb.db)
        await core(awaited).run(randomUUID(), async (ctx) => {
          await ctx.tx.execute(insertCharge, [randomUUID(), tenant, 2])
        })
        const contrast = awaited.events
        expect(contrast.indexOf('sent record')).toBeGreaterThan(
          contrast.indexOf('answered business write'),
        )
      },
    )

    it('answers 500 over HTTP when the deferred write fails, and a retry with the key runs again', async () => {
      const tenant = randomUUID()
      const taken = randomUUID()
      await testDb.db.execute(insertCharge, [taken, 'someone-else', 1])
      let runs = 0
      const server = await listen(
        idempotentHandler(
          { idempotency: core(), onError: () => {} },
          async (_req, res, { idempotency: ctx }) => {
            runs++
            const id = runs === 1 ? taken : randomUUID()
            ctx!.deferWrite(insertCharge, [id, tenant, 5])
            res.writeHead(201, { 'content-type': 'application/json' }).end('{"charged":5}')
          },
        ),
      )
      try {
        const key = randomUUID()
        const first = await send(server.url, { key, body: '{}' })
        expect(first.status).toBe(500)
        expect(await charges(tenant)).toBe(0)
        const second = await send(server.url, { key, body: '{}' })
        expect(second.status).toBe(201)
        const replay = await send(server.url, { key, body: '{}' })
        expect(replay.status).toBe(201)
        expect(replay.text).toBe('{"charged":5}')
        expect(runs).toBe(2)
        expect(await charges(tenant)).toBe(1)
      } finally {
        await server.close()
      }
    })
  })
})
