import { type Clock, storedTime } from '../core/clock.js'

/**
 * The clock as the outbox writes it: `now()` floored to a whole millisecond, timers unchanged.
 *
 * Every time column is an integer (BIGINT on PostgreSQL, which refuses `1700000000000.5`), and
 * a clock may have a fraction (a ManualClock after a jittered timer, one built on
 * `performance.now()`). Flooring every reading alike, once, keeps the comparisons between the
 * times written (lease ends, retry times, cutoffs) exact.
 */
export function wholeMsClock(clock: Clock): Clock {
  return {
    now: () => storedTime(clock),
    setTimeout: (callback, delayMs) => clock.setTimeout(callback, delayMs),
    clearTimeout: (handle) => clock.clearTimeout(handle),
  }
}
