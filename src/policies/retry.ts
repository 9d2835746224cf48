import { type Clock, keepProcessAlive, maxTimerDelayMs, type TimerHandle } from '../core/clock.js'
import { AbortedError, BreakwaterError } from '../core/errors.js'
import { otelInstruments } from '../core/otel-instruments.js'
import {
  checkFunction,
  checkKnownOptions,
  checkObject,
  optionKeys,
  signalRefusal,
} from '../core/validate.js'
import { type Backoff, type Jitter, resolveBackoff } from './backoff.js'
import {
  type AbortListener,
  type CancelParent,
  CancelScope,
  cancelScope,
  hasExternalSignal,
  listen,
  parentOf,
  parentOfSignal,
  signalOf,
  unlisten,
} from './cancel-scope.js'
import { isTransientFailure, retryAfterMsOf } from './classify.js'
import { currentDeadlineScope } from './deadline.js'
import { abortFailure, DeadlineExceededError, RetryBudgetExhaustedError } from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import {
  type FusablePolicy,
  type FusedStep,
  fusedStep,
  Later,
  timeoutEnd,
  timeoutEndOf,
  timeoutLeft,
  timeoutLeftOf,
} from './fused.js'
import {
  fnRefusal,
  optional,
  optionalClock,
  optionalFunction,
  optionalInteger,
  optionalNumber,
  predicateAnswer,
} from './options.js'
import {
  type ChainablePolicy,
  callDirectly,
  executeInContext,
  executeThrough,
  type Next,
} from './pipeline.js'
import type { RandomSource } from './random.js'
import type { RetryBudget } from './retry-budget.js'
import type { Policy, PolicyContext, PolicyFunction } from './types.js'

/** Options of {@link retry}. */
export interface RetryOptions {
  /**
   * The most attempts in total, counting the first call (1 disables retrying).
   * @default 3
   */
  readonly maxAttempts?: number | undefined
  /**
   * The backoff ceiling before the first retry, in milliseconds.
   * @default 100
   */
  readonly baseDelayMs?: number | undefined
  /**
   * How much the backoff ceiling grows per retry (>= 1).
   * @default 2
   */
  readonly factor?: number | undefined
  /**
   * The cap on any backoff delay, in milliseconds.
   * @default 30_000, or baseDelayMs when that is larger
   */
  readonly maxDelayMs?: number | undefined
  /**
   * How delays are randomised; see `Jitter`. Full jitter: `random(0, min(cap, base * factor^n))`.
   * @default 'full'
   */
  readonly jitter?: Jitter | undefined
  /**
   * The random source for jitter, returning numbers in `[0, 1)`; `seededRandom(seed)` makes
   * delays reproducible. If it throws, the call rejects with that error (reported as a
   * `notRetryable` give-up, as a throwing `shouldRetry` is).
   * @default Math.random
   */
  readonly random?: RandomSource | undefined
  /**
   * Decides whether a failure is worth another attempt. `attempt` is the number of the attempt
   * that failed (1 for the first call). If it throws, the call rejects with that error (reported
   * as a `notRetryable` give-up). Called synchronously: one that returns a promise (an async
   * function), which would read as true for every failure, makes the call reject with
   * `InvalidOptionError` naming `retry.shouldRetry` (reported the same way).
   * @default isTransientFailure (timeouts, refused or reset connections, 408/429/502/503/504,
   * database deadlocks, serialization failures and busy locks)
   */
  readonly shouldRetry?: ((error: unknown, attempt: number) => boolean) | undefined
  /**
   * The longest server-requested wait (`Retry-After`, or an error's `retryAfterMs`) that is
   * honoured, in milliseconds; longer requests wait this long. Whatever the `jitter`, the wait
   * before a retry is the larger of the backoff delay and the request capped at this. With
   * `'decorrelated'` jitter the next delay is drawn from the previous backoff draw, not from a
   * longer wait the server asked for: the request describes the server at that moment, and a
   * later failure that still needs a long wait says so itself, while growing from it would
   * leave the documented bounds of the sequence and keep later waits long for nothing.
   * @default 30_000
   */
  readonly maxRetryAfterMs?: number | undefined
  /**
   * A retry budget shared with other callers of the same downstream; when it is spent the
   * call fails with `RetryBudgetExhaustedError` instead of retrying. A token is taken before
   * the backoff sleep, so a spent budget fails the call at once; when the sleep is aborted (no
   * retry was made) it is given back through the budget's `refund()`. If `recordRequest` (before
   * the first attempt, then a `budget` give-up at attempt 0) or `tryWithdraw` throws, the call
   * rejects with that error (reported as a `budget` give-up); if `refund` throws, with that
   * error (reported with the give-up the abort would have had). `tryWithdraw` is called
   * synchronously: one that returns a promise, which would read as true for every retry, makes
   * the call reject with `InvalidOptionError` naming `retry.budget.tryWithdraw` (a `budget`
   * give-up too).
   * @default undefined (no budget)
   */
  readonly budget?: RetryBudget | undefined
  /**
   * The clock for backoff sleeps and deadline arithmetic.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

// Checked once in the constructor, never per call.
/** The option keys `retry()` takes (internal: not exported from the package root). */
export const retryOptions = optionKeys<RetryOptions>({
  maxAttempts: true,
  baseDelayMs: true,
  factor: true,
  maxDelayMs: true,
  jitter: true,
  random: true,
  shouldRetry: true,
  maxRetryAfterMs: true,
  budget: true,
  clock: true,
})

/** Why a retry policy stopped retrying. */
export type GiveUpReason =
  /**
   * `shouldRetry` said no (for example a 4xx or an open circuit), or it or the `random` source
   * threw (the call then rejects with what they threw).
   */
  | 'notRetryable'
  /** `maxAttempts` attempts failed. */
  | 'maxAttempts'
  /**
   * The next attempt could not start before the deadline, or the deadline passed (also when it
   * reached the retry as its caller's abort: a timeout outside clamped to the deadline, a signal
   * aborted with `DeadlineExceededError`).
   */
  | 'deadline'
  /** The retry budget had no token left, or its `recordRequest` or `tryWithdraw` threw. */
  | 'budget'
  /** The caller aborted. */
  | 'aborted'
  /**
   * The next attempt could not start before the end of a timeout around the retry (a timeout
   * policy outside it in a pipeline, such as the HTTP client's overall timeout): the wait would
   * only end in that timeout's `TimeoutError`, hiding the failure. Also when that timeout ran
   * out (it reached the retry as its caller's abort with a `TimeoutError`): the call fails with
   * the last attempt's error, which the timeout reports as its `TimeoutError`'s cause (none
   * when the attempt ended with the timeout's own error), never as a caller's `AbortedError`.
   */
  | 'timeout'

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
      /**
       * The attempt that failed last; 0 when the deadline had passed before the first (or the
       * caller's signal had already aborted with a `DeadlineExceededError`), which was then
       * never started (`error` is the `DeadlineExceededError`, `started: false`).
       */
      readonly attempt: number
      readonly reason: GiveUpReason
      readonly error: unknown
    }

/** A retry policy. */
export interface RetryPolicy extends Policy {
  /**
   * Emits `retry` before each backoff sleep and `giveUp` when a failure is final. The same
   * events go to the diagnostics channels `breakwater:retry:retry` and
   * `breakwater:retry:give-up` while they have subscribers.
   */
  readonly events: EventSource<RetryEvent>
}

const retryChannel = diagnosticsChannel('retry', 'retry')
const giveUpChannel = diagnosticsChannel('retry', 'give-up')

interface Counter {
  add(value: number, attributes?: Record<string, string>): void
}
interface RetryCounters {
  readonly attempts: Counter
  readonly retries: Counter
  readonly giveUps: Counter
}
// Made on first use, not at import, and again for a new global meter provider (see
// otelInstruments).
const retryCounters = otelInstruments(
  (meter): RetryCounters => ({
    attempts: meter.createCounter('breakwater.retry.attempts', {
      description: 'Attempts made by retry policies, first calls included',
    }),
    retries: meter.createCounter('breakwater.retry.retries', {
      description: 'Retries scheduled by retry policies',
    }),
    giveUps: meter.createCounter('breakwater.retry.give_ups', {
      description: 'Calls that failed for good after retrying (attribute reason)',
    }),
  }),
)
const giveUpAttributes: Readonly<Record<GiveUpReason, Record<string, string>>> = {
  notRetryable: { reason: 'notRetryable' },
  maxAttempts: { reason: 'maxAttempts' },
  deadline: { reason: 'deadline' },
  budget: { reason: 'budget' },
  aborted: { reason: 'aborted' },
  timeout: { reason: 'timeout' },
}

// One per call: the context of the first attempt, and what later attempts share. The scope fn
// runs under is the caller's, the deadline's, or (with both) one linked to both, built only
// when somebody asks for it.
class RetryExecution implements PolicyContext {
  readonly attempt: number
  readonly parent: CancelParent | undefined
  /** The context the retry runs in, which knows the end of a timeout around it, if any. */
  readonly enclosing: PolicyContext | undefined
  #scope: CancelParent | undefined
  #linked: RetryScope | undefined
  #resolved = false

  constructor(
    parent: CancelParent | undefined,
    attempt: number,
    enclosing: PolicyContext | undefined,
  ) {
    this.parent = parent
    this.attempt = attempt
    this.enclosing = enclosing
    // Under a deadline, a caller's signal must be followed from the start: an AbortSignal does
    // not say when it aborted, so a scope first asked after both it and the deadline had aborted
    // could not tell which came first (and would answer with the caller's reason, although the
    // deadline ran out before). Following it, the scope hears the caller's abort when it happens
    // and then looks whether the deadline had already passed.
    if (hasExternalSignal(parent) && currentDeadlineScope() !== undefined) this.scope()
  }

  get signal(): AbortSignal {
    return signalOf(this.scope())
  }

  [cancelScope](): CancelParent | undefined {
    return this.scope()
  }

  // The attempts run under the timeouts around the retry: a retry further in (or the HTTP
  // client) must still see them, or it would sleep past their end.
  [timeoutEnd](): number | undefined {
    return this.enclosing === undefined ? undefined : timeoutEndOf(this.enclosing)
  }

  [timeoutLeft](): number | undefined {
    return timeoutLeftOf(this.enclosing)
  }

  scope(): CancelParent | undefined {
    if (!this.#resolved) {
      this.#resolved = true
      const deadline = currentDeadlineScope()
      if (deadline === undefined) this.#scope = this.parent
      else if (this.parent === undefined) this.#scope = deadline
      else {
        const linked = new RetryScope(this.parent, deadline)
        if (hasExternalSignal(this.parent)) linked.follow()
        this.#linked = linked
        this.#scope = linked
      }
    }
    return this.#scope
  }

  close(): void {
    // Only a linked scope is ours to close; the deadline belongs to withDeadline.
    this.#linked?.close()
  }

  /**
   * True when the caller's side aborted the call before the deadline passed: a caller's abort
   * (given up as 'aborted') rather than a deadline that ran out first (given up as 'deadline').
   */
  callerAborted(): boolean {
    const parent = this.parent
    if (parent === undefined || !parent.aborted) return false
    const linked = this.#linked
    // The linked scope took the reason of whichever of the two aborted first.
    return linked === undefined || linked.reason === parent.reason
  }
}

// The scope of a retry's attempts under both a deadline and a caller's side.
class RetryScope extends CancelScope {
  /** Follows the parents now, until closed (see CancelScope.link). */
  follow(): void {
    this.link()
  }
}

// The context of a later attempt.
class RetryContext implements PolicyContext {
  readonly attempt: number
  readonly #execution: RetryExecution

  constructor(attempt: number, execution: RetryExecution) {
    this.attempt = attempt
    this.#execution = execution
  }

  get signal(): AbortSignal {
    return signalOf(this.#execution.scope())
  }

  [cancelScope](): CancelParent | undefined {
    return this.#execution.scope()
  }

  [timeoutEnd](): number | undefined {
    return this.#execution[timeoutEnd]()
  }

  [timeoutLeft](): number | undefined {
    return this.#execution[timeoutLeft]()
  }
}

class RetryPolicyImpl implements RetryPolicy, ChainablePolicy, FusablePolicy {
  readonly events = new EventSource<RetryEvent>()
  readonly #maxAttempts: number
  readonly #backoff: Backoff
  readonly #shouldRetry: (error: unknown, attempt: number) => boolean
  readonly #maxRetryAfterMs: number
  readonly #budget: RetryBudget | undefined
  readonly #clock: Clock
  readonly #deadlineReserveMs: number
  // What refusals at call time name (see the constructor), made once rather than per failure.
  readonly #shouldRetryOption: string
  readonly #tryWithdrawOption: string
  // In a fused pipeline the first attempt is the call itself: the step only books it. A
  // failure leaves the fused call: the retries run through the promise-based chain inside
  // this policy, in a scope that follows the fused layers outside it.
  readonly [fusedStep]: FusedStep = {
    enter: () => {
      if (this.#budget !== undefined) this.#recordRequest(this.#budget)
      retryCounters().attempts.add(1)
      return 0
    },
    exitValue: () => {},
    exitError: (call, layer, _state, error) => {
      const execution = new RetryExecution(
        call.scopeAt(layer),
        call.outer.attempt,
        call.contextAt(layer),
      )
      return new Later(this.#retryAfterFirst(call.next(layer), call.fn, execution, error))
    },
    stateful: false,
    readsDeadline: true,
    clock: undefined,
    timeout: undefined,
  }

  // `at` is the path its options were given at (`services.orders.retry` in an HTTP client's
  // service): refusals at call time name it, as refusals here do.
  constructor(options: RetryOptions, deadlineReserveMs = 0, at = 'retry') {
    checkKnownOptions(at, options, retryOptions)
    this.#deadlineReserveMs = deadlineReserveMs
    this.#maxAttempts = optionalInteger(`${at}.maxAttempts`, options.maxAttempts, 3, 1)
    this.#backoff = resolveBackoff(at, options)
    this.#shouldRetry = optionalFunction<(error: unknown, attempt: number) => boolean>(
      `${at}.shouldRetry`,
      options.shouldRetry,
      isTransientFailure,
    )
    this.#maxRetryAfterMs = optionalNumber(
      `${at}.maxRetryAfterMs`,
      options.maxRetryAfterMs,
      30_000,
      0,
      maxTimerDelayMs,
    )
    const budget = optional(`${at}.budget`, options.budget, undefined, checkObject)
    if (budget !== undefined) {
      checkFunction(`${at}.budget.recordRequest`, budget.recordRequest)
      checkFunction(`${at}.budget.tryWithdraw`, budget.tryWithdraw)
      if (budget.refund !== undefined) checkFunction(`${at}.budget.refund`, budget.refund)
    }
    this.#budget = options.budget
    this.#clock = optionalClock(`${at}.clock`, options.clock)
    this.#shouldRetryOption = `${at}.shouldRetry`
    this.#tryWithdrawOption = `${at}.budget.tryWithdraw`
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    if (typeof fn !== 'function') return fnRefusal('retry.execute(fn)', fn)
    const refused = signalRefusal('retry.execute(signal)', signal)
    if (refused !== undefined) return refused
    const parent = signal === undefined ? undefined : parentOfSignal(signal)
    return this.#run(callDirectly, fn, parent, 1, undefined)
  }

  // Called by pipeline(): the outer context is used without reading its signal, and the
  // function sees the outer attempt number until this policy itself retries.
  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(callDirectly, fn, parentOf(context), context.attempt, context)
  }

  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(next, fn, parentOf(context), context.attempt, context)
  }

  async #run<T>(
    next: Next,
    fn: PolicyFunction<T>,
    parent: CancelParent | undefined,
    outerAttempt: number,
    enclosing: PolicyContext | undefined,
  ): Promise<T> {
    if (parent?.aborted) {
      // A caller's side that aborted because its deadline ran out is refused as the deadline
      // passed (below), not as a cancellation.
      const refused = abortFailure(parent.reason, false)
      if (isCode(refused, 'DEADLINE_EXCEEDED')) this.#giveUp(0, 'deadline', refused)
      throw refused
    }
    // A deadline that has already passed leaves no time for any attempt: starting one anyway
    // would send work downstream that nobody waits for. Refused like a timeout refuses it, so
    // a breaker around the retry does not count the caller's lateness against the downstream;
    // not a request for the budget, and no attempt.
    const deadline = currentDeadlineScope()
    if (deadline !== undefined && this.#clock.now() >= deadline.atMs) {
      const refused = new DeadlineExceededError(deadline.atMs, { started: false })
      this.#giveUp(0, 'deadline', refused)
      throw refused
    }
    if (this.#budget !== undefined) this.#recordRequest(this.#budget)
    retryCounters().attempts.add(1)
    const execution = new RetryExecution(parent, outerAttempt, enclosing)
    try {
      return await next(fn, execution)
    } catch (error) {
      return await this.#retry(next, fn, execution, error)
    } finally {
      execution.close()
    }
  }

  // A fused call's retries: the rest of `#run` after its first attempt failed.
  async #retryAfterFirst<T>(
    next: Next,
    fn: PolicyFunction<T>,
    execution: RetryExecution,
    firstError: unknown,
  ): Promise<T> {
    try {
      return await this.#retry(next, fn, execution, firstError)
    } finally {
      execution.close()
    }
  }

  // The slow path, entered after the first failure.
  async #retry<T>(
    next: Next,
    fn: PolicyFunction<T>,
    execution: RetryExecution,
    firstError: unknown,
  ): Promise<T> {
    const parent = execution.parent
    const clock = this.#clock
    const deadline = currentDeadlineScope()
    let error = firstError
    let attempt = 1
    let previousDelayMs: number | undefined
    for (;;) {
      // A caller who left after the deadline had passed is a deadline, checked next.
      if (execution.callerAborted()) {
        const reason = parent?.reason
        this.#callerEnded(
          attempt,
          error,
          reason,
          isCode(error, 'ABORTED') ? error : new AbortedError(reason),
        )
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
      if (!this.#askShouldRetry(error, attempt)) {
        this.#giveUp(attempt, 'notRetryable', error)
        throw error
      }
      // shouldRetry is user code and may have aborted the caller's side (the sleep below also
      // catches an abort from a retry listener or the budget).
      if (execution.callerAborted()) {
        const reason = parent?.reason
        this.#callerEnded(attempt, error, reason, new AbortedError(reason))
      }
      const backoffMs = this.#backoffMs(attempt, previousDelayMs, error)
      // Decorrelated jitter grows from its own previous draw, not from a longer Retry-After
      // wait (see maxRetryAfterMs): the hint raises one wait, not every later one.
      previousDelayMs = backoffMs
      let delayMs = backoffMs
      const retryAfterMs = retryAfterMsOf(error, now)
      if (retryAfterMs !== undefined) {
        delayMs = Math.max(delayMs, Math.min(retryAfterMs, this.#maxRetryAfterMs))
      }
      // Sleeping into the deadline only to be cut off wastes the wait and the attempt; the
      // last real failure says more than a deadline error would. The same for a sleep that
      // leaves less than the attempts need to be made at all (the HTTP client's margin): the
      // attempt would be refused, unsent, and the last failure lost.
      const leftAfterMs = deadline === undefined ? 0 : deadline.atMs - (now + delayMs)
      if (deadline !== undefined && (leftAfterMs <= 0 || leftAfterMs < this.#deadlineReserveMs)) {
        this.#giveUp(attempt, 'deadline', error)
        throw error
      }
      // The same for a timeout around the retry, read on that timeout's own clock.
      const timeoutLeftMs = timeoutLeftOf(execution.enclosing)
      if (timeoutLeftMs !== undefined && delayMs >= timeoutLeftMs) {
        this.#giveUp(attempt, 'timeout', error)
        throw error
      }
      if (this.#budget !== undefined && !this.#withdraw(this.#budget, attempt, error)) {
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
        await backoffSleep(clock, delayMs, parent, deadline)
      } catch (abort) {
        // The retry this token paid for never ran: nothing reached the downstream. A refund
        // that throws is a bug to surface like any other hook's (the call rejects with its
        // error), but the abort still ended the call: its give-up is reported as without it.
        let refundFailure: { error: unknown } | undefined
        try {
          this.#budget?.refund?.()
        } catch (failure) {
          refundFailure = { error: failure }
        }
        try {
          if (parent?.aborted === true) this.#callerEnded(attempt, error, parent.reason, abort)
          this.#deadlineCutOff(attempt, error, undefined)
        } catch (ended) {
          throw refundFailure === undefined ? ended : refundFailure.error
        }
      }
      attempt++
      retryCounters().attempts.add(1)
      try {
        return await next(fn, new RetryContext(attempt, execution))
      } catch (next) {
        error = next
      }
    }
  }

  // The caller's side aborted with `reason` after attempt `attempt` failed with `error`. A
  // deadline is the deadline's (below). A timeout around the retry that ran out (its
  // TimeoutError as the reason: through a pipeline, or a signal such a timeout handed on) is no
  // cancellation by the caller: that timeout reports the call, with the last failure as what
  // the attempts came to, as when the next wait would outlast it ('timeout'). Only a caller's
  // own abort is 'aborted', with `aborted`.
  #callerEnded(attempt: number, error: unknown, reason: unknown, aborted: unknown): never {
    if (isCode(reason, 'DEADLINE_EXCEEDED')) this.#deadlineCutOff(attempt, error, reason)
    if (isCode(reason, 'TIMEOUT')) {
      this.#giveUp(attempt, 'timeout', error)
      throw error
    }
    this.#giveUp(attempt, 'aborted', error)
    throw aborted
  }

  // The deadline ended the call: it passed, or the caller's side aborted because of it (a
  // timeout outside clamped to the deadline, a signal that aborted with DeadlineExceededError).
  // The caller must be able to tell a budget that ran out from a cancellation, so this is a
  // 'deadline' give-up with DEADLINE_EXCEEDED, never 'aborted' with ABORTED.
  #deadlineCutOff(attempt: number, error: unknown, reason: unknown): never {
    this.#giveUp(attempt, 'deadline', error)
    if (isCode(error, 'DEADLINE_EXCEEDED')) throw error
    const atMs = (reason as { deadlineAtMs?: unknown } | undefined)?.deadlineAtMs
    throw new DeadlineExceededError(
      typeof atMs === 'number' ? atMs : (currentDeadlineScope()?.atMs ?? this.#clock.now()),
      { cause: error },
    )
  }

  // A shouldRetry that throws ends the call with its own error (a bug to surface, not hide),
  // but the call has still given up: the event and the metric must say so. One that returns a
  // promise (an async function) is such a bug too: the promise is truthy, and every failure,
  // those it meant to give up on included, would be retried until maxAttempts.
  #askShouldRetry(error: unknown, attempt: number): boolean {
    try {
      return predicateAnswer(this.#shouldRetryOption, this.#shouldRetry(error, attempt))
    } catch (failure) {
      this.#giveUp(attempt, 'notRetryable', error)
      throw failure
    }
  }

  // The hooks below are user code too (a random source, a budget of the caller's own): one
  // that throws ends the call with its own error, like a throwing shouldRetry, and the call
  // has given up all the same, so the event and the metric say so. The event's `error` stays
  // the last attempt's failure, as for every other give-up.
  #backoffMs(attempt: number, previousDelayMs: number | undefined, error: unknown): number {
    try {
      return this.#backoff.delayMs(attempt - 1, previousDelayMs)
    } catch (failure) {
      this.#giveUp(attempt, 'notRetryable', error)
      throw failure
    }
  }

  // Before the first attempt: no attempt failed, so the event's `error` is what it threw, as a
  // deadline refused before the first attempt reports its own refusal.
  #recordRequest(budget: RetryBudget): void {
    try {
      budget.recordRequest()
    } catch (failure) {
      this.#giveUp(0, 'budget', failure)
      throw failure
    }
  }

  // A tryWithdraw that returns a promise (an async method of a budget of the caller's own) is
  // refused like one that throws: the promise is truthy, and every retry would pass, spent or not.
  #withdraw(budget: RetryBudget, attempt: number, error: unknown): boolean {
    try {
      return predicateAnswer(this.#tryWithdrawOption, budget.tryWithdraw())
    } catch (failure) {
      this.#giveUp(attempt, 'budget', error)
      throw failure
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

// A backoff sleep that ends early (rejecting with AbortedError) when the caller's side or the
// deadline aborts, and always clears its timer and its subscriptions.
class BackoffSleep implements AbortListener {
  readonly #clock: Clock
  readonly #parent: CancelParent | undefined
  readonly #deadline: CancelParent | undefined
  readonly #resolve: () => void
  readonly #reject: (error: unknown) => void
  #handle: TimerHandle
  #done = false

  constructor(
    clock: Clock,
    parent: CancelParent | undefined,
    deadline: CancelParent | undefined,
    resolve: () => void,
    reject: (error: unknown) => void,
  ) {
    this.#clock = clock
    this.#parent = parent
    this.#deadline = deadline
    this.#resolve = resolve
    this.#reject = reject
  }

  start(delayMs: number): void {
    this.#handle = this.#clock.setTimeout(() => {
      if (this.#stop()) this.#resolve()
    }, delayMs)
    // The caller awaits this backoff: it must not end the process (see keepProcessAlive).
    keepProcessAlive(this.#handle)
    // A real AbortSignal that is already aborted never calls a listener added now, and user
    // code (shouldRetry, a retry listener, a budget) ran since the last check and may have
    // aborted it: without this the sleep would run its full length and fn would run again.
    const parent = this.#parent
    if (parent?.aborted) {
      this.parentAborted(parent.reason)
      return
    }
    listen(parent, this)
    // A scope parent that has aborted answers at once (and the sleep is over by now).
    if (!this.#done) listen(this.#deadline, this)
  }

  parentAborted(reason: unknown): void {
    if (!this.#stop()) return
    this.#clock.clearTimeout(this.#handle)
    this.#reject(new AbortedError(reason))
  }

  #stop(): boolean {
    if (this.#done) return false
    this.#done = true
    unlisten(this.#parent, this)
    unlisten(this.#deadline, this)
    return true
  }
}

function backoffSleep(
  clock: Clock,
  delayMs: number,
  parent: CancelParent | undefined,
  deadline: CancelParent | undefined,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    new BackoffSleep(clock, parent, deadline, resolve, reject).start(delayMs)
  })
}

/**
 * Retries failed calls with exponential backoff and jitter. Only failures that `shouldRetry`
 * accepts are retried (by default the transient ones of the shared classifier, so a 4xx other
 * than 408 and 429, an open circuit or a full bulkhead is not). A server's `Retry-After` is
 * honoured (up to `maxRetryAfterMs`) when longer than the backoff. The backoff sleep ends at
 * once when the caller aborts, and retry never outlasts the current deadline (see
 * `withDeadline`): when the next attempt could not start before it, the call fails at once
 * with the last error, and when the deadline has already passed as the retry is called, it
 * starts no attempt and rejects with `DeadlineExceededError` (`started: false`).
 *
 * Options are checked once, here: a bad value or an unknown (misspelt) option is refused
 * with `InvalidOptionError` (code `INVALID_OPTION`) naming it.
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

/**
 * A {@link retry} whose attempts need at least `deadlineReserveMs` of the deadline left to be
 * made at all (the HTTP client sends nothing with less than its margin plus 1 ms left): a
 * backoff that would leave less gives up at once with the last failure, as one that would end
 * past the deadline does; `at` is the path its options were given at, which every refusal
 * names, also those at call time (`services.orders.retry.shouldRetry`). Internal: not exported
 * from the package root.
 */
export function retryWithDeadlineReserve(
  options: RetryOptions,
  deadlineReserveMs: number,
  at = 'retry',
): RetryPolicy {
  return new RetryPolicyImpl(checkObject(at, options) as RetryOptions, deadlineReserveMs, at)
}
