// A phase whose commit failed because the PostgreSQL pool had no free connection (STORE_BUSY)
// sent nothing to the server: the phase certainly did not commit, so the key is released at
// once, as after any other failure known to have written nothing, and a retry runs without
// waiting for the lease. It was kept (as after a commit whose answer was lost) and the retry
// refused with IdempotencyInProgressError until the lease ran out. Real PostgreSQL.
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  createIdempotency,
  createSqlIdempotencyStore,
  migrateIdempotency,
} from '../../src/idempotency/index.js'
import { StoreBusyError } from '../../src/stores/errors.js'
import { createPostgresDriver, type PostgresDriver } from '../../src/stores/postgres.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

let setup: { database: TestDatabase; db: PostgresDriver } | undefined

beforeAll(async () => {
  const database = await createTestDatabase('phase_commit_store_busy')
  // One connection, and a short wait for it: the test holds it while the phase commits.
  const db = await createPostgresDriver({
    connectionString: database.url,
    maxConnections: 1,
    connectionTimeoutMs: 200,
  })
  setup = { database, db }
  await migrateIdempotency(db)
})
afterAll(async () => {
  await setup?.db.close()
  await setup?.database.drop()
})

it('releases the key of a phase whose commit found the pool exhausted, so a retry runs at once', async () => {
  if (setup === undefined) throw new Error('beforeAll did not finish')
  const { db } = setup
  const idempotency = createIdempotency({
    store: createSqlIdempotencyStore(db),
    clock: new ManualClock(1_000_000),
    leaseMs: 60_000,
  })
  const phaseRuns: string[] = []
  let busy = true
  const run = () =>
    idempotency.run('k-busy', async (ctx) => {
      // The pool's only connection, held by another transaction while the phase commits.
      let free = (): void => {}
      let taken = (): void => {}
      const held = new Promise<void>((resolve) => {
        taken = resolve
      })
      const holder = busy
        ? db.transaction(async (tx) => {
            await tx.query('SELECT 1')
            taken()
            await new Promise<void>((resolve) => {
              free = resolve
            })
          })
        : undefined
      if (holder !== undefined) await held
      busy = false
      try {
        // The phase writes nothing itself: its commit's fenced write is its first statement.
        await ctx.phase('a', async () => {
          phaseRuns.push('a')
          return 'a'
        })
      } finally {
        free()
        await holder
      }
      return 'done'
    })
  const first = await run().catch((error: unknown) => error)
  expect(first).toBeInstanceOf(StoreBusyError)
  await expect(run()).resolves.toBe('done')
  expect(phaseRuns).toEqual(['a', 'a'])
})
