import { cqrsMigrations } from '../cqrs/index.js'
import { idempotencyMigrations } from '../idempotency/index.js'
import { inboxMigrations, outboxMigrations, sqlQueueMigrations } from '../outbox/index.js'
import { sagaMigrations } from '../saga/index.js'
import { migrateCommand } from './migrate.js'

/** `breakwater migrate`: applies the migrations of every durable capability. */
export async function migrateEntry(args: string[]): Promise<number> {
  // Each durable capability registers its numbered migrations here as it lands.
  return migrateCommand(args, {
    capabilities: {
      idempotency: idempotencyMigrations,
      outbox: outboxMigrations,
      queue: sqlQueueMigrations,
      inbox: inboxMigrations,
      saga: sagaMigrations,
      cqrs: cqrsMigrations,
    },
  })
}
