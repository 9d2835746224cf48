import { BreakwaterError, describeValue } from '../core/errors.js'
import { jsonTextOf } from '../core/text.js'
import { isObjectRecord } from '../core/validate.js'
import {
  parseStoredJson,
  parseStoredObject,
  readStoredWholeNumber,
  StoredDataError,
  type StoredPlace,
} from '../stores/errors.js'
import { sagaEventsTable, sagaTable } from './sql.js'

/**
 * Where a saga instance is:
 * - `running`: steps are being run (or it waits for a timer, a retry delay or a reply);
 * - `compensating`: a step failed for good (or the saga was cancelled) and the completed steps
 *   are being compensated in reverse order;
 * - `completed`: every step completed;
 * - `compensated`: a step failed for good and every completed step was compensated;
 * - `failed`: a compensation kept failing; parked for a person, with the reason
 *   (`retrySaga` / `breakwater saga retry` resumes it);
 * - `cancelled`: cancelled by an operator, and every completed step was compensated.
 */
export type SagaStatus =
  | 'running'
  | 'compensating'
  | 'completed'
  | 'compensated'
  | 'failed'
  | 'cancelled'

/** Every {@link SagaStatus}. */
export const sagaStatuses: readonly SagaStatus[] = [
  'running',
  'compensating',
  'completed',
  'compensated',
  'failed',
  'cancelled',
]

/** The statuses in which a saga is finished for good. */
export const finishedStatuses: readonly SagaStatus[] = ['completed', 'compensated', 'cancelled']

/**
 * Where one step of an instance is:
 * - `pending`: not begun, or between attempts (its retry delay);
 * - `waiting`: for its timer (`sleepMs`, `waitUntil`) or its reply;
 * - `completed`: it completed;
 * - `failed`: it ended without completing: its attempts failed or were spent, or a cancel cut
 *   it off (it was waiting, or between attempts, and never runs on); a reply step shows it
 *   between attempts too;
 * - `compensated`: its compensation ran.
 */
export type StepStatus = 'pending' | 'waiting' | 'completed' | 'failed' | 'compensated'

/** An error as persisted: JSON-able, without the stack. */
export interface ErrorInfo {
  /** The error's name (class). */
  readonly name: string
  /** Its message. */
  readonly message: string
  /** A breakwater code or a Node/driver code, when it has one. */
  readonly code?: string
  /** An HTTP status, when it has one. */
  readonly status?: number
}

/** The persisted state of one step. */
export interface StepState {
  /** The step's name. */
  readonly name: string
  /** Where it is. */
  status: StepStatus
  /** Attempts started (an attempt whose worker died counts). */
  attempts: number
  /** The recorded result of the action, when it completed. */
  result?: unknown
  /** The last failure of the action. */
  error?: ErrorInfo
  /** For a wait step: when it continues (epoch ms). For a reply step: when the reply is due. */
  wakeAt?: number
  /**
   * For a reply step: a command was sent and no reply to it has been read. Its outcome is
   * unknown (the other service may have acted), so a compensation covers this step too.
   * `false` on a wait step: it sent nothing and awaits no reply (a reply naming it is stale),
   * which tells it apart from a waiting reply step stored before this flag existed.
   */
  sent?: boolean
  /**
   * For an action step: an attempt of it ended without a known outcome (its worker died or
   * lost its lease during it, or the runner cut it off at the step's `timeoutMs`), so it may
   * have had its effect, or its action returned (so had its effect) but the step could not be
   * recorded (its atCommit work threw or ran past `atCommitTimeoutMs`, or its result is not a
   * JSON value). A compensation covers the step too, first, unless a later attempt completed
   * it (then the flag is dropped).
   */
  outcomeUnknown?: boolean
  /**
   * For a reply step: the attempt at which a reply was read and refused. Replies to it and to
   * earlier attempts are used up: a redelivered copy is dropped (`deliverReply`'s `attempt`).
   */
  replyRefusedAt?: number
  /** Compensation attempts started. */
  compensationAttempts?: number
  /** The last failure of the compensation. */
  compensationError?: ErrorInfo
}

/** A saga instance as stored. */
export interface SagaInstance {
  /** The instance id. */
  readonly id: string
  /** The definition's name. */
  readonly name: string
  /** The definition's version the instance runs on. */
  readonly version: number
  /** Where it is. */
  readonly status: SagaStatus
  /** The input given at start. */
  readonly input: unknown
  /** The merged results of the completed steps. */
  readonly context: Readonly<Record<string, unknown>>
  /** Every step's state, in definition order. */
  readonly steps: readonly Readonly<StepState>[]
  /** The step being run (or, while compensating, the next step to compensate; -1 when none). */
  readonly stepIndex: number
  /** Attempts started of the current step or compensation. */
  readonly attempt: number
  /** When a worker may pick it up next (epoch ms): a timer, a retry delay or a reply timeout. */
  readonly nextRunAt: number
  /** The worker holding it, or undefined when none does. */
  readonly leaseOwner: string | undefined
  /** When that worker's lease ends (epoch ms). */
  readonly leaseExpiresAt: number | undefined
  /** The fencing token: incremented by every claim; every state write must present it. */
  readonly leaseToken: number
  /** Whether a cancellation was requested. */
  readonly cancelRequested: boolean
  /** Why it compensates, was parked or cancelled. */
  readonly reason: string | undefined
  /** When it was started (epoch ms). */
  readonly createdAt: number
  /** When its state last changed (epoch ms). */
  readonly updatedAt: number
  /** When it finished (epoch ms), if it has. */
  readonly finishedAt: number | undefined
  /**
   * Its `definition` column: the `name@version` key workers claim it by, and so whose steps run
   * on it. Undefined when it is not text (a row changed outside breakwater).
   */
  readonly definition: string | undefined
  /** Why its definition is in question, undefined when it is not: see {@link SagaDefinitionProblem}. */
  readonly definitionProblem: SagaDefinitionProblem | undefined
}

/**
 * Why an instance's definition is in question, as `listSagas` and `getSaga` mark it:
 * - `definition-mismatch`: its `name` or `version` is not that of its `definition` column, the
 *   `name@version` key workers claim it by (whose steps would run): a row changed outside
 *   breakwater. A worker reports it (an `error` event, `STORED_DATA_INVALID`) and does not run it.
 * - `unknown-name` (given `definitions`): none of them has its name; a worker with only those
 *   never claims it (one still running is reported as `definition-missing`).
 * - `unknown-version` (given `definitions`): its name is among them, not its version.
 * - `steps-changed` (given `definitions`): its definition is among them with other step names
 *   (changed without a version bump); a worker with it parks the instance.
 *
 * The last three only for an instance that still needs a worker (running, compensating, or
 * parked: a retry resumes it): a finished one of a retired version is as it should be.
 */
export type SagaDefinitionProblem =
  | 'definition-mismatch'
  | 'unknown-name'
  | 'unknown-version'
  | 'steps-changed'

/** The definitions an instance is checked against: their step names by `name@version` key. */
export interface DefinitionRegistry {
  readonly steps: ReadonlyMap<string, readonly string[]>
  readonly names: ReadonlySet<string>
}

/**
 * Why the definition of a row is in question (see {@link SagaDefinitionProblem}), given its
 * version and stored step names as read (undefined when they cannot be), and the definitions
 * to check it against, if any. A row whose version cannot be read is marked only when the name
 * in its definition column is not its `name` (its `unreadable` mark says the rest).
 */
export function definitionProblem(
  row: Pick<SagaRow, 'name' | 'definition' | 'status'>,
  version: number | undefined,
  stepNames: readonly string[] | undefined,
  registry: DefinitionRegistry | undefined,
): SagaDefinitionProblem | undefined {
  const key: unknown = row.definition
  if (
    typeof key !== 'string' ||
    (version === undefined ? !key.startsWith(`${row.name}@`) : key !== `${row.name}@${version}`)
  )
    return 'definition-mismatch'
  if (registry === undefined || (finishedStatuses as readonly string[]).includes(row.status))
    return undefined
  const steps = registry.steps.get(key)
  if (steps === undefined) return registry.names.has(row.name) ? 'unknown-version' : 'unknown-name'
  const changed =
    stepNames !== undefined &&
    (stepNames.length !== steps.length || stepNames.some((name, i) => name !== steps[i]))
  return changed ? 'steps-changed' : undefined
}

/** A column of a stored row that cannot be read, and what is wrong with what it holds. */
export interface SagaUnreadableColumn {
  /** The column, e.g. `detail`. */
  readonly column: string
  /** What is wrong with it, as `StoredDataError` words it after the column (`is not JSON (...)`). */
  readonly problem: string
}

/** One entry of an instance's timeline. */
export interface SagaTimelineEntry {
  /** Position in the timeline (increasing). */
  readonly seq: number
  /** When it happened (epoch ms on the writer's clock); undefined when it cannot be read. */
  readonly at: number | undefined
  /**
   * What happened: `step-completed`, `step-failed`, `step-waiting`, `compensation-completed`,
   * `compensation-failed`, `compensating`, `completed`, `compensated`, `parked`, `cancelled`,
   * `lease-expired`, `retry-requested`, `cancel-requested`, `reply-received`, `released`.
   * Undefined when it cannot be read (see `unreadable`).
   */
  readonly kind: string | undefined
  /** The step concerned, if any; undefined too when it cannot be read. */
  readonly step: string | undefined
  /** The attempt concerned, if any; undefined too when it cannot be read. */
  readonly attempt: number | undefined
  /** The worker that wrote it, if any; undefined too when it cannot be read. */
  readonly worker: string | undefined
  /** Details (error, result, delay, reason), JSON-parsed; undefined too when it cannot be read. */
  readonly detail: Readonly<Record<string, unknown>> | undefined
  /**
   * The columns of the entry's row that cannot be read (`at`, `kind`, `step`, `attempt`,
   * `worker`, `detail`: a row changed outside breakwater), each with what is wrong with it, in
   * that order; undefined when every one can. The fields they give are undefined then. The
   * entry is given with the others all the same: one such row failed the whole timeline.
   */
  readonly unreadable: readonly SagaUnreadableColumn[] | undefined
}

/** A row of `breakwater_sagas`. */
export interface SagaRow {
  id: string
  name: string
  version: number
  definition: string
  status: string
  input: string
  context: string
  steps: string
  step_index: number
  attempt: number
  next_run_at: number
  lease_owner: string | null
  lease_expires_at: number | null
  lease_token: number
  previous_owner: string | null
  previous_expires_at: number | null
  cancel_requested: number | boolean
  reason: string | null
  created_at: number
  updated_at: number
  finished_at: number | null
}

/**
 * The JSON columns of an instance row, parsed. A row changed outside breakwater (text that is
 * not JSON, steps that are not a list, a context that is not an object) fails with
 * StoredDataError naming the saga and the column; a bare SyntaxError named neither.
 */
export function storedState(row: SagaRow): {
  input: unknown
  context: Record<string, unknown>
  steps: StepState[]
} {
  const input = parseStoredJson(row.input, instancePlace(row, 'input'))
  const context = parseStoredObject(row.context, instancePlace(row, 'context'))
  return { input, context, steps: storedSteps(row) }
}

/** The steps of an instance row, parsed; StoredDataError naming the saga as for {@link storedState}. */
export function storedSteps(row: Pick<SagaRow, 'id' | 'steps'>): StepState[] {
  const where = instancePlace(row, 'steps')
  const steps = parseStoredJson(row.steps, where)
  if (!Array.isArray(steps))
    throw new StoredDataError(where(), `is not a JSON list: ${describeValue(steps)}`)
  // Every reader takes an entry's name: `null` there threw a bare TypeError out of a worker's
  // run (reported at every lease), and a nameless step read as a changed definition.
  steps.forEach((step: unknown, i) => {
    if (!isObjectRecord(step) || typeof step.name !== 'string') {
      const what = isObjectRecord(step) ? 'an object without a name' : describeValue(step)
      throw new StoredDataError(where(), `holds ${what} at [${i}], not a step`)
    }
    const bad = badStepField(step)
    if (bad === undefined) return
    const [field, expected] = bad
    throw new StoredDataError(
      where(),
      `holds step ${JSON.stringify(step.name)} at [${i}] with ${field} ${describeValue(step[field])}, not ${expected}`,
    )
  })
  return steps as StepState[]
}

const stepStatuses: readonly unknown[] = [
  'pending',
  'waiting',
  'completed',
  'failed',
  'compensated',
] satisfies StepStatus[]

const isCount = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0

/**
 * The first field of a stored step entry the worker or deliverReply would act on wrongly, with
 * what it should be. Each did harm unreported: a completed step with another status, or an
 * `outcomeUnknown` / `sent` that is not `true`, was not compensated; a wait's `wakeAt` of null
 * or text ended the wait at once; `attempts` that are not a count kept an attempt that recorded
 * nothing from being flagged (a reply step's retry count became NaN); a null `error` threw a
 * TypeError at every lease; a `replyRefusedAt` that is text let a refused reply's copy through.
 * `result` and `compensationAttempts` are only shown, never acted on: not checked.
 */
function badStepField(step: Record<string, unknown>): [string, string] | undefined {
  if (!stepStatuses.includes(step.status)) return ['status', `one of ${stepStatuses.join(', ')}`]
  if (!isCount(step.attempts)) return ['attempts', 'a whole number from 0']
  if (step.wakeAt !== undefined && !Number.isSafeInteger(step.wakeAt))
    return ['wakeAt', 'a time (whole epoch ms)']
  if (step.replyRefusedAt !== undefined && !isCount(step.replyRefusedAt))
    return ['replyRefusedAt', 'a whole number from 0']
  for (const flag of ['sent', 'outcomeUnknown']) {
    if (step[flag] !== undefined && typeof step[flag] !== 'boolean') return [flag, 'true or false']
  }
  for (const error of ['error', 'compensationError']) {
    if (step[error] !== undefined && !isObjectRecord(step[error])) return [error, 'an error object']
  }
  return undefined
}

/** Where `column` of a saga instance's row is stored, for StoredDataError (built when called). */
export function instancePlace(row: Pick<SagaRow, 'id'>, column: string): () => StoredPlace {
  return () => ({ table: sagaTable, row: `saga ${JSON.stringify(row.id)}`, column })
}

/**
 * A row's `cancel_requested` as the worker acts on it: only 0 and 1 are written (the SQL tests
 * `= 1`). Anything else (a row changed outside breakwater: 'true' on SQLite read as no request
 * by `Number()`, 2 as one) fails with StoredDataError naming the saga and the column.
 */
export function storedCancelRequested(row: Pick<SagaRow, 'id' | 'cancel_requested'>): boolean {
  const flag = Number(row.cancel_requested)
  if (flag !== 0 && flag !== 1)
    throw new StoredDataError(
      instancePlace(row, 'cancel_requested')(),
      `is ${describeValue(row.cancel_requested)}, not 0 or 1`,
    )
  return flag === 1
}

/**
 * A row's `attempt`: as the admin readers show it, a whole number from 0 (0 before the first
 * claim or after a step); `claimed`, as a worker runs it, from 1 (the claim added one).
 * Otherwise StoredDataError naming the saga and the column, the row left as it is: text or a
 * fraction was shown as NaN or 1.5, and in a worker a fraction or a number below 1 reached the
 * step (ctx.attempt -4, a step retried past its maxAttempts, or 2.5 taken as an attempt after
 * one that recorded nothing, so compensated). On SQLite text in this INTEGER column survives;
 * the claim's `attempt + 1` turns it into 1 (a count started over, nothing worse).
 */
export function storedAttempt(row: Pick<SagaRow, 'id' | 'attempt'>, claimed = false): number {
  const attempt = Number(row.attempt)
  if (Number.isSafeInteger(attempt) && attempt >= (claimed ? 1 : 0)) return attempt
  throw new StoredDataError(
    instancePlace(row, 'attempt')(),
    `is ${describeValue(row.attempt)}, not ${claimed ? 'an attempt (a whole number from 1 once claimed)' : 'a whole number from 0'}`,
  )
}

/**
 * A row's `step_index`: the index of one of its steps while it runs or compensates, -1 to the
 * step count once it has ended (-1 when compensated or cancelled, the count when completed),
 * as the admin readers show it. Given `definition` (the key a worker runs it by), the instance
 * is one a worker claimed, always at one of its steps, and the message names the definition.
 * Otherwise StoredDataError naming the saga and the column, the row left as it is: `saga list`
 * showed such a row as a finished one, step `-`, and a worker ran nothing and finished it
 * `completed` (or compensated from its last step) without a word. Checked against the stored
 * steps, which match the definition's unless it was changed without a version bump (then the
 * instance is parked).
 */
export function storedIndex(
  row: Pick<SagaRow, 'id' | 'status' | 'step_index'>,
  stepCount: number,
  definition?: string,
): number {
  const index = Number(row.step_index)
  const active =
    definition !== undefined || row.status === 'running' || row.status === 'compensating'
  const [low, high] = active ? [0, stepCount - 1] : [-1, stepCount]
  if (Number.isSafeInteger(index) && index >= low && index <= high) return index
  const of = definition === undefined ? '' : ` of ${definition}`
  throw new StoredDataError(
    instancePlace(row, 'step_index')(),
    `is ${describeValue(row.step_index)}, not ${active ? `the index of one of its ${stepCount} steps (0 to ${high})${of}` : `-1 to its step count ${stepCount}`}`,
  )
}

/**
 * Checks that a claimed row's `name` and `version` are those of `saga`, the definition its
 * `definition` column names (the key the claim matches on, and so which steps run). They differ
 * only in a row changed outside breakwater: the worker ran the definition's steps on it while
 * `saga list` showed it under another name or version. StoredDataError names the saga and the
 * column (`name` when both differ, the message saying both).
 */
export function checkStoredDefinition(
  row: Pick<SagaRow, 'id' | 'name' | 'version'>,
  saga: { readonly name: string; readonly version: number; readonly key: string },
): void {
  const version = storedWhole(row.version, 1, instancePlace(row, 'version'), storedVersionText)
  const nameDiffers = row.name !== saga.name
  if (!nameDiffers && version === saga.version) return
  const [column, stored, expected] = !nameDiffers
    ? ['version', String(version), String(saga.version)]
    : version === saga.version
      ? ['name', describeValue(row.name), JSON.stringify(saga.name)]
      : [
          'name',
          `${describeValue(row.name)} and its version ${version}`,
          `${JSON.stringify(saga.name)} and ${saga.version}`,
        ]
  throw new StoredDataError(
    instancePlace(row, column)(),
    `is ${stored}, not ${expected}: its definition column says ${saga.key}`,
  )
}

/** The columns of a row that hold a version or a time, always set. */
export type SagaNumberColumn = 'version' | 'next_run_at' | 'created_at' | 'updated_at'
/** The columns of a row that hold a time, or NULL when there is none. */
export type SagaOptionalTimeColumn = 'lease_expires_at' | 'finished_at'
const numberColumns = [
  'version',
  'next_run_at',
  'lease_expires_at',
  'created_at',
  'updated_at',
  'finished_at',
] as const satisfies readonly (SagaNumberColumn | SagaOptionalTimeColumn)[]

/**
 * A row's version (a whole number from 1, as `defineSaga` takes it) or time (whole epoch ms
 * from 0), as the admin readers show it; undefined for a NULL optional time. Read with
 * `Number()`, text (SQLite keeps it in an INTEGER column) showed as NaN or an Invalid Date and
 * a negative number as a time before 1970: StoredDataError naming the saga and the column.
 */
export function storedNumber(
  row: Pick<SagaRow, 'id' | SagaNumberColumn>,
  column: SagaNumberColumn,
): number
export function storedNumber(
  row: Pick<SagaRow, 'id' | SagaOptionalTimeColumn>,
  column: SagaOptionalTimeColumn,
): number | undefined
export function storedNumber(
  row: Partial<Pick<SagaRow, SagaNumberColumn | SagaOptionalTimeColumn>> & Pick<SagaRow, 'id'>,
  column: SagaNumberColumn | SagaOptionalTimeColumn,
): number | undefined {
  const value: unknown = row[column]
  if (value === null && (column === 'lease_expires_at' || column === 'finished_at'))
    return undefined
  return column === 'version'
    ? storedWhole(value, 1, instancePlace(row, column), storedVersionText)
    : storedWhole(value, 0, instancePlace(row, column), storedTimeText)
}

const storedTimeText = 'a time (whole epoch ms from 0)'
const storedVersionText = 'a version (a whole number from 1)'

/**
 * A whole number from `low` read back from a stored row (see readStoredWholeNumber), or
 * StoredDataError at `where` saying it is not `expected`.
 */
function storedWhole(
  value: unknown,
  low: number,
  where: () => StoredPlace,
  expected: string,
): number {
  const number = readStoredWholeNumber(value)
  if (number !== undefined && number >= low) return number
  throw new StoredDataError(where(), `is ${describeValue(value)}, not ${expected}`)
}

/**
 * A row's `lease_token` as `saga show` prints it: every claim and release adds one to the 0 it
 * starts at. Read with `Number()`, text (SQLite) showed as token NaN and a negative number as a
 * token no claim gives: StoredDataError naming the saga and the column. (A claim's
 * `lease_token + 1` turns SQLite text into 1, so the worker never holds such a token.)
 */
function storedLeaseToken(row: Pick<SagaRow, 'id' | 'lease_token'>): number {
  return storedWhole(
    row.lease_token,
    0,
    instancePlace(row, 'lease_token'),
    'a fencing token (a whole number from 0)',
  )
}

/** The text columns of a row that may be NULL, shown by the admin readers. */
export type SagaOptionalTextColumn = 'reason' | 'lease_owner'

/**
 * A row's `reason` or `lease_owner`, as the worker and the admin readers read them: text, or
 * undefined for NULL. A blob (SQLite keeps one in a TEXT column, read as a Buffer: bytes
 * written by another tool, an older version or bad input) is read as the text it encodes when
 * PostgreSQL would have stored the same bytes as text: UTF-8 without NUL, decoded exactly
 * (see {@link blobText}). Anything else fails with StoredDataError naming the saga and the
 * column, never decoded with a loss: a Buffer reached compensations as `ctx.reason`, the write
 * after it threw a bare TypeError, and the compensation ran again at every lease; handed to
 * the CLI, it failed `saga list` and `saga show` with a bare TypeError.
 */
export function storedText(
  row: Pick<SagaRow, 'id' | SagaOptionalTextColumn>,
  column: SagaOptionalTextColumn,
): string | undefined {
  const value: unknown = row[column]
  const where = instancePlace(row, column)
  return value instanceof Uint8Array ? blobText(value, where) : readStoredText(value, where)
}

// Fatal: a byte sequence that is not UTF-8 is refused rather than read as U+FFFD. The BOM is
// kept, as PostgreSQL keeps it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/**
 * The text a blob in a TEXT column encodes, when PostgreSQL's text would take the same bytes
 * (a Buffer parameter is stored there as its UTF-8 text; bytes that are not UTF-8, or hold
 * NUL, are refused with 22021): so the same value reads the same on both databases. Any other
 * blob is StoredDataError at `where`, showing its first bytes: decoded, its invalid bytes would
 * become U+FFFD, and a NUL would be stored back as `\0` (see storedReason), each written over
 * the original at the instance's next write.
 */
function blobText(bytes: Uint8Array, where: () => StoredPlace): string {
  const blob = `a blob of ${bytes.length} bytes (${blobLiteral(bytes, 16)})`
  if (bytes.includes(0))
    throw new StoredDataError(where(), `is ${blob} holding NUL, not text (no text holds NUL)`)
  try {
    return utf8.decode(bytes)
  } catch (error) {
    throw new StoredDataError(where(), `is ${blob}, not UTF-8 text`, error)
  }
}

/**
 * The owner of a lease that ran out (`previous_owner`), as the worker that takes the instance
 * over says it (the `recovered` event, the timeline's `lease-expired` entry): only said, never
 * acted on, so it never holds the instance. A blob SQLite keeps there (bytes written by another
 * tool) is read as its text when PostgreSQL's text would take the same bytes, else named as a
 * blob literal, `X'…'` (its first 32 bytes); null when there was no owner.
 */
export function saidOwner(value: unknown): string | null {
  if (value === null || value === undefined) return null
  if (typeof value === 'string') return value
  if (!(value instanceof Uint8Array)) return String(value)
  if (!value.includes(0)) {
    try {
      return utf8.decode(value)
    } catch {
      // Not UTF-8: named below.
    }
  }
  return blobLiteral(value, 32)
}

/** `bytes` as an SQL blob literal, `X'…'`, of its first `shown` bytes (`…` after when more). */
function blobLiteral(bytes: Uint8Array, shown: number): string {
  const hex = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.length, shown))
  return `X'${hex.toString('hex')}'${bytes.length > shown ? '…' : ''}`
}

/**
 * The value of a TEXT column that may be NULL: text, or undefined for NULL. Anything else (a blob
 * SQLite keeps in a TEXT column, read as a Buffer) is StoredDataError at `where`.
 */
function readStoredText(value: unknown, where: () => StoredPlace): string | undefined {
  if (value === null) return undefined
  if (typeof value === 'string') return value
  throw new StoredDataError(where(), `is ${describeValue(value)}, not text`)
}

/**
 * The columns of a listed row that cannot be read (see {@link storedSteps}, `attempt`,
 * `step_index`, the version and times as {@link instanceFromRow} reads them, and
 * {@link storedText}), in that order, or undefined when all can; with the steps when they can
 * be read.
 */
export function unreadableColumns(
  row: Pick<
    SagaRow,
    | 'id'
    | 'status'
    | 'steps'
    | 'step_index'
    | 'attempt'
    | SagaNumberColumn
    | SagaOptionalTimeColumn
    | SagaOptionalTextColumn
  >,
): { unreadable: string[] | undefined; steps: StepState[] | undefined } {
  const unreadable: string[] = []
  const readable = (read: () => unknown, column: string): boolean => {
    try {
      read()
      return true
    } catch (error) {
      if (!(error instanceof StoredDataError)) throw error
      unreadable.push(column)
      return false
    }
  }
  let steps: StepState[] | undefined
  if (readable(() => (steps = storedSteps(row)), 'steps'))
    readable(() => storedIndex(row, steps!.length), 'step_index')
  readable(() => storedAttempt(row), 'attempt')
  for (const column of numberColumns) readable(() => storedNumber(row, column as never), column)
  for (const column of ['reason', 'lease_owner'] as const)
    readable(() => storedText(row, column), column)
  return { unreadable: unreadable.length === 0 ? undefined : unreadable, steps }
}

/**
 * Turns a row into an instance. A row changed outside breakwater (a JSON column, an
 * `attempt`, `step_index` or `cancel_requested` the worker would refuse, or a version, time or
 * `lease_token` that is not a whole number: see {@link storedNumber}) fails with
 * StoredDataError naming the saga and the column, rather than showing NaN or a wrong flag.
 * Its definition is checked against its own definition column and, given them, `registry`'s
 * definitions (see {@link definitionProblem}).
 */
export function instanceFromRow(row: SagaRow, registry?: DefinitionRegistry): SagaInstance {
  const { input, context, steps } = storedState(row)
  const version = storedNumber(row, 'version')
  return {
    id: row.id,
    name: row.name,
    version,
    status: row.status as SagaStatus,
    input,
    context,
    steps,
    stepIndex: storedIndex(row, steps.length),
    attempt: storedAttempt(row),
    nextRunAt: storedNumber(row, 'next_run_at'),
    leaseOwner: storedText(row, 'lease_owner'),
    leaseExpiresAt: storedNumber(row, 'lease_expires_at'),
    leaseToken: storedLeaseToken(row),
    cancelRequested: storedCancelRequested(row),
    reason: storedText(row, 'reason'),
    createdAt: storedNumber(row, 'created_at'),
    updatedAt: storedNumber(row, 'updated_at'),
    finishedAt: storedNumber(row, 'finished_at'),
    definition: typeof row.definition === 'string' ? row.definition : undefined,
    definitionProblem: definitionProblem(
      row,
      version,
      steps.map((s) => s.name),
      registry,
    ),
  }
}

/** A timeline row. */
export interface SagaEventRow {
  seq: number
  at: number
  kind: string
  step: string | null
  attempt: number | null
  worker: string | null
  detail: string | null
}

/**
 * A timeline row's detail (JSON text of an object, or null). One changed outside breakwater
 * (not JSON, not an object) fails with StoredDataError naming the saga and the row's seq.
 */
function storedDetail(
  sagaId: string,
  row: Pick<SagaEventRow, 'seq' | 'detail'>,
): Record<string, unknown> | undefined {
  if (row.detail === null) return undefined
  return parseStoredObject(row.detail, eventPlace(sagaId, row, 'detail'))
}

/** Where `column` of a timeline row is stored, for StoredDataError (built when called). */
function eventPlace(
  sagaId: string,
  row: Pick<SagaEventRow, 'seq'>,
  column: string,
): () => StoredPlace {
  return () => ({
    table: sagaEventsTable,
    row: `saga ${JSON.stringify(sagaId)} event ${Number(row.seq)}`,
    column,
  })
}

/**
 * The `reason` in a timeline row's detail, when it holds a non-empty one; StoredDataError
 * when the detail cannot be read (see {@link storedDetail}).
 */
export function reasonInDetail(
  sagaId: string,
  row: Pick<SagaEventRow, 'seq' | 'detail'> | undefined,
): string | undefined {
  const reason = row === undefined ? undefined : storedDetail(sagaId, row)?.reason
  return typeof reason === 'string' && reason !== '' ? reason : undefined
}

/**
 * Turns a timeline row of saga `sagaId` into an entry, never failing on what the row holds: a
 * column it cannot read (a detail that is not JSON of an object, an `at` or `attempt` that is not
 * a whole number from 0, a `kind`, `step` or `worker` that is not text) is left undefined and
 * named in the entry's `unreadable`, with the problem as StoredDataError words it. Read with
 * `Number()`, text (SQLite) showed in `saga show` as an Invalid Date or `attempt NaN`, and a
 * negative number as a time before 1970; thrown, one such row failed the whole timeline and
 * `saga show` with it, hiding the instance and every other entry.
 */
export function timelineEntryFromRow(sagaId: string, row: SagaEventRow): SagaTimelineEntry {
  const unreadable: SagaUnreadableColumn[] = []
  const read = <T>(column: string, reader: (where: () => StoredPlace) => T): T | undefined => {
    try {
      return reader(eventPlace(sagaId, row, column))
    } catch (error) {
      if (!(error instanceof StoredDataError)) throw error
      unreadable.push({ column, problem: error.problem })
      return undefined
    }
  }
  const at = read('at', (where) => storedWhole(row.at, 0, where, storedTimeText))
  // NOT NULL in the schema: a NULL could only come from another writer, and is no kind either.
  const kind = read('kind', (where) => readStoredText(row.kind, where) ?? nullKind(where))
  const step = read('step', (where) => readStoredText(row.step, where))
  const attempt = read('attempt', (where) =>
    row.attempt === null ? undefined : storedWhole(row.attempt, 0, where, 'a whole number from 0'),
  )
  const worker = read('worker', (where) => readStoredText(row.worker, where))
  const detail = read('detail', () => storedDetail(sagaId, row))
  return {
    seq: Number(row.seq),
    at,
    kind,
    step,
    attempt,
    worker,
    detail,
    unreadable: unreadable.length === 0 ? undefined : unreadable,
  }
}

function nullKind(where: () => StoredPlace): never {
  throw new StoredDataError(where(), 'is null, not text')
}

/**
 * Reduces any thrown value to what is persisted and logged. Never throws: a value without a
 * prototype (`String()` throws on it) or with throwing getters made the step's failure path
 * throw, and the instance was given up as if its worker had died, attempt after attempt.
 */
export function errorInfo(error: unknown): ErrorInfo {
  if (typeof error !== 'object' || error === null) {
    return { name: 'Error', message: textOf(error) }
  }
  const e = error as { name?: unknown; message?: unknown; code?: unknown; status?: unknown }
  const read = (key: keyof typeof e): unknown => {
    try {
      return e[key]
    } catch {
      return undefined
    }
  }
  const name = read('name')
  const message = read('message')
  const info: { name: string; message: string; code?: string; status?: number } = {
    name: typeof name === 'string' ? name : 'Error',
    message: typeof message === 'string' ? message : textOf(error),
  }
  const code = read('code')
  if (BreakwaterError.is(error)) info.code = error.code
  else if (typeof code === 'string') info.code = code
  const status = read('status')
  if (typeof status === 'number') info.status = status
  return info
}

function textOf(value: unknown): string {
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

/** A one-line description of a persisted error. */
export function describeError(info: ErrorInfo | undefined): string {
  if (info === undefined) return 'unknown error'
  const code = info.code === undefined ? '' : ` [${info.code}]`
  return `${info.name}: ${info.message}${code}`
}

/**
 * A value as the JSON text stored for it; throws `InvalidOptionError` naming `option` when JSON
 * cannot hold it, undefined included (the callers refuse it first, saying to pass null).
 */
export function storedJson(option: string, value: unknown): string {
  // A function or a symbol has no JSON text at all: refused here rather than by the database's
  // NOT NULL constraint (a driver error, with the caller's transaction aborted on PostgreSQL).
  // Undefined was stored as null, which let a forgotten reply through as "no reply".
  return jsonTextOf(option, value)
}
