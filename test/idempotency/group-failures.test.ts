// Failures inside a group commit of the idempotency protocol, against real SQLite and real
// PostgreSQL: a write the driver refuses before sending it, a deferred constraint broken at
// COMMIT, a conflict with the write of a member whose lease is lost. Each stays with the request
// it belongs to. Found by review of the group commit (each test failed before its fix).
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createIdempotency, type IdempotencyStore } from '../../src/idempotency/index.js'
import type { LeaseRef } from '../../src/idempotency/store.js'
import { countRows, dbTargets, insertCharge, type TestDb } from './databases.js'
import { claimOf, completeIn, nowMs, openGroupStore } from './store-groups-support.js'

describe.each(dbTargets)('failures in a group on $dialect', (target) => {
  let testDb: TestDb
  let store: IdempotencyStore

  beforeAll(async () => {
    ;({ testDb, store } = await openGroupStore(target, 'idem_group_failures'))
  })
  afterAll(async () => {
    await testDb?.close()
  })

  const complete = (lease: LeaseRef, writes: { sql: string; params: unknown[] }[]) =>
    completeIn(store, lease, writes)
  const charges = (tenant: string) => countRows(testDb.db, 'charges', `WHERE tenant = '${tenant}'`)

  // A kept deferred write that pg refuses before sending it (it cannot serialize a parameter)
  // does not abort the server's transaction: the driver must still refuse the COMMIT, or the
  // result would be recorded without that write.
  it('does not record the result when a kept deferred write failed (param pg cannot serialize)', async () => {
    const tenant = randomUUID()
    const idempotency = createIdempotency({ store: testDb.db })
    let runs = 0
    const step = () =>
      idempotency.run(tenant, (ctx) => {
        runs++
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        // A JSON parameter holding a BigInt: pg's prepareValue throws in bind, client-side.
        ctx.deferWrite(`${insertCharge} -- second`, [randomUUID(), tenant, { amount: 2n }])
        return 'charged'
      })
    const first = await step().then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error: String(error) }),
    )
    // Promised (docs "Deferred writes"): nothing commits, run() rejects with the write's error.
    expect({ ok: first.ok, rows: await charges(tenant) }).toEqual({ ok: false, rows: 0 })
    expect(runs).toBe(1)
  })

  // The same refusal outside the group path, in an open ctx.tx, whose result's write travels
  // with COMMIT (finish) right behind the deferred writes.
  it("does not commit the result when a deferred write in ctx.tx failed client-side ('in-transaction')", async () => {
    const tenant = randomUUID()
    const idempotency = createIdempotency({ store: testDb.db, claim: 'in-transaction' })
    const first = await idempotency
      .run(tenant, (ctx) => {
        ctx.deferWrite(insertCharge, [randomUUID(), tenant, 1])
        ctx.deferWrite(`${insertCharge} -- tx`, [randomUUID(), tenant, { amount: 2n }])
        return 'charged'
      })
      .then(
        () => 'resolved',
        () => 'rejected',
      )
    let reran = false
    const again = await idempotency.run(tenant, () => {
      reran = true
      return 'again'
    })
    expect({ first, rows: await charges(tenant), reran, again }).toEqual({
      first: 'rejected',
      rows: 0,
      reran: true,
      again: 'again',
    })
  })

  // Through the store seam: member a's write is refused client-side; a is rejected with that
  // error and its record stays in progress, b is recorded.
  it('answers a group member whose write was refused client-side with its error, not true', async () => {
    const tenant = randomUUID()
    const a = claimOf(tenant, 'a')
    const b = claimOf(tenant, 'b')
    await Promise.all([store.claim(a), store.claim(b)])
    const outcomes = await Promise.allSettled([
      complete(a, [{ sql: `${insertCharge} -- a`, params: [randomUUID(), tenant, { n: 1n }] }]),
      complete(b, [{ sql: `${insertCharge} -- b`, params: [randomUUID(), tenant, 2] }]),
    ])
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'fulfilled'])
    expect((await store.get(tenant, 'a'))?.state).toBe('in_progress')
    expect(await charges(tenant)).toBe(1)
  })

  // The same refusal when both members use the same statement text (the usual case: one
  // route, one INSERT): pg closes the named statement on the server but still counts it as
  // prepared on that connection, so b's write there would fail with 26000; the connection
  // must not be used again.
  it("does not reject a member for another member's client-side refused write on the same statement", async () => {
    const tenant = randomUUID()
    const sql = `${insertCharge} -- shared ${randomUUID()}`
    const a = claimOf(tenant, 'a')
    const b = claimOf(tenant, 'b')
    await Promise.all([store.claim(a), store.claim(b)])
    const outcomes = await Promise.allSettled([
      complete(a, [{ sql, params: [randomUUID(), tenant, { n: 1n }] }]),
      complete(b, [{ sql, params: [randomUUID(), tenant, 2] }]),
    ])
    expect(outcomes[1]).toEqual({ status: 'fulfilled', value: true })
  })

  // A deferred constraint one member breaks fails the group's COMMIT: each member runs again
  // alone, so only the one that broke it is rejected (as SQLite's group does).
  it('rejects only the member that broke a deferred constraint at COMMIT', async () => {
    const table = `deferred_${randomUUID().replaceAll('-', '')}`
    await testDb.db.execute(
      target.dialect === 'postgres'
        ? `CREATE TABLE ${table} (id TEXT, CONSTRAINT ${table}_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)`
        : `CREATE TABLE ${table} (id TEXT, parent TEXT REFERENCES ${table}_parent (id) DEFERRABLE INITIALLY DEFERRED)`,
    )
    if (target.dialect === 'sqlite') {
      await testDb.db.execute(`CREATE TABLE ${table}_parent (id TEXT PRIMARY KEY)`)
      await testDb.db.execute(`PRAGMA foreign_keys = ON`)
    }
    if (target.dialect === 'postgres') await testDb.db.execute(`INSERT INTO ${table} VALUES ('x')`)
    const tenant = randomUUID()
    const a = claimOf(tenant, 'a')
    const b = claimOf(tenant, 'b')
    await Promise.all([store.claim(a), store.claim(b)])
    const breaking =
      target.dialect === 'postgres'
        ? `INSERT INTO ${table} VALUES ('x')`
        : `INSERT INTO ${table} VALUES ('x', 'no-such-parent')`
    const outcomes = await Promise.allSettled([
      complete(a, [{ sql: breaking, params: [] }]),
      complete(b, [{ sql: insertCharge, params: [randomUUID(), tenant, 2] }]),
    ])
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'fulfilled'])
    expect((await store.get(tenant, 'b'))?.state).toBe('completed')
    expect(await charges(tenant)).toBe(1)
  })

  // Member 0's lease was lost, so none of its writes may count; member 1's write conflicts only
  // with member 0's (uncommitted, never to commit) row, and must not be blamed for it.
  it("does not blame a member for a conflict with a lease-lost member's write", async () => {
    const tenant = randomUUID()
    const a = claimOf(tenant, 'a')
    const b = claimOf(tenant, 'b')
    await Promise.all([store.claim(a), store.claim(b)])
    // a's lease is taken over by another holder.
    expect(
      await store.takeOver({
        ...claimOf(tenant, 'a'),
        previousLeaseToken: a.leaseToken,
        nowMs: nowMs + 60_000,
        leaseExpiresAtMs: nowMs + 90_000,
      }),
    ).toBe(true)
    const shared = randomUUID()
    const outcomes = await Promise.allSettled([
      complete(a, [{ sql: insertCharge, params: [shared, tenant, 1] }]),
      complete(b, [{ sql: insertCharge, params: [shared, tenant, 2] }]),
    ])
    expect(outcomes).toEqual([
      { status: 'fulfilled', value: false },
      { status: 'fulfilled', value: true },
    ])
    expect(await charges(tenant)).toBe(1)
  })

  // Keys differing only in scope, and a key twice in one claim group.
  it('claims one key under two scopes in one group, each once', async () => {
    const s1 = randomUUID()
    const s2 = randomUUID()
    const outcomes = await Promise.all([
      store.claim(claimOf(s1, 'k')),
      store.claim(claimOf(s2, 'k')),
      store.claim(claimOf(s1, 'k')),
    ])
    expect(outcomes.map((o) => o.claimed)).toEqual([true, true, false])
  })
})
