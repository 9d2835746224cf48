import { randomUUID } from 'node:crypto'
import { type Clock, storedTime } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkClock, checkObject, isDroppedPromise, optionKeys } from '../core/validate.js'
import {
  type AppliedMigration,
  runMigrations,
  type SqlDriver,
  type SqlExecutor,
} from '../stores/index.js'
import {
  type CompiledSaga,
  compiledSaga,
  maxSagaIdLength,
  type SagaDefinition,
} from './definition.js'
import { SagaStateConflictError } from './errors.js'
import { checkSagaOptions } from './options.js'
import { sagaMigrations, sagaStatements } from './sql.js'
import { type StepState, storedJson } from './state.js'
import { insertInstance } from './store.js'

/** Options of {@link startSaga}. */
export interface StartSagaOptions {
  /**
   * The instance id: 1 to 200 characters from `A-Z a-z 0-9 - _ . : ~ + / =`. Derive it from the
   * business key (`order-42`) to make starting idempotent: a second start with the same id
   * inserts nothing and resolves with `created: false`. Ids are one namespace across every
   * saga: an id an instance of another saga (another name) holds is refused with
   * `SagaStateConflictError`; one held by another version of the same saga counts as that
   * saga (`created: false`). Prefix ids with the saga's name when keys may repeat across sagas.
   * @default a random UUID
   */
  readonly id?: string | undefined
  /**
   * On PostgreSQL, sends `NOTIFY breakwater_saga` with the insert, so that listening workers
   * claim the saga as soon as it commits instead of at their next poll.
   * @default true
   */
  readonly notify?: boolean | undefined
  /**
   * Source of `created_at` and of the first `next_run_at`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const startOptions = optionKeys<StartSagaOptions>({ id: true, notify: true, clock: true })

/** What {@link startSaga} did. */
export interface StartedSaga {
  /** The instance id. */
  readonly id: string
  /**
   * False when an instance of this saga (this name, any version) with this id already existed
   * (nothing was inserted).
   */
  readonly created: boolean
}

const idPattern = /^[A-Za-z0-9\-_.:~+/=]+$/

/** Checks a saga id; returns it. */
export function checkSagaId(option: string, id: unknown): string {
  if (typeof id !== 'string' || id.length > maxSagaIdLength || !idPattern.test(id)) {
    throw new InvalidOptionError(
      option,
      `1 to ${maxSagaIdLength} characters from A-Z a-z 0-9 - _ . : ~ + / =`,
      id,
    )
  }
  return id
}

/** Validates and serializes a saga's input. */
export function serializeInput(saga: CompiledSaga, input: unknown): string {
  // A forgotten argument was stored as null without a word; null is the explicit "no input".
  if (input === undefined) throw new InvalidOptionError('input', 'JSON (pass null for none)', input)
  const parsed = saga.parseInput === undefined ? input : saga.parseInput(input)
  // An async parser (zod's parseAsync) returned a promise, stored as the input `{}`, and its
  // rejection went unhandled: refused, and its outcome observed so that it is not reported.
  if (isDroppedPromise(parsed)) {
    throw new InvalidOptionError(
      `saga "${saga.name}".input`,
      'a function that returns the input itself (synchronously), not a promise',
      parsed,
    )
  }
  if (parsed === undefined) {
    throw new InvalidOptionError(
      `saga "${saga.name}".input`,
      'a function that returns the input (JSON; return null for none), not undefined',
      parsed,
    )
  }
  return storedJson('input', parsed)
}

/** What a start that found its id taken reads of the instance holding it. */
export interface ExistingInstance {
  readonly name: unknown
  readonly version: unknown
  readonly status: unknown
}

/**
 * Refuses a start (`startSaga`, `worker.run`) that found its id held by an instance of another
 * saga. Ids are one namespace across definitions, and `created: false` said "this saga was
 * started already" of a saga that never was (it never ran; `worker.run` reported the other
 * saga's state as its outcome). Another version of the same name is the same saga, re-started
 * after a version bump: no refusal. `existing` undefined (the row was pruned meanwhile) is left
 * as the start found it, not created.
 */
export function refuseOtherSaga(
  id: string,
  saga: CompiledSaga,
  existing: ExistingInstance | undefined,
): void {
  if (existing === undefined || existing.name === saga.name) return
  throw new SagaStateConflictError(
    id,
    String(existing.status),
    `the id is held by an instance of saga ${JSON.stringify(existing.name)} version ${String(existing.version)}, not of ${JSON.stringify(saga.name)}: saga ids are shared by every definition (prefix them with the saga's name); nothing was started`,
  )
}

/** The initial step states of a definition, as JSON. */
export function initialSteps(saga: CompiledSaga): string {
  const steps: StepState[] = saga.steps.map((s) => ({
    name: s.name,
    status: 'pending',
    attempts: 0,
  }))
  return JSON.stringify(steps)
}

/**
 * Starts a saga: inserts a `running` instance that a worker (`createSagaWorker`) registered
 * with this definition will claim and run. Pass the transaction of your business write as
 * `executor` (a breakwater `tx`, or `fromPgClient` / `fromBetterSqlite` / `fromKysely`) and
 * the saga starts exactly when that write commits, and not at all if it rolls back. The input
 * is validated by the definition's `input` function and stored as JSON; it is required: an
 * undefined input is refused (pass `null` for none). An unknown (misspelt) option, or one given
 * as `null`, is refused with `InvalidOptionError` (`INVALID_OPTION`) before anything is written.
 * An id an instance of another saga holds is refused with `SagaStateConflictError`
 * (`SAGA_STATE_CONFLICT`) naming that saga (see {@link StartSagaOptions.id}).
 *
 * @example
 * ```ts
 * await db.transaction(async (tx) => {
 *   await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o-42', 99])
 *   await startSaga(tx, orderSaga, { orderId: 'o-42', amount: 99 }, { id: 'order-o-42' })
 * })
 * ```
 */
export async function startSaga<I>(
  executor: SqlExecutor,
  definition: SagaDefinition<I, unknown>,
  input: I,
  options: StartSagaOptions = {},
): Promise<StartedSaga> {
  checkObject('options', options)
  // A misspelt id (`Id`) was dropped: a random id made a repeated start a second saga.
  checkSagaOptions('options', options, startOptions)
  if (typeof executor !== 'object' || executor === null || typeof executor.query !== 'function')
    throw new InvalidOptionError('executor', 'a SqlExecutor (driver or transaction)', executor)
  // A string 'false' (from an env var) was truthy and notified.
  if (options.notify !== undefined && typeof options.notify !== 'boolean')
    throw new InvalidOptionError('options.notify', 'a boolean', options.notify)
  const saga = compiledSaga(definition)
  const id = options.id === undefined ? randomUUID() : checkSagaId('options.id', options.id)
  const clock = checkClock('clock', options.clock)
  const now = storedTime(clock)
  const created = await insertInstance(
    executor,
    {
      id,
      name: saga.name,
      version: saga.version,
      key: saga.key,
      input: serializeInput(saga, input),
      steps: initialSteps(saga),
      nextRunAt: now,
      leaseOwner: null,
      leaseExpiresAt: null,
      leaseToken: 0,
      attempt: 0,
      now,
    },
    options.notify !== false,
  )
  if (!created) {
    // Read on the same executor: within the caller's transaction, a refusal rolls it back.
    const [existing] = await executor.query<ExistingInstance>(
      sagaStatements[executor.dialect].selectDefinition,
      [id],
    )
    refuseOtherSaga(id, saga, existing)
  }
  return { id, created }
}

/**
 * Applies the `saga` capability's migrations (instances, timeline, replies, flow events).
 *
 * @example
 * ```ts
 * await migrateSagas(await openDatabase('sqlite:./.breakwater/app.db'))
 * ```
 */
export function migrateSagas(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'saga', sagaMigrations)
}
