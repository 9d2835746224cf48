// The shop on PostgreSQL owns the shop_* schemas it creates, and replaces them on every run
// (found by exploratory testing: reusing a --db database added the earlier runs' orders to a
// run's figures, and after one interrupted run every later run found its old pending events
// "lost", republished to the old run's topic that nobody consumes). Nothing else in the
// database is touched: another schema, public, a shop_ schema that is not one of its stores.
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { storeOwners } from '../../../examples/shop/domain/schema.js'
import { prepareShopSchemas } from '../../../examples/shop/system.js'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'

let database: TestDatabase
let db: SqlDriver

beforeAll(async () => {
  database = await createTestDatabase('shop_schemas')
  db = await openDatabase(database.url, { postgres: { maxConnections: 1 } })
})

afterAll(async () => {
  await db?.close()
  await database?.drop()
})

async function tablesIn(schema: string): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    'SELECT table_name AS name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1',
    [schema],
  )
  return rows.map((r) => r.name)
}

async function schemas(): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    "SELECT nspname AS name FROM pg_namespace WHERE nspname LIKE 'shop%' ORDER BY 1",
  )
  return rows.map((r) => r.name)
}

describe('prepareShopSchemas', () => {
  it("empties the shop's own schemas and leaves everything else as it was", async () => {
    await db.execute('CREATE SCHEMA shop_orders')
    await db.execute('CREATE TABLE shop_orders.orders_events (id TEXT)')
    await db.execute("INSERT INTO shop_orders.orders_events VALUES ('from an earlier run')")
    await db.execute('CREATE SCHEMA shop_queue')
    await db.execute('CREATE TABLE shop_queue.pending (id TEXT)')
    await db.execute('CREATE SCHEMA accounting')
    await db.execute("CREATE TABLE accounting.ledger AS SELECT 'kept' AS entry")
    await db.execute("CREATE TABLE public.notes AS SELECT 'kept' AS note")
    await db.execute('CREATE SCHEMA shop_reports')
    await db.execute("CREATE TABLE shop_reports.daily AS SELECT 'kept' AS day")

    await prepareShopSchemas(db)

    expect(await tablesIn('shop_orders')).toEqual([])
    expect(await tablesIn('shop_queue')).toEqual([])
    expect(await schemas()).toEqual(
      [...storeOwners, 'queue', 'reports'].map((owner) => `shop_${owner}`).sort(),
    )
    expect(await db.query('SELECT entry FROM accounting.ledger')).toEqual([{ entry: 'kept' }])
    expect(await db.query('SELECT note FROM public.notes')).toEqual([{ note: 'kept' }])
    expect(await db.query('SELECT day FROM shop_reports.daily')).toEqual([{ day: 'kept' }])
  })

  it('creates the schemas in a database that has none of them', async () => {
    for (const owner of [...storeOwners, 'queue'])
      await db.execute(`DROP SCHEMA IF EXISTS shop_${owner} CASCADE`)
    await prepareShopSchemas(db)
    expect(await schemas()).toEqual(
      expect.arrayContaining([...storeOwners, 'queue'].map((owner) => `shop_${owner}`)),
    )
  })
})
