import { maxTimerDelayMs } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkKnownOptions, checkObject, optionKeys } from '../core/validate.js'
import { optionalFunction, optionalNumber, optionalOneOf, refuseDroppedPromise } from './options.js'
import type { RandomSource } from './random.js'

/**
 * How a backoff delay is randomised (see the AWS Architecture Blog, "Exponential Backoff And
 * Jitter"). With `ceiling(n) = min(maxDelayMs, baseDelayMs * factor^n)` for retry `n` (0 for
 * the first retry), the delay lies within:
 * - `'full'`: `[0, ceiling(n)]`, uniformly. Spreads retries best; the default.
 * - `'equal'`: `[ceiling(n) / 2, ceiling(n)]`: half fixed, half random.
 * - `'decorrelated'`: `min(maxDelayMs, random(baseDelayMs, 3 * previousDelay))` with the
 *   previous delay starting at `baseDelayMs`, so within
 *   `[min(maxDelayMs, baseDelayMs), min(maxDelayMs, baseDelayMs * 3^(n + 1))]`. AWS's
 *   multiplier 3 is part of the algorithm; `factor` does not apply.
 * - `'none'`: exactly `ceiling(n)`.
 */
export type Jitter = 'full' | 'equal' | 'decorrelated' | 'none'

const jitterKinds: readonly Jitter[] = ['full', 'equal', 'decorrelated', 'none']

/** Options of {@link exponentialBackoff} (and the backoff part of `retry()`). */
export interface BackoffOptions {
  /**
   * The delay ceiling of the first retry, in milliseconds.
   * @default 100
   */
  readonly baseDelayMs?: number | undefined
  /**
   * How much the ceiling grows per retry (>= 1).
   * @default 2
   */
  readonly factor?: number | undefined
  /**
   * The cap on any delay, in milliseconds (>= baseDelayMs, at most 2^31 - 1).
   * @default 30_000, or baseDelayMs when that is larger
   */
  readonly maxDelayMs?: number | undefined
  /**
   * How the delay is randomised; see {@link Jitter}.
   * @default 'full'
   */
  readonly jitter?: Jitter | undefined
  /**
   * The random source, returning numbers in `[0, 1)`. Pass `seededRandom(seed)` for
   * reproducible delays.
   * @default Math.random
   */
  readonly random?: RandomSource | undefined
}

/** Computes backoff delays. Stateless, so one instance can serve any number of callers. */
export interface Backoff {
  /** The jitter kind in use. */
  readonly jitter: Jitter
  /**
   * The delay before retry number `retry` (0 for the first retry; a negative number counts as
   * 0), in milliseconds. Throws `InvalidOptionError` for a `retry` or `previousDelayMs` that
   * is not a number (NaN included).
   * @param previousDelayMs The delay this function returned for the previous retry; only
   *   `'decorrelated'` jitter reads it. Omit it for the first retry.
   */
  delayMs(retry: number, previousDelayMs?: number): number
  /** The deterministic ceiling `min(maxDelayMs, baseDelayMs * factor^retry)`. */
  ceilingMs(retry: number): number
}

class ExponentialBackoff implements Backoff {
  readonly jitter: Jitter
  readonly #baseMs: number
  readonly #factor: number
  readonly #capMs: number
  readonly #random: RandomSource
  /** What `random` is called in errors (`backoff.random`, `retry.random`). */
  readonly #randomOption: string

  constructor(
    baseMs: number,
    factor: number,
    capMs: number,
    jitter: Jitter,
    random: RandomSource,
    randomOption: string,
  ) {
    this.#baseMs = baseMs
    this.#factor = factor
    this.#capMs = capMs
    this.jitter = jitter
    this.#random = random
    this.#randomOption = randomOption
  }

  ceilingMs(retry: number): number {
    // A NaN here would become a NaN delay (a timer Node fires after 1 ms): a caller's bug.
    if (typeof retry !== 'number' || Number.isNaN(retry))
      throw new InvalidOptionError('backoff.delayMs(retry)', 'a retry number >= 0', retry)
    // factor^retry overflows to Infinity for large retry counts; min() then yields the cap,
    // except for a zero base, where 0 * Infinity would be NaN. And 1 ** Infinity is NaN: a
    // factor of 1 never grows the ceiling, whatever the retry number.
    const baseMs = this.#baseMs
    if (baseMs === 0) return 0
    const growth = this.#factor === 1 ? 1 : this.#factor ** Math.max(0, retry)
    return Math.min(this.#capMs, baseMs * growth)
  }

  delayMs(retry: number, previousDelayMs?: number): number {
    const ceilingMs = this.ceilingMs(retry)
    switch (this.jitter) {
      case 'none':
        return ceilingMs
      case 'full':
        return ceilingMs * this.#unit()
      case 'equal': {
        const half = ceilingMs / 2
        return half + half * this.#unit()
      }
      case 'decorrelated': {
        if (
          previousDelayMs !== undefined &&
          (typeof previousDelayMs !== 'number' || Number.isNaN(previousDelayMs))
        ) {
          throw new InvalidOptionError(
            'backoff.delayMs(previousDelayMs)',
            'a delay in milliseconds, or undefined',
            previousDelayMs,
          )
        }
        const base = this.#baseMs
        const previous = Math.max(base, previousDelayMs ?? base)
        const r = this.#unit()
        // A draw of 0 is the range's lower bound, base: computed, it would be NaN when 3 *
        // previous overflows to Infinity (a previous delay past 6e307), as Infinity * 0 is.
        return r === 0
          ? Math.min(this.#capMs, base)
          : Math.min(this.#capMs, base + (previous * 3 - base) * r)
      }
    }
  }

  // Clamped (NaN to 0) so that a sloppy user-supplied source cannot push a delay out of bounds.
  // A promise (an async source) is refused instead: read as NaN it became 0, so full jitter
  // retried at once, every time, without a word (and a rejected one went unhandled).
  #unit(): number {
    const r: unknown = this.#random()
    if (typeof r !== 'number') refuseDroppedPromise(this.#randomOption, r, 'a number in [0, 1)')
    return (r as number) > 0 ? Math.min(r as number, 1) : 0
  }
}

/**
 * The keys of {@link BackoffOptions}, for a capability that takes a backoff option bag of its
 * own and hands it to {@link resolveBackoff} (which does not look at unknown keys).
 */
export const backoffOptions: ReadonlySet<string> = optionKeys<BackoffOptions>({
  baseDelayMs: true,
  factor: true,
  maxDelayMs: true,
  jitter: true,
  random: true,
})

/**
 * Exponential backoff with jitter: delay ceilings of `baseDelayMs * factor^n` capped at
 * `maxDelayMs`, randomised as {@link Jitter} describes (full jitter by default). An unknown
 * (misspelt) option is refused with `InvalidOptionError` (code `INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { exponentialBackoff, seededRandom } from 'breakwater'
 * const backoff = exponentialBackoff({ jitter: 'none' })
 * backoff.delayMs(0) // 100
 * backoff.delayMs(3) // 800
 * exponentialBackoff({ random: seededRandom(1) }).delayMs(2) // somewhere in [0, 400]
 * ```
 */
export function exponentialBackoff(options: BackoffOptions = {}): Backoff {
  checkKnownOptions('backoff', checkObject('backoff', options), backoffOptions)
  return resolveBackoff('backoff', options)
}

/**
 * Validates backoff options (named `<prefix>.<option>` in errors) and builds the backoff.
 * Other keys are not looked at: `retry()` hands its whole options here. A caller that takes a
 * backoff option bag of its own refuses unknown keys itself.
 */
export function resolveBackoff(prefix: string, options: BackoffOptions): Backoff {
  const baseMs = optionalNumber(
    `${prefix}.baseDelayMs`,
    options.baseDelayMs,
    100,
    0,
    maxTimerDelayMs,
  )
  const factor = optionalNumber(`${prefix}.factor`, options.factor, 2, 1, 1_000)
  const capMs = optionalNumber(
    `${prefix}.maxDelayMs`,
    options.maxDelayMs,
    Math.max(30_000, baseMs),
    0,
    maxTimerDelayMs,
  )
  if (capMs < baseMs) {
    throw new InvalidOptionError(
      `${prefix}.maxDelayMs`,
      `a number >= baseDelayMs (${baseMs})`,
      capMs,
    )
  }
  const jitter = optionalOneOf(`${prefix}.jitter`, options.jitter, 'full', jitterKinds)
  const random = optionalFunction<RandomSource>(`${prefix}.random`, options.random, Math.random)
  return new ExponentialBackoff(baseMs, factor, capMs, jitter, random, `${prefix}.random`)
}
