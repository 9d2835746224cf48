// A leased claim (the default) computes its lease end before its statement waits (for SQLite's
// writer, a pool connection): the wait comes off the handler's time. That is conservative, not
// unsafe, because the execution keeps exactly the lease end the database holds: it gives the
// key up (its lease-lost answer) at the very instant a duplicate may take the key over, never
// later. Measuring the time once the statement runs would need a transaction around the claim,
// one more statement (SQLite) or round trip (PostgreSQL) on the path of every new key. This test
// pins the equality (recomputing the execution's end after the claim would break it). Real
// SQLite; the claim's wait is made on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type ClaimInput,
  createIdempotency,
  createSqlIdempotencyStore,
  type IdempotencyContext,
  idempotencyTable,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { sqliteDb, type TestDb } from './databases.js'
import { gate } from './servers.js'

describe('a leased claim whose statement waited', () => {
  let testDb: TestDb

  beforeAll(async () => {
    testDb = await sqliteDb.open('idem_claim_lease_measured')
  })
  afterAll(async () => {
    await testDb?.close()
  })

  it('keeps the lease end the database holds: lost exactly when a duplicate may take over', async () => {
    const startMs = 1_000_000
    const clock = new ManualClock(startMs)
    const sql = createSqlIdempotencyStore(testDb.db)
    let waits = 1
    const store = {
      ...sql,
      // The first claim's statement waits 3 s (for the writer) before it runs.
      async claim(input: ClaimInput) {
        if (waits-- > 0) await clock.advance(3_000)
        return sql.claim(input)
      },
    }
    const idempotency = createIdempotency({ store, clock, leaseMs: 10_000 })
    const hold = gate()
    let context: IdempotencyContext | undefined
    const first = idempotency.run('k', async (ctx) => {
      context = ctx
      await hold.promise
      await ctx.tx.execute('SELECT 1')
    })
    await until(() => context !== undefined, 'the first run to start')
    const [row] = await testDb.db.query<{ lease_expires_at: number }>(
      `SELECT lease_expires_at FROM ${idempotencyTable} WHERE idem_key = 'k'`,
    )
    // Measured before the wait: 7 s of the 10 s are left when the handler starts.
    expect(Number(row!.lease_expires_at)).toBe(startMs + 10_000)
    await clock.advance(6_999)
    await expect(idempotency.run('k', () => 'second')).rejects.toMatchObject({
      code: 'IDEMPOTENCY_IN_PROGRESS',
      reason: 'in-flight',
    })
    await clock.advance(1)
    // At the database's lease end, the holder has given the key up, and a duplicate takes it.
    hold.open()
    await expect(first).rejects.toMatchObject({ reason: 'lease-lost' })
    expect(await idempotency.run('k', () => 'second')).toBe('second')
  })
})
