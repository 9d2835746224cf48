import type { Clock } from '../core/clock.js'
import {
  type CancelParent,
  CancelScope,
  cancelScope,
  hasExternalSignal,
  parentOf,
  signalOf,
} from './cancel-scope.js'
import { currentDeadline } from './deadline.js'
import { TimeoutError } from './errors.js'
import type { Next } from './pipeline.js'
import type { TimerList, TimerNode } from './timer-queue.js'
import type { PolicyContext, PolicyFunction } from './types.js'

// The fused pipeline: one promise reaction per call for a whole chain of breakwater policies.
//
// Chained through their promise-based `executeThrough`, five policies keep five derived
// promises, their reactions and handlers, an async frame and two timeout scopes alive per call
// in flight: about 1.8 KB, and at 100,000 calls in flight the collector spends most of the time
// copying them. Almost every call takes the same path: each policy admits it synchronously (a
// breaker state check, a bulkhead slot, a timer registration, retry bookkeeping), fn runs once,
// and each policy records the outcome synchronously. So a pipeline runs the policies'
// synchronous enter steps outermost first, calls fn, puts one reaction on its promise, and runs
// the exit steps innermost first when it settles, with one small FusedCall as the state of
// every layer. The rare paths leave the fused call for the promise-based code: a policy that
// cannot admit synchronously (a full bulkhead that queues) runs itself and everything inside
// through its chain link, and an exit that needs time (a retry after a failure, a fallback
// function returning a promise) hands back a promise the outer layers wait for. A caller's
// signal (with a timeout in the chain), a deadline or an already aborted scope send the whole
// call down the promise-based chain.
//
// Internal: steps are found through a module-local symbol, so only policies of this copy of
// breakwater are fused; others are run through `executeThrough` as before.

/** Key of a policy's {@link FusedStep}. */
export const fusedStep: unique symbol = Symbol('breakwater.fusedStep')

/**
 * Key of a context's method returning when the innermost timeout it runs under ends (on that
 * timeout's clock; Infinity for an infinite one), on the contexts timeout policies hand to fn
 * and those a retry inside them hands on. Internal: the HTTP client announces what is left of
 * an attempt's timeout downstream.
 */
export const timeoutEnd: unique symbol = Symbol('breakwater.timeoutEnd')

/** When the innermost timeout `context` runs under ends, or undefined when it knows none. */
export function timeoutEndOf(context: PolicyContext): number | undefined {
  const end = (context as { [timeoutEnd]?: () => number | undefined })[timeoutEnd]
  return typeof end === 'function' ? end.call(context) : undefined
}

/**
 * Key of a context's method returning how long is left until the earliest end of the timeouts
 * it runs under, each read on its own clock (Infinity when all are infinite). Internal: a retry
 * inside timeouts gives up rather than sleep past the first of their ends, whatever clock it
 * reads itself. The earliest, not the innermost: an outer timeout shorter than an inner one
 * ends the call first.
 */
export const timeoutLeft: unique symbol = Symbol('breakwater.timeoutLeft')

/** How long is left of the timeouts `context` runs under (the earliest), or undefined when none. */
export function timeoutLeftOf(context: PolicyContext | undefined): number | undefined {
  if (context === undefined) return undefined
  const left = (context as { [timeoutLeft]?: () => number | undefined })[timeoutLeft]
  return typeof left === 'function' ? left.call(context) : undefined
}

/**
 * Key of a context's method that a timeout policy running in that context calls when its own
 * timer runs out, with the error it ran out with (a `TimeoutError`, or a `DeadlineExceededError`
 * when clamped to the deadline), whether or not fn settles then. Internal: a circuit breaker
 * hands its half-open probes such a context, so that a cooperative timeout inside, which waits
 * for fn, does not keep the probe's slot while fn ignores its signal.
 */
export const timeoutObserver: unique symbol = Symbol('breakwater.timeoutObserver')

/** The timeout observer of `context`, or undefined when it has none. */
export function timeoutObserverOf(
  context: PolicyContext | undefined,
): ((error: unknown) => void) | undefined {
  if (context === undefined) return undefined
  const observer = (context as { [timeoutObserver]?: unknown })[timeoutObserver]
  return typeof observer === 'function'
    ? (observer.bind(context) as (error: unknown) => void)
    : undefined
}

/** The lesser of two times left, either unknown (undefined). */
export function earlierLeft(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined ? b : b === undefined || a <= b ? a : b
}

/** Returned by {@link FusedStep.enter}: run this policy and the rest through the chain. */
export const slowPath: unique symbol = Symbol('breakwater.slowPath')

/** Returned by {@link FusedStep.exitError}: the outcome comes later, from this promise. */
export class Later {
  readonly promise: PromiseLike<unknown>

  constructor(promise: PromiseLike<unknown>) {
    this.promise = promise
  }
}

/** What a timeout policy tells the fused call so that the call can time itself. */
export interface FusedTimeout {
  /** The configured timeout (Infinity: never). */
  readonly timeoutMs: number
  /** The policy's list of calls in flight, in deadline order. */
  readonly list: TimerList
  /** Reports one call running out of time (events, channel, metrics). */
  report(): void
}

/**
 * A policy's part in a fused call. Steps are called with the call's scope not aborted and no
 * deadline set (the pipeline takes the promise-based chain otherwise).
 */
export interface FusedStep {
  /**
   * Admits the call synchronously. Returns a small integer the step wants back at the exit, or
   * {@link slowPath}. Throws to refuse the call (the outer layers then exit with the error).
   */
  enter(call: FusedCall, layer: number): number | typeof slowPath
  /** fn's value passes out through this layer. Throws to turn it into a failure. */
  exitValue(call: FusedCall, layer: number, state: number): void
  /**
   * fn's failure passes out through this layer: throws the error to pass out, returns a value
   * to recover with it, or a {@link Later} for an outcome that takes time.
   */
  exitError(call: FusedCall, layer: number, state: number, error: unknown): unknown
  /** True when `enter` returns a state to keep. */
  readonly stateful: boolean
  /** True for steps whose behaviour depends on the deadline (timeout, retry). */
  readonly readsDeadline: boolean
  /** The clock the step reads the call's start time on, if it reads it. */
  readonly clock: Clock | undefined
  /** Set for a timeout step. */
  readonly timeout: FusedTimeout | undefined
}

/** A policy that can take part in a fused call. */
export interface FusablePolicy {
  /** The policy's step; undefined when this policy is never fused (a hard timeout). */
  readonly [fusedStep]: FusedStep | undefined
}

// A call keeps which steps it is inside, which timeouts ran out and which timer list it is in
// as bit fields of one small integer: expired steps (bits 0-15), depth (16-20), timer step + 1
// (21-25).
const maxFusedSteps = 16
const depthShift = 16
const timerShift = 21
const expiredMask = 0xffff

/** The fused form of a pipeline: its leading fusable steps and its promise-based links. */
export class FusedPlan {
  readonly steps: readonly FusedStep[]
  /** links[i] runs policy i and everything inside it through the promise-based chain. */
  readonly links: ReadonlyArray<Next>
  /** nexts[i] is what policy i hands its work to (links[i + 1], or fn itself). */
  readonly nexts: ReadonlyArray<Next>
  /** timeoutMs[i]: the timeout of step i, NaN for other steps. */
  readonly timeoutMs: readonly number[]
  /** earliest[d]: the step with the nearest finite timeout among the first d, else -1. */
  readonly earliest: readonly number[]
  /** timeoutBelow[i]: the innermost timeout step among the first i, else -1. */
  readonly timeoutBelow: readonly number[]
  /** slots[i]: where step i's state is kept, -1 when it keeps none. */
  readonly slots: readonly number[]
  readonly clock: Clock | undefined
  /**
   * Calls keep their start time as an offset from this: a small integer in place of a boxed
   * number for the first 24 days of the plan (later offsets are plain numbers, still exact).
   */
  readonly baseMs: number
  readonly hasTimeouts: boolean
  readonly readsDeadline: boolean
  /** True when every policy of the pipeline is fused. */
  readonly complete: boolean

  private constructor(
    steps: FusedStep[],
    links: ReadonlyArray<Next>,
    nexts: ReadonlyArray<Next>,
    clock: Clock | undefined,
  ) {
    this.steps = steps
    this.links = links
    this.nexts = nexts
    this.clock = clock
    this.baseMs = clock === undefined ? 0 : clock.now()
    this.complete = steps.length === links.length
    const timeoutMs: number[] = []
    const earliest: number[] = [-1]
    const timeoutBelow: number[] = [-1]
    const slots: number[] = []
    let nearest = -1
    let innermost = -1
    let slot = 0
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]!
      const ms = step.timeout === undefined ? Number.NaN : step.timeout.timeoutMs
      timeoutMs.push(ms)
      if (ms < Number.POSITIVE_INFINITY && (nearest < 0 || ms < timeoutMs[nearest]!)) nearest = i
      if (step.timeout !== undefined) innermost = i
      earliest.push(nearest)
      timeoutBelow.push(innermost)
      slots.push(step.stateful ? slot++ : -1)
    }
    this.timeoutMs = timeoutMs
    this.earliest = earliest
    this.timeoutBelow = timeoutBelow
    this.slots = slots
    this.hasTimeouts = steps.some((s) => s.timeout !== undefined)
    this.readsDeadline = steps.some((s) => s.readsDeadline)
  }

  /**
   * The plan for `policies`, or undefined when the first cannot be fused. Fusing stops at the
   * first policy without a step, or whose clock differs from the earlier steps' clock.
   */
  static create(
    policies: readonly unknown[],
    links: ReadonlyArray<Next>,
    nexts: ReadonlyArray<Next>,
  ): FusedPlan | undefined {
    const steps: FusedStep[] = []
    let clock: Clock | undefined
    for (const policy of policies) {
      if (steps.length === maxFusedSteps) break
      const step = (policy as Partial<FusablePolicy>)[fusedStep]
      if (step === undefined) break
      if (step.clock !== undefined) {
        if (clock !== undefined && step.clock !== clock) break
        clock = step.clock
      }
      steps.push(step)
    }
    return steps.length === 0 ? undefined : new FusedPlan(steps, links, nexts, clock)
  }

  /** Runs `fn` through the pipeline in the caller's `outer` context. */
  run<T>(fn: PolicyFunction<T>, outer: PolicyContext): Promise<T> {
    const root = parentOf(outer)
    // A caller's signal must reject a timed call at once, which needs the racing code; an
    // aborted scope and a deadline are left to each policy's own handling.
    if (
      (root !== undefined && (root.aborted || (this.hasTimeouts && hasExternalSignal(root)))) ||
      (this.readsDeadline && currentDeadline() !== undefined)
    ) {
      return this.links[0]!(fn, outer) as Promise<T>
    }
    const offsetMs = this.clock === undefined ? 0 : this.clock.now() - this.baseMs
    return new FusedCall(this, fn as PolicyFunction<unknown>, outer, offsetMs).start() as Promise<T>
  }
}

// What only calls off the common path need, allocated on first need.
class Rare {
  // reasons[i]: the TimeoutError of timeout step i once it ran out.
  readonly reasons: unknown[] = []
  // aborts[i]: why the scope of timeout step i aborted, fixed when its timeout ran out: the
  // reason of an outer scope that had aborted before, else reasons[i].
  readonly aborts: unknown[] = []
  // scopes[i]: the scope of timeout step i, once somebody asked for it.
  readonly scopes: Array<TimeoutScope | undefined> = []
  // States of steps beyond the first stateful one.
  readonly states: number[] = []
}

/**
 * One call through a fused pipeline: the state of every layer, the context fn receives and
 * the node in a timeout's timer list. Its depth is the number of layers the call is inside
 * (entered and not yet left).
 *
 * Cancellation: the scope of each timeout step (what an unfused timeout's own context would
 * be) is only created when somebody asks for it (fn reads its signal, promise-based code runs
 * inside the step, a policy asks whether the call was aborted after a timeout ran out), with
 * the semantics of the unfused chain: a scope aborts with the reason of whichever came first,
 * its own timeout or an outer abort, as if it had followed its parent all along.
 */
export class FusedCall implements PolicyContext, TimerNode {
  readonly plan: FusedPlan
  readonly fn: PolicyFunction<unknown>
  /** The context the pipeline was called in. */
  readonly outer: PolicyContext
  timerPrev: TimerNode | undefined = undefined
  timerNext: TimerNode | undefined = undefined
  // Moved only when the clock steps (see clockStepped).
  #offsetMs: number
  #bits = 0
  #state0 = 0
  #rare: Rare | undefined = undefined

  constructor(
    plan: FusedPlan,
    fn: PolicyFunction<unknown>,
    outer: PolicyContext,
    offsetMs: number,
  ) {
    this.plan = plan
    this.fn = fn
    this.outer = outer
    this.#offsetMs = offsetMs
  }

  /** When the call started, on the plan's clock (unspecified when no step reads it). */
  get startMs(): number {
    return this.plan.baseMs + this.#offsetMs
  }

  get #depth(): number {
    return (this.#bits >>> depthShift) & 31
  }

  set #depth(depth: number) {
    this.#bits = (this.#bits & ~(31 << depthShift)) | (depth << depthShift)
  }

  // The timeout step whose list the call is in, or -1.
  get #timerLayer(): number {
    return ((this.#bits >>> timerShift) & 31) - 1
  }

  set #timerLayer(layer: number) {
    this.#bits = (this.#bits & ~(31 << timerShift)) | ((layer + 1) << timerShift)
  }

  // Bit i: timeout step i ran out.
  get #expired(): number {
    return this.#bits & expiredMask
  }

  /** fn sees the attempt of the context the pipeline was called in. */
  get attempt(): number {
    return this.outer.attempt
  }

  /** fn's signal: the innermost timeout's, else the outer context's. */
  get signal(): AbortSignal {
    return signalOf(this.scopeAt(this.plan.steps.length))
  }

  [cancelScope](): CancelParent | undefined {
    return this.scopeAt(this.plan.steps.length)
  }

  [timeoutEnd](): number | undefined {
    const plan = this.plan
    const layer = plan.timeoutBelow[plan.steps.length]!
    return layer < 0 ? undefined : this.startMs + plan.timeoutMs[layer]!
  }

  [timeoutLeft](): number | undefined {
    return this.timeoutLeftWithin(this.plan.steps.length)
  }

  /**
   * How long is left of the timeouts around the first `depth` steps, the earliest of them and
   * of those around the pipeline (see timeoutLeft), or undefined when there are none.
   */
  timeoutLeftWithin(depth: number): number | undefined {
    const plan = this.plan
    let shortestMs = Number.NaN
    for (let p = plan.timeoutBelow[depth]!; p >= 0; p = plan.timeoutBelow[p]!) {
      const ms = plan.timeoutMs[p]!
      if (!(ms >= shortestMs)) shortestMs = ms
    }
    // A plan with a timeout step reads a clock: its steps share one.
    const left = Number.isNaN(shortestMs)
      ? undefined
      : this.startMs + shortestMs - plan.clock!.now()
    return earlierLeft(left, timeoutLeftOf(this.outer))
  }

  get timerAtMs(): number {
    const plan = this.plan
    return plan.baseMs + this.#offsetMs + plan.timeoutMs[this.#timerLayer]!
  }

  /** Timer list callback: the clock stepped by `stepMs` since the call started. */
  clockStepped(stepMs: number): void {
    this.#offsetMs += stepMs
  }

  /** Runs the enter steps and fn (or the chain from the first step that declined). */
  start(): Promise<unknown> {
    const plan = this.plan
    const steps = plan.steps
    const n = steps.length
    let result: unknown
    try {
      let i = 0
      for (; i < n; i++) {
        const state = steps[i]!.enter(this, i)
        if (state === slowPath) break
        const slot = plan.slots[i]!
        if (slot === 0) this.#state0 = state
        else if (slot > 0) this.#rareState().states[slot] = state
        this.#depth = i + 1
      }
      if (i === 0) return plan.links[0]!(this.fn, this.outer) as Promise<unknown>
      // Timed before fn runs, as each timeout did on entry: on a clock that breaks ties by
      // creation order, fn's own timers set for the same instant fire after the timeout.
      this.#arm(this.startMs)
      result = i === n && plan.complete ? this.fn(this) : plan.links[i]!(this.fn, this.contextAt(i))
    } catch (error) {
      try {
        return Promise.resolve(this.#unwind(true, error))
      } catch (failure) {
        return Promise.reject(failure)
      }
    }
    return Promise.resolve(result).then(this.settleValue.bind(this), this.settleError.bind(this))
  }

  /** The reaction to fn's value. */
  settleValue(value: unknown): unknown {
    return this.#unwind(false, value)
  }

  /** The reaction to fn's failure. */
  settleError(error: unknown): unknown {
    return this.#unwind(true, error)
  }

  /** What step `layer` hands its work to on the promise-based path. */
  next(layer: number): Next {
    return this.plan.nexts[layer]!
  }

  /** True when the scope step `layer` runs in has aborted (an outer timeout or the caller). */
  abortedAt(layer: number): boolean {
    if (this.#expired === 0) {
      const root = parentOf(this.outer)
      if (root === undefined || !root.aborted) return false
    }
    // Asked as the unfused chain would ask it, so the scopes learn their reasons in the
    // same order.
    return this.scopeAt(layer)?.aborted === true
  }

  /** What timeout step `layer` makes of `error`: a TimeoutError once it has run out. */
  timeoutFailure(layer: number, error: unknown): unknown {
    const expired = this.#rare?.reasons[layer]
    if (expired === undefined || error === expired) return error
    return new TimeoutError(this.plan.timeoutMs[layer]!, { cause: error })
  }

  /** The scope step `layer` runs in. */
  scopeAt(layer: number): CancelParent | undefined {
    const timeoutLayer = this.plan.timeoutBelow[layer]!
    return timeoutLayer < 0 ? parentOf(this.outer) : this.#scopeOf(timeoutLayer)
  }

  /** The context step `layer` receives, for promise-based code. */
  contextAt(layer: number): PolicyContext {
    const timeoutLayer = this.plan.timeoutBelow[layer]!
    return timeoutLayer < 0 ? this.outer : this.#scopeOf(timeoutLayer)
  }

  /**
   * Why the scope of timeout step `layer` aborted once its timeout ran out (an outer reason
   * when an outer scope had aborted first), else undefined.
   */
  expiredReason(layer: number): unknown {
    return this.#rare?.aborts[layer]
  }

  /** Timer list callback: the earliest running timeout ran out. */
  timerFired(): void {
    const layer = this.#timerLayer
    this.#timerLayer = -1
    const timeout = this.plan.steps[layer]!.timeout!
    const reason = new TimeoutError(timeout.timeoutMs)
    const rare = this.#rareState()
    // Like an unfused timeout's scope, this step's scope keeps the reason of an outer one that
    // aborted first, whether or not anybody linked the two in between.
    const outer = this.#outerAbort(layer)
    const abortReason = outer === undefined ? reason : outer.reason
    this.#bits |= 1 << layer
    rare.reasons[layer] = reason
    rare.aborts[layer] = abortReason
    rare.scopes[layer]?.abort(abortReason)
    this.#arm()
    timeout.report()
  }

  // The nearest aborted scope outside timeout step `layer`, as it is now: the first outer
  // timeout step that ran out (its reason was fixed then), else the outer scope if aborted.
  #outerAbort(layer: number): { reason: unknown } | undefined {
    const plan = this.plan
    const expired = this.#expired
    for (let p = plan.timeoutBelow[layer]!; p >= 0; p = plan.timeoutBelow[p]!) {
      if ((expired & (1 << p)) !== 0) return { reason: this.#rare!.aborts[p] }
    }
    const root = parentOf(this.outer)
    return root?.aborted === true ? { reason: root.reason } : undefined
  }

  // Passes an outcome out through the layers the call is inside, innermost first.
  #unwind(failed: boolean, outcome: unknown): unknown {
    this.#disarm()
    const plan = this.plan
    const steps = plan.steps
    let payload = outcome
    let fail = failed
    for (let i = this.#depth - 1; i >= 0; i--) {
      this.#depth = i
      const step = steps[i]!
      const slot = plan.slots[i]!
      const state = slot < 0 ? 0 : slot === 0 ? this.#state0 : this.#rare!.states[slot]!
      if (fail) {
        try {
          payload = step.exitError(this, i, state, payload)
        } catch (error) {
          payload = error
          this.#leave(i)
          continue
        }
        this.#leave(i)
        fail = false
        if (payload instanceof Later) {
          // The outer layers stay in until the step's outcome arrives.
          this.#arm()
          return payload.promise.then(
            (value) => this.#unwind(false, value),
            (error: unknown) => this.#unwind(true, error),
          )
        }
      } else {
        try {
          step.exitValue(this, i, state)
        } catch (error) {
          payload = error
          fail = true
        }
        this.#leave(i)
      }
    }
    if (fail) throw payload
    return payload
  }

  // Step `layer` is done with the call: its scope (if made) lets go of the outer ones.
  #leave(layer: number): void {
    const rare = this.#rare
    if (rare !== undefined) rare.scopes[layer]?.close()
  }

  // Puts the call in the list of its nearest running timeout. `nowMs`: the clock's reading the
  // call started at, when it starts now (see TimerList.add).
  #arm(nowMs?: number): void {
    const plan = this.plan
    if (!plan.hasTimeouts) return
    let layer = -1
    const expired = this.#expired
    const depth = this.#depth
    if (expired === 0) layer = plan.earliest[depth]!
    else {
      let nearest = Number.POSITIVE_INFINITY
      for (let i = 0; i < depth; i++) {
        const ms = plan.timeoutMs[i]!
        if (ms < nearest && (expired & (1 << i)) === 0) {
          nearest = ms
          layer = i
        }
      }
    }
    if (layer < 0) return
    this.#timerLayer = layer
    plan.steps[layer]!.timeout!.list.add(this, nowMs)
  }

  #disarm(): void {
    const layer = this.#timerLayer
    if (layer < 0) return
    this.plan.steps[layer]!.timeout!.list.remove(this)
    this.#timerLayer = -1
  }

  #rareState(): Rare {
    this.#rare ??= new Rare()
    return this.#rare
  }

  #scopeOf(layer: number): TimeoutScope {
    const rare = this.#rareState()
    let scope = rare.scopes[layer]
    if (scope === undefined) {
      scope = new TimeoutScope(this, layer, this.scopeAt(layer))
      rare.scopes[layer] = scope
      // A step the call has left closed its scope; one made afterwards starts closed.
      if (layer >= this.#depth) scope.close()
    }
    return scope
  }
}

// The scope of timeout step `layer` of a fused call, as the unfused timeout's own context
// would be: it aborts when its timeout fires, or with its parent (the next timeout out, or the
// outer scope) once it listens to it or is asked.
class TimeoutScope extends CancelScope implements PolicyContext {
  readonly #call: FusedCall
  readonly #layer: number

  constructor(call: FusedCall, layer: number, parent: CancelParent | undefined) {
    super(parent)
    this.#call = call
    this.#layer = layer
  }

  get attempt(): number {
    return this.#call.outer.attempt
  }

  [cancelScope](): CancelParent {
    return this
  }

  [timeoutEnd](): number {
    return this.#call.startMs + this.#call.plan.timeoutMs[this.#layer]!
  }

  [timeoutLeft](): number {
    // This step and the timeout steps outside it.
    return this.#call.timeoutLeftWithin(this.#layer + 1)!
  }

  // Its timeout fired before anybody made the scope: it aborted then, with the reason it
  // would have had then (an outer one when that aborted first).
  protected override expiry(): unknown {
    return this.#call.expiredReason(this.#layer)
  }
}
