// Every service's tables, as numbered migrations with both dialects (breakwater/stores'
// runMigrations), plus the library capabilities each service uses. The demo process applies
// them once before it starts the services, as a deployment would. Each service has its own
// store (a SQLite file, or a PostgreSQL schema); table names carry the service's name anyway,
// so that a reader of any database knows whose table it is.

import { migrateCqrs } from 'breakwater/cqrs'
import { migrateIdempotency } from 'breakwater/idempotency'
import { migrateInbox, migrateOutbox, migrateSqlQueue } from 'breakwater/outbox'
import { migrateSagas } from 'breakwater/saga'
import { type Migration, runMigrations, type SqlDriver } from 'breakwater/stores'
import { catalog } from './catalog.js'

/** The services that own a database. */
export type StoreOwner =
  | 'legacy'
  | 'orders'
  | 'inventory'
  | 'payments'
  | 'shipping'
  | 'notifications'

/** The services that own a database, in start order. */
export const storeOwners: readonly StoreOwner[] = [
  'legacy',
  'orders',
  'inventory',
  'payments',
  'shipping',
  'notifications',
]

// The shop's own statements are plain enough to be the same in both dialects.
const same = (statements: readonly string[]): Pick<Migration, 'sqlite' | 'postgres'> => ({
  sqlite: statements,
  postgres: statements,
})

const seedCatalog = (table: string, withStock: boolean): string =>
  `INSERT INTO ${table} VALUES ${catalog
    .map(
      (p) =>
        `('${p.sku}', '${p.name.replace(/'/g, "''")}', ${p.priceCents}${withStock ? `, ${p.stock}` : ''})`,
    )
    .join(', ')}`

const appMigrations: Readonly<Record<StoreOwner, readonly Migration[]>> = {
  legacy: [
    {
      version: 1,
      name: 'monolith',
      ...same([
        `CREATE TABLE legacy_orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
             items TEXT NOT NULL, amount_cents INTEGER NOT NULL, status TEXT NOT NULL,
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)`,
        'CREATE INDEX legacy_orders_status ON legacy_orders (status)',
        `CREATE TABLE legacy_catalog (sku TEXT PRIMARY KEY, name TEXT NOT NULL,
             price_cents INTEGER NOT NULL)`,
        seedCatalog('legacy_catalog', false),
        'CREATE TABLE legacy_emails (order_id TEXT NOT NULL, sent_at BIGINT NOT NULL)',
      ]),
    },
  ],
  orders: [],
  inventory: [
    {
      version: 1,
      name: 'stock',
      ...same([
        `CREATE TABLE inventory_stock (sku TEXT PRIMARY KEY, name TEXT NOT NULL,
             price_cents INTEGER NOT NULL, available INTEGER NOT NULL)`,
        seedCatalog('inventory_stock', true),
        `CREATE TABLE inventory_reservations (order_id TEXT PRIMARY KEY, items TEXT NOT NULL,
             status TEXT NOT NULL, created_at BIGINT NOT NULL)`,
      ]),
    },
  ],
  payments: [
    {
      version: 1,
      name: 'charges',
      // No unique constraint on order_id: exactly-once charging is the idempotency layer's job
      // here, and the invariant checker counts duplicates to prove it does it.
      ...same([
        `CREATE TABLE payments_charges (id TEXT PRIMARY KEY, order_id TEXT NOT NULL,
             amount_cents INTEGER NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)`,
        'CREATE INDEX payments_charges_order ON payments_charges (order_id)',
      ]),
    },
  ],
  shipping: [
    {
      version: 1,
      name: 'shipments',
      ...same([
        'CREATE TABLE shipping_shipments (order_id TEXT PRIMARY KEY, created_at BIGINT NOT NULL)',
      ]),
    },
  ],
  notifications: [
    {
      version: 1,
      name: 'emails',
      // No unique constraint on order_id either: "one email per order" is the inbox's job.
      ...same([
        `CREATE TABLE notifications_emails (id TEXT PRIMARY KEY, order_id TEXT NOT NULL,
           kind TEXT NOT NULL, message_id TEXT NOT NULL, sent_at BIGINT NOT NULL)`,
      ]),
    },
  ],
}

/** Applies the library's and the service's own migrations to the service's database. */
export async function migrateService(owner: StoreOwner, db: SqlDriver): Promise<void> {
  if (owner === 'orders') {
    // The event store (write side and read models), the outbox, the saga state, and
    // idempotency records for POST /orders.
    await migrateCqrs(db)
    await migrateOutbox(db)
    await migrateSagas(db)
    await migrateIdempotency(db)
  }
  if (owner === 'payments') await migrateIdempotency(db)
  if (owner === 'notifications') await migrateInbox(db)
  const migrations = appMigrations[owner]
  if (migrations.length > 0) await runMigrations(db, `shop-${owner}`, migrations)
}

/** Prepares the SQL queue's tables (the embedded broker). */
export async function migrateQueue(db: SqlDriver): Promise<void> {
  await migrateSqlQueue(db)
}
