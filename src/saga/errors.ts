import { BreakwaterError } from '../core/errors.js'

// The errors of the saga capability. Definition mistakes are InvalidOptionError (thrown by
// defineSaga); these are the runtime ones.

/**
 * A worker's state write was refused because another worker took the instance over after this
 * worker's lease expired (code `SAGA_LEASE_LOST`). The write changed nothing; the worker stops
 * working on the instance. It is the abort reason of a step's `signal` when the loss is noticed
 * while the step runs.
 */
export class SagaLeaseLostError extends BreakwaterError {
  /** The saga instance. */
  readonly sagaId: string

  constructor(sagaId: string) {
    super(
      'SAGA_LEASE_LOST',
      `Saga ${sagaId}: the lease was taken over by another worker; this worker's write was refused`,
    )
    this.sagaId = sagaId
  }
}

/** No saga instance has the given id (code `SAGA_NOT_FOUND`). */
export class SagaNotFoundError extends BreakwaterError {
  /** The id that was looked up. */
  readonly sagaId: string

  constructor(sagaId: string) {
    super('SAGA_NOT_FOUND', `No saga instance has the id ${JSON.stringify(sagaId)}`)
    this.sagaId = sagaId
  }
}

/**
 * The operation does not apply to the instance in its current status (code
 * `SAGA_STATE_CONFLICT`): retrying a saga that is not parked, cancelling one that finished, a
 * reply for a step the saga is not waiting on, a start (`startSaga`, `worker.run`) with an id an
 * instance of another saga holds.
 */
export class SagaStateConflictError extends BreakwaterError {
  /** The saga instance. */
  readonly sagaId: string
  /** The status the instance was found in. */
  readonly status: string

  constructor(sagaId: string, status: string, message: string) {
    super('SAGA_STATE_CONFLICT', `Saga ${sagaId} is ${status}: ${message}`)
    this.sagaId = sagaId
    this.status = status
  }
}

/**
 * `start()` was called on a saga worker after `stop()`, or after a `start()` that failed (code
 * `SAGA_WORKER_STOPPED`): a worker runs once; create a new one.
 */
export class SagaWorkerStoppedError extends BreakwaterError {
  /** The worker's id. */
  readonly workerId: string

  constructor(workerId: string) {
    super(
      'SAGA_WORKER_STOPPED',
      `Saga worker ${JSON.stringify(workerId)} was stopped (or failed to start) and cannot start again; create a new worker`,
    )
    this.workerId = workerId
  }
}

/**
 * A step waited for its reply message longer than its reply timeout (code
 * `SAGA_REPLY_TIMEOUT`, retryable: the step's retry policy sends the command again).
 */
export class SagaReplyTimeoutError extends BreakwaterError {
  /** The step that waited. */
  readonly step: string
  /** The timeout that elapsed, in milliseconds. */
  readonly timeoutMs: number

  constructor(step: string, timeoutMs: number) {
    super('SAGA_REPLY_TIMEOUT', `Step "${step}" got no reply within ${timeoutMs} ms`, {
      retryable: true,
    })
    this.step = step
    this.timeoutMs = timeoutMs
  }
}

/**
 * A step's (or compensation's) `atCommit` work did not finish within the worker's
 * `atCommitTimeoutMs` (code `SAGA_AT_COMMIT_TIMEOUT`, retryable: the work may have waited on
 * something that answers next time). The transaction that was to record the step was rolled
 * back, so nothing of it was recorded, and the attempt failed with this error, as if the work
 * had thrown it: the step's `retry` (or `compensationRetry`) decides what comes next.
 */
export class SagaAtCommitTimeoutError extends BreakwaterError {
  /** The step whose atCommit work was cut off. */
  readonly step: string
  /** The bound that elapsed (`atCommitTimeoutMs`), in milliseconds. */
  readonly timeoutMs: number
  /** Whether the work was the step's compensation's rather than its action's. */
  readonly compensation: boolean

  constructor(step: string, timeoutMs: number, compensation = false) {
    super(
      'SAGA_AT_COMMIT_TIMEOUT',
      `${compensation ? 'Compensation of step' : 'Step'} "${step}": its atCommit work did not finish within atCommitTimeoutMs (${timeoutMs} ms); its transaction was rolled back`,
      { retryable: true },
    )
    this.step = step
    this.timeoutMs = timeoutMs
    this.compensation = compensation
  }
}
