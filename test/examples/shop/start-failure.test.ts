// The shop failing to start before any of its processes runs (here a migration: a table of the
// notifications store is already there, not made by its migrations) must leave nothing behind:
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

describe('startShop failing before its processes start', () => {
  it('closes the databases it opened, removes its folder and names the failed step', async () => {
    await watcher.execute('CREATE SCHEMA shop_notifications')
    await watcher.execute('CREATE TABLE shop_notifications.notifications_emails (id TEXT)')
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
    // A closed pool has ended its sessions: the server drops a session from pg_stat_activity
    // before it closes the socket whose closing ends the client's wait.
    expect(await otherSessions()).toBe(0)
  })
})
