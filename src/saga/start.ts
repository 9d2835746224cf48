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
import { checkSagaOptions } from './options.js'
import { sagaMigrations } from './sql.js'
import { type StepState, storedJson } from './state.js'
import { insertInstance } from './store.js'

/** Options of {@link startSaga}. */
export interface StartSagaOptions {
  /**
   * The instance id: 1 to 200 characters from `A-Z a-z 0-9 - _ . : ~ + / =`. Derive it from the
   * business key (`order-42`) to make starting idempotent: a second start with the same id
   * inserts nothing and resolves with `created: false`.
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
  /** False when an instance with this id already existed (nothing was inserted). */
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
