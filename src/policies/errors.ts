import { AbortedError, BreakwaterError } from '../core/errors.js'

// The errors the resilience policies throw. Each has a stable code documented in
// docs/errors.md; the classifier reads their `retryable` flag.

/**
 * An attempt or operation ran past its timeout (code `TIMEOUT`, retryable). In cooperative
 * mode `cause` is the error the function rejected with after its signal aborted.
 */
export class TimeoutError extends BreakwaterError {
  /** The timeout that elapsed, in milliseconds. */
  readonly timeoutMs: number

  /**
   * `options.message` replaces the generic "The operation timed out after N ms" where the
   * caller knows what timed out and which setting bounds it (the outbox relay's publish).
   */
  constructor(
    timeoutMs: number,
    options: { readonly cause?: unknown; readonly message?: string } = {},
  ) {
    super('TIMEOUT', options.message ?? `The operation timed out after ${timeoutMs} ms`, {
      cause: options.cause,
      retryable: true,
    })
    this.timeoutMs = timeoutMs
  }
}

/**
 * The end-to-end deadline passed, or too little of it is left to start (code
 * `DEADLINE_EXCEEDED`, not retryable: the caller has already given up).
 */
export class DeadlineExceededError extends BreakwaterError {
  /** The absolute deadline (epoch milliseconds on the policy's clock). */
  readonly deadlineAtMs: number
  /**
   * False when the call was refused before it began, because too little of the deadline was
   * left to start it: nothing reached the downstream, so a circuit breaker does not count it
   * against the downstream (the caller's lateness is not the service's failure).
   */
  readonly started: boolean

  constructor(
    deadlineAtMs: number,
    options: { readonly cause?: unknown; readonly started?: boolean } = {},
  ) {
    super('DEADLINE_EXCEEDED', 'The deadline was exceeded', { cause: options.cause })
    this.deadlineAtMs = deadlineAtMs
    this.started = options.started ?? true
  }
}

/**
 * A retry was refused because the retry budget is spent (code `RETRY_BUDGET_EXHAUSTED`, not
 * retryable). `cause` is the failure that would have been retried.
 */
export class RetryBudgetExhaustedError extends BreakwaterError {
  constructor(cause: unknown) {
    super('RETRY_BUDGET_EXHAUSTED', 'Retry refused: the retry budget is exhausted', { cause })
  }
}

/**
 * The circuit breaker is open, or half-open with every probe slot taken, and failed the call
 * without running it (code `BROKEN_CIRCUIT`, not retryable: retrying at once would only be
 * refused again; the retry policy passes it straight through).
 */
export class BrokenCircuitError extends BreakwaterError {
  /** Milliseconds until the breaker lets a probe through (0 while half-open). */
  readonly retryAfterMs: number

  /**
   * `options.message` replaces the generic "The circuit is open; retry after N ms" where the
   * caller knows what the circuit guards and which failure opened it (the outbox relay names
   * its breaker and the publish failure, which is then `cause`).
   */
  constructor(
    retryAfterMs: number,
    options: { readonly cause?: unknown; readonly message?: string } = {},
  ) {
    super(
      'BROKEN_CIRCUIT',
      options.message ?? `The circuit is open; retry after ${retryAfterMs} ms`,
      { cause: options.cause },
    )
    this.retryAfterMs = retryAfterMs
  }
}

/**
 * The circuit breaker was isolated by hand (`isolate()`) and fails every call until `reset()`
 * (code `ISOLATED_CIRCUIT`, not retryable).
 */
export class IsolatedCircuitError extends BreakwaterError {
  constructor() {
    super('ISOLATED_CIRCUIT', 'The circuit was isolated by hand and fails every call')
  }
}

/**
 * The bulkhead refused a call (code `BULKHEAD_FULL`, not retryable): every slot and queue
 * place was taken (`reason: 'full'`), or the call waited in the queue longer than
 * `queueTimeoutMs` (`reason: 'queueTimeout'`).
 */
export class BulkheadRejectedError extends BreakwaterError {
  /** Why the call was refused. */
  readonly reason: 'full' | 'queueTimeout'
  /** The bulkhead's `maxConcurrent`. */
  readonly maxConcurrent: number
  /** The bulkhead's `maxQueued` (`Infinity` for an unbounded queue, which never refuses as full). */
  readonly maxQueued: number

  constructor(reason: 'full' | 'queueTimeout', maxConcurrent: number, maxQueued: number) {
    super(
      'BULKHEAD_FULL',
      reason === 'full'
        ? `The bulkhead is full (${maxConcurrent} running, ${maxQueued} queued)`
        : 'The call waited in the bulkhead queue longer than its queue timeout',
    )
    this.reason = reason
    this.maxConcurrent = maxConcurrent
    this.maxQueued = maxQueued
  }
}

/**
 * What a policy rejects with when the scope it runs under aborted with `reason`: the deadline
 * error when the reason is one (the caller's budget ran out, which a caller and a breaker must
 * tell from a cancellation), else `AbortedError`. `started` says whether the call had begun
 * (false: refused before anything reached the downstream). Internal.
 */
export function abortFailure(reason: unknown, started: boolean): BreakwaterError {
  if (!BreakwaterError.is(reason) || reason.code !== 'DEADLINE_EXCEEDED') {
    return new AbortedError(reason)
  }
  const deadline = reason as BreakwaterError & { deadlineAtMs?: unknown; started?: unknown }
  // The reason itself when it already says the right thing: it is the caller's own error.
  if (deadline.started === started) return deadline
  // Else the same deadline, only `started` differs: a copy, not a second error wrapping the
  // first (a DeadlineExceededError whose cause is a DeadlineExceededError says nothing more).
  const atMs = typeof deadline.deadlineAtMs === 'number' ? deadline.deadlineAtMs : Number.NaN
  return new DeadlineExceededError(atMs, { started })
}

// Timeouts that ran out while their call still waited in a bulkhead's queue (see
// markTimedOutInQueue). A WeakSet, not a field: the error is the timeout's own, which the
// caller sees as it is.
const timedOutWhileQueued = new WeakSet<object>()

/**
 * Marks `error`, a timeout that ran out while its call waited in a bulkhead's queue: nothing
 * reached the downstream, so a circuit breaker around it does not count it. Internal.
 */
export function markTimedOutInQueue(error: unknown): void {
  if (typeof error === 'object' && error !== null) timedOutWhileQueued.add(error)
}

/** Whether `error` is a timeout that ran out in a bulkhead's queue (see markTimedOutInQueue). Internal. */
export function timedOutInQueue(error: unknown): boolean {
  return typeof error === 'object' && error !== null && timedOutWhileQueued.has(error)
}
