import type { Clock } from '../core/clock.js'
import {
  type AbortListener,
  type CancelParent,
  CancelScope,
  cancelScope,
  hasExternalSignal,
  listen,
  parentOf,
  signalOf,
  unlisten,
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

// Fused steps are tracked in bit masks of a small integer.
const maxFusedSteps = 30

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
  /** slots[i]: where step i's state is kept, -1 when it keeps none. */
  readonly slots: readonly number[]
  readonly clock: Clock | undefined
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
    this.complete = steps.length === links.length
    const timeoutMs: number[] = []
    const earliest: number[] = [-1]
    const slots: number[] = []
    let nearest = -1
    let slot = 0
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]!
      const ms = step.timeout === undefined ? Number.NaN : step.timeout.timeoutMs
      timeoutMs.push(ms)
      if (ms < Number.POSITIVE_INFINITY && (nearest < 0 || ms < timeoutMs[nearest]!)) nearest = i
      earliest.push(nearest)
      slots.push(step.stateful ? slot++ : -1)
    }
    this.timeoutMs = timeoutMs
    this.earliest = earliest
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
    const startMs = this.clock === undefined ? 0 : this.clock.now()
    return new FusedCall(this, fn as PolicyFunction<unknown>, outer, startMs).start() as Promise<T>
  }
}

// What only calls off the common path need, allocated on first need.
class Rare {
  // fn's signal, when fn read it.
  controller: AbortController | undefined = undefined
  // Listening on the outer scope for the controller.
  linked = false
  // reasons[i]: the TimeoutError of timeout step i once it ran out.
  readonly reasons: unknown[] = []
  // Timeout steps that ran out, in the order they did.
  readonly order: number[] = []
  // Scopes handed to promise-based code running inside a layer.
  readonly scopes: LayerScope[] = []
  // States of steps beyond the first stateful one.
  readonly states: number[] = []
}

/**
 * One call through a fused pipeline: the state of every layer, the context fn receives, the
 * node in a timeout's timer list, and the listener that forwards an outer abort to fn's
 * signal. `depth` is the number of layers the call is inside (entered and not yet left).
 */
export class FusedCall implements PolicyContext, TimerNode, AbortListener {
  readonly plan: FusedPlan
  readonly fn: PolicyFunction<unknown>
  /** The context the pipeline was called in. */
  readonly outer: PolicyContext
  /** When the call started, on the plan's clock (0 when no step reads it). */
  readonly startMs: number
  depth = 0
  timerPrev: TimerNode | undefined = undefined
  timerNext: TimerNode | undefined = undefined
  // Bit i: timeout step i ran out.
  #expired = 0
  // The timeout step whose list the call is in, or -1.
  #timerLayer = -1
  #state0 = 0
  #rare: Rare | undefined = undefined

  constructor(plan: FusedPlan, fn: PolicyFunction<unknown>, outer: PolicyContext, startMs: number) {
    this.plan = plan
    this.fn = fn
    this.outer = outer
    this.startMs = startMs
  }

  /** fn sees the attempt of the context the pipeline was called in. */
  get attempt(): number {
    return this.outer.attempt
  }

  /** fn's signal: aborts when a timeout of the pipeline runs out or the outer scope aborts. */
  get signal(): AbortSignal {
    if (!this.plan.hasTimeouts) return signalOf(parentOf(this.outer))
    const rare = this.#rareState()
    let controller = rare.controller
    if (controller === undefined) {
      controller = new AbortController()
      rare.controller = controller
      const order = rare.order
      const root = parentOf(this.outer)
      if (order.length > 0) controller.abort(rare.reasons[order[0]!])
      else if (root?.aborted) controller.abort(root.reason)
      else if (root !== undefined && this.#fnRunning()) {
        rare.linked = true
        listen(root, this)
      }
    }
    return controller.signal
  }

  [cancelScope](): CancelParent | undefined {
    return this.scopeAt(this.plan.steps.length)
  }

  get timerAtMs(): number {
    return this.startMs + this.plan.timeoutMs[this.#timerLayer]!
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
        this.depth = i + 1
      }
      if (i === 0) return plan.links[0]!(this.fn, this.outer) as Promise<unknown>
      result = i === n && plan.complete ? this.fn(this) : plan.links[i]!(this.fn, this.contextAt(i))
    } catch (error) {
      try {
        return Promise.resolve(this.#unwind(true, error))
      } catch (failure) {
        return Promise.reject(failure)
      }
    }
    this.#arm()
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
    if ((this.#expired & ((1 << layer) - 1)) !== 0) return true
    const root = parentOf(this.outer)
    return root?.aborted === true
  }

  /** What timeout step `layer` makes of `error`: a TimeoutError once it has run out. */
  timeoutFailure(layer: number, error: unknown): unknown {
    const expired = this.#rare?.reasons[layer]
    if (expired === undefined || error === expired) return error
    return new TimeoutError(this.plan.timeoutMs[layer]!, { cause: error })
  }

  /** The scope step `layer` runs in, for promise-based code. */
  scopeAt(layer: number): CancelParent | undefined {
    if (this.plan.earliest[layer]! < 0) return parentOf(this.outer)
    return this.#layerScope(layer)
  }

  /** The context step `layer` receives, for promise-based code. */
  contextAt(layer: number): PolicyContext {
    if (this.plan.earliest[layer]! < 0) return this.outer
    return this.#layerScope(layer)
  }

  /** Why the scope inside the first `layer` steps expired, or undefined while it has not. */
  reasonBelow(layer: number): unknown {
    const rare = this.#rare
    if (rare === undefined) return undefined
    for (const expired of rare.order) if (expired < layer) return rare.reasons[expired]
    return undefined
  }

  /** Timer list callback: the earliest running timeout ran out. */
  timerFired(): void {
    const layer = this.#timerLayer
    this.#timerLayer = -1
    const timeout = this.plan.steps[layer]!.timeout!
    const reason = new TimeoutError(timeout.timeoutMs)
    this.#expired |= 1 << layer
    const rare = this.#rareState()
    rare.reasons[layer] = reason
    rare.order.push(layer)
    const controller = rare.controller
    if (controller !== undefined && this.#fnRunning() && !controller.signal.aborted) {
      this.#unlinkRoot(rare)
      controller.abort(reason)
    }
    const scopes = rare.scopes
    for (let i = 0, n = scopes.length; i < n; i++) {
      const scope = scopes[i]!
      if (scope.layer > layer) scope.abort(reason)
    }
    timeout.report()
    this.#arm()
  }

  parentAborted(reason: unknown): void {
    const rare = this.#rare
    if (rare === undefined) return
    rare.linked = false
    const controller = rare.controller
    if (controller !== undefined && !controller.signal.aborted) controller.abort(reason)
  }

  handleEvent(event: Event): void {
    this.parentAborted((event.target as AbortSignal).reason)
  }

  // Passes an outcome out through the layers the call is inside, innermost first.
  #unwind(failed: boolean, outcome: unknown): unknown {
    this.#disarm()
    const plan = this.plan
    const steps = plan.steps
    let payload = outcome
    let fail = failed
    for (let i = this.depth - 1; i >= 0; i--) {
      this.depth = i
      const step = steps[i]!
      const slot = plan.slots[i]!
      const state = slot < 0 ? 0 : slot === 0 ? this.#state0 : this.#rare!.states[slot]!
      if (fail) {
        try {
          payload = step.exitError(this, i, state, payload)
        } catch (error) {
          payload = error
          continue
        }
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
      }
    }
    this.#finish()
    if (fail) throw payload
    return payload
  }

  // fn was called by this call and has not settled.
  #fnRunning(): boolean {
    return this.depth === this.plan.steps.length && this.plan.complete
  }

  // Puts the call in the list of its nearest running timeout.
  #arm(): void {
    const plan = this.plan
    if (!plan.hasTimeouts) return
    let layer = -1
    const expired = this.#expired
    if (expired === 0) layer = plan.earliest[this.depth]!
    else {
      let nearest = Number.POSITIVE_INFINITY
      for (let i = 0; i < this.depth; i++) {
        const ms = plan.timeoutMs[i]!
        if (ms < nearest && (expired & (1 << i)) === 0) {
          nearest = ms
          layer = i
        }
      }
    }
    if (layer < 0) return
    this.#timerLayer = layer
    plan.steps[layer]!.timeout!.list.add(this)
  }

  #disarm(): void {
    const layer = this.#timerLayer
    if (layer < 0) return
    this.plan.steps[layer]!.timeout!.list.remove(this)
    this.#timerLayer = -1
  }

  #finish(): void {
    const rare = this.#rare
    if (rare === undefined) return
    this.#unlinkRoot(rare)
    for (const scope of rare.scopes) scope.close()
  }

  #unlinkRoot(rare: Rare): void {
    if (!rare.linked) return
    rare.linked = false
    unlisten(parentOf(this.outer), this)
  }

  #rareState(): Rare {
    this.#rare ??= new Rare()
    return this.#rare
  }

  #layerScope(layer: number): LayerScope {
    const rare = this.#rareState()
    for (const scope of rare.scopes) if (scope.layer === layer) return scope
    const scope = new LayerScope(this, layer, parentOf(this.outer))
    rare.scopes.push(scope)
    return scope
  }
}

// The scope inside the first `layer` steps of a fused call, for promise-based code running
// there (a queued bulkhead, a retry's later attempts, a policy that is not fused): it aborts
// when one of those steps' timeouts runs out or the outer scope aborts.
class LayerScope extends CancelScope implements PolicyContext {
  readonly layer: number
  readonly #call: FusedCall

  constructor(call: FusedCall, layer: number, root: CancelParent | undefined) {
    super(root)
    this.#call = call
    this.layer = layer
  }

  get attempt(): number {
    return this.#call.outer.attempt
  }

  [cancelScope](): CancelParent {
    return this
  }

  protected override expiry(): unknown {
    return this.#call.reasonBelow(this.layer)
  }
}
