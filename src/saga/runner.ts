import { type Clock, sleep, storedTime, type TimerHandle, within } from '../core/clock.js'
import { describeValue, InvalidOptionError } from '../core/errors.js'
import { jsonTextOf } from '../core/text.js'
import { isObjectRecord } from '../core/validate.js'
import { retryAfterMsOf, TimeoutError } from '../index.js'
import { predicateAnswer } from '../policies/options.js'
import {
  committedNothing,
  parseStoredJson,
  readStoredNumber,
  readStoredWholeNumber,
  StoredDataError,
  sqlErrorKind,
} from '../stores/errors.js'
import type { SqlDriver, SqlTransaction } from '../stores/index.js'
import { wakeSaga } from './admin.js'
import {
  type AtCommitWork,
  type CompiledRetry,
  type CompiledSaga,
  type CompiledStep,
  maxEpochMs,
} from './definition.js'
import { SagaAtCommitTimeoutError, SagaLeaseLostError, SagaReplyTimeoutError } from './errors.js'
import type { MutableSagaMetrics, SagaEvent } from './events.js'
import type { SagaFaultPoint, SagaFaults } from './faults.js'
import { sagaRepliesTable, sagaStatements } from './sql.js'
import {
  checkStoredDefinition,
  describeError,
  type ErrorInfo,
  errorInfo,
  instancePlace,
  reasonInDetail,
  type SagaRow,
  type SagaStatus,
  type StepState,
  saidOwner,
  storedAttempt,
  storedCancelRequested,
  storedIndex,
  storedState,
  storedText,
} from './state.js'
import {
  type BatchOutcome,
  type CommitWork,
  holdUnreadable,
  renewLease,
  type TimelineRecord,
  type TransitionWrite,
} from './store.js'

/**
 * A claimed row's `attempt` (the claim added one: see storedAttempt) and `cancel_requested`, as
 * the run acts on them; StoredDataError naming the saga and the column otherwise, the row left
 * as it is. A `cancel_requested` of 'true' (SQLite) read as no request (Number('true') is
 * NaN). Only 0 and 1 are written; the SQL tests `= 1`.
 */
function storedCounters(row: SagaRow): { attempt: number; cancelRequested: boolean } {
  return { attempt: storedAttempt(row, true), cancelRequested: storedCancelRequested(row) }
}

// What a claimed `lease_token` that cannot fence a run is not (see claimedLeaseToken).
const fencingTokenText = 'not a fencing token (a whole number from 0)'

/**
 * A claimed row's `lease_token`, which fences every write of the run. Read with `Number()`, one
 * past 2^53 (both drivers read it rounded) fenced the run's writes with a token the row does not
 * hold: the step ran, its write was refused (reported only as a lost lease), and it ran again at
 * every lease. A negative one or a fraction (SQLite), which no claim gives, ran as if breakwater
 * had written it, though `getSaga` refuses it. Either is StoredDataError naming the saga and the
 * column, before any step runs; the worker reports it and holds the instance if the token read
 * can fence the hold (see the worker's claimedToken). The row is left as it is, but for what
 * each claim does: a negative token reaches 0 a claim at a time, and then runs.
 */
export function claimedLeaseToken(row: Pick<SagaRow, 'id' | 'lease_token'>): number {
  const token = readStoredNumber(row.lease_token)
  if (token !== undefined && Number.isSafeInteger(token) && token >= 0) return token
  throw new StoredDataError(
    instancePlace(row, 'lease_token')(),
    `is ${describeValue(row.lease_token)}, ${fencingTokenText}`,
  )
}

/** How many times a state write that failed transiently is written again before giving up. */
const stateWriteRetries = 3

/** The first wait before writing a state again (then doubled), in ms on the worker's clock. */
const stateWriteBackoffMs = 20

/**
 * Whether a failed state write is a transient failure known to have committed nothing: a lock
 * timeout (55P03), a deadlock (40P01) or a serialization failure (40001) that the PostgreSQL
 * server answered the transaction with, no pooled connection free in time (`STORE_BUSY`:
 * nothing was sent), or SQLite's writer busy (`SQLITE_BUSY`, `STORE_BUSY`; a local database
 * whose failed transaction is rolled back). A lost connection is not: its COMMIT may have
 * been applied.
 */
function rolledBackWriteFailure(dialect: SqlDriver['dialect'], error: unknown): boolean {
  const kind = sqlErrorKind(error)
  return (kind === 'busy' || kind === 'serialization-failure') && committedNothing(dialect, error)
}

/** What the runner needs from its worker. */
export interface RunnerHost {
  readonly db: SqlDriver
  /** Writes a fenced transition (batched with other instances' when there is no `work`). */
  write(write: TransitionWrite, work: readonly CommitWork[]): Promise<BatchOutcome>
  readonly clock: Clock
  readonly workerId: string
  readonly leaseMs: number
  /** The bound of a step's atCommit work (see `SagaWorkerOptions.atCommitTimeoutMs`). */
  readonly atCommitTimeoutMs: number
  readonly faults: SagaFaults | undefined
  /** True once the worker is stopping: runs give their instances back at the next boundary. */
  readonly stopping: boolean
  emit(event: Omit<SagaEvent, 'at' | 'worker'>): void
  count(metric: keyof MutableSagaMetrics): void
  recordDuration(ms: number, saga: string): void
}

/** How a run of an instance ended in this worker. */
export type RunOutcome =
  /** Finished (completed, compensated, cancelled) or parked. */
  | 'finished'
  /** Waiting for a timer, a retry delay or a reply; the lease was released. */
  | 'suspended'
  /** Given back because the worker is stopping. */
  | 'released'
  /** A fenced write was refused: another worker owns it now. */
  | 'lost'
  /**
   * A fault hook or a database error stopped the run; the lease will expire. (A stored row it
   * cannot read, StoredDataError, also stops it: the instance is then held for a minute.)
   */
  | 'abandoned'

/** Thrown by a fault hook's wrapper: stop at once, write nothing more. */
class Abandon extends Error {}

type Attempt<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: unknown; readonly cutOff?: true }

type Step = 'continue' | RunOutcome

const nothing: readonly CommitWork[] = []

/**
 * Runs one claimed instance until it finishes or suspends: the persisted state machine. Every
 * transition is one fenced write (state, timeline rows and any `atCommit` work in one
 * transaction); a refused write means another worker owns the instance, and this run stops.
 */
export class InstanceRun {
  readonly id: string
  readonly saga: CompiledSaga
  token: number
  leaseExpiresAt: number
  readonly #host: RunnerHost
  readonly #controller = new AbortController()
  /** Set once the run must write nothing more: its lease was lost, or the worker abandoned it. */
  #halted: 'lost' | 'abandoned' | undefined
  #givenBack = false
  readonly #input: unknown
  #status: SagaStatus
  #context: Record<string, unknown>
  readonly #steps: StepState[]
  #stepIndex: number
  #attempt: number
  #reason: string | null
  // cancel_requested as stored: by the claim (checked then), then as each write read it back.
  #cancelFlag: number | boolean
  // Set by a write that keeps the lease: a cancel may have committed since (see #seeCancel).
  #cancelUnread = false
  #events: TimelineRecord[] = []
  readonly #previousOwner: string | null
  readonly #previousExpiry: number | null
  // The step being run (or compensated), named when a failure ends the run or a state write is
  // retried: the index has moved on by the time the write that records its outcome fails.
  #working: string | null = null

  constructor(host: RunnerHost, saga: CompiledSaga, row: SagaRow) {
    this.#host = host
    this.saga = saga
    this.id = row.id
    this.leaseExpiresAt = Number(row.lease_expires_at)
    // The claim matched the definition column; a name or version edited apart from it would
    // have the definition's steps run on a row that says it is another saga.
    checkStoredDefinition(row, saga)
    const { input, context, steps } = storedState(row)
    this.#input = input
    this.#status = row.status as SagaStatus
    this.#context = Object.freeze(context)
    this.#steps = steps
    this.#stepIndex = storedIndex(row, steps.length, saga.key)
    this.#attempt = storedCounters(row).attempt
    // Handed to compensations as `ctx.reason` and written back with every transition: a blob
    // (SQLite) came as a Buffer, and its write threw, so the compensation ran at every lease.
    this.#reason = storedText(row, 'reason') ?? null
    // Last: the worker reports a token it cannot fence by after any other column (see
    // claimedLeaseToken), so a row with both is reported for both, once each.
    this.token = claimedLeaseToken(row)
    this.#cancelFlag = row.cancel_requested
    // Said in the `recovered` event and the timeline: a blob (SQLite) came as a Buffer and was
    // written there as {"type":"Buffer",...}.
    this.#previousOwner = saidOwner(row.previous_owner)
    // The lease end the claim took over. One changed outside breakwater (text, a blob, a
    // negative number: the claim now takes it as run out, 343d3dc) gives no recovery time,
    // rather than NaN or the whole epoch.
    this.#previousExpiry = readStoredWholeNumber(row.previous_expires_at) ?? null
  }

  // Whether a cancel was requested, checked where the run acts on it, as the claim checks it.
  // A write reads the flag back, so one edited outside breakwater while a step ran reaches the
  // run there: `Boolean(Number())` read 'true' (SQLite) as no request, letting the next steps
  // run (the saga could end completed, never reported), and 2 as one, compensating. Now
  // StoredDataError: run() reports it and holds the instance; what the write recorded stays,
  // and the step's completion is still counted (a check at the write skipped that).
  get #cancelRequested(): boolean {
    return storedCancelRequested({ id: this.id, cancel_requested: this.#cancelFlag })
  }

  /** The state as this run last saw it. */
  get status(): SagaStatus {
    return this.#status
  }
  get context(): Readonly<Record<string, unknown>> {
    return this.#context
  }
  get reason(): string | undefined {
    return this.#reason ?? undefined
  }
  /**
   * True once this run has sent the write that gives its lease up (suspended, finished, parked,
   * released): a renewal that no longer finds the lease then says nothing about a takeover.
   */
  get givenBack(): boolean {
    return this.#givenBack
  }

  /** Called when a fenced write or a lease renewal shows that another worker took over. */
  markLost(reason: 'write-refused' | 'renewal-refused'): void {
    if (this.#halted !== undefined) return
    this.#halted = 'lost'
    this.#host.count('leaseLost')
    this.#emit({ type: 'lease-lost', reason })
    this.#controller.abort(new SagaLeaseLostError(this.id))
  }

  /**
   * Called when the worker stops waiting for this run (`stop({ timeoutMs })`): the step's signal
   * aborts with `reason`, and the run writes nothing more once its step returns (a write already
   * under way still completes or fails). Its lease is left to run out.
   */
  abandon(reason: Error): void {
    if (this.#halted !== undefined) return
    this.#halted = 'abandoned'
    this.#emit({ type: 'abandoned' })
    this.#controller.abort(reason)
  }

  /** Runs the instance until it finishes, suspends, is released or lost. */
  async run(): Promise<RunOutcome> {
    if (this.#halted !== undefined) return this.#halted
    try {
      if (this.#previousOwner !== null) this.#recovered(this.#previousOwner)
      if (!this.#definitionMatches()) return await this.#parkMismatch()
      for (;;) {
        if (this.#halted !== undefined) return this.#halted
        this.#working = this.#currentStepName()
        let next: Step
        if (this.#status === 'running') next = await this.#forward()
        else if (this.#status === 'compensating') next = await this.#compensate()
        else return 'finished'
        if (next !== 'continue') return next
      }
    } catch (error) {
      if (error instanceof Abandon) return 'abandoned'
      if (this.#halted !== undefined) return this.#halted
      this.#host.count('errors')
      this.#emit({
        type: 'error',
        phase: 'run',
        ...(this.#working === null ? {} : { step: this.#working }),
        error: errorInfo(error),
      })
      // A row it needs cannot be read (a reply, a timeline detail: see StoredDataError): held
      // as an instance whose state cannot be read is, not retried at every lease until fixed.
      // What this run wrote before stays; the step that needs the row runs once it is fixed.
      if (error instanceof StoredDataError) {
        await holdUnreadable(this.#host.db, this.id, this.token, this.#host.clock).catch(
          (held: unknown) => this.#emit({ type: 'error', phase: 'hold', error: errorInfo(held) }),
        )
      }
      return 'abandoned'
    }
  }

  #recovered(previousOwner: string): void {
    const now = storedTime(this.#host.clock)
    const recoveryMs = this.#previousExpiry === null ? undefined : now - this.#previousExpiry
    this.#host.count('recovered')
    this.#event('lease-expired', this.#currentStepName(), this.#attempt, {
      previousOwner,
      ...(recoveryMs === undefined ? {} : { recoveryMs }),
    })
    this.#emit({
      type: 'recovered',
      previousOwner,
      ...(this.#currentStepName() === null ? {} : { step: this.#currentStepName()! }),
      ...(recoveryMs === undefined ? {} : { recoveryMs }),
    })
  }

  // From the stored steps: #recovered runs before the definition is checked against them, and
  // the timeline of an instance parked for a changed definition named the changed
  // definition's step at that index, one the instance does not have.
  #currentStepName(): string | null {
    return this.#steps[this.#stepIndex]?.name ?? null
  }

  // A definition changed without a version bump would run the wrong code on persisted state.
  #definitionMatches(): boolean {
    const steps = this.saga.steps
    return (
      this.#steps.length === steps.length && this.#steps.every((s, i) => s.name === steps[i]!.name)
    )
  }

  async #parkMismatch(): Promise<RunOutcome> {
    if (this.#status !== 'running' && this.#status !== 'compensating') return 'finished'
    // An attempt of the current step that began and recorded nothing (its worker died during
    // it) is noted now, as the right definition's run would note it (see #noteUnrecorded):
    // retrySaga resumes the compensation with a fresh attempt count, and the gap that is the
    // only sign of that attempt is gone. This run cannot tell the stored step's kind: a reply
    // step whose send never committed is compensated too (a compensation must allow for an
    // effect that never happened, as for any unknown outcome); a wait step has none.
    if (this.#status === 'running') this.#noteUnrecorded(this.#steps[this.#stepIndex])
    this.#status = 'failed'
    this.#reason = `the stored steps (${this.#steps.map((s) => s.name).join(', ')}) do not match definition ${this.saga.key} (${this.saga.steps.map((s) => s.name).join(', ')}): a definition was changed without a version bump`
    this.#event('parked', null, null, { reason: this.#reason })
    if (!(await this.#write({ release: true }))) return 'lost'
    this.#host.count('parked')
    this.#emit({ type: 'parked', reason: this.#reason })
    return 'finished'
  }

  // ---- forward ---------------------------------------------------------------------------

  async #forward(): Promise<Step> {
    await this.#seeCancel()
    const step = this.saga.steps[this.#stepIndex]
    // Before a cancel too: an action that crashed, then waits for its retry, is compensated.
    if (step?.kind === 'action') this.#noteUnrecorded(this.#steps[step.index])
    if (this.#cancelRequested) {
      this.#cutOff(this.#steps[this.#stepIndex])
      // From the current step: a reply step whose command was sent, and an action an attempt
      // of which recorded no outcome, are compensated too.
      return this.#enterCompensation(await this.#cancelReason(), this.#stepIndex)
    }
    if (step === undefined) return this.#finish('completed')
    if (this.#host.stopping) return this.#release()
    if (step.kind === 'wait') return this.#wait(step)
    if (step.kind === 'reply') return this.#reply(step)
    return this.#action(step)
  }

  // The step a cancel cuts off: one that began and has not completed (it waits for a timer or
  // a reply, or for its retry delay) never runs on, so it ends `failed`, as a step does whose
  // attempts end without completing (a reply step cut off by its timeout, an action by its
  // timeoutMs). Left as it was, the cancelled saga showed it `waiting` (or `pending` with its
  // last error) for good. A step not yet begun stays `pending`. Its `sent` and
  // `outcomeUnknown` stay, so #nextCompensable still finds it; a reply step `waiting` as an
  // earlier version stored it (no `sent`) always meant a command sent, which `sent` now says.
  #cutOff(state: StepState | undefined): void {
    if (state === undefined) return
    if (state.status === 'waiting') {
      state.sent ??= true
    } else if (
      state.status !== 'pending' ||
      (state.attempts === 0 && state.outcomeUnknown !== true && state.error === undefined)
    ) {
      return
    }
    state.status = 'failed'
  }

  // An action attempt that began (the claim, or the write before it, counted it) and recorded
  // nothing: its worker died or lost its lease during it, maybe after the action's effect. A
  // recorded attempt (a failure) persists its number as the step's attempts, so one that
  // recorded nothing shows as a gap before the attempt this claim counts. It cannot be told
  // from a death just before the action was called, so the step's outcome is unknown and its
  // compensation runs if the saga compensates (see #nextCompensable).
  #noteUnrecorded(state: StepState | undefined): void {
    if (state === undefined) return
    if (state.status !== 'completed' && this.#attempt > state.attempts + 1) {
      state.outcomeUnknown = true
    }
  }

  // On SQLite a cancel made while the step before was being recorded (its atCommit work
  // running) waits for the writer and commits just after it, unseen by the write's read-back:
  // the next step ran, and when it was the last the saga ended completed. A cancel of this
  // process is queued ahead of this read, so the read sees it: one primary-key read, in
  // process, per step the run goes on to after a write that kept the lease (a claim reads the
  // flag itself), while no cancel is known. (On PostgreSQL the row is locked only for the
  // write at the end of the transaction, which reads such a cancel back: see writeTransition.)
  async #seeCancel(): Promise<void> {
    if (!this.#cancelUnread) return
    this.#cancelUnread = false
    const db = this.#host.db
    if (db.dialect !== 'sqlite' || this.#cancelRequested) return
    const rows = await db.query<{ cancel_requested: number | boolean }>(
      sagaStatements[db.dialect].cancelFlag,
      [this.id],
    )
    if (rows[0] !== undefined) this.#cancelFlag = rows[0].cancel_requested
  }

  // The operator's reason (cancelSaga's `reason`, recorded with the request in the same
  // transaction as the flag) becomes the compensation's reason.
  async #cancelReason(): Promise<string> {
    const db = this.#host.db
    const rows = await db.query<{ seq: number; detail: string | null }>(
      sagaStatements[db.dialect].cancelRequest,
      [this.id],
    )
    // Unreadable (a row changed outside breakwater): StoredDataError, and the instance is held.
    const reason = reasonInDetail(this.id, rows[0])
    return reason === undefined ? 'cancel requested' : `cancel requested: ${reason}`
  }

  async #action(step: CompiledStep): Promise<Step> {
    const state = this.#steps[step.index]!
    const attempt = this.#attempt
    if (attempt > step.retry.maxAttempts) return this.#attemptsSpent(step, state)
    await this.#ensureLease()
    state.attempts = attempt
    await this.#fault('before-step', step.name)
    this.#host.count('stepAttempts')
    this.#emit({ type: 'step-started', step: step.name, attempt })
    const work: AtCommitWork[] = []
    const started = this.#host.clock.now()
    const outcome = await this.#invoke(
      (signal) =>
        step.action!(
          this.#stepContext(step.name, attempt, `${this.id}:${step.name}`, signal, work) as never,
        ),
      step.timeoutMs,
    )
    closeRegistration(work)
    if (this.#halted !== undefined) return this.#halted
    const durationMs = this.#host.clock.now() - started
    this.#host.recordDuration(durationMs, this.saga.name)
    if (outcome.ok) {
      await this.#fault('after-step-action', step.name)
      return this.#stepSucceeded(step, state, attempt, outcome.value, durationMs, work)
    }
    // Cut off at timeoutMs by the runner, the action was abandoned mid-call: its remote call
    // may have landed (or land later), as with a worker that died during it. An error the
    // action threw itself, its own timeout or aborted request included, is its word that it
    // did not complete, and stays a known failure.
    if (outcome.cutOff === true) state.outcomeUnknown = true
    return this.#stepFailed(step, state, attempt, outcome.error, durationMs)
  }

  async #stepSucceeded(
    step: CompiledStep,
    state: StepState,
    attempt: number,
    value: unknown,
    durationMs: number,
    work: readonly AtCommitWork[],
  ): Promise<Step> {
    let result: unknown
    try {
      result = roundTrip(`result of step "${step.name}"`, value)
    } catch (error) {
      const invalid =
        error instanceof InvalidOptionError
          ? error
          : new InvalidOptionError(
              `result of step "${step.name}"`,
              `a JSON-serializable value (${String(error)})`,
              value,
            )
      // The action returned: its effect happened, only its result cannot be kept (see below).
      state.outcomeUnknown = true
      return this.#stepFailed(step, state, attempt, invalid, durationMs)
    }
    const before = this.#snapshot()
    const local = this.#capturing(work, step.name, false)
    state.status = 'completed'
    delete state.error
    // A completed step is compensated anyway, now with its result.
    delete state.outcomeUnknown
    if (result !== undefined) state.result = result
    if (isObjectRecord(result)) this.#context = Object.freeze({ ...this.#context, ...result })
    this.#stepIndex = step.index + 1
    this.#attempt = 1
    this.#event('step-completed', step.name, attempt, { durationMs })
    try {
      if (this.#stepIndex >= this.saga.steps.length) {
        return await this.#finish('completed', local.work, () =>
          this.#afterStepCommit(step, attempt, durationMs),
        )
      }
      if (!(await this.#write({ release: false }, local.work))) return 'lost'
    } catch (error) {
      // Given up meanwhile (stop({ timeoutMs }), a lost lease): nothing more is written for it.
      if (this.#halted !== undefined) return this.#halted
      // The step's atCommit work threw (or ran past atCommitTimeoutMs): its transaction rolled
      // back and nothing was recorded, so this attempt failed with that error, which the
      // step's retry handles. Giving the instance up instead retried it only after its lease
      // ran out, and reported its attempts as spent by dead workers, without the error.
      const failed = local.failure()
      if (failed === undefined) throw error
      this.#restore(before)
      // But the action itself returned, so its effect happened; taken as a known failure, it
      // was never compensated. Now it is, first, if the saga compensates from here, as an
      // attempt that recorded nothing is: without its result, rolled back with the step (and
      // a retry's may differ). A retry runs the action again (it is what registers the
      // atCommit work) with the same idempotency key; a completion drops the flag.
      state.outcomeUnknown = true
      return this.#stepFailed(step, state, attempt, failed.error, durationMs)
    }
    await this.#afterStepCommit(step, attempt, durationMs)
    return 'continue'
  }

  async #afterStepCommit(step: CompiledStep, attempt: number, durationMs: number): Promise<void> {
    this.#host.count('stepsCompleted')
    this.#emit({ type: 'step-completed', step: step.name, attempt, durationMs })
    await this.#fault('after-step-commit', step.name)
  }

  async #stepFailed(
    step: CompiledStep,
    state: StepState,
    attempt: number,
    error: unknown,
    durationMs: number,
    work: readonly CommitWork[] = nothing,
  ): Promise<Step> {
    this.#host.count('stepFailures')
    const info = errorInfo(error)
    state.error = info
    const { at: retryAt, broken, note = '' } = this.#retryAt(step.retry, error, attempt, 'retry')
    if (retryAt !== undefined) {
      if (step.kind === 'reply') state.status = 'failed'
      this.#event('step-failed', step.name, attempt, { error: info, retryAt, durationMs })
      // The next attempt may run on any worker: the delay is persisted, the lease released.
      if (!(await this.#write({ release: true, nextRunAt: retryAt }, work))) return 'lost'
      if (step.kind === 'reply') await this.#wakeIfReplied(step)
      this.#emit({ type: 'step-failed', step: step.name, attempt, error: info, retryAt })
      return 'suspended'
    }
    state.status = 'failed'
    this.#event('step-failed', step.name, attempt, {
      error: info,
      final: true,
      durationMs,
      ...(broken === undefined ? {} : { retryError: broken }),
    })
    this.#emit({ type: 'step-failed', step: step.name, attempt, error: info })
    const tries = attempt > 1 ? ` after ${attempt} attempts` : ''
    return this.#enterCompensation(
      `step "${step.name}" failed${tries}: ${describeError(info)}${note}`,
      step.index,
      work,
    )
  }

  // Attempts were started (and counted) but their workers died before recording an outcome.
  #attemptsSpent(step: CompiledStep, state: StepState): Promise<Step> {
    const attempts = step.retry.maxAttempts
    state.status = 'failed'
    const last = state.error === undefined ? '' : `; last error: ${describeError(state.error)}`
    this.#event('step-failed', step.name, this.#attempt, { final: true, attemptsSpent: attempts })
    this.#emit({ type: 'step-failed', step: step.name, attempt: this.#attempt })
    return this.#enterCompensation(
      `step "${step.name}" used up its ${attempts} attempts without recording an outcome (its workers died or lost their leases)${last}`,
      step.index,
    )
  }

  /**
   * When the next attempt is due, or why there is none. `shouldRetry` and `random` are user
   * code: one that throws ends the retries, as it ends a retry() call, and its error is kept
   * (`broken`) for the reason and the timeline. Taken silently as "do not retry", a broken
   * classifier compensated the saga for good naming only the step's error; a throwing
   * `random` escaped the run, which then recorded nothing of a failure it knew.
   */
  #retryAt(
    retry: CompiledRetry,
    error: unknown,
    attempt: number,
    field: 'retry' | 'compensationRetry',
  ): RetryDecision {
    if (attempt >= retry.maxAttempts) return {}
    let callback = 'shouldRetry'
    try {
      // Called synchronously: an async one's promise (truthy) is refused as a throw is.
      if (!predicateAnswer(`${field}.shouldRetry`, retry.shouldRetry(error, attempt))) return {}
      callback = 'random'
      const now = storedTime(this.#host.clock)
      let delayMs = retry.backoff.delayMs(attempt - 1)
      const asked = retryAfterMsOf(error, now)
      if (asked !== undefined) delayMs = Math.max(delayMs, Math.min(asked, retry.maxRetryAfterMs))
      return { at: now + Math.round(delayMs) }
    } catch (thrown) {
      const info = errorInfo(thrown)
      return {
        broken: info,
        note: ` (not retried: its ${field}.${callback} threw ${describeError(info)})`,
      }
    }
  }

  async #wait(step: CompiledStep): Promise<Step> {
    const state = this.#steps[step.index]!
    const now = storedTime(this.#host.clock)
    // The bound of an action's attempts: a waitUntil that kills its worker every time (each
    // claim counting an attempt) was called again on every claim, for ever. A sleepMs step
    // calls nothing that could, so deaths not of its making do not fail it.
    if (
      state.wakeAt === undefined &&
      step.waitUntil !== undefined &&
      this.#attempt > step.retry.maxAttempts
    ) {
      return this.#attemptsSpent(step, state)
    }
    if (state.wakeAt === undefined) {
      // Computed once and persisted: a restart must not start the wait over.
      // The attempt the claim counted, as an action's: a waitUntil retried after a failure
      // was reported as 1 attempt when it completed, and as 0 when its attempts were spent.
      state.attempts = this.#attempt
      let wakeAt: unknown
      try {
        if (step.sleepMs !== undefined) wakeAt = now + step.sleepMs
        else {
          // Bounded: a waitUntil that never settles held the lease (renewed) for ever.
          const called = await this.#invoke(
            () => step.waitUntil!(this.#info(step.name) as never),
            step.callTimeoutMs,
          )
          if (this.#halted !== undefined) return this.#halted
          if (!called.ok) throw called.error
          wakeAt = called.value
        }
      } catch (error) {
        // The attempt the claim counted, not 1: with a fixed 1, a waitUntil that keeps failing
        // retryably would never use up its attempts and be retried forever.
        return this.#stepFailed(step, state, this.#attempt, error, 0)
      }
      // Within Date's range (so also exact, and within PostgreSQL's BIGINT): a larger time
      // made the write fail in the database on every claim, and the step never ended (and
      // `saga show` could not print it).
      if (typeof wakeAt !== 'number' || !(Math.abs(wakeAt) <= maxEpochMs)) {
        const invalid =
          step.sleepMs !== undefined
            ? new InvalidOptionError(
                `sleepMs of step "${step.name}"`,
                `a sleep that ends by the latest Date (${maxEpochMs}): at most ${maxEpochMs - now} ms from now (${now})`,
                step.sleepMs,
              )
            : new InvalidOptionError(
                `waitUntil of step "${step.name}"`,
                `an epoch-millisecond number of at most ${maxEpochMs} (the latest Date)`,
                wakeAt,
              )
        return this.#stepFailed(step, state, this.#attempt, invalid, 0)
      }
      state.wakeAt = Math.round(wakeAt)
      state.status = 'waiting'
      // The error of an earlier attempt of waitUntil no longer describes this step.
      delete state.error
      // Awaits no reply: deliverReply drops one naming this step instead of waking the saga
      // before its time (a waiting step without the flag reads as an older reply step).
      state.sent = false
    }
    if (now < state.wakeAt) {
      this.#attempt = 0
      this.#event('step-waiting', step.name, null, { until: state.wakeAt })
      if (!(await this.#write({ release: true, nextRunAt: state.wakeAt }))) return 'lost'
      this.#emit({ type: 'step-waiting', step: step.name, retryAt: state.wakeAt })
      return 'suspended'
    }
    state.status = 'completed'
    this.#stepIndex = step.index + 1
    this.#attempt = 1
    this.#event('step-completed', step.name, null, { waitedUntil: state.wakeAt })
    const completed = async (): Promise<void> => {
      this.#host.count('stepsCompleted')
      this.#emit({ type: 'step-completed', step: step.name })
    }
    if (this.#stepIndex >= this.saga.steps.length)
      return this.#finish('completed', nothing, completed)
    if (!(await this.#write({ release: false }))) return 'lost'
    await completed()
    return 'continue'
  }

  async #reply(step: CompiledStep): Promise<Step> {
    const state = this.#steps[step.index]!
    const db = this.#host.db
    const statements = sagaStatements[db.dialect]
    const read = async (): Promise<{ found: boolean; reply: unknown }> => {
      const rows = await db.query<{ reply: string }>(statements.selectReply, [this.id, step.name])
      return rows.length === 0
        ? { found: false, reply: undefined }
        : {
            found: true,
            // Not JSON (a row changed outside breakwater): StoredDataError, and the instance is
            // held (see run); taken as no reply or a refused one, the command was sent again.
            reply: parseStoredJson(rows[0]!.reply, () => ({
              table: sagaRepliesTable,
              row: `saga ${JSON.stringify(this.id)} step ${JSON.stringify(step.name)}`,
              column: 'reply',
            })),
          }
    }
    if (state.status === 'waiting') {
      // Woken by a reply, by the reply timeout, or spuriously: the attempt is the last send.
      const attempt = state.attempts
      const { found, reply } = await read()
      if (found) {
        // Each claim that reads the reply counts an attempt, as an action's does: the first
        // handles it as part of the send's attempt, each one after it follows a worker that
        // died (or lost its lease) handling it. Unchecked, an onReply that kills its worker
        // every time was called again at every claim, for ever.
        const handling = Math.max(attempt, this.#attempt - 1)
        if (handling > step.retry.maxAttempts) {
          this.#attempt = handling
          return this.#attemptsSpent(step, state)
        }
        return this.#replied(step, state, handling, reply)
      }
      const now = storedTime(this.#host.clock)
      if (now >= (state.wakeAt ?? 0)) {
        this.#attempt = attempt
        return this.#stepFailed(
          step,
          state,
          attempt,
          new SagaReplyTimeoutError(step.name, step.replyTimeoutMs),
          now - (state.wakeAt ?? now) + step.replyTimeoutMs,
        )
      }
      this.#attempt = attempt
      if (!(await this.#write({ release: true, nextRunAt: state.wakeAt ?? now }))) return 'lost'
      await this.#wakeIfReplied(step)
      return 'suspended'
    }
    const attempt = this.#attempt
    if (attempt > step.retry.maxAttempts) return this.#attemptsSpent(step, state)
    // A reply to an earlier send that came after its timeout still counts.
    const earlier = await read()
    if (earlier.found) return this.#replied(step, state, attempt, earlier.reply)
    await this.#ensureLease()
    state.attempts = attempt
    await this.#fault('before-step', step.name)
    this.#host.count('stepAttempts')
    this.#emit({ type: 'step-started', step: step.name, attempt })
    // What `send` registers, afresh at each call: a state write that failed for a moment runs
    // its transaction, `send` included, again, and the last call's list is closed.
    let work: AtCommitWork[] = []
    const until = storedTime(this.#host.clock) + step.replyTimeoutMs
    const before = {
      status: state.status,
      wakeAt: state.wakeAt,
      sent: state.sent,
      events: this.#events.length,
    }
    state.status = 'waiting'
    state.wakeAt = until
    state.sent = true
    this.#event('step-waiting', step.name, attempt, { until, reply: true })
    // The command is written by `send` in the same transaction as the waiting state: both
    // commit or neither, and the reply cannot arrive before the state that expects it.
    let refused: { readonly error: unknown } | undefined
    const send: CommitWork = async (tx) => {
      work = []
      // Bounded: a send that never settles held the transaction and the lease for ever. Its
      // TimeoutError rolls the transaction back, so nothing is sent, and fails the attempt.
      const called = await this.#invoke((signal) => {
        const ctx = this.#stepContext(step.name, attempt, `${this.id}:${step.name}`, signal, work)
        return (step.send as (ctx: unknown, tx: SqlTransaction) => unknown)(ctx, tx)
      }, step.callTimeoutMs)
      closeRegistration(work)
      if (!called.ok) {
        refused = { error: called.error }
        throw called.error
      }
    }
    // What `send` registers through ctx.atCommit exists only once it has run, so the work is
    // taken from `work` then (bounded as every step's), not spread into the list before it.
    const registered: CommitWork = async (tx) => {
      const local = this.#capturing(work, step.name, false)
      try {
        for (const fn of local.work) await fn(tx)
      } catch (error) {
        refused ??= local.failure()
        throw error
      }
    }
    let written: boolean
    try {
      written = await this.#write({ release: true, nextRunAt: until }, [send, registered])
    } catch (error) {
      if (this.#halted !== undefined) return this.#halted
      if (refused === undefined) throw error
      // `send` itself threw (the command cannot be built, the outbox refuses it), or the
      // atCommit work it registered did (or ran out of its time): nothing was
      // sent and nothing written, so this attempt failed with that error, as an action's
      // would. Giving the instance up instead retried it after every lease, then reported the
      // attempts as spent by dead workers.
      state.status = before.status
      if (before.wakeAt === undefined) delete state.wakeAt
      else state.wakeAt = before.wakeAt
      if (before.sent === undefined) delete state.sent
      else state.sent = before.sent
      this.#events.length = before.events
      return this.#stepFailed(step, state, attempt, refused.error, 0)
    }
    if (!written) return 'lost'
    await this.#fault('after-step-action', step.name)
    this.#emit({ type: 'step-waiting', step: step.name, attempt, retryAt: until })
    return 'suspended'
  }

  // A reply step suspended after reading no reply (a spurious wake, a timeout before its retry
  // delay) wrote a later next_run_at. A reply recorded between that read and that write woke
  // the saga in vain (it was due already), and the write put its wake-up off to the timeout or
  // the retry: look again, now that the write committed, and wake the saga if one came. On
  // PostgreSQL a reply still uncommitted then holds the row (deliverReply's wake), so the write
  // waited for it and this read sees it; on SQLite the reply committed before the write.
  async #wakeIfReplied(step: CompiledStep): Promise<void> {
    const db = this.#host.db
    const rows = await db.query(sagaStatements[db.dialect].selectReply, [this.id, step.name])
    if (rows.length > 0) await wakeSaga(db, this.id, step.index, storedTime(this.#host.clock))
  }

  async #replied(
    step: CompiledStep,
    state: StepState,
    attempt: number,
    reply: unknown,
  ): Promise<Step> {
    const outcome = await this.#invoke(
      () =>
        step.onReply === undefined
          ? reply
          : step.onReply(reply as never, this.#info(step.name) as never),
      // Bounded: an onReply that never settles held the lease (renewed) for ever.
      step.callTimeoutMs,
    )
    if (this.#halted !== undefined) return this.#halted
    // The reply tells the outcome: a step it fails needs no compensation.
    delete state.sent
    this.#event('reply-received', step.name, attempt, null)
    if (outcome.ok) {
      const value = step.onReply === undefined && !isObjectRecord(reply) ? undefined : outcome.value
      return this.#stepSucceeded(step, state, attempt, value, 0, nothing)
    }
    // A refused reply is used up: a resend waits for a fresh one.
    const forget: CommitWork = async (tx) => {
      await tx.execute(sagaStatements[tx.dialect].deleteReply, [this.id, step.name])
    }
    this.#attempt = attempt
    state.replyRefusedAt = attempt
    return this.#stepFailed(step, state, attempt, outcome.error, 0, [forget])
  }

  // ---- compensation ----------------------------------------------------------------------

  // The completed steps, a reply step whose command was sent and whose reply was not read
  // (its outcome is unknown: the other service may have acted, and a late reply would find
  // nothing left to undo it), and an action an attempt of which recorded no outcome (its
  // worker died during it, maybe after the effect; see #noteUnrecorded), was cut off at its
  // timeoutMs (see #action), or returned but could not be recorded (its atCommit work failed
  // or its result is not JSON; see #stepSucceeded). A step still `waiting` without the flag was stored by an earlier
  // version, whose waiting always meant a command sent.
  #nextCompensable(from: number): number {
    for (let i = from; i >= 0; i--) {
      const state = this.#steps[i]
      if (state === undefined || this.saga.steps[i]?.compensation === undefined) continue
      if (state.status === 'completed') return i
      if (state.status === 'compensated') continue
      if (state.sent === true || state.outcomeUnknown === true || state.status === 'waiting')
        return i
    }
    return -1
  }

  async #enterCompensation(
    reason: string,
    from: number,
    work: readonly CommitWork[] = nothing,
  ): Promise<Step> {
    this.#reason = reason
    this.#stepIndex = this.#nextCompensable(from)
    this.#attempt = 1
    if (this.#stepIndex < 0) {
      return this.#finish(this.#cancelRequested ? 'cancelled' : 'compensated', work)
    }
    this.#status = 'compensating'
    this.#event('compensating', null, null, { reason })
    if (!(await this.#write({ release: false }, work))) return 'lost'
    this.#emit({ type: 'compensating', reason })
    return 'continue'
  }

  async #compensate(): Promise<Step> {
    const index = this.#nextCompensable(this.#stepIndex)
    if (index !== this.#stepIndex) {
      this.#stepIndex = index
      this.#attempt = 1
    }
    if (index < 0) return this.#finish(this.#cancelRequested ? 'cancelled' : 'compensated')
    if (this.#host.stopping) return this.#release()
    const step = this.saga.steps[index]!
    const state = this.#steps[index]!
    const attempt = this.#attempt
    if (attempt > step.compensationRetry.maxAttempts) {
      return this.#park(step, state.compensationError, attempt - 1)
    }
    await this.#ensureLease()
    state.compensationAttempts = attempt
    await this.#fault('before-compensation', step.name)
    this.#emit({ type: 'compensation-started', step: step.name, attempt })
    const work: AtCommitWork[] = []
    const started = this.#host.clock.now()
    const outcome = await this.#invoke(
      (signal) =>
        step.compensation!({
          ...this.#stepContext(
            step.name,
            attempt,
            `${this.id}:${step.name}:compensate`,
            signal,
            work,
          ),
          reason: this.#reason ?? 'compensating',
        } as never),
      step.compensationTimeoutMs,
    )
    closeRegistration(work)
    if (this.#halted !== undefined) return this.#halted
    const durationMs = this.#host.clock.now() - started
    this.#host.recordDuration(durationMs, this.saga.name)
    if (!outcome.ok)
      return this.#compensationFailed(step, state, attempt, outcome.error, durationMs)
    await this.#fault('after-compensation-action', step.name)
    const before = this.#snapshot()
    const local = this.#capturing(work, step.name, true)
    state.status = 'compensated'
    delete state.compensationError
    delete state.sent
    this.#stepIndex = this.#nextCompensable(index - 1)
    this.#attempt = 1
    this.#event('compensation-completed', step.name, attempt, { durationMs })
    const after = async (): Promise<void> => {
      this.#host.count('compensations')
      this.#emit({ type: 'compensation-completed', step: step.name, attempt, durationMs })
      await this.#fault('after-compensation-commit', step.name)
    }
    try {
      if (this.#stepIndex < 0) {
        return await this.#finish(
          this.#cancelRequested ? 'cancelled' : 'compensated',
          local.work,
          after,
        )
      }
      if (!(await this.#write({ release: false }, local.work))) return 'lost'
    } catch (error) {
      if (this.#halted !== undefined) return this.#halted
      // The compensation's atCommit work threw (see #stepSucceeded): this attempt failed.
      const failed = local.failure()
      if (failed === undefined) throw error
      this.#restore(before)
      return this.#compensationFailed(step, state, attempt, failed.error, durationMs)
    }
    await after()
    return 'continue'
  }

  async #compensationFailed(
    step: CompiledStep,
    state: StepState,
    attempt: number,
    error: unknown,
    durationMs: number,
  ): Promise<Step> {
    this.#host.count('compensationFailures')
    const info = errorInfo(error)
    state.compensationError = info
    const decision = this.#retryAt(step.compensationRetry, error, attempt, 'compensationRetry')
    const retryAt = decision.at
    if (retryAt === undefined) return this.#park(step, info, attempt, decision)
    this.#event('compensation-failed', step.name, attempt, { error: info, retryAt, durationMs })
    if (!(await this.#write({ release: true, nextRunAt: retryAt }))) return 'lost'
    this.#emit({ type: 'compensation-failed', step: step.name, attempt, error: info, retryAt })
    return 'suspended'
  }

  async #park(
    step: CompiledStep,
    error: ErrorInfo | undefined,
    attempts: number,
    { broken, note = '' }: RetryDecision = {},
  ): Promise<Step> {
    const why =
      error === undefined
        ? 'its workers died or lost their leases before recording an outcome'
        : describeError(error)
    this.#status = 'failed'
    this.#reason = `compensation of step "${step.name}" failed after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${why}${note} (while compensating because ${this.#reason ?? 'of an earlier failure'})`
    this.#event('compensation-failed', step.name, attempts, {
      ...(error === undefined ? {} : { error }),
      final: true,
      ...(broken === undefined ? {} : { retryError: broken }),
    })
    this.#event('parked', null, null, { reason: this.#reason })
    if (!(await this.#write({ release: true }))) return 'lost'
    this.#host.count('parked')
    this.#emit({
      type: 'parked',
      step: step.name,
      reason: this.#reason,
      ...(error === undefined ? {} : { error }),
    })
    return 'finished'
  }

  // ---- endings ---------------------------------------------------------------------------

  async #finish(
    status: 'completed' | 'compensated' | 'cancelled',
    work: readonly CommitWork[] = nothing,
    afterCommit?: () => Promise<void>,
  ): Promise<Step> {
    this.#status = status
    this.#stepIndex = status === 'completed' ? this.saga.steps.length : -1
    this.#event(status, null, null, status === 'completed' ? null : { reason: this.#reason })
    if (!(await this.#write({ release: true, finished: true }, work))) return 'lost'
    await afterCommit?.()
    this.#host.count(status)
    this.#emit({ type: status, ...(status === 'completed' ? {} : { reason: this.#reason ?? '' }) })
    return 'finished'
  }

  async #release(): Promise<Step> {
    this.#event('released', this.#currentStepName(), null, null)
    // The claim adds one to the attempt; what is persisted is the attempts already begun.
    this.#attempt = Math.max(0, this.#attempt - 1)
    if (!(await this.#write({ release: true }))) return 'lost'
    this.#emit({ type: 'released' })
    return 'released'
  }

  // ---- plumbing --------------------------------------------------------------------------

  #capturing(work: readonly AtCommitWork[], step: string, compensation: boolean) {
    const ms = this.#host.atCommitTimeoutMs
    return capturing(
      work,
      this.#host.clock,
      ms,
      () => new SagaAtCommitTimeoutError(step, ms, compensation),
      this.#controller.signal,
    )
  }

  // What a transition changes in memory, to put back when its write did not happen because
  // the step's own atCommit work threw (the transaction rolled back).
  #snapshot(): Snapshot {
    return {
      steps: this.#steps.map((s) => JSON.parse(JSON.stringify(s)) as StepState),
      status: this.#status,
      context: this.#context,
      stepIndex: this.#stepIndex,
      attempt: this.#attempt,
      reason: this.#reason,
      events: this.#events.length,
      givenBack: this.#givenBack,
    }
  }

  #restore(snapshot: Snapshot): void {
    // In place: callers hold the step states.
    this.#steps.forEach((state, i) => {
      const target = state as unknown as Record<string, unknown>
      for (const key of Object.keys(target)) delete target[key]
      Object.assign(target, snapshot.steps[i])
    })
    this.#status = snapshot.status
    this.#context = snapshot.context
    this.#stepIndex = snapshot.stepIndex
    this.#attempt = snapshot.attempt
    this.#reason = snapshot.reason
    this.#events.length = snapshot.events
    this.#givenBack = snapshot.givenBack
  }

  async #write(
    options: { release: boolean; nextRunAt?: number; finished?: boolean },
    work: readonly CommitWork[] = nothing,
  ): Promise<boolean> {
    const host = this.#host
    if (options.release) this.#givenBack = true
    const built = (): TransitionWrite => {
      const now = storedTime(host.clock)
      const leaseEnd = options.release ? null : now + host.leaseMs
      return {
        id: this.id,
        token: this.token,
        status: this.#status,
        context: JSON.stringify(this.#context),
        steps: JSON.stringify(this.#steps),
        stepIndex: this.#stepIndex,
        attempt: this.#attempt,
        nextRunAt: options.nextRunAt ?? now,
        leaseOwner: options.release ? null : host.workerId,
        leaseExpiresAt: leaseEnd,
        reason: this.#reason,
        now,
        finishedAt: options.finished === true ? now : null,
        events: this.#events,
        // Measured again when the write goes out: see TransitionWrite.lease.
        ...(leaseEnd === null ? {} : { lease: { clock: host.clock, ms: host.leaseMs } }),
      }
    }
    // Whether the commit work itself threw (the step's atCommit work, a reply step's send): that
    // is the attempt's failure, for the caller to handle, never a reason to write again here.
    let workThrew = false
    const tracked = work.map(
      (w): CommitWork =>
        async (tx) => {
          try {
            await w(tx)
          } catch (error) {
            workThrew = true
            throw error
          }
        },
    )
    let firstFailure: number | undefined
    let result: BatchOutcome
    for (let retry = 0; ; retry++) {
      try {
        result = await host.write(built(), tracked)
        break
      } catch (error) {
        firstFailure ??= host.clock.now()
        const delay = workThrew ? undefined : this.#rewriteDelay(error, retry, firstFailure)
        if (delay === undefined) throw error
        const retryAt = host.clock.now() + delay
        host.count('errors')
        this.#emit({
          type: 'error',
          phase: 'run',
          ...(this.#working === null ? {} : { step: this.#working }),
          error: errorInfo(error),
          retryAt,
        })
        // Aborted when the run is given up meanwhile (a lost lease, stop({ timeoutMs })):
        // then the run ends as if this failure had ended it, and writes nothing more.
        await sleep(host.clock, delay, this.#controller.signal).catch(() => {
          throw error
        })
      }
    }
    this.#events = []
    if (result === undefined) {
      this.markLost('write-refused')
      return false
    }
    if (result.leaseExpiresAt !== null) this.leaseExpiresAt = result.leaseExpiresAt
    // As stored: checked where the run acts on it (see #cancelRequested).
    this.#cancelFlag = result.cancelRequested
    this.#cancelUnread = !options.release
    return true
  }

  // How long to wait before writing a state again whose write failed, or undefined to give
  // the run up (the instance then resumes from its stored state once its lease runs out, its
  // step run again). Given up, a lock timeout or a deadlock of the write that records a step
  // ran the step's action (a payment call) a second time. Written again only when the write
  // certainly did not commit: a lock or serialization failure the database answered with (it
  // rolled the transaction back), and nothing the driver cannot vouch for. A connection lost
  // with the write, or an internal error, may have committed it after COMMIT was sent, and the
  // write is not idempotent (its timeline rows, its atCommit work): such a run is given up as
  // before. The retries are few and end well within the lease (`leaseMs / 2` from the first
  // failure, on the worker's clock), so the instance is usually not taken over meanwhile (not
  // a guarantee: renewals can fail or skip the row while the lock is held); each write stays
  // fenced by the lease token, so one taken over anyway is refused and lost.
  #rewriteDelay(error: unknown, retry: number, firstFailure: number): number | undefined {
    if (this.#halted !== undefined || retry >= stateWriteRetries) return undefined
    if (!rolledBackWriteFailure(this.#host.db.dialect, error)) return undefined
    const delay = stateWriteBackoffMs * 2 ** retry
    const spent = this.#host.clock.now() - firstFailure
    return spent + delay <= this.#host.leaseMs / 2 ? delay : undefined
  }

  // Before starting work, make sure the lease has not already run out (a long pause, a slow
  // database): renew it if the token still holds, else the instance is someone else's.
  async #ensureLease(): Promise<void> {
    const host = this.#host
    if (storedTime(host.clock) < this.leaseExpiresAt) return
    // The new end is measured when the statement runs, not now: see renewLease.
    const leaseEnd = await renewLease(host.db, this.id, this.token, host.clock, host.leaseMs)
    if (leaseEnd !== undefined) this.leaseExpiresAt = leaseEnd
    else {
      this.markLost('renewal-refused')
      throw new Abandon()
    }
  }

  async #fault(point: SagaFaultPoint, step: string): Promise<void> {
    const faults = this.#host.faults
    if (faults === undefined) return
    try {
      await faults(point, { sagaId: this.id, step })
    } catch {
      throw new Abandon()
    }
  }

  async #invoke<T>(
    fn: (signal: AbortSignal) => Promise<T> | T,
    timeoutMs: number | undefined,
  ): Promise<Attempt<T>> {
    const parent = this.#controller.signal
    if (parent.aborted) return { ok: false, error: parent.reason }
    const controller = new AbortController()
    const clock = this.#host.clock
    let timer: TimerHandle | undefined
    let onAbort: (() => void) | undefined
    const cut = new Promise<Attempt<T>>((resolve) => {
      onAbort = () => {
        controller.abort(parent.reason)
        resolve({ ok: false, error: parent.reason })
      }
      parent.addEventListener('abort', onAbort, { once: true })
      if (timeoutMs !== undefined) {
        timer = clock.setTimeout(() => {
          const error = new TimeoutError(timeoutMs)
          controller.abort(error)
          // Abandoned, not ended: what the call did is unknown (see #action).
          resolve({ ok: false, error, cutOff: true })
        }, timeoutMs)
      }
    })
    try {
      const running = (async () => fn(controller.signal))().then(
        (value): Attempt<T> => ({ ok: true, value }),
        (error: unknown): Attempt<T> => ({ ok: false, error }),
      )
      return await Promise.race([running, cut])
    } finally {
      if (timer !== undefined) clock.clearTimeout(timer)
      if (onAbort !== undefined) parent.removeEventListener('abort', onAbort)
    }
  }

  #info(step: string): Record<string, unknown> {
    return {
      sagaId: this.id,
      saga: this.saga.name,
      version: this.saga.version,
      step,
      input: this.#input,
      context: this.#context,
      clock: this.#host.clock,
    }
  }

  #stepContext(
    step: string,
    attempt: number,
    idempotencyKey: string,
    signal: AbortSignal,
    work: AtCommitWork[],
  ): Record<string, unknown> {
    return {
      ...this.#info(step),
      attempt,
      idempotencyKey,
      signal,
      atCommit(fn: AtCommitWork): void {
        if (typeof fn !== 'function') throw new InvalidOptionError('atCommit', 'a function', fn)
        // Closed once the step's function settled (or was cut off): the transaction that
        // records the step is written without anything registered later, which was dropped
        // without a word.
        if (Object.isFrozen(work)) {
          throw new InvalidOptionError(
            'atCommit',
            `a call while step "${step}" runs (it has returned or was cut off, and its transaction no longer takes work: register it before the step's function settles)`,
            fn,
          )
        }
        work.push(fn)
      },
    }
  }

  #event(
    kind: string,
    step: string | null,
    attempt: number | null,
    detail: Record<string, unknown> | null,
  ): void {
    this.#events.push({
      at: storedTime(this.#host.clock),
      kind,
      step,
      attempt,
      worker: this.#host.workerId,
      detail: detail === null ? null : JSON.stringify(detail),
    })
  }

  #emit(event: Omit<SagaEvent, 'at' | 'worker' | 'sagaId' | 'saga' | 'version'>): void {
    this.#host.emit({ sagaId: this.id, saga: this.saga.name, version: this.saga.version, ...event })
  }
}

/**
 * Ends a step function's `ctx.atCommit` registrations, once the function settled or was cut
 * off: `atCommit` refuses a frozen list (see `#stepContext`).
 */
function closeRegistration(work: AtCommitWork[]): void {
  Object.freeze(work)
}

/**
 * What {@link InstanceRun}'s retry check decided: `at`, when the next attempt is due; none
 * when the attempts are spent or not wanted; `broken` (and its `note` for the reason) when
 * the step's `shouldRetry` or `random` threw.
 */
interface RetryDecision {
  readonly at?: number
  readonly broken?: ErrorInfo
  readonly note?: string
}

interface Snapshot {
  readonly steps: readonly StepState[]
  readonly status: SagaStatus
  readonly context: Record<string, unknown>
  readonly stepIndex: number
  readonly attempt: number
  readonly reason: string | null
  readonly events: number
  readonly givenBack: boolean
}

/**
 * Wraps a step's atCommit work into one piece of commit work that tells its own failure from
 * the database's, and bounds it: work that never settles held the transaction (on SQLite the
 * one writer) for ever. Once `timeoutMs` has passed on `clock` it fails with `expired()`, which
 * rolls the transaction back. The work cannot be forced to stop, so it is told: the signal it
 * is given aborts with that error, or with `run`'s reason when the run is given up (stop with a
 * timeout, a lost lease), so that it stops waiting on what it awaits; its later statements on
 * the ended transaction are refused, and its outcome is ignored.
 */
function capturing(
  work: readonly AtCommitWork[],
  clock: Clock,
  timeoutMs: number,
  expired: () => Error,
  run: AbortSignal,
): {
  readonly work: readonly CommitWork[]
  failure(): { readonly error: unknown } | undefined
} {
  let failed: { readonly error: unknown } | undefined
  if (work.length === 0) return { work: nothing, failure: () => failed }
  const all: CommitWork = async (tx) => {
    // One controller per transaction: a signal aborted for an earlier one must not reach this.
    const controller = new AbortController()
    const onAbort = (): void => controller.abort(run.reason)
    if (run.aborted) onAbort()
    else run.addEventListener('abort', onAbort, { once: true })
    try {
      await within(
        (async () => {
          for (const fn of work) await fn(tx, controller.signal)
        })(),
        clock,
        timeoutMs,
        () => {
          const error = expired()
          controller.abort(error)
          return error
        },
      )
    } catch (error) {
      failed ??= { error }
      throw error
    } finally {
      run.removeEventListener('abort', onAbort)
    }
  }
  return { work: [all], failure: () => failed }
}

/**
 * A step's result as it is stored and read back: undefined (no result) when it is itself a
 * function or symbol. A result whose JSON would lose part of it (a Map, a function field, NaN:
 * {@link jsonTextOf}) is refused, so the following steps never run on another value than the
 * step returned.
 */
function roundTrip(option: string, value: unknown): unknown {
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
    return undefined
  }
  return JSON.parse(jsonTextOf(option, value))
}
