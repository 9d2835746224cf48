import { type Clock, keepProcessAlive, type TimerHandle } from '../core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../core/errors.js'
import { otelInstruments } from '../core/otel-instruments.js'
import {
  checkInteger,
  checkKnownOptions,
  checkObject,
  optionKeys,
  signalRefusal,
} from '../core/validate.js'
import { type AbortListener, listenToSignal, parentOf, unlistenToSignal } from './cancel-scope.js'
import { abortFailure, BulkheadRejectedError, markTimedOutInQueue } from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import { type FusablePolicy, type FusedStep, fusedStep, slowPath } from './fused.js'
import { fnRefusal, optional, optionalClock, optionalNumber, optionalString } from './options.js'
import {
  type ChainablePolicy,
  callDirectly,
  contextFor,
  executeInContext,
  executeThrough,
  type Next,
} from './pipeline.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from './types.js'

/** What a bulkhead reports through its `events`. */
export type BulkheadEvent =
  | {
      /** Every slot was taken; the call waits in the queue (`queued` includes it). */
      readonly type: 'queued'
      readonly queued: number
    }
  | {
      /** The call was refused: no slot and no queue place, or the queue wait ran out. */
      readonly type: 'rejected'
      readonly reason: 'full' | 'queueTimeout'
    }

/** Options of {@link bulkhead}. */
export interface BulkheadOptions {
  /** How many calls may run at once. Required. */
  readonly maxConcurrent: number
  /**
   * How many calls may wait for a slot; more are refused at once. 0 refuses every call that
   * finds all slots taken; `Infinity` queues every one (an unbounded queue: nothing then sheds
   * load, so bound the wait with `queueTimeoutMs` or the caller's deadline).
   * @default 0
   */
  readonly maxQueued?: number | undefined
  /**
   * How long a call may wait in the queue before it is refused with `BulkheadRejectedError`
   * (`reason: 'queueTimeout'`). Waits as long as it takes when undefined. Needs `maxQueued` > 0:
   * with no queue it could never apply, and is refused (`INVALID_OPTION`).
   * @default undefined
   */
  readonly queueTimeoutMs?: number | undefined
  /**
   * A label for diagnostics-channel messages and metric attributes.
   * @default undefined (the registry sets the bulkhead's name)
   */
  readonly name?: string | undefined
  /**
   * Time source for the queue timeout.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** A bulkhead policy; see {@link bulkhead}. */
export interface Bulkhead extends Policy {
  /** Calls holding a slot now (at most `maxConcurrent`). */
  readonly running: number
  /** Calls waiting for a slot now (at most `maxQueued`). */
  readonly queued: number
  /** The `name` option, if given. */
  readonly name: string | undefined
  /** Queueing and rejections; costs nothing while nobody listens. */
  readonly events: EventSource<BulkheadEvent>
}

/**
 * Creates a bulkhead: a limit on how many calls run at once, with an optional bounded FIFO
 * queue, so one slow downstream cannot take every socket, connection or worker of the process.
 *
 * A call that finds every slot taken waits in the queue if there is room, else fails at once
 * with `BulkheadRejectedError` (code `BULKHEAD_FULL`). A queued call leaves the queue as soon as
 * its signal aborts (`AbortedError`; `DeadlineExceededError` with `started: false` when the
 * signal's reason is one) or its `queueTimeoutMs` runs out. A slot is held until the
 * function's own promise settles, even if a hard timeout outside has already given up on it,
 * so the limit counts the work really in flight. A bulkhead sees only what runs inside it:
 * with a hard timeout inside it (`pipeline(bulkhead(), timeout(ms, { mode: 'hard' }))`), or
 * any timeout inside on its caller's abort, the slot is handed on when that timeout rejects,
 * while a function that ignores its signal still runs, so more than `maxConcurrent` run. Keep
 * the bulkhead innermost, as the recommended order does. Queue operations are O(1) (a linked list);
 * a call that finds a free slot allocates nothing beyond its promise.
 *
 * Publishes `breakwater:bulkhead:rejected` on `node:diagnostics_channel` and counts rejections
 * in the OpenTelemetry counter `breakwater.bulkhead.rejections`. An unknown (misspelt) option
 * is refused with `InvalidOptionError` (code `INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { bulkhead } from 'breakwater'
 * const search = bulkhead({ maxConcurrent: 10, maxQueued: 50, queueTimeoutMs: 200 })
 * const hits = await search.execute(({ signal }) => fetch('http://search/?q=x', { signal }))
 * ```
 */
export function bulkhead(options: BulkheadOptions): Bulkhead {
  return new BulkheadPolicy(options, 'bulkhead')
}

const rejectedChannel = diagnosticsChannel('bulkhead', 'rejected')
// Made on the first rejection, not at import, and again for a new global meter provider.
const rejectionCounter = otelInstruments((meter) =>
  meter.createCounter('breakwater.bulkhead.rejections', {
    description: 'Calls a bulkhead refused, by reason',
  }),
)

// A queued call. Nodes form a doubly linked list so that an abort or a queue timeout removes
// its node in O(1) wherever it sits.
interface Waiter {
  resolve: () => void
  reject: (error: unknown) => void
  signal: AbortSignal | undefined
  onAbort: AbortListener | undefined
  timer: TimerHandle | undefined
  prev: Waiter | undefined
  next: Waiter | undefined
}

// A whole number of waiting calls, or Infinity for no limit: Infinity is how the library says
// "no limit" elsewhere (timeouts, sleep, deadlines), and a refusal that names only integers
// left a caller who wanted an unbounded queue guessing at Number.MAX_SAFE_INTEGER.
function queueLimit(option: string, value: unknown): number {
  if (value === Number.POSITIVE_INFINITY) return value
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value
  throw new InvalidOptionError(option, 'an integer >= 0 or Infinity (an unbounded queue)', value)
}

// Checked once in the constructor, never per call.
/** The option keys `bulkhead()` takes (internal: not exported from the package root). */
export const bulkheadOptions = optionKeys<BulkheadOptions>({
  maxConcurrent: true,
  maxQueued: true,
  queueTimeoutMs: true,
  name: true,
  clock: true,
})

/** The bulkhead implementation; `prefix` names options in errors (registry entries differ). */
export class BulkheadPolicy implements Bulkhead, ChainablePolicy, FusablePolicy {
  readonly events = new EventSource<BulkheadEvent>()
  readonly name: string | undefined
  readonly #maxConcurrent: number
  readonly #maxQueued: number
  readonly #queueTimeoutMs: number | undefined
  readonly #clock: Clock
  #running = 0
  #queued = 0
  #head: Waiter | undefined
  #tail: Waiter | undefined
  // In a fused pipeline a call that finds a free slot takes it synchronously; one that would
  // queue runs through the promise-based path, which waits for the slot.
  readonly [fusedStep]: FusedStep = {
    enter: () => {
      if (this.#running >= this.#maxConcurrent) return slowPath
      this.#running++
      return 0
    },
    exitValue: () => this.#release(),
    exitError: (_call, _layer, _state, error) => {
      this.#release()
      throw error
    },
    stateful: false,
    readsDeadline: false,
    clock: undefined,
    timeout: undefined,
  }

  constructor(options: BulkheadOptions, prefix: string) {
    checkObject(prefix, options)
    checkKnownOptions(prefix, options, bulkheadOptions)
    this.#maxConcurrent = checkInteger(`${prefix}.maxConcurrent`, options.maxConcurrent, 1)
    this.#maxQueued = optional(`${prefix}.maxQueued`, options.maxQueued, 0, queueLimit)
    this.#queueTimeoutMs = optionalNumber(
      `${prefix}.queueTimeoutMs`,
      options.queueTimeoutMs,
      undefined,
      0,
    )
    // Without a queue no call ever waits, so a queue timeout could never apply: a caller who set
    // one expects waiting calls to be bounded, and has forgotten maxQueued.
    if (this.#queueTimeoutMs !== undefined && this.#maxQueued === 0)
      throw new InvalidOptionError(
        `${prefix}.queueTimeoutMs`,
        'no queue timeout while maxQueued is 0 (a queue timeout needs maxQueued > 0)',
        this.#queueTimeoutMs,
      )
    this.#clock = optionalClock(`${prefix}.clock`, options.clock)
    this.name = optionalString(`${prefix}.name`, options.name)
  }

  get running(): number {
    return this.#running
  }

  get queued(): number {
    return this.#queued
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    if (typeof fn !== 'function') return fnRefusal('bulkhead.execute(fn)', fn)
    const refused = signalRefusal('bulkhead.execute(signal)', signal)
    if (refused !== undefined) return refused
    return this.#run(callDirectly, fn, contextFor(signal))
  }

  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(callDirectly, fn, context)
  }

  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(next, fn, context)
  }

  #run<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    // Asking the scope, not `context.signal`: reading the signal of a lazy scope (a timeout's
    // or a retry's context) creates an AbortController, which cost most of a pipeline's call.
    const parent = parentOf(context)
    if (parent?.aborted) return Promise.reject(abortFailure(parent.reason, false))
    if (this.#running >= this.#maxConcurrent) return this.#runQueued(next, fn, context)
    // A free slot: no async frame, and the release handlers are shared by every call, so a
    // call in flight costs one derived promise (an async function kept ~400 bytes per call).
    // The caller sees the same ticks as `try { return await ... } finally { release }`.
    this.#running++
    let result: PromiseLike<T> | T
    try {
      result = next(fn, context)
    } catch (error) {
      this.#release()
      return Promise.reject(error)
    }
    return Promise.resolve(result).then(
      this.#releaseAfterValue as (value: T) => T,
      this.#releaseAfterError,
    )
  }

  readonly #releaseAfterValue = (value: unknown): unknown => {
    this.#release()
    return value
  }

  readonly #releaseAfterError = (error: unknown): never => {
    this.#release()
    throw error
  }

  // A call that finds every slot taken: it queues if there is room, else it is rejected.
  async #runQueued<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    if (this.#queued < this.#maxQueued) {
      // A queued call must hear of an abort at once: only it needs the real signal.
      const signal = context.signal
      // Resolves once a finishing call has handed its slot over (running stays counted).
      await this.#enqueue(signal)
      if (signal.aborted) {
        this.#release()
        throw queuedAbortFailure(signal.reason)
      }
    } else {
      this.#rejected('full')
      throw new BulkheadRejectedError('full', this.#maxConcurrent, this.#maxQueued)
    }
    try {
      return await next(fn, context)
    } finally {
      this.#release()
    }
  }

  // Frees a slot, or hands it straight to the oldest waiter so no newcomer can jump the queue.
  #release(): void {
    const waiter = this.#head
    if (waiter === undefined) {
      this.#running--
      return
    }
    this.#unlink(waiter)
    waiter.resolve()
  }

  #enqueue(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        signal: undefined,
        onAbort: undefined,
        timer: undefined,
        prev: this.#tail,
        next: undefined,
      }
      if (this.#tail === undefined) this.#head = waiter
      else this.#tail.next = waiter
      this.#tail = waiter
      this.#queued++
      if (this.#queueTimeoutMs !== undefined) {
        waiter.timer = this.#clock.setTimeout(() => {
          waiter.timer = undefined
          this.#unlink(waiter)
          this.#rejected('queueTimeout')
          reject(new BulkheadRejectedError('queueTimeout', this.#maxConcurrent, this.#maxQueued))
        }, this.#queueTimeoutMs)
        // The caller awaits this wait: when the running calls hang on nothing that holds the
        // process, only this timer can answer it, so it must not let the process exit first.
        keepProcessAlive(waiter.timer)
      }
      // The shared never-aborting signal would collect listeners forever; it needs none.
      if (signal !== neverAbortedSignal) {
        const onAbort: AbortListener = {
          parentAborted: (reason) => {
            this.#unlink(waiter)
            reject(queuedAbortFailure(reason))
          },
        }
        waiter.signal = signal
        waiter.onAbort = onAbort
        // Shared with the other calls waiting on the same caller's signal (see listenToSignal).
        listenToSignal(signal, onAbort)
      }
      // Emitted once the waiter listens to its signal: a listener that aborts the call (user
      // code) must take it out of the queue, not leave it waiting for a slot it no longer wants.
      if (this.events.hasListeners) this.events.emit({ type: 'queued', queued: this.#queued })
    })
  }

  // Takes a waiter out of the queue and drops its timer and abort listener.
  #unlink(waiter: Waiter): void {
    if (waiter.prev === undefined) this.#head = waiter.next
    else waiter.prev.next = waiter.next
    if (waiter.next === undefined) this.#tail = waiter.prev
    else waiter.next.prev = waiter.prev
    waiter.prev = undefined
    waiter.next = undefined
    this.#queued--
    if (waiter.timer !== undefined) {
      this.#clock.clearTimeout(waiter.timer)
      waiter.timer = undefined
    }
    if (waiter.onAbort !== undefined) {
      if (waiter.signal !== undefined) unlistenToSignal(waiter.signal, waiter.onAbort)
      waiter.onAbort = undefined
    }
  }

  #rejected(reason: 'full' | 'queueTimeout'): void {
    if (this.events.hasListeners) this.events.emit({ type: 'rejected', reason })
    if (rejectedChannel.hasSubscribers)
      rejectedChannel.publish({ name: this.name, reason, bulkhead: this })
    rejectionCounter().add(
      1,
      this.name === undefined ? { reason } : { reason, bulkhead: this.name },
    )
  }
}

// What a queued call rejects with when its signal aborts with `reason`. A timeout around the call
// that ran out while it waited (its TimeoutError as the reason: through a pipeline, or a signal
// such a timeout handed on) is no cancellation by the caller: the call rejects with that very
// error, which the timeout reports as it is (as a retry's backoff sleep leaves the call to it),
// never wrapped around an AbortedError that blames the caller. A deadline is the deadline's.
// Marked as run out in the queue (synchronously, from the abort listener, before the timeout
// tells a breaker around it): nothing reached the downstream, so the breaker ignores it.
function queuedAbortFailure(reason: unknown): unknown {
  if (BreakwaterError.is(reason) && reason.code === 'TIMEOUT') {
    markTimedOutInQueue(reason)
    return reason
  }
  return abortFailure(reason, false)
}
