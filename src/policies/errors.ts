import { BreakwaterError } from '../core/errors.js'

// The errors the resilience policies throw. Each has a stable code documented in
// docs/errors.md; the classifier reads their `retryable` flag.

/**
 * An attempt or operation ran past its timeout (code `TIMEOUT`, retryable). In cooperative
 * mode `cause` is the error the function rejected with after its signal aborted.
 */
export class TimeoutError extends BreakwaterError {
  /** The timeout that elapsed, in milliseconds. */
  readonly timeoutMs: number

  constructor(timeoutMs: number, options: { readonly cause?: unknown } = {}) {
    super('TIMEOUT', `The operation timed out after ${timeoutMs} ms`, {
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

  constructor(deadlineAtMs: number, options: { readonly cause?: unknown } = {}) {
    super('DEADLINE_EXCEEDED', 'The deadline was exceeded', { cause: options.cause })
    this.deadlineAtMs = deadlineAtMs
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
