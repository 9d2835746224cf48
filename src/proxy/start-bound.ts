// The bound on bringing a config up (`startTimeoutMs`): the first start, each reload, and the
// multi-process primary's admin API. Every step such a start awaits goes through one bound, so
// a step that waits on something that never answers (a database port that accepts and stays
// silent, a migration lock held elsewhere, a name the resolver does not resolve) fails with
// PROXY_START_TIMEOUT naming it instead of holding the process, or the reload queue, for ever.

import { type Clock, keepProcessAlive, type TimerHandle } from '../core/clock.js'
import type { Logger } from '../observability/logger.js'
import { ProxyStartError } from './config/errors.js'

/** The bound used until the config is read, and for a config built without one (ms). */
export const defaultStartTimeoutMs = 60_000

/**
 * The bound on a start (`startTimeoutMs`): each step the start awaits goes through
 * {@link StartBound.wait}, so that once the time is up the step is given up on and the start
 * fails with PROXY_START_TIMEOUT naming it, instead of waiting for ever on a database that does
 * not answer.
 */
export interface StartBound {
  /**
   * Waits for `work`, the step `setting` (`what` says what it does), unless the time is up
   * first: it then rejects with PROXY_START_TIMEOUT, and a value `work` yields later is handed
   * to `release` (a store or server nobody will use). A `release` that throws or rejects is
   * logged (warn), never left as an unhandled rejection.
   */
  wait<T>(
    setting: string,
    what: string,
    work: Promise<T>,
    release?: (late: T) => unknown,
  ): Promise<T>
  /** Sets the bound to `limitMs` from the start (the file's own, once it is read). */
  limit(limitMs: number | undefined): void
  /** Whether `error` is this bound's timeout (passed on as it is, not wrapped as the step's). */
  timedOut(error: unknown): boolean
  /**
   * Whether the time is up: a step given up on that finishes later checks it before it leaves
   * a trace (the config file's text noted as the one in force).
   */
  expired(): boolean
  /**
   * Aborted once the time is up: a step that can be cancelled (an idempotency store's open
   * waiting on a migration lock) takes it, so that it ends rather than running on unwatched.
   */
  readonly signal: AbortSignal
  /** Stops the timer (the start is over). */
  end(): void
}

/** A {@link StartBound} that never runs out (steps outside any start). */
export const unbounded: StartBound = {
  wait: (_setting, _what, work) => work,
  limit: () => {},
  timedOut: () => false,
  expired: () => false,
  signal: new AbortController().signal,
  end: () => {},
}

/**
 * Starts the clock of a bound of `initialLimitMs` (the default when undefined), counted from
 * now; {@link StartBound.end} stops it. `logger` is told of a `release` that fails.
 *
 * @example
 * ```ts
 * const bound = startBound(systemClock, config.startTimeoutMs, logger)
 * try {
 *   await bound.wait('admin', 'binding 127.0.0.1:9901', startAdminServer(options), (late) => late.close())
 * } finally {
 *   bound.end()
 * }
 * ```
 */
export function startBound(
  clock: Clock,
  initialLimitMs: number | undefined,
  logger: Logger,
): StartBound {
  const startedAt = clock.now()
  // A ProxyConfig built by hand before the setting existed has none: the default then.
  let limitMs = initialLimitMs ?? defaultStartTimeoutMs
  let step = { setting: 'config', what: 'starting' }
  let expired: ProxyStartError | undefined
  const waiters = new Set<(error: ProxyStartError) => void>()
  const giveUp = new AbortController()
  let timer: TimerHandle | undefined
  const arm = (): void => {
    clock.clearTimeout(timer)
    timer = clock.setTimeout(
      () => {
        expired = new ProxyStartError(
          'PROXY_START_TIMEOUT',
          step.setting,
          `startTimeoutMs (${limitMs} ms) passed while waiting for ${step.setting}: ${step.what}`,
          undefined,
        )
        for (const fail of waiters) fail(expired)
        waiters.clear()
        giveUp.abort(expired)
      },
      Math.max(0, startedAt + limitMs - clock.now()),
    )
    // A start hung on a promise that holds nothing open must still end with this error, not
    // with the process exiting on an unsettled await.
    keepProcessAlive(timer)
  }
  arm()
  return {
    wait(setting, what, work, release) {
      if (expired !== undefined) {
        void work.then((late) => releaseLate(setting, release, late, logger), noop)
        return Promise.reject(expired)
      }
      step = { setting, what }
      return new Promise((resolvePromise, reject) => {
        let given = false
        const fail = (error: ProxyStartError): void => {
          given = true
          reject(error)
        }
        waiters.add(fail)
        work.then(
          (value) => {
            waiters.delete(fail)
            if (given) releaseLate(setting, release, value, logger)
            else resolvePromise(value)
          },
          (error: unknown) => {
            waiters.delete(fail)
            if (!given) reject(error)
          },
        )
      })
    },
    limit(next) {
      if (expired !== undefined || next === undefined || next === limitMs) return
      limitMs = next
      arm()
    },
    timedOut: (error) => error !== undefined && error === expired,
    expired: () => expired !== undefined,
    signal: giveUp.signal,
    end() {
      clock.clearTimeout(timer)
      timer = undefined
    },
  }
}

const noop = (): void => {}

// Hands what a step given up on yielded to its release. A release that throws at once would
// otherwise reject inside the bound's own handler, which nobody awaits: an unhandled
// rejection, which ends the process. What the step opened may then stay open, so it is said.
function releaseLate<T>(
  setting: string,
  release: ((late: T) => unknown) | undefined,
  late: T,
  logger: Logger,
): void {
  const failed = (error: unknown): void =>
    logger.warn('closing what a start step opened after its startTimeoutMs failed', {
      setting,
      error: error instanceof Error ? error.message : String(error),
    })
  try {
    Promise.resolve(release?.(late)).catch(failed)
  } catch (error) {
    failed(error)
  }
}
