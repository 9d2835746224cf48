import { InvalidOptionError } from '../core/errors.js'
import { signalRefusal } from '../core/validate.js'
import { parentOf } from './cancel-scope.js'
import { abortFailure } from './errors.js'
import type { FallbackPolicy } from './fallback.js'
import { FusedPlan } from './fused.js'
import { fnRefusal } from './options.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from './types.js'

/**
 * Key of an optional method, `[executeInContext](fn, context)`, through which a policy that
 * does not change the context (circuit breaker, bulkhead, fallback, pipeline) receives its
 * caller's context as is. `pipeline()` uses it to hand the outer retry's `attempt` down to the
 * function and to skip building a context object per call. Internal: not exported from the
 * package root. `Symbol.for` so that two installed copies still take the fast path.
 */
export const executeInContext: unique symbol = Symbol.for('breakwater.executeInContext')

/**
 * Key of an optional method, `[executeThrough](next, fn, context)`: the same as
 * {@link executeInContext}, but the policy calls `next(fn, innerContext)` where it would call
 * `fn(innerContext)`. `pipeline()` uses it to chain policies without allocating a closure per
 * policy per call. A separate key (not an extra parameter) so that a copy of breakwater that
 * predates it is never handed a `next` it would ignore.
 */
export const executeThrough: unique symbol = Symbol.for('breakwater.executeThrough')

/** The rest of a chain: runs `fn` in `context` through the policies further in. */
export type Next = <T>(fn: PolicyFunction<T>, context: PolicyContext) => PromiseLike<T> | T

/** A policy that can run a function in a context it is given (see {@link executeInContext}). */
export interface ContextAwarePolicy extends Policy {
  /** Runs `fn` under this policy, handing it `context` unchanged. */
  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T>
}

/** A policy that can also hand its work to the rest of a chain (see {@link executeThrough}). */
export interface ChainablePolicy extends ContextAwarePolicy {
  /** Runs `next(fn, innerContext)` under this policy. */
  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T>
}

/** The end of every chain: calls `fn` itself. */
export function callDirectly<T>(fn: PolicyFunction<T>, context: PolicyContext): PromiseLike<T> | T {
  return fn(context)
}

/** The context of a call made without a signal; shared, so such calls allocate none. */
export const rootContext: PolicyContext = Object.freeze({ signal: neverAbortedSignal, attempt: 1 })

/** The context a policy hands to `fn` when called as `execute(fn, signal)`. */
export function contextFor(signal: AbortSignal | undefined): PolicyContext {
  return signal === undefined || signal === neverAbortedSignal
    ? rootContext
    : { signal, attempt: 1 }
}

/** A pipeline whose outermost policy is a `fallback()`: it resolves to `T | R`. */
export interface FallbackPipeline<R> {
  /** Runs `fn` through the pipeline; resolves to its value or the fallback's. */
  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T | R>
}

type Link = <T>(fn: PolicyFunction<T>, context: PolicyContext) => Promise<T>

/**
 * Composes policies into one: the first is the outermost, so
 * `pipeline(a, b, c).execute(fn)` runs `a.execute(() => b.execute(() => c.execute(fn)))`.
 * The chain is built once here. A call through breakwater's own policies is fused: their
 * synchronous admission steps run outermost first, `fn` runs once with a single reaction on
 * its promise, and their exit steps run innermost first when it settles, so a call in flight
 * keeps one small state object and one promise (about 300 bytes) whatever the number of
 * policies. Calls that need more (a retry after a failure, a queueing bulkhead, a hard
 * timeout, a caller's signal, a deadline) leave the fused path where they need to and behave
 * exactly as before. Other policies are chained through one small closure each; one that hands
 * its function less than a context (`{ signal }` only, or nothing) has the rest filled in from
 * the context around it, so `fn` still sees a signal and the attempt number.
 *
 * The recommended order for calls to a downstream service is
 * `pipeline(timeout(overallMs), retry(), circuitBreaker(), timeout(perTryMs), bulkhead())`:
 * - `timeout(overallMs)` outermost bounds everything the caller waits for, backoff sleeps
 *   included, and its signal aborts a retry's sleep;
 * - `retry()` outside the breaker, so every attempt asks the breaker again, and an open
 *   circuit's `BrokenCircuitError` (never retried) ends the retries at once;
 * - `circuitBreaker()` outside the per-try timeout, so a timed-out attempt is counted as the
 *   failure it is (a timeout outside the breaker would only abort, and an aborted call is
 *   neutral for the breaker; so is an attempt the caller's deadline cut off, even when the
 *   per-try timeout clamped to that deadline is what ended it);
 * - `timeout(perTryMs)` outside the bulkhead, so time spent queueing counts against the try;
 *   the bulkhead still holds its slot until the function really settles, even after a hard
 *   timeout gave up on it;
 * - `bulkhead()` innermost, so it limits the calls actually in flight to the downstream;
 *   its `BulkheadRejectedError` is local load shedding, neutral for the breaker and never
 *   retried.
 *
 * A `fallback()` goes first of all, around the whole chain (it is then the pipeline's type).
 * With no policies, `pipeline()` runs `fn` as is, but refuses a signal that already aborted
 * without running it, as every policy does.
 *
 * The function sees the `attempt` of the innermost policy that reports one above 1 (a retry
 * that has retried), else the outer one: a timeout inside a retry does not reset it to 1.
 *
 * @example
 * ```ts
 * import { bulkhead, circuitBreaker, pipeline, retry, timeout } from 'breakwater'
 * const payments = pipeline(
 *   timeout(2_000),
 *   retry({ maxAttempts: 3 }),
 *   circuitBreaker({ window: { kind: 'count', size: 50, failureRateThreshold: 0.5 } }),
 *   timeout(500),
 *   bulkhead({ maxConcurrent: 20 }),
 * )
 * const receipt = await payments.execute(({ signal }) => fetch('http://payments/charge', { signal }))
 * ```
 */
export function pipeline(...policies: readonly Policy[]): Policy
/** A pipeline whose outermost policy is a fallback resolves to the fallback's type too. */
export function pipeline<R>(
  outer: FallbackPolicy<R>,
  ...inner: readonly Policy[]
): FallbackPipeline<R>
export function pipeline(
  ...policies: ReadonlyArray<Policy | FallbackPolicy<unknown>>
): Policy & FallbackPipeline<unknown> {
  for (let i = 0; i < policies.length; i++) {
    const policy = policies[i] as { execute?: unknown } | null | undefined
    if (typeof policy !== 'object' || policy === null || typeof policy.execute !== 'function')
      throw new InvalidOptionError(`pipeline.policies[${i}]`, 'a policy', policy)
  }
  // A nested pipeline runs as if its policies were listed in its place; flattening it lets
  // the fused path cover them too.
  const flat: Policy[] = []
  for (const policy of policies) {
    if (policy instanceof Pipeline) flat.push(...policy.policies)
    else flat.push(policy as Policy)
  }
  // links[i] runs policy i and everything inside it; nexts[i] is what policy i hands work to.
  const links: Link[] = []
  const nexts: Next[] = []
  // Only an empty pipeline keeps this head; a non-empty one leaves the abort check to its policies.
  let head: Link = runUnlessAborted
  for (let i = flat.length - 1; i >= 0; i--) {
    nexts[i] = i === flat.length - 1 ? callDirectly : head
    head = link(flat[i]!, i === flat.length - 1 ? undefined : head)
    links[i] = head
  }
  return new Pipeline(flat, head, FusedPlan.create(flat, links, nexts))
}

class Pipeline implements ContextAwarePolicy {
  readonly policies: readonly Policy[]
  readonly #head: Link
  readonly #plan: FusedPlan | undefined

  constructor(policies: readonly Policy[], head: Link, plan: FusedPlan | undefined) {
    this.policies = policies
    this.#head = head
    this.#plan = plan
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    if (typeof fn !== 'function') return fnRefusal('pipeline.execute(fn)', fn)
    const refused = signalRefusal('pipeline.execute(signal)', signal)
    if (refused !== undefined) return refused
    const plan = this.#plan
    if (plan !== undefined) return plan.run(fn, contextFor(signal))
    return this.#head(fn, contextFor(signal))
  }

  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
    const plan = this.#plan
    if (plan !== undefined) return plan.run(fn, context)
    return this.#head(fn, context)
  }
}

// An empty pipeline: fn under the caller's context, refused as every policy refuses a call whose
// caller already aborted (AbortedError, or the deadline's error), so that removing the last
// policy from a pipeline does not start running calls nobody waits for.
async function runUnlessAborted<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T> {
  const parent = parentOf(context)
  if (parent?.aborted) throw abortFailure(parent.reason, false)
  return fn(context)
}

function isContextAware(policy: Policy): policy is ContextAwarePolicy {
  return typeof (policy as Partial<ContextAwarePolicy>)[executeInContext] === 'function'
}

// The context handed inward by a policy that builds its own: its signal, and the outer attempt
// unless the policy itself is on a later attempt. A policy breakwater does not know may hand fn
// less than a PolicyContext (cockatiel's timeout, bulkhead and breaker hand { signal }; a
// hand-written one may call fn()): what it leaves out is the outer context's, so fn still gets a
// signal and a numeric attempt.
function merge(inner: PolicyContext | undefined, outer: PolicyContext): PolicyContext {
  if (inner === undefined || inner === null) return outer
  const attempt = inner.attempt
  if (attempt > 1 || (attempt === 1 && outer.attempt === 1)) {
    if (inner.signal !== undefined) return inner
  }
  return {
    signal: inner.signal ?? outer.signal,
    attempt: attempt > 1 ? attempt : outer.attempt,
  }
}

function isChainable(policy: Policy): policy is ChainablePolicy {
  return typeof (policy as Partial<ChainablePolicy>)[executeThrough] === 'function'
}

function link(policy: Policy, next: Link | undefined): Link {
  if (next !== undefined && isChainable(policy)) {
    return (fn, context) => policy[executeThrough](next, fn, context)
  }
  if (isContextAware(policy)) {
    if (next === undefined) return (fn, context) => policy[executeInContext](fn, context)
    return (fn, context) => policy[executeInContext]((inner) => next(fn, inner), context)
  }
  if (next === undefined) {
    return (fn, context) => policy.execute((inner) => fn(merge(inner, context)), signalOf(context))
  }
  return (fn, context) =>
    policy.execute((inner) => next(fn, merge(inner, context)), signalOf(context))
}

// A policy given no signal can skip its abort handling; never-aborted is the same as none.
function signalOf(context: PolicyContext): AbortSignal | undefined {
  return context.signal === neverAbortedSignal ? undefined : context.signal
}
