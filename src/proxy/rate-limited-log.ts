// Errors that come in floods (failed accepts, connects failing for want of descriptors) are
// logged at most every 10 s: a line for each would flood the log when it can least afford it,
// and the count of those left out keeps the size of the flood visible.

import type { Clock } from '../core/clock.js'
import type { LogFields } from '../observability/logger.js'

/** How often a {@link RateLimitedLog} writes a line at most. */
export const rateLimitedLogEveryMs = 10_000

/**
 * Writes one line at most every 10 s (by `clock`), with how many it did not write since.
 *
 * @example
 * const acceptFailures = new RateLimitedLog(clock, (fields) =>
 *   log.error('accepting a connection failed', fields),
 * )
 * acceptFailures.log({ code: error.code, error: error.message })
 */
export class RateLimitedLog {
  readonly #clock: Clock
  readonly #write: (fields: LogFields) => void
  #loggedAt = Number.NEGATIVE_INFINITY
  #suppressed = 0

  /** `write` writes one line with the fields it is given (the message and level are its own). */
  constructor(clock: Clock, write: (fields: LogFields) => void) {
    this.#clock = clock
    this.#write = write
  }

  /**
   * Writes `fields` now when no line was written in the last 10 s, adding `suppressed` (how many
   * were not written since the last line) when that is not 0; otherwise only counts them.
   */
  log(fields: LogFields): void {
    const now = this.#clock.now()
    if (now - this.#loggedAt < rateLimitedLogEveryMs) {
      this.#suppressed++
      return
    }
    this.#loggedAt = now
    this.#write(this.#suppressed > 0 ? { ...fields, suppressed: this.#suppressed } : fields)
    this.#suppressed = 0
  }
}
