import { AbortedError, InvalidOptionError } from './errors.js'
import { clockRefusal, signalRefusal } from './validate.js'

/** An opaque timer handle returned by {@link Clock.setTimeout}. */
export type TimerHandle = unknown

/**
 * The one source of time for every policy and worker. Library code never calls the global
 * timers or `Date.now()` directly, so tests can inject a {@link ManualClock} (from
 * `breakwater/testing`) or fake timers and drive time instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch (wall clock, as `Date.now()`). */
  now(): number
  /**
   * Calls `callback` once after `delayMs`. The timer must not keep the process alive: a pending
   * cooldown or idle timer never holds a process open. A wait that someone is blocked on
   * (`sleep`, retry backoff) asks for the opposite with {@link keepProcessAlive}.
   */
  setTimeout(callback: () => void, delayMs: number): TimerHandle
  /** Cancels a timer; a handle that already fired or was cleared is ignored. */
  clearTimeout(handle: TimerHandle): void
}

/** The longest delay Node's timers honour (2^31 - 1 ms); a longer one fires after 1 ms instead. */
export const maxTimerDelayMs = 2_147_483_647

/**
 * A timer's delay as both clocks read it. Coerced to a number as Node's timers do (`'25'` is
 * 25, `null` is 0); NaN (`undefined`, an object) and a negative delay become 0. Node fires all
 * of those, and 0 itself, after its 1 ms minimum, so alike and in creation order: reading them
 * as 0 keeps that order on every clock, and keeps NaN out of a clock's arithmetic (a NaN
 * deadline never compares as due or not due, and a ManualClock's `now()` would become NaN).
 * Long and infinite delays are kept (see {@link systemClock}).
 */
export function timerDelayMs(delayMs: unknown): number {
  const ms =
    typeof delayMs === 'number'
      ? delayMs
      : typeof delayMs === 'string' || typeof delayMs === 'boolean' || delayMs === null
        ? Number(delayMs)
        : Number.NaN
  // biome-ignore lint/complexity/useMathMinMax: Math.max(NaN, 0) is NaN; this comparison is 0.
  return ms > 0 ? ms : 0
}

// A timer longer than Node allows, armed in slices of at most maxTimerDelayMs until its time.
class LongTimer {
  handle: ReturnType<typeof globalThis.setTimeout> | undefined
  referenced = false

  constructor(
    readonly callback: () => void,
    readonly atMs: number,
  ) {
    this.arm()
  }

  arm(): void {
    const leftMs = this.atMs - Date.now()
    // Infinity never fires: no slice is armed at all.
    if (leftMs === Number.POSITIVE_INFINITY) return
    this.handle = globalThis.setTimeout(
      () => (leftMs > maxTimerDelayMs ? this.arm() : this.callback()),
      Math.min(leftMs, maxTimerDelayMs),
    )
    if (!this.referenced) this.handle.unref?.()
  }

  ref(): void {
    this.referenced = true
    this.handle?.ref?.()
  }

  clear(): void {
    if (this.handle !== undefined) globalThis.clearTimeout(this.handle)
    this.handle = undefined
  }
}

/**
 * The real clock. It looks the globals up at call time (not at import), so
 * `vi.useFakeTimers()` and `@sinonjs/fake-timers` also drive code that uses it. Unlike Node's
 * own timers it honours any delay: longer than about 24.8 days (2^31 - 1 ms, where Node would
 * fire after 1 ms), and `Infinity` (never). A NaN, negative or non-numeric delay is read as Node
 * reads it (see {@link timerDelayMs}).
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(callback, delay) {
    // Read once, as a number: a numeric string above the limit used to be added to Date.now()
    // as a string, and the timer never fired.
    const delayMs = timerDelayMs(delay)
    if (delayMs > maxTimerDelayMs) return new LongTimer(callback, Date.now() + delayMs)
    const handle = globalThis.setTimeout(callback, delayMs)
    // Pending policy timers (breaker cooldowns, backoff) must never hold a process open.
    handle.unref?.()
    return handle
  },
  clearTimeout(handle) {
    if (handle instanceof LongTimer) handle.clear()
    else globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>)
  },
}

/**
 * Makes a timer from {@link Clock.setTimeout} hold the process open until it fires or is
 * cleared, as Node's own timers do. The clock's timers are unreferenced, which is right for
 * cooldowns and idle timers but wrong for a wait a caller is blocked on: a script awaiting a
 * retry's backoff would otherwise end mid-wait (exit code 13, an unsettled top-level await) as
 * soon as nothing else kept Node running. Handles without `ref` (test clocks) are left alone.
 */
export function keepProcessAlive(handle: TimerHandle): void {
  ;(handle as { ref?: () => void } | null | undefined)?.ref?.()
}

/**
 * Waits `delayMs` on `clock`. The wait holds the process open (see {@link keepProcessAlive}):
 * whoever awaits it expects to be resumed. Rejects with {@link AbortedError} (carrying the signal's reason)
 * as soon as `signal` aborts, and clears the timer, so no sleep outlives its caller. Rejects with
 * `InvalidOptionError` (`sleep.clock`) for a `clock` that is not a {@link Clock} (there is no
 * default: pass `systemClock`), (`sleep.delayMs`) for a delay that is not a number of
 * milliseconds, 0 or more (NaN, a numeric string, a negative number: unlike a clock's
 * `setTimeout`, which reads them as Node's timers do), and (`sleep.signal`) for a `signal` that
 * is not an AbortSignal. `Infinity` waits until `signal` aborts (for good without one).
 *
 * @example
 * ```ts
 * import { sleep, systemClock } from 'breakwater'
 * await sleep(systemClock, 100, AbortSignal.timeout(50)).catch(() => {})
 * ```
 */
export function sleep(clock: Clock, delayMs: number, signal?: AbortSignal): Promise<void> {
  const refused =
    clockRefusal('sleep.clock', clock) ??
    delayRefusal(delayMs) ??
    signalRefusal('sleep.signal', signal)
  if (refused !== undefined) return refused
  if (signal?.aborted) return Promise.reject(new AbortedError(signal.reason))
  if (delayMs === 0 && signal === undefined) return Promise.resolve()
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clock.clearTimeout(handle)
      reject(new AbortedError(signal?.reason))
    }
    const handle = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, delayMs)
    keepProcessAlive(handle)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

// A sleep's delay is the caller's own arithmetic (a backoff, a deadline less now), not a value
// handed on to a timer API: NaN or a string there is a bug upstream, which a timer's reading
// (NaN and negatives at once, '25' as 25) would hide. Infinity is kept: a wait ended only by its
// signal, as a clock's setTimeout honours it.
function delayRefusal(delayMs: unknown): Promise<never> | undefined {
  return typeof delayMs === 'number' && delayMs >= 0
    ? undefined
    : Promise.reject(
        new InvalidOptionError(
          'sleep.delayMs',
          'a number of milliseconds, 0 or more (Infinity: until the signal aborts)',
          delayMs,
        ),
      )
}

/**
 * The clock's time as a durable store records it: whole epoch milliseconds. Every time column
 * is an integer (BIGINT on PostgreSQL, which refuses `1700000000000.5`; SQLite would store a
 * float), and an injected clock may have a fraction (a ManualClock after a jittered timer, a
 * clock built on `performance.now()`). Every capability that writes times (outbox, sagas, event
 * store, idempotency) floors them here, alike, so comparisons between stored times stay exact.
 */
export function storedTime(clock: Pick<Clock, 'now'>): number {
  return Math.floor(clock.now())
}

/**
 * Waits for `work` but gives up after `timeoutMs` on `clock` (rejecting with what `onTimeout`
 * returns) or when `signal` aborts (rejecting with {@link AbortedError}). `work` keeps running;
 * callers treat its outcome as unknown (a broker's reply, a health check). The timer holds the
 * process open while it waits (see {@link keepProcessAlive}): a caller blocked on a bounded wait
 * (a saga worker's `stop({ timeoutMs })` whose step never settles) must be resumed when the
 * bound runs out, not see the process end under it (exit code 13).
 */
export function within<T>(
  work: Promise<T>,
  clock: Clock,
  timeoutMs: number,
  onTimeout: () => Error,
  signal?: AbortSignal,
): Promise<T> {
  if (signal?.aborted) return Promise.reject(new AbortedError(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const finish = (): void => {
      clock.clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
    }
    const onAbort = (): void => {
      finish()
      reject(new AbortedError(signal?.reason))
    }
    const timer = clock.setTimeout(() => {
      finish()
      reject(onTimeout())
    }, timeoutMs)
    keepProcessAlive(timer)
    signal?.addEventListener('abort', onAbort, { once: true })
    work.then(
      (value) => {
        finish()
        resolve(value)
      },
      (error: unknown) => {
        finish()
        reject(error)
      },
    )
  })
}
