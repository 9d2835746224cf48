// The set-up most idempotency HTTP tests repeat: one migrated database per describe block
// (with the charges table the handlers write to), and the server a test starts closed after it.
import { afterAll, afterEach, beforeAll } from 'vitest'
import type { SqlDriver } from '../../src/stores/index.js'
import { createChargesTable, type DbTarget, type TestDb } from './databases.js'
import type { Listening } from './servers.js'

/** The database and server bookkeeping of one describe block; see {@link useServerSuite}. */
export interface ServerSuite {
  /** The block's migrated database (valid inside its tests). */
  readonly db: SqlDriver
  /** Closes `listening` after the running test; returns it. */
  keep(listening: Listening): Listening
}

/**
 * Registers, in the calling describe block, a fresh database on `target` named after `name`
 * (with the charges table unless `charges` is false), closed after the block, and closes the
 * server each test hands to `keep` after that test.
 */
export function useServerSuite(target: DbTarget, name: string, charges = true): ServerSuite {
  let testDb: TestDb | undefined
  let listening: Listening | undefined
  beforeAll(async () => {
    testDb = await target.open(name)
    if (charges) await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })
  return {
    get db() {
      if (testDb === undefined) throw new Error(`${name}: the database is used outside a test`)
      return testDb.db
    },
    keep(server) {
      listening = server
      return server
    },
  }
}
