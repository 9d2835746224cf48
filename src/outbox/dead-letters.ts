import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkStoredName } from '../core/text.js'
import {
  checkClock,
  checkInteger,
  checkObject,
  checkOptionKeys,
  isObjectRecord,
  optionKeys,
} from '../core/validate.js'
import { readStoredWholeNumber } from '../stores/errors.js'
import { notify, type SqlExecutor } from '../stores/index.js'
import { listParam, OUTBOX_CHANNEL, outboxStatements } from './sql.js'
import { wholeMsClock } from './time.js'

/** A dead-lettered outbox event, as {@link listDead} returns it. */
export interface DeadEvent {
  /** The row's id (its position in the outbox). */
  readonly id: number
  /** The event's stable id; pass it to {@link redrive}. */
  readonly eventId: string
  readonly aggregateType: string
  readonly aggregateId: string
  readonly type: string
  readonly topic: string
  /** The payload as stored (JSON text). */
  readonly payload: string
  /**
   * The headers as stored; `{}` when the stored text is not a JSON object (a row changed
   * outside breakwater, which is how it came to be dead: `lastError` names what is wrong),
   * so that one such row does not fail the whole listing. The row itself is left as it is.
   */
  readonly headers: Readonly<Record<string, string>>
  /** Failed attempts charged to it; undefined when it cannot be read (see `unreadable`). */
  readonly attempts: number | undefined
  /** The last failure, as text. */
  readonly lastError: string | null
  /** When it was enqueued (epoch ms); undefined when it cannot be read (see `unreadable`). */
  readonly createdAt: number | undefined
  /** When it was dead-lettered (epoch ms); undefined when it cannot be read (see `unreadable`). */
  readonly deadAt: number | undefined
  /**
   * The columns (`attempts`, `created_at`, `dead_at`) holding a value that is not a whole number
   * from 0 (changed outside breakwater: text, a blob or a negative number), or undefined when all
   * can be read. The row is listed all the same, as one with unreadable headers is, so that it
   * does not fail the whole listing; the row itself is left as it is.
   */
  readonly unreadable: readonly string[] | undefined
}

/** Options of {@link listDead}. */
export interface ListDeadOptions {
  /**
   * Most events returned.
   * @default 100
   */
  readonly limit?: number | undefined
  /**
   * Only events with a row id above this (paging: pass the last id of the previous page).
   * @default 0
   */
  readonly afterId?: number | undefined
}

/** The keys ListDeadOptions takes (internal: not exported from the package root). */
export const listDeadOptions = optionKeys<ListDeadOptions>({ limit: true, afterId: true })

/**
 * Lists dead-lettered events, oldest first. Each one holds back the later events of its
 * aggregate until it is redriven. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { listDead, redrive } from 'breakwater/outbox'
 * const dead = await listDead(db)
 * await redrive(db, dead.map((e) => e.eventId))
 * ```
 */
export async function listDead(
  db: SqlExecutor,
  options: ListDeadOptions = {},
): Promise<DeadEvent[]> {
  checkObject('listDead', options)
  // A misspelt afterId listed the first page again, without a word.
  checkOptionKeys('listDead', options, listDeadOptions)
  const limit = checkInteger('listDead.limit', options.limit ?? 100, 1, 100_000)
  const afterId = checkInteger('listDead.afterId', options.afterId ?? 0, 0)
  const rows = await db.query<{
    id: number
    event_id: string
    aggregate_type: string
    aggregate_id: string
    event_type: string
    topic: string
    payload: string
    headers: string
    attempts: unknown
    last_error: string | null
    created_at: unknown
    dead_at: unknown
  }>(outboxStatements[db.dialect].listDead, [afterId, limit])
  return rows.map((row) => {
    const unreadable: string[] = []
    // Number() made text NaN and kept a negative: a count and times no event can have.
    const read = (column: 'attempts' | 'created_at' | 'dead_at'): number | undefined => {
      const value = readStoredWholeNumber(row[column])
      if (value === undefined) unreadable.push(column)
      return value
    }
    return {
      id: Number(row.id),
      eventId: row.event_id,
      aggregateType: row.aggregate_type,
      aggregateId: row.aggregate_id,
      type: row.event_type,
      topic: row.topic,
      payload: row.payload,
      headers: listedHeaders(row.headers),
      attempts: read('attempts'),
      lastError: row.last_error,
      createdAt: read('created_at'),
      deadAt: read('dead_at'),
      unreadable: unreadable.length > 0 ? unreadable : undefined,
    }
  })
}

function listedHeaders(text: string): Record<string, string> {
  try {
    const headers = JSON.parse(text) as unknown
    if (isObjectRecord(headers)) return headers as Record<string, string>
  } catch {
    // Not JSON: the relay dead-lettered the row for it, and its lastError says so.
  }
  return {}
}

/**
 * Sends dead-lettered events again: clears their dead state and attempt count, so the relay
 * that owns their partition publishes them (first in their aggregate, as before) and the
 * events queued behind them follow. `'all'` redrives every dead event. Returns how many were
 * redriven; ids that are not dead (unknown, published, or still live) are ignored. An id no
 * event can have (empty, or holding a NUL or a lone surrogate) is refused with
 * `InvalidOptionError` naming it (`eventIds[2]`) before anything is sent. On PostgreSQL relays
 * are notified.
 *
 * @example
 * ```ts
 * import { redrive } from 'breakwater/outbox'
 * await redrive(db, 'all')
 * ```
 */
export async function redrive(
  db: SqlExecutor,
  eventIds: readonly string[] | 'all',
): Promise<number> {
  const sql = outboxStatements[db.dialect]
  let count: number
  if (eventIds === 'all') {
    count = (await db.execute(sql.redriveAll)).rowCount
  } else {
    if (!Array.isArray(eventIds) || eventIds.some((id) => typeof id !== 'string'))
      throw new InvalidOptionError('eventIds', 'an array of event ids or "all"', eventIds)
    // An id no event can have (the outbox refuses them): PostgreSQL answered one with a NUL
    // with a bare driver error naming neither the argument nor the id.
    for (const [i, id] of eventIds.entries()) checkStoredName(`eventIds[${i}]`, id)
    if (eventIds.length === 0) return 0
    count = (await db.execute(sql.redrive, [listParam(db.dialect, eventIds)])).rowCount
  }
  if (count > 0) await notify(db, OUTBOX_CHANNEL)
  return count
}

/** Database-wide outbox figures, as {@link outboxStats} returns them. */
export interface OutboxStats {
  /** Events not yet published and not dead. */
  readonly pending: number
  /** Dead-lettered events. */
  readonly dead: number
  /**
   * Of the pending events, those no relay will ever publish: their `partition_no` is outside
   * 0..63 (`OUTBOX_PARTITIONS - 1`), changed outside breakwater (on SQLite also text or a
   * fraction), and relays claim only partitions 0..63. They wait for ever, and the later events
   * of their aggregate are published without them. Nothing changes the rows: set `partition_no`
   * back to `partitionOf(aggregate_id)` (what the outbox stored) and a relay publishes them.
   */
  readonly stranded: number
  /**
   * Age of the oldest pending event in ms (the relay lag), 0 when none is pending. An event
   * whose created_at cannot be read (changed outside breakwater) is left out.
   */
  readonly lagMs: number
}

/** Options of {@link outboxStats}. */
export interface OutboxStatsOptions {
  /**
   * The clock the lag is measured against.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys OutboxStatsOptions takes (internal: not exported from the package root). */
export const outboxStatsOptions = optionKeys<OutboxStatsOptions>({ clock: true })

/**
 * Counts pending, dead and stranded events (pending with a `partition_no` outside
 * 0..OUTBOX_PARTITIONS-1, which no relay ever publishes; an event waiting for a relay that is
 * down is pending, not stranded) and measures
 * the lag (age of the oldest unpublished event) across the whole outbox, whichever relay owns
 * them. The counts scan the pending rows; call
 * it for dashboards and /metrics, not per event. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { outboxStats } from 'breakwater/outbox'
 * const { pending, dead, stranded, lagMs } = await outboxStats(db)
 * ```
 */
export async function outboxStats(
  db: SqlExecutor,
  options: OutboxStatsOptions = {},
): Promise<OutboxStats> {
  checkObject('outboxStats', options)
  checkOptionKeys('outboxStats', options, outboxStatsOptions)
  const clock = wholeMsClock(checkClock('outboxStats.clock', options.clock))
  const sql = outboxStatements[db.dialect]
  const counts = await db.query<{
    pending: number | string
    dead: number | string
    stranded: number | string
  }>(sql.counts)
  // Of the oldest pending row whose created_at can be read (the statement leaves others out).
  const oldest = await db.query<{ created_at: unknown }>(sql.oldestPending)
  const createdAt = readStoredWholeNumber(oldest[0]?.created_at)
  return {
    pending: Number(counts[0]?.pending ?? 0),
    dead: Number(counts[0]?.dead ?? 0),
    stranded: Number(counts[0]?.stranded ?? 0),
    lagMs: createdAt === undefined ? 0 : Math.max(0, clock.now() - createdAt),
  }
}
