import { InvalidOptionError } from '../core/errors.js'
import { checkKnownOptions, checkObject, checkOneOf, optionKeys } from '../core/validate.js'
import { optional, optionalInteger } from './options.js'

/**
 * Opens the circuit after `failures` failures in a row; any success starts the count again.
 * The simplest window, and the right one for low-traffic downstreams where a rate means little.
 */
export interface ConsecutiveWindowOptions {
  /** Selects this window. */
  readonly kind: 'consecutive'
  /**
   * Failures in a row that open the circuit.
   * @default 5
   */
  readonly failures?: number | undefined
}

/**
 * Opens the circuit when the share of failures among the last `size` calls reaches
 * `failureRateThreshold`, once at least `minimumCalls` calls are in the window.
 */
export interface CountWindowOptions {
  /** Selects this window. */
  readonly kind: 'count'
  /**
   * How many of the most recent calls the rate is computed over.
   * @default 100
   */
  readonly size?: number | undefined
  /**
   * Failure rate in (0, 1] at or above which the circuit opens (0.5 = half the calls failed).
   * @default 0.5
   */
  readonly failureRateThreshold?: number | undefined
  /**
   * Calls the window must hold before the rate is trusted; fewer never open the circuit.
   * @default size
   */
  readonly minimumCalls?: number | undefined
}

/**
 * Opens the circuit when the share of failures among the calls that finished in the last
 * `durationMs` reaches `failureRateThreshold`, once at least `minimumCalls` calls are counted.
 * Time is cut into `buckets` slices that expire whole, so the memory is fixed and each call
 * costs O(1); the window's effective length therefore moves in steps of `durationMs / buckets`.
 */
export interface TimeWindowOptions {
  /** Selects this window. */
  readonly kind: 'time'
  /**
   * Length of the window in milliseconds.
   * @default 60_000
   */
  readonly durationMs?: number | undefined
  /**
   * Number of slices the window is cut into (more = smoother expiry, more memory).
   * @default 10
   */
  readonly buckets?: number | undefined
  /**
   * Failure rate in (0, 1] at or above which the circuit opens.
   * @default 0.5
   */
  readonly failureRateThreshold?: number | undefined
  /**
   * Calls the window must hold before the rate is trusted; fewer never open the circuit.
   * @default 20
   */
  readonly minimumCalls?: number | undefined
}

/** How a circuit breaker decides that the downstream is unhealthy. */
export type BreakerWindowOptions = ConsecutiveWindowOptions | CountWindowOptions | TimeWindowOptions

/**
 * The failure record of a closed circuit. Internal to the breaker: it is not exported from
 * the package root.
 */
export interface BreakerWindow {
  /** Records one finished call; returns true when the circuit should open. */
  record(failure: boolean, nowMs: number): boolean
  /** Forgets every recorded call. */
  reset(nowMs: number): void
}

// Per kind, not the union's keys: a count window's `durationMs` would otherwise pass unused.
/** The option keys a breaker window takes, by kind (internal: not exported from the root). */
export const windowOptions: Readonly<Record<BreakerWindowOptions['kind'], ReadonlySet<string>>> = {
  consecutive: optionKeys<ConsecutiveWindowOptions>({ kind: true, failures: true }),
  count: optionKeys<CountWindowOptions>({
    kind: true,
    size: true,
    failureRateThreshold: true,
    minimumCalls: true,
  }),
  time: optionKeys<TimeWindowOptions>({
    kind: true,
    durationMs: true,
    buckets: true,
    failureRateThreshold: true,
    minimumCalls: true,
  }),
}

/**
 * Validates `options` (naming each bad field under `prefix`) and builds the window. A key the
 * window's `kind` does not take (misspelt, or another kind's) is refused with
 * `InvalidOptionError`.
 */
export function createBreakerWindow(
  options: BreakerWindowOptions,
  prefix: string,
  nowMs: number,
): BreakerWindow {
  checkObject(prefix, options)
  const kind = checkOneOf(`${prefix}.kind`, options.kind, ['consecutive', 'count', 'time'])
  checkKnownOptions(prefix, options, windowOptions[kind])
  if (kind === 'consecutive') {
    const o = options as ConsecutiveWindowOptions
    return new ConsecutiveWindow(optionalInteger(`${prefix}.failures`, o.failures, 5, 1))
  }
  const threshold = optional(
    `${prefix}.failureRateThreshold`,
    (options as CountWindowOptions | TimeWindowOptions).failureRateThreshold,
    0.5,
    checkFailureRate,
  )
  if (kind === 'count') {
    const o = options as CountWindowOptions
    const size = optionalInteger(`${prefix}.size`, o.size, 100, 1, 1_000_000)
    const minimumCalls = optionalInteger(`${prefix}.minimumCalls`, o.minimumCalls, size, 1, size)
    return new CountWindow(size, threshold, minimumCalls)
  }
  const o = options as TimeWindowOptions
  const durationMs = optionalInteger(`${prefix}.durationMs`, o.durationMs, 60_000, 1)
  const buckets = optionalInteger(
    `${prefix}.buckets`,
    o.buckets,
    10,
    1,
    Math.min(durationMs, 10_000),
  )
  const minimumCalls = optionalInteger(`${prefix}.minimumCalls`, o.minimumCalls, 20, 1)
  return new TimeWindow(durationMs / buckets, buckets, threshold, minimumCalls, nowMs)
}

// A rate in (0, 1], said so by every refusal (checkNumber's [0, 1] would invite a 0). A threshold
// of 0 would open on the first counted call even when it succeeded.
function checkFailureRate(option: string, value: unknown): number {
  if (typeof value !== 'number' || !(value > 0) || value > 1)
    throw new InvalidOptionError(option, 'a number in (0, 1]', value)
  return value
}

class ConsecutiveWindow implements BreakerWindow {
  readonly #limit: number
  #count = 0

  constructor(limit: number) {
    this.#limit = limit
  }

  record(failure: boolean): boolean {
    if (!failure) {
      this.#count = 0
      return false
    }
    return ++this.#count >= this.#limit
  }

  reset(): void {
    this.#count = 0
  }
}

// A ring of the last `size` outcomes with running totals, so recording is O(1) and never
// allocates.
class CountWindow implements BreakerWindow {
  readonly #outcomes: Uint8Array
  readonly #threshold: number
  readonly #minimumCalls: number
  #next = 0
  #calls = 0
  #failures = 0

  constructor(size: number, threshold: number, minimumCalls: number) {
    this.#outcomes = new Uint8Array(size)
    this.#threshold = threshold
    this.#minimumCalls = minimumCalls
  }

  record(failure: boolean): boolean {
    const outcomes = this.#outcomes
    const i = this.#next
    if (this.#calls === outcomes.length) this.#failures -= outcomes[i]!
    else this.#calls++
    outcomes[i] = failure ? 1 : 0
    if (failure) this.#failures++
    this.#next = i + 1 === outcomes.length ? 0 : i + 1
    // Division, not failures >= threshold * calls: it is correctly rounded, so 3 of 30 meets 0.1.
    return this.#calls >= this.#minimumCalls && this.#failures / this.#calls >= this.#threshold
  }

  reset(): void {
    this.#outcomes.fill(0)
    this.#next = 0
    this.#calls = 0
    this.#failures = 0
  }
}

// Fixed buckets indexed by absolute bucket number (floor(now / bucketMs)) modulo the ring
// size. Moving forward clears the buckets skipped over, at most `buckets` of them, so the
// cost per call is O(1) amortised whatever the gap between calls.
class TimeWindow implements BreakerWindow {
  readonly #bucketMs: number
  readonly #calls: Float64Array
  readonly #failures: Float64Array
  readonly #threshold: number
  readonly #minimumCalls: number
  #head: number
  #totalCalls = 0
  #totalFailures = 0

  constructor(
    bucketMs: number,
    buckets: number,
    threshold: number,
    minimumCalls: number,
    nowMs: number,
  ) {
    this.#bucketMs = bucketMs
    this.#calls = new Float64Array(buckets)
    this.#failures = new Float64Array(buckets)
    this.#threshold = threshold
    this.#minimumCalls = minimumCalls
    this.#head = Math.floor(nowMs / bucketMs)
  }

  record(failure: boolean, nowMs: number): boolean {
    const index = Math.floor(nowMs / this.#bucketMs)
    // A clock that steps back (wall-clock adjustment) keeps counting in the newest bucket.
    if (index > this.#head) this.#advance(index)
    const slot = this.#head % this.#calls.length
    this.#calls[slot]!++
    this.#totalCalls++
    if (failure) {
      this.#failures[slot]!++
      this.#totalFailures++
    }
    return (
      this.#totalCalls >= this.#minimumCalls &&
      this.#totalFailures / this.#totalCalls >= this.#threshold
    )
  }

  reset(nowMs: number): void {
    this.#calls.fill(0)
    this.#failures.fill(0)
    this.#totalCalls = 0
    this.#totalFailures = 0
    this.#head = Math.floor(nowMs / this.#bucketMs)
  }

  #advance(index: number): void {
    const size = this.#calls.length
    const steps = Math.min(index - this.#head, size)
    for (let i = 1; i <= steps; i++) {
      const slot = (this.#head + i) % size
      this.#totalCalls -= this.#calls[slot]!
      this.#totalFailures -= this.#failures[slot]!
      this.#calls[slot] = 0
      this.#failures[slot] = 0
    }
    this.#head = index
  }
}
