// The shop on PostgreSQL reaches each service's schema through the connection's search_path,
// set with libpq's `options` URL parameter. A --db URL that already has `options` (a
// statement_timeout, a role setting) keeps them: the demo adds its search_path to them rather
// than sending a second `options` that pg reads instead of the user's.
import { openDatabase } from 'breakwater/stores'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { shopStoreUrl } from '../../../examples/shop/system.js'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'

let database: TestDatabase

beforeAll(async () => {
  database = await createTestDatabase('shop_store_url')
})

afterAll(async () => {
  await database?.drop()
})

async function settingsOf(url: string): Promise<{ searchPath: string; timeout: string }> {
  const db = await openDatabase(url, { postgres: { maxConnections: 1 } })
  try {
    const [path] = await db.query<{ search_path: string }>('SHOW search_path')
    const [timeout] = await db.query<{ statement_timeout: string }>('SHOW statement_timeout')
    return { searchPath: path?.search_path ?? '', timeout: timeout?.statement_timeout ?? '' }
  } finally {
    await db.close()
  }
}

describe('shopStoreUrl', () => {
  it("selects the service's schema on a URL without options", async () => {
    const { searchPath } = await settingsOf(shopStoreUrl(database.url, 'orders'))
    expect(searchPath).toBe('shop_orders')
  })

  it('keeps the options the --db URL already has', async () => {
    const separator = database.url.includes('?') ? '&' : '?'
    const given = `${database.url}${separator}options=${encodeURIComponent('-c statement_timeout=12345')}`
    expect(await settingsOf(shopStoreUrl(given, 'payments'))).toEqual({
      searchPath: 'shop_payments',
      timeout: '12345ms',
    })
  })
})
