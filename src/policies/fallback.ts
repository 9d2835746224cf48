import { checkKnownOptions, checkObject, optionKeys, signalRefusal } from '../core/validate.js'
import { abortFailure } from './errors.js'
import { EventSource } from './events.js'
import { type FusablePolicy, type FusedStep, fusedStep, Later } from './fused.js'
import { fnRefusal, optionalFunction, predicateAnswer } from './options.js'
import {
  callDirectly,
  contextFor,
  executeInContext,
  executeThrough,
  type Next,
} from './pipeline.js'
import type { PolicyContext, PolicyFunction } from './types.js'

/** Computes the substitute answer from the error that made the call fail. */
export type FallbackFunction<R> = (error: unknown, context: PolicyContext) => R | PromiseLike<R>

/** What a fallback reports through its `events`. */
export interface FallbackEvent {
  /** The call failed and the substitute answer was used instead. */
  readonly type: 'fallback'
  /** The error that was replaced. */
  readonly error: unknown
}

/** Options of {@link fallback}. */
export interface FallbackOptions {
  /**
   * Which errors are replaced by the fallback; others are rethrown. Whatever it says, a call
   * whose own signal was aborted is never replaced: the caller has stopped waiting, and a
   * substitute answer would hide the cancellation from it. Called synchronously: one that
   * returns a promise (an async function) makes the call reject with `InvalidOptionError`
   * naming `fallback.shouldFallback`, as the promise would otherwise read as true.
   * @default () => true
   */
  readonly shouldFallback?: ((error: unknown) => boolean) | undefined
}

/**
 * A fallback policy: `execute` resolves to the function's value, or to the fallback's when the
 * function fails. Its result type is therefore `T | R`, which is why it is not a plain
 * `Policy`; `pipeline(fallback(...), ...)` keeps that type.
 */
export interface FallbackPolicy<R> {
  /**
   * Runs `fn`; on a failure `shouldFallback` accepts, resolves to the fallback instead. A signal
   * that is already aborted rejects with `AbortedError` (`DeadlineExceededError` with
   * `started: false` when its reason is one) and `fn` does not run. An abort during
   * the call reaches `fn` through its context's signal; the fallback does not race `fn` (it
   * holds no timer or slot to free), and rethrows `fn`'s error instead of replacing it.
   */
  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T | R>
  /** Fallbacks taken; costs nothing while nobody listens. */
  readonly events: EventSource<FallbackEvent>
}

/** The option keys `fallback()` takes (internal: not exported from the package root). */
export const fallbackOptions = optionKeys<FallbackOptions>({ shouldFallback: true })

/**
 * Creates a fallback policy: when the call fails, answer with `valueOrFn` (a value, or a
 * function of the error and context returning one) instead. Put it outermost, around the
 * other policies, so it answers for an open circuit or a full bulkhead as well. A function
 * value is always called; to fall back to a function itself, return it from a function. An
 * unknown (misspelt) option is refused with `InvalidOptionError` (code `INVALID_OPTION`).
 *
 * @example
 * ```ts
 * import { circuitBreaker, fallback, pipeline } from 'breakwater'
 * const prices = pipeline(fallback([] as string[]), circuitBreaker())
 * const list = await prices.execute(async () => ['a', 'b']) // string[]
 * ```
 */
export function fallback<R>(
  valueOrFn: R | FallbackFunction<R>,
  options: FallbackOptions = {},
): FallbackPolicy<R> {
  checkKnownOptions('fallback', checkObject('fallback', options), fallbackOptions)
  const shouldFallback = optionalFunction<(error: unknown) => boolean, undefined>(
    'fallback.shouldFallback',
    options.shouldFallback,
    undefined,
  )
  return new FallbackPolicyImpl(valueOrFn, shouldFallback)
}

class FallbackPolicyImpl<R> implements FallbackPolicy<R>, FusablePolicy {
  readonly events = new EventSource<FallbackEvent>()
  readonly #valueOrFn: R | FallbackFunction<R>
  readonly #shouldFallback: ((error: unknown) => boolean) | undefined
  // In a fused pipeline a value passes untouched; a failure is replaced as in `#run`, and a
  // substitute that is still a promise is waited for outside the fused call.
  readonly [fusedStep]: FusedStep = {
    enter: () => 0,
    exitValue: () => {},
    exitError: (call, layer, _state, error) => {
      if (call.abortedAt(layer)) throw error
      if (!this.#fallsBack(error)) throw error
      if (this.events.hasListeners) this.events.emit({ type: 'fallback', error })
      const valueOrFn = this.#valueOrFn
      const value =
        typeof valueOrFn === 'function'
          ? (valueOrFn as FallbackFunction<R>)(error, call.contextAt(layer))
          : valueOrFn
      return isThenable(value) ? new Later(Promise.resolve(value)) : value
    },
    stateful: false,
    readsDeadline: false,
    clock: undefined,
    timeout: undefined,
  }

  constructor(
    valueOrFn: R | FallbackFunction<R>,
    shouldFallback: ((error: unknown) => boolean) | undefined,
  ) {
    this.#valueOrFn = valueOrFn
    this.#shouldFallback = shouldFallback
  }

  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T | R> {
    if (typeof fn !== 'function') return fnRefusal('fallback.execute(fn)', fn)
    const refused = signalRefusal('fallback.execute(signal)', signal)
    if (refused !== undefined) return refused
    return this.#run(callDirectly, fn, contextFor(signal))
  }

  [executeInContext]<T>(fn: PolicyFunction<T>, context: PolicyContext): Promise<T | R> {
    return this.#run(callDirectly, fn, context)
  }

  [executeThrough]<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T | R> {
    return this.#run(next, fn, context)
  }

  // Whether `error` is replaced. shouldFallback is called synchronously, and a promise is truthy:
  // an async one would make every failure fall back, those it meant to let through included.
  // Its promise is refused as a bug surfaced (and marked handled: the refusal says it all).
  #fallsBack(error: unknown): boolean {
    const shouldFallback = this.#shouldFallback
    if (shouldFallback === undefined) return true
    return predicateAnswer('fallback.shouldFallback', shouldFallback(error))
  }

  async #run<T>(next: Next, fn: PolicyFunction<T>, context: PolicyContext): Promise<T | R> {
    // A caller who already gave up gets AbortedError and fn never runs, as with every policy
    // (next may call fn directly, which would not look at the signal).
    if (context.signal.aborted) throw abortFailure(context.signal.reason, false)
    try {
      return await next(fn, context)
    } catch (error) {
      if (context.signal.aborted) throw error
      if (!this.#fallsBack(error)) throw error
      if (this.events.hasListeners) this.events.emit({ type: 'fallback', error })
      const valueOrFn = this.#valueOrFn
      return typeof valueOrFn === 'function'
        ? await (valueOrFn as FallbackFunction<R>)(error, context)
        : valueOrFn
    }
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  )
}
