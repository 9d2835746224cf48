// The SQL idempotency store's group commit, on real SQLite and real PostgreSQL: claims and
// results asked for in one turn of the event loop go together (one SQLite transaction; on
// PostgreSQL one statement for the claims, one transaction for the results), and a member that
// fails or lost its lease takes none of the others with it.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IdempotencyStore } from '../../src/idempotency/index.js'
import type { LeaseRef } from '../../src/idempotency/store.js'
import { countRows, dbTargets, insertCharge, type TestDb } from './databases.js'
import { claimOf, completeIn, openGroupStore } from './store-groups-support.js'

describe.each(dbTargets)('idempotency store groups on $dialect', (target) => {
  let testDb: TestDb
  let store: IdempotencyStore

  beforeAll(async () => {
    ;({ testDb, store } = await openGroupStore(target, 'idem_groups'))
  })
  afterAll(async () => {
    await testDb?.close()
  })

  const complete = (lease: LeaseRef, writes: { sql: string; params: unknown[] }[]) =>
    completeIn(store, lease, writes)

  it('has group commit for leased claims and results', () => {
    expect(store.completeAtomically).toBeTypeOf('function')
  })

  it('claims many keys of one turn, each once: of two claims of one key the first wins', async () => {
    const scope = randomUUID()
    const inputs = Array.from({ length: 40 }, (_, i) => claimOf(scope, `k${i % 30}`))
    const outcomes = await Promise.all(inputs.map((input) => store.claim(input)))
    // Keys k0..k29 are first claimed by inputs 0..29; inputs 30..39 ask for k0..k9 again.
    expect(outcomes.slice(0, 30).every((o) => o.claimed)).toBe(true)
    for (const [index, outcome] of outcomes.slice(30).entries()) {
      expect(outcome.claimed).toBe(false)
      if (outcome.claimed) continue
      expect(outcome.existing?.leaseToken).toBe(inputs[index]!.leaseToken)
      expect(outcome.existing?.state).toBe('in_progress')
    }
  })

  it('answers a claim of a key already recorded with its record, in a group with new keys', async () => {
    const scope = randomUUID()
    const first = claimOf(scope, 'done')
    expect((await store.claim(first)).claimed).toBe(true)
    expect(await complete(first, [])).toBe(true)
    const [again, fresh] = await Promise.all([
      store.claim(claimOf(scope, 'done')),
      store.claim(claimOf(scope, 'new')),
    ])
    expect(fresh?.claimed).toBe(true)
    expect(again?.claimed).toBe(false)
    if (again?.claimed === false) {
      expect(again.existing?.state).toBe('completed')
      expect(Buffer.from(again.existing!.result!.body).toString()).toBe('{"charged":42}')
    }
  })

  it.runIf(target.dialect === 'postgres')(
    'fails only the claim with a value the database refuses, not its group',
    async () => {
      const scope = randomUUID()
      // PostgreSQL text cannot hold a NUL character: the statement is refused for its data.
      const outcomes = await Promise.allSettled([
        store.claim(claimOf(scope, 'a')),
        store.claim(claimOf(`${scope}\u0000`, 'b')),
        store.claim(claimOf(scope, 'c')),
      ])
      expect(outcomes[0]).toEqual({ status: 'fulfilled', value: { claimed: true } })
      expect(outcomes[1]).toMatchObject({ status: 'rejected', reason: { code: '22021' } })
      expect(outcomes[2]).toEqual({ status: 'fulfilled', value: { claimed: true } })
    },
  )

  it('records a group of results with their writes; a failing write fails only its own', async () => {
    const tenant = randomUUID()
    const leases = Array.from({ length: 5 }, (_, i) => claimOf(tenant, `r${i}`))
    await Promise.all(leases.map((lease) => store.claim(lease)))
    const taken = randomUUID()
    await testDb.db.execute(insertCharge, [taken, 'someone-else', 1])
    const outcomes = await Promise.allSettled(
      leases.map((lease, i) =>
        complete(lease, [
          { sql: insertCharge, params: [randomUUID(), tenant, i] },
          // The third request's second write breaks the primary key.
          { sql: insertCharge, params: [i === 2 ? taken : randomUUID(), tenant, 100 + i] },
        ]),
      ),
    )
    expect(outcomes.map((o) => o.status)).toEqual([
      'fulfilled',
      'fulfilled',
      'rejected',
      'fulfilled',
      'fulfilled',
    ])
    expect(String((outcomes[2] as PromiseRejectedResult).reason)).toMatch(/unique|UNIQUE/)
    const amounts = await testDb.db.query<{ amount: number | string }>(
      'SELECT amount FROM charges WHERE tenant = $1 ORDER BY amount',
      [tenant],
    )
    expect(amounts.map((row) => Number(row.amount))).toEqual([0, 1, 3, 4, 100, 101, 103, 104])
    const states = await Promise.all(leases.map((lease) => store.get(lease.scope, lease.key)))
    expect(states.map((record) => record?.state)).toEqual([
      'completed',
      'completed',
      'in_progress',
      'completed',
      'completed',
    ])
  })

  it.runIf(target.dialect === 'postgres')(
    'runs every result of a group alone again after a serialization failure, blaming none',
    async () => {
      const tenant = randomUUID()
      const leases = Array.from({ length: 3 }, (_, i) => claimOf(tenant, `s${i}`))
      await Promise.all(leases.map((lease) => store.claim(lease)))
      // Fails with 40001 while another request's charge is in the same transaction: only when
      // the requests are grouped, never for a request alone.
      const failsWhenGrouped = `DO $$ BEGIN
  IF (SELECT count(*) FROM charges WHERE tenant = '${tenant}'
      AND xmin::text = (txid_current() % 4294967296)::text) > 1 THEN
    RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'grouped';
  END IF;
END $$`
      const outcomes = await Promise.all(
        leases.map((lease, i) =>
          complete(lease, [
            { sql: insertCharge, params: [randomUUID(), tenant, i] },
            ...(i === 1 ? [{ sql: failsWhenGrouped, params: [] }] : []),
          ]),
        ),
      )
      expect(outcomes).toEqual([true, true, true])
      expect(await countRows(testDb.db, 'charges', `WHERE tenant = '${tenant}'`)).toBe(3)
    },
  )

  it('answers false to the results whose lease was lost, writing none of theirs, and records the rest', async () => {
    const tenant = randomUUID()
    const leases = Array.from({ length: 4 }, (_, i) => claimOf(tenant, `l${i}`))
    await Promise.all(leases.map((lease) => store.claim(lease)))
    await testDb.db.execute(
      `UPDATE breakwater_idempotency SET lease_token = 'taken' WHERE scope = $1 AND idem_key IN ('l1', 'l3')`,
      [tenant],
    )
    const outcomes = await Promise.all(
      leases.map((lease, i) =>
        complete(lease, [{ sql: insertCharge, params: [randomUUID(), tenant, i] }]),
      ),
    )
    expect(outcomes).toEqual([true, false, true, false])
    expect(await countRows(testDb.db, 'charges', `WHERE tenant = '${tenant}'`)).toBe(2)
    const amounts = await testDb.db.query<{ amount: number | string }>(
      'SELECT amount FROM charges WHERE tenant = $1 ORDER BY amount',
      [tenant],
    )
    expect(amounts.map((row) => Number(row.amount))).toEqual([0, 2])
  })
})
