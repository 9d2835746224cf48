import type { Clock } from '../core/clock.js'
import {
  checkClock,
  checkInteger,
  checkNumber,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { removeInBatches } from '../stores/batches.js'
import type { SqlDriver } from '../stores/index.js'
import { checkBoolean } from './outbox.js'
import { inboxStatements, listParam, outboxStatements } from './sql.js'
import { wholeMsClock } from './time.js'

/** Options of {@link pruneOutbox}. */
export interface PruneOutboxOptions {
  /**
   * Rows published at least this long ago are removed.
   * @default 86_400_000 (one day)
   */
  readonly olderThanMs?: number | undefined
  /**
   * Rows removed per statement. Small batches keep each statement short, so writers never
   * wait long behind the pruner (row locks only on PostgreSQL; a short write lock on SQLite).
   * @default 1000
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call; the rest waits for the next call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * Moves the rows to `breakwater_outbox_archive` instead of deleting them.
   * @default false
   */
  readonly archive?: boolean | undefined
  /**
   * The clock that says how old a row is.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

interface PruneSettings {
  readonly olderThanMs: number
  readonly batchSize: number
  readonly maxBatches: number
  readonly archive: boolean
  readonly clock: Clock
}

/**
 * An age in ms: finite, so the cutoff is a time the database can compare (Infinity made one of
 * -Infinity, which PostgreSQL refused on every run with a bare bigint syntax error).
 */
function checkAge(option: string, value: unknown): number {
  return checkNumber(option, value, 0, Number.MAX_SAFE_INTEGER)
}

/** The keys PruneOutboxOptions takes (internal: not exported from the package root). */
export const pruneOutboxOptions = optionKeys<PruneOutboxOptions>({
  olderThanMs: true,
  batchSize: true,
  maxBatches: true,
  archive: true,
  clock: true,
})

/**
 * Validates {@link PruneOutboxOptions} (named `<prefix>.<option>` in errors); an unknown one is
 * refused.
 */
export function resolvePruneOptions(prefix: string, options: PruneOutboxOptions): PruneSettings {
  checkObject(prefix, options)
  // A misspelt olderThanMs pruned with the default window: rows still wanted were removed.
  checkOptionKeys(prefix, options, pruneOutboxOptions)
  const clock = wholeMsClock(checkClock(`${prefix}.clock`, options.clock))
  return {
    olderThanMs: checkAge(`${prefix}.olderThanMs`, options.olderThanMs ?? 86_400_000),
    batchSize: checkInteger(`${prefix}.batchSize`, options.batchSize ?? 1000, 1, 100_000),
    maxBatches: checkInteger(`${prefix}.maxBatches`, options.maxBatches ?? 100, 1),
    archive: checkBoolean(`${prefix}.archive`, options.archive, false),
    clock,
  }
}

/**
 * Runs one prune pass with settings already validated; returns the rows removed. Once `signal`
 * is aborted no further batch starts (the one under way finishes). The event loop turns between
 * batches (removeInBatches).
 */
export async function prunePublished(
  db: SqlDriver,
  settings: PruneSettings,
  signal?: AbortSignal,
): Promise<number> {
  const sql = outboxStatements[db.dialect]
  // Fixed for the pass: rows published after it started are never due in it, so even a pass
  // without a batch budget ends.
  const cutoff = Math.floor(settings.clock.now() - settings.olderThanMs)
  return removeInBatches(settings.batchSize, settings.maxBatches, async () => {
    // A short count ends the pass.
    if (signal?.aborted === true) return 0
    if (!settings.archive) {
      return (await db.execute(sql.prune, [cutoff, settings.batchSize])).rowCount
    }
    if (db.dialect === 'postgres') {
      return (await db.execute(sql.archive, [cutoff, settings.batchSize, settings.clock.now()]))
        .rowCount
    }
    // SQLite cannot DELETE inside a CTE: copy then delete the same ids, in one short
    // transaction.
    return db.transaction(async (tx) => {
      const moved = await tx.query<{ id: number }>(sql.archive, [
        cutoff,
        settings.batchSize,
        settings.clock.now(),
      ])
      if (moved.length === 0) return 0
      const ids = moved.map((row) => Number(row.id))
      await tx.execute(sql.archiveDelete, [listParam('sqlite', ids)])
      return ids.length
    })
  })
}

/**
 * Removes published outbox rows older than `olderThanMs`, in bounded batches (each batch its
 * own short statement or transaction), or moves them to `breakwater_outbox_archive` with
 * `archive: true`. Unpublished and dead-lettered rows are never touched. Relays run this
 * periodically by themselves (their `retention` option); call it directly from a scheduled job
 * or the CLI. Returns the number of rows removed. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) before anything is removed.
 *
 * @example
 * ```ts
 * import { pruneOutbox } from 'breakwater/outbox'
 * const removed = await pruneOutbox(db, { olderThanMs: 7 * 86_400_000, archive: true })
 * ```
 */
export async function pruneOutbox(
  db: SqlDriver,
  options: PruneOutboxOptions = {},
): Promise<number> {
  return prunePublished(db, resolvePruneOptions('pruneOutbox', options))
}

/** Options of {@link pruneInbox}. */
export interface PruneInboxOptions {
  /**
   * Inbox records received at least this long ago are removed. This is the dedupe window:
   * keep it longer than any message can take to be redelivered.
   * @default 604_800_000 (seven days)
   */
  readonly olderThanMs?: number | undefined
  /**
   * Records removed per statement.
   * @default 1000
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * The clock that says how old a record is.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys PruneInboxOptions takes (internal: not exported from the package root). */
export const pruneInboxOptions = optionKeys<PruneInboxOptions>({
  olderThanMs: true,
  batchSize: true,
  maxBatches: true,
  clock: true,
})

/**
 * Removes inbox records older than `olderThanMs`, in bounded batches, and returns how many. A
 * message redelivered after its record was removed is handled again, so the window must
 * outlast the brokers' redelivery. An unknown (misspelt) option is refused with
 * `InvalidOptionError` before anything is removed.
 *
 * @example
 * ```ts
 * import { pruneInbox } from 'breakwater/outbox'
 * await pruneInbox(db, { olderThanMs: 14 * 86_400_000 })
 * ```
 */
export async function pruneInbox(db: SqlDriver, options: PruneInboxOptions = {}): Promise<number> {
  checkObject('pruneInbox', options)
  // A misspelt olderThanMs pruned with the default window: records still needed were removed.
  checkOptionKeys('pruneInbox', options, pruneInboxOptions)
  const clock = wholeMsClock(checkClock('pruneInbox.clock', options.clock))
  const olderThanMs = checkAge('pruneInbox.olderThanMs', options.olderThanMs ?? 604_800_000)
  const batchSize = checkInteger('pruneInbox.batchSize', options.batchSize ?? 1000, 1, 100_000)
  const maxBatches = checkInteger('pruneInbox.maxBatches', options.maxBatches ?? 100, 1)
  const sql = inboxStatements[db.dialect]
  const cutoff = Math.floor(clock.now() - olderThanMs)
  return removeInBatches(
    batchSize,
    maxBatches,
    async () => (await db.execute(sql.prune, [cutoff, batchSize])).rowCount,
  )
}
