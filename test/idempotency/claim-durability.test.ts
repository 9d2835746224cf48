// The leased claim on PostgreSQL commits without waiting for its own WAL flush (the handler's
// transaction flushes it later, WAL being flushed in order). The handler's transaction, which
// holds the business writes and the result, must still commit synchronously, in both claim
// modes: checked from inside ctx.tx on a real server.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createIdempotency, idempotencyStatements } from '../../src/idempotency/index.js'
import { postgresDb, type TestDb } from './databases.js'

describe('claim durability on PostgreSQL', () => {
  let t: TestDb

  beforeAll(async () => {
    t = await postgresDb.open('idem_claim_durability')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('the leased claim alone commits asynchronously, in one statement', async () => {
    expect(idempotencyStatements.postgres.claim).toContain(
      "set_config('synchronous_commit', 'off', true)",
    )
    expect(idempotencyStatements.postgres.claimInTransaction).not.toContain('synchronous_commit')
    // The setting is local to the claim's own transaction: the connection is back to 'on'.
    const store = createIdempotency({ store: t.db }).store
    const now = Date.now()
    const outcome = await store.claim({
      scope: 's',
      key: 'k-async',
      fingerprint: '',
      leaseToken: 'token',
      nowMs: now,
      leaseExpiresAtMs: now + 60_000,
      expiresAtMs: now + 86_400_000,
    })
    expect(outcome.claimed).toBe(true)
    const [row] = await t.db.query<{ s: string }>(
      "SELECT current_setting('synchronous_commit') AS s",
    )
    expect(row?.s).toBe('on')
  })

  for (const claim of ['leased', 'in-transaction'] as const) {
    it(`claim: '${claim}': the handler's transaction commits synchronously`, async () => {
      const idempotency = createIdempotency({ store: t.db, claim })
      const seen: string[] = []
      for (let i = 0; i < 8; i++) {
        await idempotency.run(`sync-${claim}-${i}`, async (ctx) => {
          const [row] = await ctx.tx.query<{ s: string }>(
            "SELECT current_setting('synchronous_commit') AS s",
          )
          seen.push(row!.s)
        })
      }
      expect(seen).toEqual(new Array(8).fill('on'))
    })
  }
})
