// The shop failing to start before any of its processes runs (here a migration: an event trigger
// of the database refuses the notifications store's tables; a table left in its schema would be
// dropped, as the shop replaces its schemas on each run) must leave nothing behind:
// no temporary folder, no database connection, and an error that says which step failed and why.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startShop } from '../../../examples/shop/system.js'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'
import { ensureShopBuilt } from './support.js'

let temp: string
let database: TestDatabase
let watcher: SqlDriver

beforeAll(async () => {
  ensureShopBuilt()
  temp = mkdtempSync(join(tmpdir(), 'breakwater-shop-start-'))
  database = await createTestDatabase('shop_start')
  watcher = await openDatabase(database.url, { postgres: { maxConnections: 1 } })
})

afterAll(async () => {
  await watcher?.close()
  await database?.drop()
  if (temp !== undefined) rmSync(temp, { recursive: true, force: true })
})

/** Sessions on the test database other than the watcher's own. */
async function otherSessions(): Promise<number> {
  const rows = await watcher.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
    [database.name],
  )
  return Number(rows[0]?.n)
}

// How many times sessionsAfterSettling asks before it gives up. A poll is one round trip to the
// server plus a 5 ms pause, so this bounds the wait at a few seconds on a loaded machine; a real
// leak (a session that never ends) still fails, with the count it left.
const maxPolls = 1_000

/**
 * The other sessions once their number stops falling to zero: polls until none is left, or
 * returns the last count after maxPolls. The shop's databases are closed when startShop
 * rejects, but a closed session is not yet gone then: PostgresDriver.close() awaits pg-pool's
 * end(), which sends each idle connection its Terminate and resolves without waiting for the
 * socket to close, so the server may still list those backends (up to 2 per store) for a
 * moment. What must hold is that they all go away, with nothing opening new ones.
 */
async function sessionsAfterSettling(): Promise<number> {
  let count = await otherSessions()
  for (let poll = 1; count !== 0 && poll < maxPolls; poll++) {
    await new Promise((resolve) => setTimeout(resolve, 5))
    count = await otherSessions()
  }
  return count
}

describe('startShop failing before its processes start', () => {
  it('closes the databases it opened, removes its folder and names the failed step', async () => {
    await watcher.execute(`CREATE FUNCTION public.refuse_notifications() RETURNS event_trigger
      LANGUAGE plpgsql AS $$ BEGIN
        IF tg_tag = 'CREATE TABLE' AND current_schema() = 'shop_notifications' THEN
          RAISE EXCEPTION 'notifications_emails refused by the test';
        END IF;
      END $$`)
    await watcher.execute(
      'CREATE EVENT TRIGGER refuse_notifications ON ddl_command_start EXECUTE FUNCTION public.refuse_notifications()',
    )
    const tmp = process.env.TMPDIR
    // The shop's temporary folder goes inside `temp`, where the test can see it.
    process.env.TMPDIR = temp
    let error: unknown
    try {
      await startShop({ db: database.url, newOrdersShare: 50, log: () => {} })
    } catch (caught) {
      error = caught
    } finally {
      if (tmp === undefined) delete process.env.TMPDIR
      else process.env.TMPDIR = tmp
    }
    expect(error).toBeInstanceOf(Error)
    expect((error as Error).message).toMatch(/migrating the notifications store/)
    expect((error as Error).message).toMatch(/notifications_emails/)
    expect((error as Error).cause).toBeDefined()
    expect(readdirSync(temp)).toEqual([])
    expect(await sessionsAfterSettling()).toBe(0)
  })
})
