import type { Clock } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { otelInstruments } from '../core/otel-instruments.js'
import { checkKnownOptions, checkObject, optionKeys, signalRefusal } from '../core/validate.js'
import {
  type CancelParent,
  CancelScope,
  cancelScope,
  hasExternalSignal,
  parentOf,
  parentOfSignal,
} from './cancel-scope.js'
import { currentDeadline } from './deadline.js'
import { abortFailure, DeadlineExceededError, TimeoutError } from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import {
  earlierLeft,
  type FusablePolicy,
  type FusedStep,
  fusedStep,
  timeoutEnd,
  timeoutLeft,
  timeoutLeftOf,
  timeoutObserverOf,
} from './fused.js'
import { fnRefusal, optionalClock, optionalOneOf } from './options.js'
import {
  type ChainablePolicy,
  callDirectly,
  executeInContext,
  executeThrough,
  type Next,
} from './pipeline.js'
import { type TimerEntry, TimerList, type TimerQueue, timerQueueFor } from './timer-queue.js'
import type { Policy, PolicyContext, PolicyFunction } from './types.js'

/**
 * How a timeout ends a call:
 * - `'cooperative'`: at the timeout `ctx.signal` aborts and the caller waits for `fn` to
 *   settle. If `fn` then rejects, the caller gets a `TimeoutError` (its `cause` is `fn`'s
 *   error); if `fn` resolves anyway, the caller gets the value. Nothing keeps running behind
 *   the caller's back.
 * - `'hard'`: at the timeout the caller is rejected with a `TimeoutError` at once and
 *   `ctx.signal` aborts; `fn` keeps running in the background (its result is dropped). A
 *   bulkhead outside this timeout then frees its slot while `fn` still runs; one inside it
 *   (the recommended order) holds the slot until `fn` settles.
 */
export type TimeoutMode = 'cooperative' | 'hard'

/** Options of {@link timeout}. */
export interface TimeoutOptions {
  /**
   * How the timeout ends a call; see {@link TimeoutMode}.
   * @default 'cooperative'
   */
  readonly mode?: TimeoutMode | undefined
  /**
   * The clock that times calls.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Emitted by a timeout policy when a call runs out of time. */
export interface TimeoutEvent {
  readonly type: 'timeout'
  /** The time the call was given: the timeout, or less when the deadline was nearer. */
  readonly timeoutMs: number
  /** True when the end-to-end deadline, not the timeout, was what ran out. */
  readonly deadline: boolean
  readonly mode: TimeoutMode
}

/** A timeout policy. */
export interface TimeoutPolicy extends Policy {
  /** The configured timeout, in milliseconds. */
  readonly timeoutMs: number
  /** The configured mode. */
  readonly mode: TimeoutMode
  /**
   * Emits an event for every call that ran out of time; the same events go to the
   * diagnostics channel `breakwater:timeout:timeout` while it has subscribers.
   */
  readonly events: EventSource<TimeoutEvent>
}

const timeoutChannel = diagnosticsChannel('timeout', 'timeout')
const modes: readonly TimeoutMode[] = ['cooperative', 'hard']

interface TimeoutCounters {
  readonly timeouts: { add(value: number, attributes?: Record<string, string>): void }
}
// Made on the first timeout, not at import, and again for a new global meter provider (see
// otelInstruments).
const timeoutCounters = otelInstruments(
  (meter): TimeoutCounters => ({
    timeouts: meter.createCounter('breakwater.timeout.timeouts', {
      description: 'Calls that ran out of time (attribute reason: timeout or deadline)',
    }),
  }),
)
const timeoutAttributes = { reason: 'timeout' }
const deadlineAttributes = { reason: 'deadline' }

// One object per call serves as the context handed to fn, its cancellation scope, the
// timer-queue entry and the listener on the caller's signal, so a call allocates no closures,
// no Node timer and no AbortController unless fn actually reads ctx.signal.
class TimeoutCall<T> extends CancelScope implements PolicyContext, TimerEntry {
  readonly attempt: number
  // Moved only when the clock steps (see clockStepped).
  atMs: number
  queueIndex = -1
  readonly #policy: TimeoutPolicyImpl
  readonly #limitMs: number
  readonly #byDeadline: boolean
  // The context the call runs in: a timeout around this one may end first (see timeoutLeft).
  readonly #enclosing: PolicyContext | undefined
  // The error this call's own timer produced; undefined until it fires.
  #expired: BreakwaterError | undefined
  #settled = false
  // Racing: the caller's promise is settled by whichever comes first (fn, the timer in hard
  // mode, an external abort), not simply by fn.
  #racing = false
  #resolve: ((value: T) => void) | undefined
  #reject: ((error: unknown) => void) | undefined

  constructor(
    policy: TimeoutPolicyImpl,
    parent: CancelParent | undefined,
    attempt: number,
    atMs: number,
    limitMs: number,
    byDeadline: boolean,
    enclosing: PolicyContext | undefined,
  ) {
    super(parent)
    this.#policy = policy
    this.attempt = attempt
    this.atMs = atMs
    this.#limitMs = limitMs
    this.#byDeadline = byDeadline
    this.#enclosing = enclosing
  }

  [cancelScope](): CancelParent {
    return this
  }

  [timeoutEnd](): number {
    return this.atMs
  }

  [timeoutLeft](): number {
    return earlierLeft(this.atMs - this.#policy.clock.now(), timeoutLeftOf(this.#enclosing))!
  }

  /** Timer queue callback: the clock stepped by `stepMs` since the call started. */
  clockStepped(stepMs: number): void {
    this.atMs += stepMs
  }

  /** Timer queue callback: the time is up. */
  fire(): void {
    if (this.#settled) return
    const reason = this.#byDeadline
      ? new DeadlineExceededError(this.atMs)
      : new TimeoutError(this.#limitMs)
    this.#expired = reason
    // A scope that nobody linked has not heard yet of a parent that aborted before this timer
    // fired; asking adopts the parent's reason, as an AbortSignal following it would have. The
    // reason must not depend on whether somebody happened to read a signal on the way.
    if (!this.aborted) this.abort(reason)
    this.#policy.reportTimeout(this.#limitMs, this.#byDeadline)
    // Told now, not when fn settles: a cooperative call waits for fn, which may never come.
    timeoutObserverOf(this.#enclosing)?.(reason)
    if (this.#policy.mode === 'hard') this.#fail(reason)
  }

  // The caller's side aborted. Only a racing call answers at once; otherwise fn hears of it
  // through its signal and the call settles when fn does. A cooperative call answers at once
  // only when the caller's own signal aborted: an outer timeout running out is for fn to
  // honour, and the call waits for fn as it does without a caller's signal (racing it would
  // make the outer timeout hard and leave fn running behind the caller's back). A racing call
  // hears its parents until it settles, so a caller who aborts after the timeout ran out (fn
  // ignoring its signal) is still answered at once, with the timeout's error: it came first.
  override parentAborted(reason: unknown): void {
    this.abort(reason)
    if (this.#racing && (this.#policy.mode === 'hard' || this.externalSignalAborted()))
      this.#fail(this.#expired ?? abortFailure(reason, true))
  }

  /** Maps fn's failure to what the caller sees. */
  failure(error: unknown): unknown {
    const expired = this.#expired
    if (expired === undefined || error === expired) return error
    // A policy inside (another timeout clamped to the same deadline, a retry) already said the
    // deadline ran out; wrapping that in a second DeadlineExceededError says nothing more.
    if (this.#byDeadline && isDeadlineExceeded(error)) return error
    return this.#byDeadline
      ? new DeadlineExceededError(this.atMs, { cause: error })
      : new TimeoutError(this.#limitMs, { cause: error })
  }

  /** Stops the timer and lets go of the caller's signal. */
  finish(): void {
    this.#settled = true
    this.#policy.queue.remove(this)
    this.close()
  }

  /** Runs fn racing the timer (hard mode) and the caller's real signal. */
  race(next: Next, fn: PolicyFunction<T>, linkNow: boolean): Promise<T> {
    const promise = new Promise<T>((resolve, reject) => {
      this.#resolve = resolve
      this.#reject = reject
    })
    this.#racing = true
    if (linkNow) this.link()
    if (this.#settled) return promise
    let result: PromiseLike<T> | T
    try {
      result = next(fn, this)
    } catch (error) {
      this.#fail(this.failure(error))
      return promise
    }
    Promise.resolve(result).then(
      (value) => {
        if (this.#settled) return
        this.finish()
        this.#resolve!(value)
      },
      // After a hard timeout fn's late failure has nowhere to go; handling it here keeps it
      // from surfacing as an unhandled rejection.
      (error: unknown) => this.#fail(this.failure(error)),
    )
    return promise
  }

  #fail(error: unknown): void {
    if (this.#settled) return
    this.finish()
    this.#reject!(error)
  }
}

function isDeadlineExceeded(error: unknown): boolean {
  return BreakwaterError.is(error) && error.code === 'DEADLINE_EXCEEDED'
}

// Not an async function: while a call is in flight it keeps a derived promise and two small
// handlers instead of an async frame. Same microtask ticks and same order (map the error,
// then finish) as `try { return await next(...) } catch { throw failure } finally { finish }`.
function cooperative<T>(call: TimeoutCall<T>, next: Next, fn: PolicyFunction<T>): Promise<T> {
  let result: PromiseLike<T> | T
  try {
    result = next(fn, call)
  } catch (error) {
    const failure = call.failure(error)
    call.finish()
    return Promise.reject(failure)
  }
  return Promise.resolve(result).then(
    (value) => {
      call.finish()
      return value
    },
    (error: unknown) => {
      const failure = call.failure(error)
      call.finish()
      throw failure
    },
  )
}

class TimeoutPolicyImpl implements TimeoutPolicy, ChainablePolicy, FusablePolicy {
  readonly timeoutMs: number
  readonly mode: TimeoutMode
  readonly events = new EventSource<TimeoutEvent>()
  readonly queue: TimerQueue
  readonly #clock: Clock
  /** The clock the timeout runs on (its calls tell a retry inside how long they have left). */
  get clock(): Clock {
    return this.#clock
  }
  // In a fused pipeline a cooperative timeout is a deadline the call keeps in this policy's
  // list (see fused.ts); the exit maps fn's failure once the time has run out. A hard timeout
  // must settle the caller before fn does, which only the promise-based path can.
  readonly [fusedStep]: FusedStep | undefined

  constructor(timeoutMs: number, mode: TimeoutMode, clock: Clock) {
    this.timeoutMs = timeoutMs
    this.mode = mode
    this.#clock = clock
    this.queue = timerQueueFor(clock)
    this[fusedStep] =
      mode === 'hard'
        ? undefined
        : {
            enter: () => 0,
            exitValue: () => {},
            exitError: (call, layer, _state, error) => {
              throw call.timeoutFailure(layer, error)
            },
            stateful: false,
            readsDeadline: true,
            clock,
            timeout: {
              timeoutMs,
              list: new TimerList(clock),
              report: () => this.reportTimeout(timeoutMs, false),
            },
          }
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    if (typeof fn !== 'function') return fnRefusal('timeout.execute(fn)', fn)
    const refused = signalRefusal('timeout.execute(signal)', signal)
    if (refused !== undefined) return refused
    const parent = signal === undefined ? undefined : parentOfSignal(signal)
    return this.#run(callDirectly, fn, parent, 1, undefined)
  }

  // Called by pipeline(): the outer policy's context is used without reading its signal.
  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(callDirectly, fn, parentOf(context), context.attempt, context)
  }

  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(next, fn, parentOf(context), context.attempt, context)
  }

  #run<T>(
    next: Next,
    fn: PolicyFunction<T>,
    parent: CancelParent | undefined,
    attempt: number,
    enclosing: PolicyContext | undefined,
  ): Promise<T> {
    if (parent?.aborted) return Promise.reject(abortFailure(parent.reason, false))
    const now = this.#clock.now()
    let limitMs = this.timeoutMs
    let byDeadline = false
    const deadline = currentDeadline()
    if (deadline !== undefined) {
      const leftMs = deadline.atMs - now
      if (leftMs <= 0) {
        this.reportTimeout(0, true)
        return Promise.reject(new DeadlineExceededError(deadline.atMs, { started: false }))
      }
      if (leftMs <= limitMs) {
        limitMs = leftMs
        byDeadline = true
      }
    }
    const call = new TimeoutCall<T>(
      this,
      parent,
      attempt,
      now + limitMs,
      limitMs,
      byDeadline,
      enclosing,
    )
    // An infinite timeout (and no deadline) needs no timer at all.
    if (limitMs !== Number.POSITIVE_INFINITY) this.queue.add(call, now)
    // A caller's real signal must reject the call at once when it aborts, whatever fn does;
    // aborts from breakwater's own scopes (an outer timeout) are handled by their owner, except
    // in hard mode: a hard timeout inside a cooperative one is what that one waits for, and it
    // must give up at the outer abort as it does when a caller's signal happens to be around.
    const external = hasExternalSignal(parent)
    if (this.mode === 'cooperative' && !external) return cooperative(call, next, fn)
    return call.race(next, fn, external || parent !== undefined)
  }

  reportTimeout(limitMs: number, byDeadline: boolean): void {
    timeoutCounters().timeouts.add(1, byDeadline ? deadlineAttributes : timeoutAttributes)
    if (!this.events.hasListeners && !timeoutChannel.hasSubscribers) return
    const event: TimeoutEvent = {
      type: 'timeout',
      timeoutMs: limitMs,
      deadline: byDeadline,
      mode: this.mode,
    }
    this.events.emit(event)
    if (timeoutChannel.hasSubscribers) timeoutChannel.publish(event)
  }
}

/** The option keys `timeout()` takes (internal: not exported from the package root). */
export const timeoutOptions = optionKeys<TimeoutOptions>({ mode: true, clock: true })

/**
 * Limits how long `fn` may run: `timeoutMs`, or less when the end-to-end deadline (see
 * `withDeadline`) is nearer, in which case running out rejects with `DeadlineExceededError`
 * instead of `TimeoutError`. A caller abort rejects at once with `AbortedError`, or with
 * `DeadlineExceededError` when the signal's reason is one (the caller's deadline ran out;
 * `started: false` when the signal had aborted before the call); after the timeout ran out
 * (a cooperative call waiting for `fn`), at once with the timeout's own error, which came
 * first. See {@link TimeoutMode} for what happens to `fn` at the timeout; an outer timeout
 * running out is handled by that one's mode, whether or not the caller passed a signal.
 *
 * Cheap per call: timers go through one shared deadline queue per clock, and the
 * AbortController behind `ctx.signal` is only created when `fn` reads it. Options are checked
 * once, here: an unknown (misspelt) option is refused with `InvalidOptionError` (code
 * `INVALID_OPTION`) naming it.
 *
 * @param timeoutMs The time limit in milliseconds (> 0; `Infinity` to enforce only the deadline).
 * @example
 * ```ts
 * import { timeout } from 'breakwater'
 * const perTry = timeout(2_000)
 * const response = await perTry.execute(({ signal }) => fetch('https://example.com', { signal }))
 * ```
 */
export function timeout(timeoutMs: number, options: TimeoutOptions = {}): TimeoutPolicy {
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0)) {
    throw new InvalidOptionError('timeout.timeoutMs', 'a number > 0', timeoutMs)
  }
  checkKnownOptions('timeout', checkObject('timeout', options), timeoutOptions)
  const mode = optionalOneOf('timeout.mode', options.mode, 'cooperative', modes)
  return new TimeoutPolicyImpl(timeoutMs, mode, optionalClock('timeout.clock', options.clock))
}
