// What the group commit tests of the SQL idempotency store share: claim inputs, a result, and
// a migrated database with the charges table (real SQLite or PostgreSQL).
import { randomUUID } from 'node:crypto'
import { createSqlIdempotencyStore, type IdempotencyStore } from '../../src/idempotency/index.js'
import type { ClaimInput, LeaseRef, StoredResult } from '../../src/idempotency/store.js'
import type { SqlWrite } from '../../src/stores/index.js'
import { createChargesTable, type DbTarget, type TestDb } from './databases.js'

/** The time of every claim and result of these tests. */
export const nowMs = 1_800_000_000_000

/** A leased claim of `key` in `scope`, with a token of its own. */
export function claimOf(scope: string, key: string): ClaimInput {
  return {
    scope,
    key,
    fingerprint: 'fp',
    leaseToken: randomUUID(),
    leaseExpiresAtMs: nowMs + 30_000,
    nowMs,
    expiresAtMs: nowMs + 86_400_000,
  }
}

/** The result these tests record. */
export const storedResult: StoredResult = {
  status: 201,
  headers: { 'content-type': 'application/json' },
  body: Buffer.from('{"charged":42}'),
}

/** A fresh database (`name`) with the charges table, and the SQL store over it. */
export async function openGroupStore(
  target: DbTarget,
  name: string,
): Promise<{ testDb: TestDb; store: IdempotencyStore }> {
  const testDb = await target.open(name)
  await createChargesTable(testDb.db)
  return { testDb, store: createSqlIdempotencyStore(testDb.db) }
}

/** Records `storedResult` for `lease` with `writes`, through the store's group commit. */
export function completeIn(
  store: IdempotencyStore,
  lease: LeaseRef,
  writes: readonly SqlWrite[],
): Promise<boolean> {
  return store.completeAtomically!(writes, lease, storedResult, nowMs, nowMs + 86_400_000)
}
