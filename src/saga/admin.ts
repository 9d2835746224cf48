import { type Clock, storedTime } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkStoredName } from '../core/text.js'
import { checkClock, checkInteger, checkObject, checkOneOf, optionKeys } from '../core/validate.js'
import { notify, type SqlDriver, type SqlExecutor } from '../stores/index.js'
import { compiledSaga, type SagaDefinition } from './definition.js'
import { SagaNotFoundError, SagaStateConflictError } from './errors.js'
import { checkSagaOptions } from './options.js'
import { sagaNotifyChannel, sagaStatements } from './sql.js'
import {
  type DefinitionRegistry,
  definitionProblem,
  instanceFromRow,
  reasonInDetail,
  type SagaDefinitionProblem,
  type SagaEventRow,
  type SagaInstance,
  type SagaNumberColumn,
  type SagaOptionalTimeColumn,
  type SagaRow,
  type SagaStatus,
  type SagaTimelineEntry,
  type StepState,
  sagaStatuses,
  storedJson,
  storedNumber,
  storedSteps,
  storedText,
  timelineEntryFromRow,
  unreadableColumns,
} from './state.js'
import { storedReason } from './store.js'

/** Options of {@link listSagas}. */
export interface ListSagasOptions {
  /**
   * Only instances in this status.
   * @default all statuses
   */
  readonly status?: SagaStatus | undefined
  /**
   * Only instances of this definition name.
   * @default all names
   */
  readonly name?: string | undefined
  /**
   * The most instances returned, newest first.
   * @default 100
   */
  readonly limit?: number | undefined
  /**
   * The definitions your workers run (the `sagas` of `createSagaWorker`): an instance that
   * still needs a worker and whose definition is not among them, or is with other steps, is
   * marked (`definitionProblem`: `unknown-name`, `unknown-version`, `steps-changed`).
   * @default undefined (only a row at odds with its own definition column is marked)
   */
  readonly definitions?: readonly SagaDefinition<unknown, unknown>[] | undefined
}

const listOptions = optionKeys<ListSagasOptions>({
  status: true,
  name: true,
  limit: true,
  definitions: true,
})

/** Options of {@link getSaga}. */
export interface GetSagaOptions {
  /**
   * The definitions your workers run, to check the instance against (see
   * {@link ListSagasOptions.definitions}).
   * @default undefined
   */
  readonly definitions?: readonly SagaDefinition<unknown, unknown>[] | undefined
}

const getOptions = optionKeys<GetSagaOptions>({ definitions: true })

// The definitions given to listSagas or getSaga, checked as createSagaWorker checks its
// `sagas`: each from defineSaga, each name and version once.
function definitionRegistry(option: string, definitions: unknown): DefinitionRegistry | undefined {
  if (definitions === undefined) return undefined
  if (!Array.isArray(definitions))
    throw new InvalidOptionError(option, 'an array of saga definitions (defineSaga)', definitions)
  const steps = new Map<string, readonly string[]>()
  const names = new Set<string>()
  definitions.forEach((definition: unknown, i) => {
    const saga = compiledSaga(definition, `${option}[${i}]`)
    if (steps.has(saga.key))
      throw new InvalidOptionError(`${option}[${i}]`, 'a name and version given once', saga.key)
    steps.set(
      saga.key,
      saga.steps.map((step) => step.name),
    )
    names.add(saga.name)
  })
  return { steps, names }
}

/** A line of {@link listSagas}: an instance without its input and context. */
export interface SagaSummary {
  readonly id: string
  readonly name: string
  /** The definition's version; undefined when it cannot be read (see `unreadable`). */
  readonly version: number | undefined
  readonly status: SagaStatus
  /**
   * The current step's name (or the next one to compensate), if any. Undefined too when the
   * stored steps or step index cannot be read (a row changed outside breakwater): the
   * instance is listed with the others, marked (`unreadable`), and `getSaga` names what is
   * wrong with it.
   */
  readonly step: string | undefined
  /** Attempts started of the current step; undefined when it cannot be read (see `unreadable`). */
  readonly attempt: number | undefined
  /** When a worker may pick it up next (epoch ms); undefined when it cannot be read. */
  readonly nextRunAt: number | undefined
  /** The worker holding it; undefined when none does or it cannot be read. */
  readonly leaseOwner: string | undefined
  /** When the lease ends (epoch ms); undefined when none is held or it cannot be read. */
  readonly leaseExpiresAt: number | undefined
  /** Why it compensates, was parked or cancelled; undefined when none or it cannot be read. */
  readonly reason: string | undefined
  /** When it was started (epoch ms); undefined when it cannot be read (see `unreadable`). */
  readonly createdAt: number | undefined
  /** When its state last changed (epoch ms); undefined when it cannot be read. */
  readonly updatedAt: number | undefined
  /** When it finished (epoch ms); undefined when it has not or it cannot be read. */
  readonly finishedAt: number | undefined
  /**
   * The columns of the row that cannot be read (`steps`, `step_index`, `attempt`, `version`,
   * `next_run_at`, `lease_expires_at`, `created_at`, `updated_at`, `finished_at`, and
   * `reason` and `lease_owner` when not text (a blob of UTF-8 text reads as that text): a
   * row changed outside breakwater, which
   * `getSaga` fails on naming the problem), undefined when every one can. The fields they
   * give are undefined then.
   */
  readonly unreadable: readonly string[] | undefined
  /**
   * Its `definition` column: the `name@version` key workers claim it by, and so whose steps run
   * on it. Undefined when it is not text (a row changed outside breakwater).
   */
  readonly definition: string | undefined
  /**
   * Why its definition is in question (see {@link SagaDefinitionProblem}): `definition-mismatch`
   * when its name or version is not that of its definition column (a row changed outside
   * breakwater, which a worker reports and does not run); given `definitions`, `unknown-name`,
   * `unknown-version` or `steps-changed`. Undefined when it is not in question.
   */
  readonly definitionProblem: SagaDefinitionProblem | undefined
}

/**
 * Lists saga instances, newest first, optionally by status and name. An unknown (misspelt)
 * option is refused with `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const parked = await listSagas(db, { status: 'failed' })
 * ```
 */
export async function listSagas(
  db: SqlExecutor,
  options: ListSagasOptions = {},
): Promise<SagaSummary[]> {
  checkObject('options', options)
  // A misspelt filter (`state`) was dropped: every instance was listed as if it matched.
  checkSagaOptions('options', options, listOptions)
  const status =
    options.status === undefined ? null : checkOneOf('options.status', options.status, sagaStatuses)
  if (options.name !== undefined && typeof options.name !== 'string')
    throw new InvalidOptionError('options.name', 'a string', options.name)
  const limit = checkInteger('options.limit', options.limit ?? 100, 1, 100_000)
  const registry = definitionRegistry('options.definitions', options.definitions)
  const list = sagaStatements[db.dialect].list
  const name = options.name
  const [sql, params] =
    status === null
      ? name === undefined
        ? [list.all, [limit]]
        : [list.name, [name, limit]]
      : name === undefined
        ? [list.status, [status, limit]]
        : [list.statusAndName, [status, name, limit]]
  const rows = await db.query<SagaRow>(sql, params)
  return rows.map((row) => {
    // One row that cannot be read failed the whole listing, hiding every other instance: it is
    // listed, marked with the columns it cannot read.
    const { unreadable, steps } = unreadableColumns(row)
    const bad = (column: string) => unreadable?.includes(column) === true
    // Read only when readable: storedNumber throws on the others.
    const read = (column: SagaNumberColumn | SagaOptionalTimeColumn) =>
      bad(column) ? undefined : storedNumber(row, column as SagaOptionalTimeColumn)
    const version = read('version')
    return {
      id: row.id,
      name: row.name,
      version,
      status: row.status as SagaStatus,
      step:
        steps === undefined || bad('step_index') ? undefined : steps[Number(row.step_index)]?.name,
      attempt: bad('attempt') ? undefined : Number(row.attempt),
      nextRunAt: read('next_run_at'),
      // Read as getSaga and the worker read them (a blob of UTF-8 text is that text); one that
      // is not text failed the CLI's listing with a bare TypeError.
      leaseOwner: bad('lease_owner') ? undefined : storedText(row, 'lease_owner'),
      leaseExpiresAt: read('lease_expires_at'),
      reason: bad('reason') ? undefined : storedText(row, 'reason'),
      createdAt: read('created_at'),
      updatedAt: read('updated_at'),
      finishedAt: read('finished_at'),
      unreadable,
      // Marked, not refused: the worker reports such a row, and the listing showed it as any
      // other, under a name or version whose steps are not the ones that would run on it.
      definition: typeof row.definition === 'string' ? row.definition : undefined,
      definitionProblem: definitionProblem(
        row,
        version,
        steps?.map((step) => step.name),
        registry,
      ),
    }
  })
}

/**
 * Reads one instance; undefined when there is none with this id. An instance whose name or
 * version is not that of its definition column, or, given `definitions`, whose definition is
 * not among them, is marked (`definitionProblem`, see {@link SagaDefinitionProblem}). A row changed outside
 * breakwater (a JSON column that cannot be read, an `attempt`, `step_index` or
 * `cancel_requested` a worker would refuse, a version or time that is not a whole number from
 * 1 or 0, a `lease_token` that is not one from 0, a `reason` or `lease_owner` that is not
 * text, or a blob that is not UTF-8 text without NUL, which is read as that text) fails with
 * `StoredDataError`
 * (`STORED_DATA_INVALID`) naming the saga and the column,
 * never shown as NaN, an Invalid Date or a wrong flag.
 */
export async function getSaga(
  db: SqlExecutor,
  id: string,
  options: GetSagaOptions = {},
): Promise<SagaInstance | undefined> {
  checkId('id', id)
  checkObject('options', options)
  checkSagaOptions('options', options, getOptions)
  const registry = definitionRegistry('options.definitions', options.definitions)
  const rows = await db.query<SagaRow>(sagaStatements[db.dialect].selectOne, [id])
  return rows[0] === undefined ? undefined : instanceFromRow(rows[0], registry)
}

/**
 * Reads an instance's timeline: each step attempt and its outcome, failures with their errors,
 * compensations, lease takeovers, operator actions, in order. An entry whose stored detail is
 * not a JSON object, whose `at` or `attempt` is not a whole number from 0, or whose `kind`,
 * `step` or `worker` is not text (a row changed outside breakwater) is given with the others,
 * marked: `unreadable` names each such column with what is wrong with it, and its field is
 * undefined. Nothing is written; fix the row.
 */
export async function getSagaTimeline(db: SqlExecutor, id: string): Promise<SagaTimelineEntry[]> {
  checkId('id', id)
  const rows = await db.query<SagaEventRow>(sagaStatements[db.dialect].selectEvents, [id])
  return rows.map((row) => timelineEntryFromRow(id, row))
}

/** Options of {@link retrySaga} and {@link cancelSaga}. */
export interface SagaAdminOptions {
  /**
   * Who asks, recorded in the timeline.
   * @default 'operator'
   */
  readonly by?: string | undefined
  /**
   * Why, recorded in the timeline (and, for a cancel, as the reason of the compensation).
   * @default undefined
   */
  readonly reason?: string | undefined
  /**
   * Source of the timestamps.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const adminOptionKeys = optionKeys<SagaAdminOptions>({ by: true, reason: true, clock: true })

/**
 * Re-queues a parked (`failed`) saga: its compensation resumes where it stopped, with fresh
 * attempts, on the next worker that polls, for the reason it compensated for before it was
 * parked (the failed step, or the cancel; recorded in its timeline). Throws `SagaNotFoundError`, or
 * `SagaStateConflictError` when the saga is not parked; an unknown (misspelt) option is refused
 * with `InvalidOptionError` (`INVALID_OPTION`). A timeline entry it reads the reason from that
 * was changed outside breakwater fails it with `StoredDataError` naming the entry; nothing is
 * re-queued.
 *
 * @example
 * ```ts
 * await retrySaga(db, 'order-o-42', { by: 'alice', reason: 'payments fixed the refund bug' })
 * ```
 */
export async function retrySaga(
  db: SqlDriver,
  id: string,
  options: SagaAdminOptions = {},
): Promise<void> {
  checkId('id', id)
  const { now, by, reason } = adminOptions(options)
  const statements = sagaStatements[db.dialect]
  await db.transaction(async (tx) => {
    const { rowCount } = await tx.execute(statements.retry, [
      id,
      now,
      await compensationReason(tx, id),
    ])
    if (rowCount === 0) await refuse(tx, id, 'only a parked (failed) saga can be retried')
    await tx.execute(statements.insertEvent, [
      id,
      now,
      'retry-requested',
      null,
      null,
      by,
      JSON.stringify(reason === undefined ? {} : { reason }),
    ])
  })
}

// The reason the parked saga was compensating for (the failed step, or the cancel), as its
// timeline recorded it when compensation began. Parking replaced the stored reason with the
// compensation's failure; kept, the resumed compensations got that as `ctx.reason`, the saga
// ended `compensated` or `cancelled` with it, and a second park nested it once more. Null for
// one parked before it compensated (a changed definition): its park reason stays.
async function compensationReason(tx: SqlExecutor, id: string): Promise<string | null> {
  const rows = await tx.query<{ seq: number; detail: string | null }>(
    sagaStatements[tx.dialect].compensationReason,
    [id],
  )
  const reason = reasonInDetail(id, rows[0])
  return reason === undefined ? null : storedReason(reason)
}

/**
 * Cancels a running saga: the worker that runs it finishes the step in progress, then
 * compensates the completed steps in reverse order and ends it as `cancelled`. A saga waiting
 * for a timer, a retry delay or a reply is woken at once. A command/reply step whose command
 * was sent and whose reply was not read is compensated too, first (its outcome is unknown). The
 * step the cancel cuts off (waiting, or between attempts) ends `failed` unless it is
 * compensated. Throws `SagaNotFoundError`, or
 * `SagaStateConflictError` when the saga is not running (already compensating or finished).
 * A saga that was finishing its last step as the cancel arrived still ends `completed`. A
 * cancel of a running saga whose cancel is already requested resolves with
 * `'already-requested'` and changes nothing: the first request (and its reason) stands, and the
 * timeline records only that one. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`).
 * @returns `'requested'` when this call recorded the request, `'already-requested'` when an
 * earlier one was still pending.
 */
export async function cancelSaga(
  db: SqlDriver,
  id: string,
  options: SagaAdminOptions = {},
): Promise<CancelSagaResult> {
  checkId('id', id)
  const { now, by, reason } = adminOptions(options)
  const statements = sagaStatements[db.dialect]
  return db.transaction(async (tx) => {
    const { rowCount } = await tx.execute(statements.cancel, [id, now])
    if (rowCount === 0) {
      // Requested already and not yet acted on: the first request stands, reason and all (a
      // second one replaced its reason, unsaid), and nothing is recorded for this one.
      if (await cancelPending(tx, id)) return 'already-requested'
      await refuse(tx, id, 'only a running saga can be cancelled')
    }
    await tx.execute(statements.insertEvent, [
      id,
      now,
      'cancel-requested',
      null,
      null,
      by,
      JSON.stringify(reason === undefined ? {} : { reason }),
    ])
    return 'requested'
  })
}

/**
 * What {@link cancelSaga} did: recorded this request, or found an earlier one still pending
 * (then this one changed nothing).
 */
export type CancelSagaResult = 'requested' | 'already-requested'

/** What {@link deliverReply} did. */
export type DeliverReplyResult =
  /** Recorded; the saga was woken to read it. */
  | 'delivered'
  /** A reply for this step was already recorded; this one was dropped. */
  | 'duplicate'
  /**
   * The step awaits no reply any more: it already ran (completed or compensated), it is not a
   * step with a command in flight (a wait step never has one), the reply answers an attempt
   * whose reply was already read and refused (a redelivered copy), or the saga is not running
   * (it compensates, or has ended or been parked: it reads no reply). Dropped; nothing was
   * recorded or woken.
   */
  | 'stale'

/** Options of {@link deliverReply}. */
export interface DeliverReplyOptions {
  /**
   * Source of the reply's receive time.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * The attempt (`ctx.attempt` of `send`) whose command this replies to, when known.
   * @default undefined (any attempt)
   */
  readonly attempt?: number | undefined
}

const deliverReplyOptions = optionKeys<DeliverReplyOptions>({ clock: true, attempt: true })

/**
 * Delivers the reply to a step that sent a command and waits (a step with `awaitReply`),
 * correlated by saga id and step name: records it (the first reply per step wins; later ones
 * are duplicates) and wakes the saga so that a worker continues it. Pass your transaction to
 * record the reply together with, say, the inbox row of the message that carried it. Throws
 * `SagaNotFoundError` for an unknown saga and `SagaStateConflictError` for a step it does not
 * have or one that has sent no command yet, `InvalidOptionError` (`INVALID_OPTION`) for a reply
 * JSON cannot hold or an undefined one (pass null for none), and `StoredDataError` when the instance's stored
 * steps cannot be read (a row changed outside breakwater; nothing is recorded). A reply for a step that awaits none (a wait step,
 * one that already ran, or one whose reply was read and refused and that waits to resend), or
 * for a saga that is not running (compensating, parked, ended), is
 * dropped as `'stale'` and wakes nothing: a duplicate delivery woke the saga early (a retry ran
 * before its delay, a sleep ended early) or was taken as the answer to the resend. Give `attempt` (the `ctx.attempt` of the
 * send being answered; `sagaReplyHandler` reads it from the reply's `causation-id`) to drop a
 * copy of a refused reply even while the resend waits. The step's state is read again once the
 * reply is recorded (on PostgreSQL locking the instance's row until the transaction ends, as the
 * wake does), so a copy that read it just before a worker read and refused the first copy is
 * dropped as `'stale'` too. Given the driver, it runs in a transaction of its own. A reply that
 * comes after its attempt timed out still counts. An unknown (misspelt) option is refused with `InvalidOptionError`
 * (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * await deliverReply(db, message.headers['correlation-id'], 'charge', JSON.parse(new TextDecoder().decode(message.payload)))
 * ```
 */
export async function deliverReply(
  executor: SqlExecutor,
  sagaId: string,
  step: string,
  reply: unknown,
  options: DeliverReplyOptions = {},
): Promise<DeliverReplyResult> {
  checkId('sagaId', sagaId)
  checkId('step', step)
  checkObject('options', options)
  // A misspelt attempt (`attempts`) let a redelivered copy of a refused reply through.
  checkSagaOptions('options', options, deliverReplyOptions)
  const clock = checkClock('clock', options.clock)
  const attempt =
    options.attempt === undefined ? undefined : checkInteger('options.attempt', options.attempt, 1)
  // The reply itself first: a value JSON cannot hold is the caller's mistake, whatever the saga.
  // A forgotten reply (undefined) was recorded as null and the step went on with it; null is
  // the explicit "no reply", as for a saga's input.
  if (reply === undefined) throw new InvalidOptionError('reply', 'JSON (pass null for none)', reply)
  const json = storedJson('reply', reply)
  const now = storedTime(clock)
  // The check and the insert are one with the worker's writes (see recordReply): given the
  // driver, in a transaction of its own; given a transaction, in it.
  if (isDriver(executor)) {
    return executor.transaction((tx) => recordReply(tx, sagaId, step, json, attempt, now))
  }
  return recordReply(executor, sagaId, step, json, attempt, now)
}

// Records a reply the step awaits, and wakes the saga. The state is read without a lock, so a
// duplicate or stale copy holds nothing (an inbox's transaction may stay open a while), then
// read again once the reply is inserted, locked on PostgreSQL: a worker that read and refused
// the first copy meanwhile (the step's state changed, that reply deleted) made this copy stale.
// Taken as delivered, it woke the saga before its retry delay and was read as the answer to a
// resend never sent. A worker's write under way is waited for (the lock; on SQLite the write
// transaction), and the re-read sees it; a later one waits for this transaction, which holds
// the reply until it ends, as the wake always did.
async function recordReply(
  executor: SqlExecutor,
  sagaId: string,
  step: string,
  json: string,
  attempt: number | undefined,
  now: number,
): Promise<DeliverReplyResult> {
  const statements = sagaStatements[executor.dialect]
  const rows = await executor.query<SagaRow>(statements.selectOne, [sagaId])
  const row = rows[0]
  if (row === undefined) throw new SagaNotFoundError(sagaId)
  if (awaitedStep(row, step, attempt) === undefined) return 'stale'
  const { rowCount } = await executor.execute(statements.insertReply, [sagaId, step, json, now])
  if (rowCount === 0) {
    // Either this step's reply was recorded already, or the instance was removed (pruneSagas)
    // since it was read above.
    if ((await executor.query(statements.selectOne, [sagaId])).length === 0)
      throw new SagaNotFoundError(sagaId)
    return 'duplicate'
  }
  // The insert's FOR KEY SHARE (PostgreSQL) keeps the instance from being removed meanwhile.
  const locked = (await executor.query<SagaRow>(statements.lockOne, [sagaId]))[0]!
  const index = awaitedStep(locked, step, attempt)
  if (index === undefined) {
    await executor.execute(statements.deleteReply, [sagaId, step])
    return 'stale'
  }
  await wakeSaga(executor, sagaId, index, now)
  return 'delivered'
}

// The index of the step named `step` when it awaits this reply, undefined when the reply is
// stale. Unreadable steps (a row changed outside breakwater): StoredDataError naming the saga.
// Nothing is recorded, and sagaReplyHandler rethrows it, so the message carrying the reply is
// not acknowledged: the reply is not lost while the row is fixed.
function awaitedStep(row: SagaRow, step: string, attempt: number | undefined): number | undefined {
  const steps = storedSteps(row)
  const index = steps.findIndex((s) => s.name === step)
  const state = steps[index]
  if (state === undefined) {
    throw new SagaStateConflictError(row.id, row.status, `it has no step named "${step}"`)
  }
  // A step's command commits with the state that leaves `pending`, so a reply to a step still
  // pending answers nothing it sent (misrouted, or meant for an earlier instance with this id).
  // Kept, it was taken as the step's answer when the step came, and the command never went.
  if (state.status === 'pending') {
    throw new SagaStateConflictError(
      row.id,
      row.status,
      `step "${step}" has sent no command to reply to`,
    )
  }
  // Only a running saga reads a reply: one that compensates (its steps are undone, a command
  // still in flight included) or has ended never does. Recorded, such a reply was reported as
  // delivered, and the wake (running sagas only) did nothing.
  if (row.status !== 'running') return undefined
  return isStale(state, attempt) ? undefined : index
}

// Whether `executor` is a driver (which has `close`), not a transaction: its statements would
// each commit alone.
function isDriver(executor: SqlExecutor): executor is SqlDriver {
  return 'close' in executor && typeof (executor as SqlDriver).transaction === 'function'
}

// Whether a step awaits no reply (see deliverReply): only a command in flight (`sent`), or a
// step `waiting` as stored before that flag existed, has one to come. A wait step stores
// `sent: false`: a reply naming it woke the saga during its sleep or waitUntil.
function isStale(state: StepState, attempt: number | undefined): boolean {
  if (state.status === 'completed' || state.status === 'compensated') return true
  if (state.sent !== true && !(state.status === 'waiting' && state.sent === undefined)) return true
  if (attempt === undefined) return false
  return attempt > state.attempts || attempt <= (state.replyRefusedAt ?? 0)
}

/**
 * Makes a running saga due at `now` (a reply for its step at `stepIndex` was recorded), when
 * that step is still its current one: a reply for another step must not cut a timer, a retry
 * delay or a reply timeout of the current step short. Listening workers claim it at once
 * instead of at their next poll (PostgreSQL NOTIFY, delivered on commit).
 */
export async function wakeSaga(
  executor: SqlExecutor,
  sagaId: string,
  stepIndex: number,
  now: number,
): Promise<void> {
  const rows = await executor.query<{ woken: number | string }>(
    sagaStatements[executor.dialect].wake,
    [sagaId, now, stepIndex],
  )
  if (rows.some((r) => Number(r.woken) === 1)) await notify(executor, sagaNotifyChannel)
}

// A non-string id reached the driver: SQLite threw a bare TypeError for an object, PostgreSQL
// answered "not found" for it, and undefined read as "No saga instance has the id undefined".
// Also text the database stores as it is: a NUL made PostgreSQL fail the lookup with a bare
// driver error (no code, the caller's transaction aborted), where no saga can have the id.
function checkId(option: string, id: unknown): void {
  checkStoredName(option, id)
}

function adminOptions(options: SagaAdminOptions): { now: number; by: string; reason?: string } {
  checkObject('options', options)
  // A misspelt reason (`because`) left the timeline without it.
  checkSagaOptions('options', options, adminOptionKeys)
  // Written to the worker column as it is: a NUL made PostgreSQL refuse the write with a bare
  // driver error (22021) where SQLite stored it.
  const by = checkStoredName('options.by', options.by ?? 'operator')
  if (options.reason !== undefined && typeof options.reason !== 'string')
    throw new InvalidOptionError('options.reason', 'a string', options.reason)
  const now = storedTime(checkClock('clock', options.clock))
  return options.reason === undefined ? { now, by } : { now, by, reason: options.reason }
}

// Whether the saga is running with its cancel requested (a worker has not taken it up yet).
async function cancelPending(tx: SqlExecutor, id: string): Promise<boolean> {
  const rows = await tx.query<{ status: string }>(
    `SELECT status FROM breakwater_sagas WHERE id = $1 AND cancel_requested = 1`,
    [id],
  )
  return rows[0]?.status === 'running'
}

async function refuse(tx: SqlExecutor, id: string, message: string): Promise<never> {
  const rows = await tx.query<{ status: string }>(
    `SELECT status FROM breakwater_sagas WHERE id = $1`,
    [id],
  )
  if (rows[0] === undefined) throw new SagaNotFoundError(id)
  throw new SagaStateConflictError(id, rows[0].status, message)
}
