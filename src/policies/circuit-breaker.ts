import type { Clock, TimerHandle } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import { otelInstruments } from '../core/otel-instruments.js'
import { checkKnownOptions, checkObject, optionKeys, signalRefusal } from '../core/validate.js'
import {
  type BreakerWindow,
  type BreakerWindowOptions,
  createBreakerWindow,
} from './breaker-windows.js'
import {
  type AbortListener,
  type CancelParent,
  cancelScope,
  listen,
  parentOf,
  unlisten,
} from './cancel-scope.js'
import { classifyFailure } from './classify.js'
import { currentDeadline, currentDeadlineScope } from './deadline.js'
import {
  abortFailure,
  BrokenCircuitError,
  IsolatedCircuitError,
  timedOutInQueue,
} from './errors.js'
import { diagnosticsChannel, EventSource } from './events.js'
import {
  type FusablePolicy,
  type FusedStep,
  fusedStep,
  slowPath,
  timeoutEnd,
  timeoutEndOf,
  timeoutLeft,
  timeoutLeftOf,
  timeoutObserver,
} from './fused.js'
import {
  fnRefusal,
  optional,
  optionalClock,
  optionalFunction,
  optionalInteger,
  optionalNumber,
  optionalString,
  predicateAnswer,
} from './options.js'
import {
  type ChainablePolicy,
  callDirectly,
  contextFor,
  executeInContext,
  executeThrough,
  type Next,
} from './pipeline.js'
import type { Policy, PolicyContext, PolicyFunction } from './types.js'

/**
 * The state of a circuit breaker:
 * - `closed`: calls run, and their outcomes feed the failure window;
 * - `open`: calls fail fast with `BrokenCircuitError` until the cooldown ends;
 * - `half-open`: up to `halfOpenProbes` trial calls run, every other call fails fast;
 * - `isolated`: opened by hand with `isolate()`; calls fail with `IsolatedCircuitError` until
 *   `reset()`.
 */
export type CircuitState = 'closed' | 'open' | 'half-open' | 'isolated'

/** What a circuit breaker reports through its `events`. */
export type CircuitBreakerEvent =
  | {
      readonly type: 'stateChange'
      readonly from: CircuitState
      readonly to: CircuitState
    }
  | {
      /**
       * The call returned, or threw an error that `isFailure` does not count (then `error` holds
       * it: a client error proves the downstream answered).
       */
      readonly type: 'success'
      readonly error?: unknown
    }
  | {
      /** The call threw a counted error (`reason: 'error'`) or took `slowCallMs` or longer. */
      readonly type: 'failure'
      readonly reason: 'error' | 'slow'
      readonly error: unknown
    }
  | {
      /**
       * The call's outcome was not recorded: the caller's own signal aborted it or the caller's
       * deadline passed before it ended (before `slowCallMs`), or an inner bulkhead refused it
       * (its outcome says nothing about the downstream; such a probe frees its slot for
       * another probe), or it is `stale`. `error` is what the call threw, undefined when it
       * returned. A half-open probe cut off by its caller is reported when the cut comes, not
       * when fn settles (its slot is given back then), with the abort's reason as `error`; one
       * whose own timeout inside the breaker ran out, as a `failure` when it ran out.
       */
      readonly type: 'ignored'
      readonly error: unknown
      /**
       * True when the call was admitted before the breaker's latest state change (or
       * `reset()`): a call started while closed that ends after the circuit opened, a probe
       * whose half-open period ended before it did. The breaker no longer reasons about the
       * downstream it describes, so, whether it returned, failed or was slow, it is reported
       * here and never as `success` or `failure`: those events count exactly the outcomes the
       * breaker counted. `isFailure` is not asked about it. Absent otherwise.
       */
      readonly stale?: true
    }
  | {
      /**
       * The breaker failed a call fast without running it. The refusal is decided before
       * listeners run: a listener that calls `reset()` (or `isolate()`) here changes the
       * state for the next call, while the refused call still fails with this refusal's error
       * (`retryAfterMs` as reported) and is never run.
       */
      readonly type: 'rejected'
      readonly state: CircuitState
      readonly retryAfterMs: number
    }

/** Options of {@link circuitBreaker}. */
export interface CircuitBreakerOptions {
  /**
   * How failures are counted while the circuit is closed: `consecutive`, `count` (the last N
   * calls) or `time` (the calls of the last N milliseconds).
   * @default { kind: 'consecutive', failures: 5 }
   */
  readonly window?: BreakerWindowOptions | undefined
  /**
   * A call that returns but took at least this long counts as a failure: a downstream that
   * answers slowly is as unhealthy as one that errors. Off when undefined.
   * @default undefined
   */
  readonly slowCallMs?: number | undefined
  /**
   * Which errors count as failures. An error it rejects counts as a success (the downstream
   * answered, the request was wrong), except a refusal on this side, which is not recorded at
   * all: an inner bulkhead's, a `DeadlineExceededError` with `started: false` (too little
   * of the deadline was left to begin the call; nothing reached the downstream), or a
   * `TimeoutError` that ran out while the call still waited in an inner bulkhead's queue
   * (nothing was sent either). Not asked
   * when the caller cut the call off: its own signal aborted, or its deadline (`withDeadline`,
   * `adoptDeadline`) had passed when the call failed. Such a call is not recorded either (the
   * caller gave up; it proves nothing), whatever the composition and whatever fn threw then
   * (a `DeadlineExceededError` from a timeout clamped to the deadline included), unless it ran
   * `slowCallMs` or longer, which counts as a slow failure. A pipeline's own timeout running
   * out before the deadline (`TimeoutError`) once the call got past any bulkhead is the
   * downstream's slowness and still counts.
   * If it throws, the call rejects with that error and is recorded as `ignored`. Called
   * synchronously: one that returns a promise (an async function), which would read as true
   * for every error, is refused the same way, with `InvalidOptionError` naming
   * `circuitBreaker.isFailure`.
   * @default error => classifyFailure(error) !== 'permanent', and not those refusals
   */
  readonly isFailure?: ((error: unknown) => boolean) | undefined
  /**
   * How long the circuit stays open before it lets probes through.
   * @default 30_000
   */
  readonly cooldownMs?: number | undefined
  /**
   * Each failed probe multiplies the next cooldown by this, up to `maxCooldownMs`; closing the
   * circuit restores `cooldownMs`. 1 keeps the cooldown fixed.
   * @default 1
   */
  readonly cooldownMultiplier?: number | undefined
  /**
   * Upper bound of a growing cooldown.
   * @default max(cooldownMs, 300_000)
   */
  readonly maxCooldownMs?: number | undefined
  /**
   * How many trial calls the half-open circuit admits. All must succeed to close it; one
   * failure opens it again.
   * @default 1
   */
  readonly halfOpenProbes?: number | undefined
  /**
   * A label for diagnostics-channel messages and metric attributes (e.g. the downstream).
   * @default undefined
   */
  readonly name?: string | undefined
  /**
   * Time source for cooldowns and slow-call measurement.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** A circuit breaker policy; see {@link circuitBreaker}. */
export interface CircuitBreaker extends Policy {
  /** The current state. */
  readonly state: CircuitState
  /** The `name` option, if given. */
  readonly name: string | undefined
  /** State changes and call outcomes; costs nothing while nobody listens. */
  readonly events: EventSource<CircuitBreakerEvent>
  /** Opens the circuit by hand until {@link CircuitBreaker.reset}: every call fails fast. */
  isolate(): void
  /**
   * Closes the circuit, forgets the window and restores the base cooldown. Calls admitted
   * before it are stale (not recorded). Called from a `rejected` listener, it does not admit
   * the call being refused; the next call runs.
   */
  reset(): void
  /**
   * Clears the cooldown timer. The breaker keeps working; an open circuit then moves to
   * half-open on the first call after its cooldown instead of by timer.
   */
  dispose(): void
}

/**
 * Creates a circuit breaker: it stops calling a downstream that keeps failing, so the
 * downstream can recover and callers fail in microseconds instead of waiting on timeouts.
 *
 * Closed, it records outcomes in its window and opens when the window trips. Open, it fails
 * every call with `BrokenCircuitError` (whose `retryAfterMs` is the cooldown left) without
 * running it. A clock timer (which never keeps the process alive) moves it to half-open when
 * the cooldown ends; there `halfOpenProbes` calls run as probes: all succeed and it closes with a
 * fresh window, one fails and it opens again with the cooldown restarted (grown by
 * `cooldownMultiplier`). A call that was admitted before the latest state change (including
 * `reset()`) no longer counts: its outcome describes a downstream the breaker has stopped
 * reasoning about, and its event is `ignored` with `stale: true`, never `success` or
 * `failure`.
 *
 * A call cut off by its caller, not by the downstream, is not recorded: the caller's signal
 * aborted, or the caller's deadline passed before the call ended (a timeout inside clamped to
 * that deadline then rejects with `DeadlineExceededError`). This holds in every composition, so
 * `pipeline(breaker, timeout)` and `pipeline(retry, breaker, timeout)` count the same attempt
 * alike. An attempt cut off by a timeout policy's own limit, before the deadline, still counts.
 *
 * Publishes `breakwater:breaker:state-change` on `node:diagnostics_channel` and counts
 * transitions in the OpenTelemetry counter `breakwater.breaker.transitions`.
 *
 * Options are checked once, here: a bad value or an unknown (misspelt) option, the window's
 * included, is refused with `InvalidOptionError` (code `INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { BreakwaterError, circuitBreaker } from 'breakwater'
 * const breaker = circuitBreaker({
 *   window: { kind: 'count', size: 20, failureRateThreshold: 0.5, minimumCalls: 10 },
 *   cooldownMs: 10_000,
 * })
 * breaker.events.on((e) => { if (e.type === 'stateChange') console.log(`${e.from} -> ${e.to}`) })
 * try {
 *   await breaker.execute(({ signal }) => fetch('http://inventory/items', { signal }))
 * } catch (error) {
 *   if (BreakwaterError.is(error) && error.code === 'BROKEN_CIRCUIT') console.log('inventory is down')
 * }
 * ```
 */
export function circuitBreaker(options: CircuitBreakerOptions = {}): CircuitBreaker {
  return new CircuitBreakerPolicy(options)
}

/**
 * A {@link circuitBreaker} whose options were given at `at` (`services.orders.circuitBreaker`),
 * which a refusal of `isFailure`'s answer at call time names. Internal: not exported from the
 * package root.
 */
export function circuitBreakerAt(at: string, options: CircuitBreakerOptions): CircuitBreaker {
  return new CircuitBreakerPolicy(options, at)
}

// Checked once in the constructor, never per call.
/** The option keys `circuitBreaker()` takes (internal: not exported from the package root). */
export const circuitBreakerOptions = optionKeys<CircuitBreakerOptions>({
  window: true,
  slowCallMs: true,
  isFailure: true,
  cooldownMs: true,
  cooldownMultiplier: true,
  maxCooldownMs: true,
  halfOpenProbes: true,
  name: true,
  clock: true,
})

// The window used when `window` is left out.
const defaultWindow: BreakerWindowOptions = Object.freeze({ kind: 'consecutive', failures: 5 })

const stateChangeChannel = diagnosticsChannel('breaker', 'state-change')
// Made on the first transition, not at import, and again for a new global meter provider.
const transitionCounter = otelInstruments((meter) =>
  meter.createCounter('breakwater.breaker.transitions', {
    description: 'Circuit breaker state changes, by from and to state',
  }),
)

// How a finished call counts: 'answered' = threw an error that is not a failure.
type Outcome = 'success' | 'answered' | 'error' | 'slow' | 'ignored'

/**
 * The default `isFailure` (internal: not exported from the package root; the HTTP client's
 * services narrow it).
 */
export function countsAsFailure(error: unknown): boolean {
  // A full bulkhead inside the breaker is local load shedding, not the downstream's fault.
  if (isLocalRefusal(error)) return false
  return classifyFailure(error) !== 'permanent'
}

/**
 * Whether `error` refused the call on this side, before anything reached the downstream: a
 * full bulkhead (local load shedding), a timeout that ran out while the call waited in a
 * bulkhead's queue, or a deadline too short to start the call (the caller's lateness). Either says nothing about the downstream's health, so it is ignored: it neither
 * counts as a failure nor closes a half-open circuit.
 */
function isLocalRefusal(error: unknown): boolean {
  if (!BreakwaterError.is(error)) return false
  if (error.code === 'BULKHEAD_FULL') return true
  // A timeout inside the breaker that ran out while the call waited in an inner bulkhead's
  // queue: counted, a deep local queue opened the circuit of a downstream that answered every
  // request it got.
  if (error.code === 'TIMEOUT' && timedOutInQueue(error)) return true
  return error.code === 'DEADLINE_EXCEEDED' && (error as { started?: unknown }).started === false
}

/**
 * True when the caller's deadline (see `withDeadline`) has passed. Read when a call fails, in
 * the call's own async context: a call that ends in failure after its caller's deadline was cut
 * off by the caller, not failed by the downstream. Whether the breaker also sees the deadline as
 * its parent scope depends on the composition (a retry outside hands it down, a bare pipeline
 * does not), so it is asked directly, and every composition counts the call alike.
 */
function deadlinePassed(): boolean {
  // remainingMs, not the scope's `aborted`: asking that would abort the deadline's signal from
  // inside the breaker's bookkeeping, running its listeners there.
  return currentDeadline()?.remainingMs() === 0
}

class CircuitBreakerPolicy implements CircuitBreaker, ChainablePolicy, FusablePolicy {
  readonly events = new EventSource<CircuitBreakerEvent>()
  readonly name: string | undefined
  readonly #clock: Clock
  readonly #window: BreakerWindow
  readonly #windowTimed: boolean
  readonly #isFailure: (error: unknown) => boolean
  // What a refusal of isFailure's answer names (see the constructor).
  readonly #isFailureOption: string
  readonly #slowCallMs: number | undefined
  readonly #baseCooldownMs: number
  readonly #cooldownMultiplier: number
  readonly #maxCooldownMs: number
  readonly #halfOpenProbes: number
  #state: CircuitState = 'closed'
  // Bumped on every state change and reset; a call only counts in the epoch it was admitted in.
  #epoch = 0
  #cooldownMs: number
  #openUntilMs = 0
  #timer: TimerHandle | undefined
  // Half-open bookkeeping: probes admitted (running or succeeded), and those that succeeded.
  #probes = 0
  #probeSuccesses = 0
  // In a fused pipeline admission and recording are synchronous; the call keeps the epoch it
  // was admitted in, and its start time on the breaker's clock when slow calls are counted.
  readonly [fusedStep]: FusedStep

  // `at` is the path its options were given at (`services.orders.circuitBreaker` in an HTTP
  // client's service), which a refusal at call time names.
  constructor(options: CircuitBreakerOptions, at = 'circuitBreaker') {
    this.#isFailureOption = `${at}.isFailure`
    checkObject('circuitBreaker', options)
    checkKnownOptions('circuitBreaker', options, circuitBreakerOptions)
    const clock = optionalClock('circuitBreaker.clock', options.clock)
    this.#clock = clock
    const window = optional(
      'circuitBreaker.window',
      options.window,
      defaultWindow,
      (option: string, value: unknown) =>
        checkObject(option, value) as unknown as BreakerWindowOptions,
    )
    this.#window = createBreakerWindow(window, 'circuitBreaker.window', clock.now())
    this.#windowTimed = window.kind === 'time'
    this.#isFailure = optionalFunction<(error: unknown) => boolean>(
      'circuitBreaker.isFailure',
      options.isFailure,
      countsAsFailure,
    )
    this.#slowCallMs = optionalNumber('circuitBreaker.slowCallMs', options.slowCallMs, undefined, 1)
    this.#baseCooldownMs = optionalNumber(
      'circuitBreaker.cooldownMs',
      options.cooldownMs,
      30_000,
      0,
    )
    this.#cooldownMultiplier = optionalNumber(
      'circuitBreaker.cooldownMultiplier',
      options.cooldownMultiplier,
      1,
      1,
    )
    this.#maxCooldownMs = optionalNumber(
      'circuitBreaker.maxCooldownMs',
      options.maxCooldownMs,
      Math.max(this.#baseCooldownMs, 300_000),
      this.#baseCooldownMs,
    )
    this.#halfOpenProbes = optionalInteger(
      'circuitBreaker.halfOpenProbes',
      options.halfOpenProbes,
      1,
      1,
    )
    this.name = optionalString('circuitBreaker.name', options.name)
    this.#cooldownMs = this.#baseCooldownMs
    this[fusedStep] = {
      enter: () => {
        if (this.#state !== 'closed') {
          // A probe takes the promise-based path, which hears of an abort while fn runs (see
          // ProbeWatch); a refusal is made here as on that path.
          if (this.#wouldProbe()) return slowPath
          this.#admit()
        }
        return this.#epoch
      },
      exitValue: (call, _layer, epoch) => this.#onValue(epoch, call.startMs),
      exitError: (call, layer, epoch, error) => {
        this.#onError(error, epoch, call.startMs, call.abortedAt(layer) || deadlinePassed())
        throw error
      },
      stateful: true,
      readsDeadline: false,
      clock: this.#slowCallMs === undefined ? undefined : clock,
      timeout: undefined,
    }
  }

  get state(): CircuitState {
    return this.#state
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    if (typeof fn !== 'function') return fnRefusal('circuitBreaker.execute(fn)', fn)
    const refused = signalRefusal('circuitBreaker.execute(signal)', signal)
    if (refused !== undefined) return refused
    return this.#run(callDirectly, fn, contextFor(signal))
  }

  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(callDirectly, fn, context)
  }

  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    return this.#run(next, fn, context)
  }

  isolate(): void {
    if (this.#state !== 'isolated') this.#transition('isolated')
  }

  reset(): void {
    this.#transition('closed')
  }

  dispose(): void {
    this.#clearTimer()
  }

  // Not an async function: while a call is in flight it keeps a derived promise and two small
  // handlers instead of an async frame. The caller sees the same microtask ticks as
  // `try { value = await next(...) } catch { ... }`, and every failure (an open circuit, an
  // abort, a throwing isFailure) still arrives as a rejection, never as a synchronous throw.
  #run<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    // Asking the scope, not `context.signal`: reading the signal of a lazy scope (a timeout's
    // or a retry's context) creates an AbortController, which cost most of a pipeline's call.
    // Asked before admission: a caller who already left is answered as aborted whatever the
    // state (as by every policy), and is neither a probe nor a rejection of an open circuit.
    const parent = parentOf(context)
    if (parent?.aborted) return Promise.reject(abortFailure(parent.reason, false))
    let probe = false
    try {
      if (this.#state !== 'closed') probe = this.#admit()
    } catch (error) {
      return Promise.reject(error)
    }
    const epoch = this.#epoch
    const startMs = this.#slowCallMs === undefined ? 0 : this.#clock.now()
    const watch = probe
      ? ProbeWatch.start(
          parent,
          context,
          (reason) => this.#probeCutOff(epoch, startMs, reason),
          (error) => this.#probeTimedOut(epoch, startMs, error),
        )
      : undefined
    let result: PromiseLike<T> | T
    try {
      // Policies inside a probe run in the watch, which hears of their timeout running out.
      result = next(fn, watch !== undefined && next !== callDirectly ? watch : context)
    } catch (error) {
      if (watch?.settled() === true) return Promise.reject(watch.failure(error))
      try {
        this.#onError(error, epoch, startMs, parent?.aborted === true || deadlinePassed())
      } catch (bookkeeping) {
        return Promise.reject(bookkeeping)
      }
      return Promise.reject(error)
    }
    return Promise.resolve(result).then(
      (value) => {
        if (watch?.settled() !== true) this.#onValue(epoch, startMs)
        else if (watch.failed) throw watch.failure(undefined)
        return value
      },
      (error: unknown) => {
        if (watch?.settled() === true) throw watch.failure(error)
        this.#onError(error, epoch, startMs, parent?.aborted === true || deadlinePassed())
        throw error
      },
    )
  }

  /**
   * Records a probe its caller cut off (its signal aborted, its deadline passed) at once, as it
   * would be recorded had fn failed then: slow when it already ran `slowCallMs`, else ignored,
   * which gives its slot back. Waiting for fn instead would keep the slot for good when fn
   * ignores its signal, and with it refuse every call while the circuit stays half-open.
   */
  #probeCutOff(epoch: number, startMs: number, reason: unknown): void {
    const slow = this.#slowCallMs !== undefined && this.#clock.now() - startMs >= this.#slowCallMs
    this.#onOutcome(epoch, slow ? 'slow' : 'ignored', reason)
  }

  /**
   * Records a probe whose own timeout (a timeout policy inside the breaker) ran out, at once,
   * as its failure would be recorded: a cooperative timeout waits for fn, which may never
   * settle. A timeout clamped to the deadline that ran out is the caller's deadline passing,
   * a cut as above.
   */
  #probeTimedOut(epoch: number, startMs: number, error: unknown): void {
    if (BreakwaterError.is(error) && error.code === 'DEADLINE_EXCEEDED')
      this.#probeCutOff(epoch, startMs, error)
    else this.#onError(error, epoch, startMs, false)
  }

  // True when #admit would admit a call as a probe (moving an open circuit whose cooldown has
  // ended to half-open first).
  #wouldProbe(): boolean {
    if (this.#state === 'open') return this.#clock.now() >= this.#openUntilMs
    return this.#state === 'half-open' && this.#probes < this.#halfOpenProbes
  }

  #onValue(epoch: number, startMs: number): void {
    if (this.#slowCallMs !== undefined && this.#clock.now() - startMs >= this.#slowCallMs)
      this.#onOutcome(epoch, 'slow', undefined)
    else this.#onOutcome(epoch, 'success', undefined)
  }

  // Decides whether a call may run while the circuit is not closed; true = it is a probe.
  #admit(): boolean {
    if (this.#state === 'open' && this.#clock.now() >= this.#openUntilMs) {
      // The cooldown timer is late or was disposed: move on without it.
      this.#transition('half-open')
    }
    if (this.#state === 'half-open' && this.#probes < this.#halfOpenProbes) {
      this.#probes++
      return true
    }
    if (this.#state === 'isolated') {
      if (this.events.hasListeners)
        this.events.emit({ type: 'rejected', state: 'isolated', retryAfterMs: 0 })
      throw new IsolatedCircuitError()
    }
    const retryAfterMs =
      this.#state === 'open' ? Math.max(0, this.#openUntilMs - this.#clock.now()) : 0
    if (this.events.hasListeners)
      this.events.emit({ type: 'rejected', state: this.#state, retryAfterMs })
    throw new BrokenCircuitError(retryAfterMs)
  }

  #onError(error: unknown, epoch: number, startMs: number, aborted: boolean): void {
    // Not recorded whatever it was (see #onOutcome), so isFailure is not asked to classify it.
    if (epoch !== this.#epoch) {
      this.#onOutcome(epoch, 'ignored', error)
      return
    }
    const slow = this.#slowCallMs !== undefined && this.#clock.now() - startMs >= this.#slowCallMs
    let outcome: Outcome
    // The caller gave up: whatever fn threw then, it tells only whether the call was slow.
    if (aborted) outcome = slow ? 'slow' : 'ignored'
    else if (this.#isFailureOrIgnore(error, epoch)) outcome = 'error'
    else if (isLocalRefusal(error)) outcome = 'ignored'
    else outcome = slow ? 'slow' : 'answered'
    this.#onOutcome(epoch, outcome, error)
  }

  // A throwing isFailure still rejects the call with its own error, but the call is first
  // recorded as ignored: a half-open probe would otherwise keep its slot for good, and the
  // circuit would refuse every call until reset(). One that returns a promise (an async
  // function) is such a bug too: the promise is truthy, and every error, those it meant to
  // count as answers included, would count as a failure and open the circuit.
  #isFailureOrIgnore(error: unknown, epoch: number): boolean {
    try {
      return predicateAnswer(this.#isFailureOption, this.#isFailure(error))
    } catch (failure) {
      this.#onOutcome(epoch, 'ignored', error)
      throw failure
    }
  }

  #onOutcome(epoch: number, outcome: Outcome, error: unknown): void {
    if (epoch !== this.#epoch) {
      // Admitted before the latest state change: not recorded, so not reported as a success or
      // a failure either, or observers would count outcomes the breaker did not.
      if (this.events.hasListeners) this.events.emit({ type: 'ignored', error, stale: true })
      return
    }
    if (this.events.hasListeners) {
      this.#emitOutcome(outcome, error)
      // A listener that called reset() or isolate() has made this call stale: recorded now, it
      // would count in the new state (and could undo the reset at once).
      if (epoch !== this.#epoch) return
    }
    // Same epoch means same state as at admission: closed, or half-open for a probe.
    const failed = outcome === 'error' || outcome === 'slow'
    if (this.#state === 'closed') {
      if (outcome === 'ignored') return
      const now = this.#windowTimed ? this.#clock.now() : 0
      if (this.#window.record(failed, now)) this.#transition('open')
    } else if (this.#state === 'half-open') {
      if (failed) this.#transition('open')
      else if (outcome === 'ignored') this.#probes--
      else if (++this.#probeSuccesses >= this.#halfOpenProbes) this.#transition('closed')
    }
  }

  #emitOutcome(outcome: Outcome, error: unknown) {
    if (outcome === 'success') this.events.emit({ type: 'success' })
    else if (outcome === 'answered') this.events.emit({ type: 'success', error })
    else if (outcome === 'ignored') this.events.emit({ type: 'ignored', error })
    else this.events.emit({ type: 'failure', reason: outcome, error })
  }

  #transition(to: CircuitState): void {
    const from = this.#state
    this.#state = to
    this.#epoch++
    this.#clearTimer()
    if (to === 'open') {
      // A zero cooldown stays 0: 0 * Infinity (an infinite multiplier) would be NaN, and a NaN
      // end of cooldown refuses every call (retryAfterMs NaN) until a timer happens to fire.
      if (from !== 'half-open') this.#cooldownMs = this.#baseCooldownMs
      else if (this.#cooldownMs > 0)
        this.#cooldownMs = Math.min(
          this.#cooldownMs * this.#cooldownMultiplier,
          this.#maxCooldownMs,
        )
      this.#openUntilMs = this.#clock.now() + this.#cooldownMs
      const epoch = this.#epoch
      this.#timer = this.#clock.setTimeout(() => {
        this.#timer = undefined
        if (this.#epoch === epoch) this.#transition('half-open')
      }, this.#cooldownMs)
    } else if (to === 'half-open') {
      this.#probes = 0
      this.#probeSuccesses = 0
    } else if (to === 'closed') {
      this.#window.reset(this.#clock.now())
      this.#cooldownMs = this.#baseCooldownMs
    }
    if (from === to) return
    if (this.events.hasListeners) this.events.emit({ type: 'stateChange', from, to })
    if (stateChangeChannel.hasSubscribers)
      stateChangeChannel.publish({ name: this.name, from, to, breaker: this })
    transitionCounter().add(
      1,
      this.name === undefined ? { from, to } : { from, to, breaker: this.name },
    )
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) {
      this.#clock.clearTimeout(this.#timer)
      this.#timer = undefined
    }
  }
}

// Watches a running probe for its caller cutting it off (the caller's signal, or the scope of an
// outer policy whose timeout running out is such a cut, and the deadline it runs under) and,
// as the context the policies inside run in, for their timeout running out. Probes are rare
// (halfOpenProbes per cooldown), so this costs nothing on the common path. Whichever comes
// first decides the probe's outcome: a cut or a timeout (then fn's later outcome, if any, is not
// recorded or reported again), or fn settling.
class ProbeWatch implements AbortListener, PolicyContext {
  readonly #context: PolicyContext
  readonly #parent: CancelParent | undefined
  readonly #deadline: CancelParent | undefined
  readonly #cutOff: (reason: unknown) => void
  readonly #timedOut: (error: unknown) => void
  #done = false
  // What a throwing isFailure threw while the timeout was recorded: the call rejects with it.
  #failure: { error: unknown } | undefined

  private constructor(
    context: PolicyContext,
    parent: CancelParent | undefined,
    deadline: CancelParent | undefined,
    cutOff: (reason: unknown) => void,
    timedOut: (error: unknown) => void,
  ) {
    this.#context = context
    this.#parent = parent
    this.#deadline = deadline
    this.#cutOff = cutOff
    this.#timedOut = timedOut
  }

  /** Starts watching a probe admitted under `parent`, in `context`. */
  static start(
    parent: CancelParent | undefined,
    context: PolicyContext,
    cutOff: (reason: unknown) => void,
    timedOut: (error: unknown) => void,
  ): ProbeWatch {
    // A deadline already passed is left to fn's own outcome (inner policies refuse the call
    // with started: false): listening would abort its scope here, inside the admission.
    const scope = currentDeadlineScope()
    const deadline = scope !== undefined && scope.remainingMs() > 0 ? scope : undefined
    const watch = new ProbeWatch(context, parent, deadline, cutOff, timedOut)
    listen(parent, watch)
    listen(deadline, watch)
    return watch
  }

  get signal(): AbortSignal {
    return this.#context.signal
  }

  get attempt(): number {
    return this.#context.attempt
  }

  [cancelScope](): CancelParent | undefined {
    return this.#parent
  }

  [timeoutEnd](): number | undefined {
    return timeoutEndOf(this.#context)
  }

  [timeoutLeft](): number | undefined {
    return timeoutLeftOf(this.#context)
  }

  [timeoutObserver](error: unknown): void {
    if (this.settled()) return
    try {
      this.#timedOut(error)
    } catch (failure) {
      this.#failure = { error: failure }
    }
  }

  parentAborted(reason: unknown): void {
    if (this.settled()) return
    this.#cutOff(reason)
  }

  /** fn settled, or the probe was decided before: true when it was decided before. */
  settled(): boolean {
    if (this.#done) return true
    this.#done = true
    unlisten(this.#parent, this)
    unlisten(this.#deadline, this)
    return false
  }

  /** True when recording the probe's timeout threw (see failure). */
  get failed(): boolean {
    return this.#failure !== undefined
  }

  /** What the call rejects with: what recording threw, else `error`. */
  failure(error: unknown): unknown {
    return this.#failure === undefined ? error : this.#failure.error
  }
}
