import { metrics } from '@opentelemetry/api'
import { type Clock, systemClock } from '../core/clock.js'
import { AbortedError, type BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { checkObject, checkOneOf } from '../core/validate.js'
import { currentDeadline } from './deadline.js'
import { DeadlineExceededError, TimeoutError } from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import { type TimerEntry, type TimerQueue, timerQueueFor } from './timer-queue.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from './types.js'

/**
 * How a timeout ends a call:
 * - `'cooperative'`: at the timeout `ctx.signal` aborts and the caller waits for `fn` to
 *   settle. If `fn` then rejects, the caller gets a `TimeoutError` (its `cause` is `fn`'s
 *   error); if `fn` resolves anyway, the caller gets the value. Nothing keeps running behind
 *   the caller's back.
 * - `'hard'`: at the timeout the caller is rejected with a `TimeoutError` at once and
 *   `ctx.signal` aborts; `fn` keeps running in the background (its result is dropped).
 */
export type TimeoutMode = 'cooperative' | 'hard'

/** Options of {@link timeout}. */
export interface TimeoutOptions {
  /**
   * How the timeout ends a call; see {@link TimeoutMode}.
   * @default 'cooperative'
   */
  readonly mode?: TimeoutMode
  /**
   * The clock that times calls.
   * @default systemClock
   */
  readonly clock?: Clock
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
  /** Emits an event for every call that ran out of time. */
  readonly events: EventSource<TimeoutEvent>
}

const timeoutChannel = diagnosticsChannel('timeout', 'timeout')
const modes: readonly TimeoutMode[] = ['cooperative', 'hard']

interface TimeoutCounters {
  readonly timeouts: { add(value: number, attributes?: Record<string, string>): void }
}
let counters: TimeoutCounters | undefined
// Created on the first timeout, not at import, so an SDK registered at startup is picked up.
function timeoutCounters(): TimeoutCounters {
  counters ??= {
    timeouts: metrics.getMeter('breakwater').createCounter('breakwater.timeout.timeouts', {
      description: 'Calls that ran out of time (attribute reason: timeout or deadline)',
    }),
  }
  return counters
}
const timeoutAttributes = { reason: 'timeout' }
const deadlineAttributes = { reason: 'deadline' }

// One object per call serves as the context handed to fn, the timer-queue entry and the
// listener on the caller's signal, so a call allocates no closures, no timer and no
// AbortController unless fn actually reads ctx.signal.
class TimeoutCall<T> implements PolicyContext, TimerEntry {
  readonly attempt = 1
  readonly atMs: number
  queueIndex = -1
  readonly #policy: TimeoutPolicyImpl
  readonly #caller: AbortSignal
  readonly #limitMs: number
  readonly #byDeadline: boolean
  #controller: AbortController | undefined
  #reason: BreakwaterError | undefined
  #settled = false
  #resolve: ((value: T) => void) | undefined
  #reject: ((error: unknown) => void) | undefined

  constructor(
    policy: TimeoutPolicyImpl,
    caller: AbortSignal,
    atMs: number,
    limitMs: number,
    byDeadline: boolean,
  ) {
    this.#policy = policy
    this.#caller = caller
    this.atMs = atMs
    this.#limitMs = limitMs
    this.#byDeadline = byDeadline
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController()
      if (this.#reason !== undefined) this.#controller.abort(this.#reason)
      else if (this.#caller.aborted) this.#controller.abort(this.#caller.reason)
    }
    return this.#controller.signal
  }

  /** Timer queue callback: the time is up. */
  fire(): void {
    if (this.#settled) return
    const reason = this.#byDeadline
      ? new DeadlineExceededError(this.atMs)
      : new TimeoutError(this.#limitMs)
    this.#reason = reason
    this.#controller?.abort(reason)
    this.#policy.reportTimeout(this.#limitMs, this.#byDeadline)
    if (this.#policy.mode === 'hard') this.#settle()?.(reason)
  }

  /** Listener on the caller's signal. */
  handleEvent(): void {
    if (this.#settled) return
    const reason = this.#caller.reason
    this.#controller?.abort(reason)
    this.#settle()?.(new AbortedError(reason))
  }

  /** Maps fn's failure to what the caller sees. */
  failure(error: unknown): unknown {
    const reason = this.#reason
    if (reason === undefined || error === reason) return error
    return this.#byDeadline
      ? new DeadlineExceededError(this.atMs, { cause: error })
      : new TimeoutError(this.#limitMs, { cause: error })
  }

  /** Stops the timer and the caller-signal listener. */
  finish(queue: TimerQueue): void {
    this.#settled = true
    queue.remove(this)
    if (this.#reject !== undefined && this.#caller !== neverAbortedSignal) {
      this.#caller.removeEventListener('abort', this)
    }
  }

  /** Runs fn racing the timer and the caller's signal (hard mode, or a caller signal given). */
  race(fn: PolicyFunction<T>): Promise<T> {
    const promise = new Promise<T>((resolve, reject) => {
      this.#resolve = resolve
      this.#reject = reject
    })
    if (this.#caller !== neverAbortedSignal) this.#caller.addEventListener('abort', this)
    let result: PromiseLike<T> | T
    try {
      result = fn(this)
    } catch (error) {
      this.#settle()?.(this.failure(error))
      return promise
    }
    Promise.resolve(result).then(
      (value) => {
        if (this.#settled) return
        this.finish(this.#policy.queue)
        this.#resolve!(value)
      },
      (error: unknown) => {
        // After a hard timeout fn's late failure has nowhere to go; handling it here keeps
        // it from surfacing as an unhandled rejection.
        this.#settle()?.(this.failure(error))
      },
    )
    return promise
  }

  #settle(): ((error: unknown) => void) | undefined {
    if (this.#settled) return undefined
    this.finish(this.#policy.queue)
    return this.#reject
  }
}

class TimeoutPolicyImpl implements TimeoutPolicy {
  readonly timeoutMs: number
  readonly mode: TimeoutMode
  readonly events = new EventSource<TimeoutEvent>()
  readonly queue: TimerQueue
  readonly #clock: Clock

  constructor(timeoutMs: number, mode: TimeoutMode, clock: Clock) {
    this.timeoutMs = timeoutMs
    this.mode = mode
    this.#clock = clock
    this.queue = timerQueueFor(clock)
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    const caller = signal ?? neverAbortedSignal
    if (caller.aborted) return Promise.reject(new AbortedError(caller.reason))
    const now = this.#clock.now()
    let limitMs = this.timeoutMs
    let byDeadline = false
    const deadline = currentDeadline()
    if (deadline !== undefined) {
      const leftMs = deadline.atMs - now
      if (leftMs <= 0) {
        this.reportTimeout(0, true)
        return Promise.reject(new DeadlineExceededError(deadline.atMs))
      }
      if (leftMs <= limitMs) {
        limitMs = leftMs
        byDeadline = true
      }
    }
    const call = new TimeoutCall<T>(this, caller, now + limitMs, limitMs, byDeadline)
    // An infinite timeout (no deadline either) needs no timer at all.
    if (limitMs !== Number.POSITIVE_INFINITY) this.queue.add(call)
    if (this.mode === 'cooperative' && caller === neverAbortedSignal) {
      return this.#cooperative(call, fn)
    }
    return call.race(fn)
  }

  async #cooperative<T>(call: TimeoutCall<T>, fn: PolicyFunction<T>): Promise<T> {
    try {
      return await fn(call)
    } catch (error) {
      throw call.failure(error)
    } finally {
      call.finish(this.queue)
    }
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

/**
 * Limits how long `fn` may run: `timeoutMs`, or less when the end-to-end deadline (see
 * `withDeadline`) is nearer, in which case running out rejects with `DeadlineExceededError`
 * instead of `TimeoutError`. A caller abort rejects at once with `AbortedError`. See
 * {@link TimeoutMode} for what happens to `fn` at the timeout.
 *
 * Cheap per call: timers go through one shared deadline queue per clock, and the
 * AbortController behind `ctx.signal` is only created when `fn` reads it.
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
  checkObject('timeout', options)
  const mode = checkOneOf('timeout.mode', options.mode ?? 'cooperative', modes)
  return new TimeoutPolicyImpl(timeoutMs, mode, options.clock ?? systemClock)
}
