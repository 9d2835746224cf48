import { type AppliedMigration, runMigrations, type SqlDriver } from '../stores/index.js'
import { inboxMigrations, outboxMigrations } from './sql.js'

/**
 * Applies the `outbox` capability's pending migrations: the outbox table, its partition lease
 * and relay tables, and the archive table. Safe to run from several processes at once.
 *
 * @example
 * ```ts
 * import { migrateOutbox } from 'breakwater/outbox'
 * await migrateOutbox(db)
 * ```
 */
export function migrateOutbox(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'outbox', outboxMigrations)
}

/**
 * Applies the `inbox` capability's pending migrations (the inbox table), in the consumer's
 * database.
 *
 * @example
 * ```ts
 * import { migrateInbox } from 'breakwater/outbox'
 * await migrateInbox(db)
 * ```
 */
export function migrateInbox(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'inbox', inboxMigrations)
}
