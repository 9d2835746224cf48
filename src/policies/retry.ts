import { metrics } from '@opentelemetry/api'
import { type Clock, systemClock, type TimerHandle } from '../core/clock.js'
import { AbortedError, BreakwaterError } from '../core/errors.js'
import { checkFunction, checkInteger, checkNumber, checkObject } from '../core/validate.js'
import { type Backoff, type Jitter, maxTimerDelayMs, resolveBackoff } from './backoff.js'
import { isTransientFailure, retryAfterMsOf } from './classify.js'
import { currentDeadline, type Deadline } from './deadline.js'
import { DeadlineExceededError, RetryBudgetExhaustedError } from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import type { RandomSource } from './random.js'
import type { RetryBudget } from './retry-budget.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from './types.js'

/** Options of {@link retry}. */
export interface RetryOptions {
  /**
   * The most attempts in total, counting the first call (1 disables retrying).
   * @default 3
   */
  readonly maxAttempts?: number
  /**
   * The backoff ceiling before the first retry, in milliseconds.
   * @default 100
   */
  readonly baseDelayMs?: number
  /**
   * How much the backoff ceiling grows per retry (>= 1).
   * @default 2
   */
  readonly factor?: number
  /**
   * The cap on any backoff delay, in milliseconds.
   * @default 30_000
   */
  readonly maxDelayMs?: number
  /**
   * How delays are randomised; see `Jitter`. Full jitter: `random(0, min(cap, base * factor^n))`.
   * @default 'full'
   */
  readonly jitter?: Jitter
  /**
   * The random source for jitter, returning numbers in `[0, 1)`; `seededRandom(seed)` makes
   * delays reproducible.
   * @default Math.random
   */
  readonly random?: RandomSource
  /**
   * Decides whether a failure is worth another attempt. `attempt` is the number of the attempt
   * that failed (1 for the first call).
   * @default isTransientFailure (timeouts, refused or reset connections, 408/429/502/503/504)
   */
  readonly shouldRetry?: (error: unknown, attempt: number) => boolean
  /**
   * The longest server-requested wait (`Retry-After`, or an error's `retryAfterMs`) that is
   * honoured, in milliseconds; longer requests wait this long.
   * @default 30_000
   */
  readonly maxRetryAfterMs?: number
  /**
   * A retry budget shared with other callers of the same downstream; when it is spent the
   * call fails with `RetryBudgetExhaustedError` instead of retrying.
   * @default undefined (no budget)
   */
  readonly budget?: RetryBudget
  /**
   * The clock for backoff sleeps and deadline arithmetic.
   * @default systemClock
   */
  readonly clock?: Clock
}

/** Why a retry policy stopped retrying. */
export type GiveUpReason =
  /** `shouldRetry` said no (for example a 4xx or an open circuit). */
  | 'notRetryable'
  /** `maxAttempts` attempts failed. */
  | 'maxAttempts'
  /** The next attempt could not start before the deadline, or the deadline passed. */
  | 'deadline'
  /** The retry budget had no token left. */
  | 'budget'
  /** The caller aborted. */
  | 'aborted'

/** Events of a retry policy. */
export type RetryEvent =
  | {
      readonly type: 'retry'
      /** The attempt that failed (1 for the first call). */
      readonly attempt: number
      /** How long the policy waits before the next attempt. */
      readonly delayMs: number
      readonly error: unknown
    }
  | {
      readonly type: 'giveUp'
      /** The attempt that failed last. */
      readonly attempt: number
      readonly reason: GiveUpReason
      readonly error: unknown
    }

/** A retry policy. */
export interface RetryPolicy extends Policy {
  /** Emits `retry` before each backoff sleep and `giveUp` when a failure is final. */
  readonly events: EventSource<RetryEvent>
}

const retryChannel = diagnosticsChannel('retry', 'retry')
const giveUpChannel = diagnosticsChannel('retry', 'giveUp')

interface Counter {
  add(value: number, attributes?: Record<string, string>): void
}
interface RetryCounters {
  readonly attempts: Counter
  readonly retries: Counter
  readonly giveUps: Counter
}
let counters: RetryCounters | undefined
// Created on first use, not at import, so an SDK registered at startup is picked up.
function retryCounters(): RetryCounters {
  if (counters === undefined) {
    const meter = metrics.getMeter('breakwater')
    counters = {
      attempts: meter.createCounter('breakwater.retry.attempts', {
        description: 'Attempts made by retry policies, first calls included',
      }),
      retries: meter.createCounter('breakwater.retry.retries', {
        description: 'Retries scheduled by retry policies',
      }),
      giveUps: meter.createCounter('breakwater.retry.give_ups', {
        description: 'Calls that failed for good after retrying (attribute reason)',
      }),
    }
  }
  return counters
}
const giveUpAttributes: Readonly<Record<GiveUpReason, Record<string, string>>> = {
  notRetryable: { reason: 'notRetryable' },
  maxAttempts: { reason: 'maxAttempts' },
  deadline: { reason: 'deadline' },
  budget: { reason: 'budget' },
  aborted: { reason: 'aborted' },
}

// The context of one attempt. The signal handed to fn is the caller's, or the deadline's, or
// (with both) one linked to both, built only when fn reads it and shared by all attempts.
class RetryContext implements PolicyContext {
  readonly attempt: number
  readonly #signals: SignalSource

  constructor(attempt: number, signals: SignalSource) {
    this.attempt = attempt
    this.#signals = signals
  }

  get signal(): AbortSignal {
    return this.#signals.get()
  }
}

class SignalSource {
  readonly caller: AbortSignal
  #signal: AbortSignal | undefined
  #controller: AbortController | undefined
  #deadline: Deadline | undefined

  constructor(caller: AbortSignal) {
    this.caller = caller
  }

  get(): AbortSignal {
    if (this.#signal !== undefined) return this.#signal
    const deadline = currentDeadline()
    if (deadline === undefined) this.#signal = this.caller
    else if (this.caller === neverAbortedSignal) this.#signal = deadline.signal
    else {
      const controller = new AbortController()
      this.#controller = controller
      this.#deadline = deadline
      const caller = this.caller
      const deadlineSignal = deadline.signal
      if (caller.aborted) controller.abort(caller.reason)
      else if (deadlineSignal.aborted) controller.abort(deadlineSignal.reason)
      else {
        caller.addEventListener('abort', this)
        deadlineSignal.addEventListener('abort', this)
      }
      this.#signal = controller.signal
    }
    return this.#signal
  }

  handleEvent(event: Event): void {
    this.#controller?.abort((event.target as AbortSignal).reason)
    this.dispose()
  }

  dispose(): void {
    if (this.#deadline === undefined) return
    this.caller.removeEventListener('abort', this)
    this.#deadline.signal.removeEventListener('abort', this)
    this.#deadline = undefined
  }
}

class RetryPolicyImpl implements RetryPolicy {
  readonly events = new EventSource<RetryEvent>()
  readonly #maxAttempts: number
  readonly #backoff: Backoff
  readonly #shouldRetry: (error: unknown, attempt: number) => boolean
  readonly #maxRetryAfterMs: number
  readonly #budget: RetryBudget | undefined
  readonly #clock: Clock

  constructor(options: RetryOptions) {
    this.#maxAttempts = checkInteger('retry.maxAttempts', options.maxAttempts ?? 3, 1)
    this.#backoff = resolveBackoff('retry', options)
    this.#shouldRetry =
      options.shouldRetry === undefined
        ? isTransientFailure
        : checkFunction('retry.shouldRetry', options.shouldRetry)
    this.#maxRetryAfterMs = checkNumber(
      'retry.maxRetryAfterMs',
      options.maxRetryAfterMs ?? 30_000,
      0,
      maxTimerDelayMs,
    )
    if (options.budget !== undefined) {
      const budget = checkObject('retry.budget', options.budget)
      checkFunction('retry.budget.recordRequest', budget.recordRequest)
      checkFunction('retry.budget.tryWithdraw', budget.tryWithdraw)
    }
    this.#budget = options.budget
    this.#clock = options.clock ?? systemClock
  }

  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    const caller = signal ?? neverAbortedSignal
    if (caller.aborted) throw new AbortedError(caller.reason)
    this.#budget?.recordRequest()
    retryCounters().attempts.add(1)
    const signals = new SignalSource(caller)
    try {
      return await fn(new RetryContext(1, signals))
    } catch (error) {
      return await this.#retry(fn, signals, error)
    } finally {
      signals.dispose()
    }
  }

  // The slow path, entered after the first failure.
  async #retry<T>(fn: PolicyFunction<T>, signals: SignalSource, firstError: unknown): Promise<T> {
    const caller = signals.caller
    const clock = this.#clock
    const deadline = currentDeadline()
    let error = firstError
    let attempt = 1
    let previousDelayMs: number | undefined
    for (;;) {
      if (caller.aborted) {
        this.#giveUp(attempt, 'aborted', error)
        throw isCode(error, 'ABORTED') ? error : new AbortedError(caller.reason)
      }
      const now = clock.now()
      if (deadline !== undefined && now >= deadline.atMs) {
        this.#giveUp(attempt, 'deadline', error)
        throw isCode(error, 'DEADLINE_EXCEEDED')
          ? error
          : new DeadlineExceededError(deadline.atMs, { cause: error })
      }
      if (attempt >= this.#maxAttempts) {
        this.#giveUp(attempt, 'maxAttempts', error)
        throw error
      }
      if (!this.#shouldRetry(error, attempt)) {
        this.#giveUp(attempt, 'notRetryable', error)
        throw error
      }
      const backoffMs = this.#backoff.delayMs(attempt - 1, previousDelayMs)
      previousDelayMs = backoffMs
      let delayMs = backoffMs
      const retryAfterMs = retryAfterMsOf(error, now)
      if (retryAfterMs !== undefined) {
        delayMs = Math.max(delayMs, Math.min(retryAfterMs, this.#maxRetryAfterMs))
      }
      // Sleeping into the deadline only to be cut off wastes the wait and the attempt; the
      // last real failure says more than a deadline error would.
      if (deadline !== undefined && now + delayMs >= deadline.atMs) {
        this.#giveUp(attempt, 'deadline', error)
        throw error
      }
      if (this.#budget !== undefined && !this.#budget.tryWithdraw()) {
        this.#giveUp(attempt, 'budget', error)
        throw new RetryBudgetExhaustedError(error)
      }
      retryCounters().retries.add(1)
      if (this.events.hasListeners || retryChannel.hasSubscribers) {
        const event: RetryEvent = { type: 'retry', attempt, delayMs, error }
        this.events.emit(event)
        if (retryChannel.hasSubscribers) retryChannel.publish(event)
      }
      try {
        await backoffSleep(clock, delayMs, caller, deadline)
      } catch (abort) {
        const aborted = caller.aborted
        this.#giveUp(attempt, aborted ? 'aborted' : 'deadline', error)
        throw aborted ? abort : new DeadlineExceededError(deadline?.atMs ?? now, { cause: error })
      }
      attempt++
      retryCounters().attempts.add(1)
      try {
        return await fn(new RetryContext(attempt, signals))
      } catch (next) {
        error = next
      }
    }
  }

  #giveUp(attempt: number, reason: GiveUpReason, error: unknown): void {
    retryCounters().giveUps.add(1, giveUpAttributes[reason])
    if (!this.events.hasListeners && !giveUpChannel.hasSubscribers) return
    const event: RetryEvent = { type: 'giveUp', attempt, reason, error }
    this.events.emit(event)
    if (giveUpChannel.hasSubscribers) giveUpChannel.publish(event)
  }
}

function isCode(error: unknown, code: string): boolean {
  return BreakwaterError.is(error) && error.code === code
}

// Like sleep() from core/clock, but woken by either of two signals (the caller's and the
// deadline's) without linking them into a third one. Always clears its timer.
function backoffSleep(
  clock: Clock,
  delayMs: number,
  caller: AbortSignal,
  deadline: Deadline | undefined,
): Promise<void> {
  const deadlineSignal = deadline?.signal
  if (caller.aborted) return Promise.reject(new AbortedError(caller.reason))
  if (deadlineSignal?.aborted) return Promise.reject(new AbortedError(deadlineSignal.reason))
  return new Promise<void>((resolve, reject) => {
    let handle: TimerHandle
    const onAbort = (event: Event): void => {
      clock.clearTimeout(handle)
      cleanup()
      reject(new AbortedError((event.target as AbortSignal).reason))
    }
    const cleanup = (): void => {
      caller.removeEventListener('abort', onAbort)
      deadlineSignal?.removeEventListener('abort', onAbort)
    }
    handle = clock.setTimeout(() => {
      cleanup()
      resolve()
    }, delayMs)
    caller.addEventListener('abort', onAbort, { once: true })
    deadlineSignal?.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * Retries failed calls with exponential backoff and jitter. Only failures that `shouldRetry`
 * accepts are retried (by default the transient ones of the shared classifier, so a 4xx, an
 * open circuit or a full bulkhead is not). A server's `Retry-After` is honoured (up to
 * `maxRetryAfterMs`) when longer than the backoff. The backoff sleep ends at once when the
 * caller aborts, and retry never outlasts the current deadline (see `withDeadline`): when the
 * next attempt could not start before it, the call fails at once with the last error.
 *
 * @example
 * ```ts
 * import { createRetryBudget, retry } from 'breakwater'
 * const policy = retry({ maxAttempts: 4, baseDelayMs: 50, budget: createRetryBudget() })
 * policy.events.on((event) => {
 *   if (event.type === 'retry') console.warn(`attempt ${event.attempt} failed; retrying in ${event.delayMs} ms`)
 * })
 * const response = await policy.execute(({ signal, attempt }) =>
 *   fetch('https://example.com', { signal, headers: { 'x-attempt': String(attempt) } }),
 * )
 * ```
 */
export function retry(options: RetryOptions = {}): RetryPolicy {
  return new RetryPolicyImpl(checkObject('retry', options) as RetryOptions)
}
