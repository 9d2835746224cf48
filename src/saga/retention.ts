import { type Clock, storedTime } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkClock, checkInteger, checkObject, optionKeys } from '../core/validate.js'
import { removeInBatches } from '../stores/batches.js'
import type { SqlDriver } from '../stores/index.js'
import { checkSagaOptions } from './options.js'
import { flowPruneStatements, sagaPruneStatements } from './sql.js'
import type { SagaStatus } from './state.js'

/** The statuses {@link pruneSagas} may remove: an instance in one of them never runs again by itself. */
export type PrunableSagaStatus = Extract<
  SagaStatus,
  'completed' | 'compensated' | 'cancelled' | 'failed'
>

const prunable: readonly PrunableSagaStatus[] = ['completed', 'compensated', 'cancelled', 'failed']
const finished: readonly PrunableSagaStatus[] = ['completed', 'compensated', 'cancelled']

/** Options of {@link pruneSagas}. */
export interface PruneSagasOptions {
  /**
   * Instances that ended at least this long ago are removed. A parked (`failed`) instance has
   * not ended: its age counts from its last change.
   * @default 2_592_000_000 (30 days)
   */
  readonly olderThanMs?: number | undefined
  /**
   * The statuses removed. Parked (`failed`) instances are left out unless named here: each one
   * waits for an operator (`retrySaga`), and removing it forgets that its compensation did not
   * finish.
   * @default ['completed', 'compensated', 'cancelled']
   */
  readonly statuses?: readonly PrunableSagaStatus[] | undefined
  /**
   * Instances removed per transaction (each with its timeline and recorded replies). Small
   * batches keep each transaction short, so workers never wait long behind the pruner.
   * @default 500
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call; the rest waits for the next call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * The clock that says how old an instance is.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const pruneSagasOptions = optionKeys<PruneSagasOptions>({
  olderThanMs: true,
  statuses: true,
  batchSize: true,
  maxBatches: true,
  clock: true,
})

function checkStatuses(value: unknown): readonly PrunableSagaStatus[] {
  if (value === undefined) return finished
  if (
    !Array.isArray(value) ||
    value.length === 0 ||
    !value.every((s) => (prunable as readonly unknown[]).includes(s))
  ) {
    throw new InvalidOptionError(
      'pruneSagas.statuses',
      `a non-empty array of ${prunable.map((s) => `'${s}'`).join(', ')}`,
      value,
    )
  }
  return [...new Set(value as PrunableSagaStatus[])]
}

/**
 * Removes saga instances that ended at least `olderThanMs` ago (by default: `completed`,
 * `compensated` and `cancelled` ones), each together with its timeline and its recorded
 * replies, in bounded batches: one short transaction per batch. Running and compensating
 * instances are never touched; parked ones only when `statuses` names `'failed'`. Call it from
 * a scheduled job, or run `breakwater saga prune`. Returns the number of instances removed.
 * One whose end (or creation) time was changed outside breakwater to something that is not a
 * number counts as ended long enough ago (its age cannot be told).
 *
 * Once an instance is removed its id is free: starting a saga with that id again starts a new
 * instance. Keep the window longer than any duplicate start can arrive (a redelivered
 * message that starts sagas by a derived id). An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) before anything is removed.
 *
 * @example
 * ```ts
 * import { pruneSagas } from 'breakwater/saga'
 * const removed = await pruneSagas(db, { olderThanMs: 7 * 86_400_000 })
 * ```
 */
export async function pruneSagas(db: SqlDriver, options: PruneSagasOptions = {}): Promise<number> {
  checkObject('pruneSagas', options)
  // A misspelt option (`olderThan`) was dropped: the 30-day default pruned instead.
  checkSagaOptions('pruneSagas', options, pruneSagasOptions)
  const olderThanMs = checkInteger(
    'pruneSagas.olderThanMs',
    options.olderThanMs ?? 2_592_000_000,
    0,
  )
  const statuses = checkStatuses(options.statuses)
  const batchSize = checkInteger('pruneSagas.batchSize', options.batchSize ?? 500, 1, 10_000)
  const maxBatches = checkInteger('pruneSagas.maxBatches', options.maxBatches ?? 100, 1)
  const clock = checkClock('pruneSagas.clock', options.clock)
  const cutoff = storedTime(clock) - olderThanMs
  const sql = sagaPruneStatements[db.dialect]
  // A short batch means nothing older is left (on PostgreSQL, rows locked by someone else
  // right now were skipped: the next call gets them).
  return removeInBatches(batchSize, maxBatches, async () => {
    if (db.dialect === 'postgres') {
      const rows = await db.query<{ removed: number }>(sql.pick, [statuses, cutoff, batchSize])
      return Number(rows[0]?.removed ?? 0)
    }
    return db.transaction(async (tx) => {
      // One status at a time: the index is in created_at order within a status only (see
      // SagaPruneStatements).
      const picked: string[] = []
      for (const status of statuses) {
        if (picked.length === batchSize) break
        const rows = await tx.query<{ id: string }>(sql.pick, [
          status,
          cutoff,
          batchSize - picked.length,
        ])
        for (const row of rows) picked.push(row.id)
      }
      if (picked.length === 0) return 0
      const ids = JSON.stringify(picked)
      await tx.execute(sql.deleteEvents!, [ids])
      await tx.execute(sql.deleteReplies!, [ids])
      const { rowCount } = await tx.execute(sql.deleteInstances!, [
        ids,
        JSON.stringify(statuses),
        cutoff,
      ])
      return rowCount
    })
  })
}

/** Options of {@link pruneFlowEvents}. */
export interface PruneFlowEventsOptions {
  /**
   * Flows whose last event is at least this old are removed, all their events at once.
   * @default 2_592_000_000 (30 days)
   */
  readonly olderThanMs?: number | undefined
  /**
   * Old events looked at per batch (each batch removes the flows they belong to, if those have
   * nothing newer).
   * @default 1000
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call; the rest waits for the next call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * The clock that says how old an event is (its recorded `at`).
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const pruneFlowEventsOptions = optionKeys<PruneFlowEventsOptions>({
  olderThanMs: true,
  batchSize: true,
  maxBatches: true,
  clock: true,
})

/**
 * Removes the flow tracker's record of flows whose last event is at least `olderThanMs` old:
 * every event of such a correlation id at once, so that no flow is left without its start.
 * Flows with a newer event are kept whole. Returns the number of flows removed. An event whose
 * time was changed outside breakwater to something that is not a number (text or a blob on
 * SQLite, which sort above every number) counts as old enough: its age cannot be told.
 *
 * A flow is gone from `tracker.state()` and `stalled()` once removed; an old event of it
 * delivered again later is recorded as a new, partial flow. On PostgreSQL, an event recorded
 * for a flow at the very moment its old events are removed (after the flow was quiet for the
 * whole window) is kept alone. An unknown (misspelt) option is refused with `InvalidOptionError`
 * (`INVALID_OPTION`) before anything is removed.
 *
 * @example
 * ```ts
 * import { pruneFlowEvents } from 'breakwater/saga'
 * const flows = await pruneFlowEvents(db, { olderThanMs: 7 * 86_400_000 })
 * ```
 */
export async function pruneFlowEvents(
  db: SqlDriver,
  options: PruneFlowEventsOptions = {},
): Promise<number> {
  checkObject('pruneFlowEvents', options)
  checkSagaOptions('pruneFlowEvents', options, pruneFlowEventsOptions)
  const olderThanMs = checkInteger(
    'pruneFlowEvents.olderThanMs',
    options.olderThanMs ?? 2_592_000_000,
    0,
  )
  const batchSize = checkInteger('pruneFlowEvents.batchSize', options.batchSize ?? 1000, 1, 10_000)
  const maxBatches = checkInteger('pruneFlowEvents.maxBatches', options.maxBatches ?? 100, 1)
  const clock = checkClock('pruneFlowEvents.clock', options.clock)
  const cutoff = storedTime(clock) - olderThanMs
  const sql = flowPruneStatements[db.dialect]
  // The scan moves on past the rows it has seen: a flow that started long ago but is still
  // going keeps its old events first in `at` order, and must not hold the scan up.
  let cursorAt: unknown = Number.MIN_SAFE_INTEGER
  let cursorSeq = 0
  let flows = 0
  for (let batch = 0; batch < maxBatches; batch++) {
    const rows = await db.query<{ seq: number; at: unknown; correlation_id: string }>(sql.scan, [
      cutoff,
      cursorAt,
      cursorSeq,
      batchSize,
    ])
    if (rows.length === 0) break
    const last = rows[rows.length - 1]!
    // On SQLite an `at` changed outside breakwater to text or a blob is scanned last, after
    // every number; the cursor keeps it as it is (Number() would make it NaN, which SQLite
    // binds as NULL: the next batch would find nothing and the scan stop there).
    cursorAt =
      db.dialect === 'sqlite' && (typeof last.at === 'string' || last.at instanceof Uint8Array)
        ? last.at
        : Number(last.at)
    cursorSeq = Number(last.seq)
    const ids = [...new Set(rows.map((row) => row.correlation_id))]
    const deleted = await db.query<{ correlation_id: string }>(sql.delete, [
      db.dialect === 'postgres' ? ids : JSON.stringify(ids),
      cutoff,
    ])
    flows += new Set(deleted.map((row) => row.correlation_id)).size
    if (rows.length < batchSize) break
  }
  return flows
}
