import { type Clock, systemClock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkNumber,
  checkOneOf,
  isDroppedPromise,
} from '../core/validate.js'

// The policies' optional options, read one way: only `undefined` (left out) means the default.
// Factories used to write `check(name, options.x ?? fallback)`, which took `null` for the
// default too, although the docs exempt only undefined and some options refused null; every
// optional option now goes through `optional` below. Run once per factory call, never per
// operation.

/** Checks a given (non-null) value of the option named `option`, throwing InvalidOptionError. */
export type OptionCheck<T> = (option: string, value: unknown) => T

/**
 * The value of an optional option: `fallback` when `value` is undefined, else `check`'s answer.
 * `null` is refused with `InvalidOptionError` naming `option`: `<what check expects> or left
 * out` (what `check` says of null, so the message words the option as its other refusals do).
 *
 * @example
 * ```ts
 * const maxAttempts = optional('retry.maxAttempts', options.maxAttempts, 3, (o, v) =>
 *   checkInteger(o, v, 1),
 * )
 * ```
 */
export function optional<T, F = T>(
  option: string,
  value: unknown,
  fallback: F,
  check: OptionCheck<T>,
): T | F {
  if (value === undefined) return fallback
  if (value !== null) return check(option, value)
  let expected = 'a value'
  try {
    check(option, null)
  } catch (error) {
    if (!(error instanceof InvalidOptionError)) throw error
    expected = error.expected
  }
  throw new InvalidOptionError(option, `${expected} or left out`, null)
}

/** {@link optional} for a number in [min, max] (see `checkNumber`). */
export function optionalNumber<F = number>(
  option: string,
  value: unknown,
  fallback: F,
  min: number,
  max?: number,
): number | F {
  return optional(option, value, fallback, (o, v) => checkNumber(o, v, min, max))
}

/** {@link optional} for an integer in [min, max] (see `checkInteger`). */
export function optionalInteger(
  option: string,
  value: unknown,
  fallback: number,
  min: number,
  max?: number,
): number {
  return optional(option, value, fallback, (o, v) => checkInteger(o, v, min, max))
}

/** {@link optional} for one of `allowed` (see `checkOneOf`). */
export function optionalOneOf<T extends string>(
  option: string,
  value: unknown,
  fallback: T,
  allowed: readonly T[],
): T {
  return optional(option, value, fallback, (o, v) => checkOneOf(o, v, allowed))
}

/** {@link optional} for a function (see `checkFunction`). */
export function optionalFunction<T extends (...args: never[]) => unknown, F = T>(
  option: string,
  value: unknown,
  fallback: F,
): T | F {
  return optional(option, value, fallback, (o, v) => checkFunction<T>(o, v))
}

/** {@link optional} for a {@link Clock} (see `checkClock`); `systemClock` unless told. */
export function optionalClock(
  option: string,
  value: unknown,
  fallback: Clock = systemClock,
): Clock {
  return optional(option, value, fallback, checkClock)
}

/** {@link optional} for a string, such as a policy's `name`; undefined when left out. */
export function optionalString(option: string, value: unknown): string | undefined {
  return optional(option, value, undefined, checkString)
}

function checkString(option: string, value: unknown): string {
  if (typeof value !== 'string') throw new InvalidOptionError(option, 'a string', value)
  return value
}

/**
 * The rejection of a policy's `execute` given an `fn` that is not a function, naming the
 * parameter (`retry.execute(fn)`): rejected like a refused signal, before anything runs, so a
 * circuit breaker does not count the caller's bug as a downstream failure nor a fallback hide it
 * behind its value. Unlike the options above it guards every call: the caller tests
 * `typeof fn !== 'function'` inline and only a refusal comes here.
 *
 * @example
 * ```ts
 * if (typeof fn !== 'function') return fnRefusal('retry.execute(fn)', fn)
 * ```
 */
export function fnRefusal(option: string, value: unknown): Promise<never> {
  return Promise.reject(new InvalidOptionError(option, 'a function', value))
}

/**
 * The answer of a user predicate the policies call synchronously and read as a boolean
 * (`retry.shouldRetry`, `circuitBreaker.isFailure`, `fallback.shouldFallback`), named `option`.
 * A promise (an async predicate, from JavaScript or cast past the types) is truthy, so it would
 * read as true for every error, whatever it meant to say: it is refused with
 * `InvalidOptionError` instead, and its outcome dropped (a rejection would otherwise be
 * unhandled, which ends a Node process). Other answers keep their truthiness. Called on the
 * failure path only, where the predicate runs anyway; a boolean costs a `typeof`, no allocation.
 *
 * @example
 * ```ts
 * if (!predicateAnswer('retry.shouldRetry', shouldRetry(error, attempt))) throw error
 * ```
 */
export function predicateAnswer(option: string, answer: unknown): boolean {
  refuseDroppedPromise(option, answer, 'true or false')
  return Boolean(answer)
}

/**
 * Throws `InvalidOptionError` naming `option` when a synchronous user callback answered a
 * promise (its outcome dropped, see `isDroppedPromise`); `returning` says what it should
 * answer instead (`'true or false'`, `'a number in [0, 1)'`). Any other answer passes.
 */
export function refuseDroppedPromise(option: string, answer: unknown, returning: string): void {
  if (isDroppedPromise(answer)) {
    throw new InvalidOptionError(
      option,
      `a function returning ${returning}, not a promise (it is not awaited)`,
      answer,
    )
  }
}
