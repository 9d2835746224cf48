// The figures counted from the shop's real databases (SQLite files, migrated as the demo migrates
// them), for what a count alone cannot tell: every order the load generator was told was
// accepted must be recorded, whichever other orders were recorded too.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openDatabase, type SqlDriver } from 'breakwater/stores'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  openOrderStore,
  ordersOutbox,
  recordOrderEvent,
} from '../../../examples/shop/domain/orders.js'
import {
  migrateService,
  type StoreOwner,
  storeOwners,
} from '../../../examples/shop/domain/schema.js'
import { countFigures, judge } from '../../../examples/shop/invariants.js'

let dir: string
const dbs = {} as Record<StoreOwner, SqlDriver>

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'breakwater-shop-figures-'))
  for (const owner of storeOwners) {
    const db = await openDatabase(`sqlite:${join(dir, `${owner}.db`)}`)
    await migrateService(owner, db)
    dbs[owner] = db
  }
  const legacyOrder = (id: string) =>
    dbs.legacy.execute(`INSERT INTO legacy_orders VALUES ($1, 'c-1', '[]', 100, 'paid', $2, $2)`, [
      id,
      Date.now(),
    ])
  // Accepted and recorded by legacy; recorded although its request failed (a lost reply).
  await legacyOrder('accepted-legacy')
  await legacyOrder('failed-but-recorded')
  // Accepted and recorded by the new orders service.
  const store = openOrderStore(dbs.orders)
  const outbox = ordersOutbox('shop_test_orders')
  await dbs.orders.transaction((tx) =>
    recordOrderEvent(
      tx,
      { store, outbox },
      {
        type: 'order-placed',
        data: {
          orderId: 'accepted-new',
          customerId: 'c-2',
          items: [],
          amountCents: 100,
          placedAt: Date.now(),
        },
      },
    ),
  )
})

afterAll(async () => {
  for (const db of Object.values(dbs)) await db.close()
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
})

const recorded = (accepted: readonly string[]) =>
  countFigures(dbs, accepted).then((figures) =>
    judge(figures, true).find((i) => i.name === 'accepted orders recorded'),
  )

describe('accepted orders recorded', () => {
  it('holds when every accepted order is in legacy or in the new service', async () => {
    expect(await recorded(['accepted-legacy', 'accepted-new'])).toMatchObject({
      ok: true,
      value: '2 of 2',
    })
  })

  it('breaks on an accepted order that is nowhere, though as many orders were recorded', async () => {
    // Three orders recorded, three accepted: a count finds nothing wrong.
    const invariant = await recorded(['accepted-legacy', 'accepted-new', 'accepted-lost'])
    expect(invariant).toMatchObject({ ok: false, value: '2 of 3 (missing: accepted-lost)' })
  })
})
