import type { Histogram } from 'node:perf_hooks'
import type { Clock } from '../../core/clock.js'
import { BreakwaterError } from '../../core/errors.js'

/**
 * The nearest-rank percentile `p` (0-100) of `values`; 0 when there are none.
 *
 * @example
 * ```ts
 * percentile([5, 1, 3, 2, 4], 50) // 3
 * ```
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!
}

/**
 * The most of `timesMs` that fall into any window `[t, t + windowMs)`: the peak load a
 * service felt at the resolution of `windowMs`.
 *
 * @example
 * ```ts
 * peakInWindow([0, 1, 2, 50, 51], 10) // 3
 * ```
 */
export function peakInWindow(timesMs: readonly number[], windowMs: number): number {
  const sorted = [...timesMs].sort((a, b) => a - b)
  let peak = 0
  let start = 0
  for (let end = 0; end < sorted.length; end++) {
    while (sorted[end]! - sorted[start]! >= windowMs) start++
    peak = Math.max(peak, end - start + 1)
  }
  return peak
}

/** How the calls of one variant of a scenario went, as the caller saw them. */
export interface CallSummary {
  /** Calls made. */
  readonly calls: number
  /** Calls that resolved. */
  readonly successes: number
  /** Calls that failed, fast failures included. */
  readonly failures: number
  /**
   * Calls a policy failed without sending anything to the service and without waiting: an
   * open circuit, or a bulkhead with no free slot and no queue place.
   */
  readonly fastFailures: number
  /** Median time a call took, success or failure, in milliseconds. */
  readonly p50Ms: number
  /** 99th percentile of the time a call took, success or failure, in milliseconds. */
  readonly p99Ms: number
}

/** True for a refusal that cost the caller no wait: an open circuit or a full bulkhead. */
export function isFastFailure(error: unknown): boolean {
  if (!BreakwaterError.is(error)) return false
  if (error.code === 'BROKEN_CIRCUIT' || error.code === 'ISOLATED_CIRCUIT') return true
  // A bulkhead refusal after waiting out the queue timeout was not fast.
  return error.code === 'BULKHEAD_FULL' && (error as { reason?: unknown }).reason === 'full'
}

/** Times calls and counts their outcomes; {@link CallLog.summary} sums them up. */
export class CallLog {
  readonly #clock: Clock
  #latenciesMs: number[] = []
  #successes = 0
  #failures = 0
  #fastFailures = 0

  /** @param clock The clock calls are timed with. */
  constructor(clock: Clock) {
    this.#clock = clock
  }

  /** Runs `call`, records its outcome and duration; never rejects. */
  async time(call: () => Promise<unknown>): Promise<void> {
    const startMs = this.#clock.now()
    try {
      await call()
      this.#successes++
    } catch (error) {
      this.#failures++
      if (isFastFailure(error)) this.#fastFailures++
    }
    this.#latenciesMs.push(this.#clock.now() - startMs)
  }

  /** The counts and latency percentiles so far. */
  summary(): CallSummary {
    return {
      calls: this.#latenciesMs.length,
      successes: this.#successes,
      failures: this.#failures,
      fastFailures: this.#fastFailures,
      p50Ms: percentile(this.#latenciesMs, 50),
      p99Ms: percentile(this.#latenciesMs, 99),
    }
  }
}

/**
 * The 99th percentile of the event loop's delay, in whole milliseconds, from a
 * `monitorEventLoopDelay({ resolution: resolutionMs })` histogram; 0 when it holds nothing.
 */
export function eventLoopDelayP99Ms(
  histogram: Pick<Histogram, 'count' | 'percentile'>,
  resolutionMs: number,
): number {
  if (histogram.count === 0) return 0
  // It records the time between two runs of its timer (in nanoseconds): the resolution itself
  // when the loop is idle. The delay is what comes on top (a timer may also run a little early).
  return Math.max(0, Math.round(histogram.percentile(99) / 1e6 - resolutionMs))
}
