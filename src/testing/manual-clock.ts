import { AsyncResource } from 'node:async_hooks'
import { type Clock, type TimerHandle, timerDelayMs } from '../core/clock.js'
import { checkInteger, checkNumber } from '../core/validate.js'

interface PendingTimer {
  readonly id: number
  // Moved along when the clock jumps (see ManualClock.jump).
  at: number
  readonly callback: () => void
}

/**
 * A clock that only moves when a test moves it. Timers fire in time order (ties in creation
 * order) during {@link ManualClock.advance}, and the promise jobs they start run before the
 * next timer fires, so async code driven by it behaves as it would in real time. Like Node's
 * own timers, a callback runs in the async context it was set in (its `AsyncLocalStorage`
 * stores, such as a deadline), not in the context of the code that calls `advance()`.
 *
 * @example
 * ```ts
 * import { ManualClock } from 'breakwater/testing'
 * const clock = new ManualClock()
 * const fired: number[] = []
 * clock.setTimeout(() => fired.push(clock.now()), 1_000)
 * await clock.advance(1_000) // fired = [1000]
 * ```
 */
export class ManualClock implements Clock {
  #now: number
  #nextId = 1
  #timers: PendingTimer[] = []
  // The end of the last advance() or runAll() called (see #inTurn).
  #lastMove: Promise<void> = Promise.resolve()

  /**
   * @param startMs The initial value of `now()`; a finite number. @default 0
   * @throws InvalidOptionError when `startMs` is not a finite number.
   */
  constructor(startMs = 0) {
    this.#now = checkNumber('ManualClock.startMs', startMs, -Number.MAX_VALUE, Number.MAX_VALUE)
  }

  now(): number {
    return this.#now
  }

  /**
   * Sets a timer due `delayMs` from now. The delay is read as the system clock reads it (see
   * `timerDelayMs`): a NaN, negative or non-numeric one is due at once, as 0 is (Node fires them
   * all after its 1 ms minimum, in creation order; here the minimum is 0, so `advance(0)` runs
   * them), a numeric string counts as its number, and a delay longer than Node's 2^31 - 1 ms
   * is honoured, `Infinity` never falls due.
   */
  setTimeout(callback: () => void, delayMs: number): TimerHandle {
    const timer = {
      id: this.#nextId++,
      at: this.#now + timerDelayMs(delayMs),
      callback: AsyncResource.bind(callback),
    }
    this.#timers.push(timer)
    return timer.id
  }

  clearTimeout(handle: TimerHandle): void {
    const index = this.#timers.findIndex((t) => t.id === handle)
    if (index >= 0) this.#timers.splice(index, 1)
  }

  /**
   * Steps `now()` by `ms` (negative: back) without firing anything, as an NTP correction steps a
   * machine's wall clock: `Date.now()` jumps, while Node's timers, which count elapsed time, fire
   * when they would have. So every pending timer keeps the time it had left: it still fires after
   * the same total of `advance()`, at a `now()` moved by `ms`. For testing code against a wall
   * clock that steps back (or forward) under it.
   *
   * @throws InvalidOptionError when `ms` is not a finite number (time must stay usable).
   * @example
   * ```ts
   * import { ManualClock } from 'breakwater/testing'
   * const clock = new ManualClock(10_000)
   * clock.setTimeout(() => {}, 500)
   * clock.jump(-5_000) // now() is 5000; the timer still fires after advance(500), at 5500
   * ```
   */
  jump(ms: number): void {
    checkNumber('ManualClock.jump ms', ms, -Number.MAX_VALUE, Number.MAX_VALUE)
    this.#now += ms
    for (const timer of this.#timers) timer.at += ms
  }

  /** Number of timers still waiting to fire. */
  get pendingTimers(): number {
    return this.#timers.length
  }

  /** The time at which the next timer fires, or undefined when none is pending. */
  nextTimerAt(): number | undefined {
    return this.#earliest()?.at
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way (including ones
   * scheduled by the callbacks themselves) and letting promise jobs settle after each.
   *
   * @throws InvalidOptionError (rejects) when `ms` is not a finite number >= 0: elapsed time never
   * goes back (a wall clock stepping back is {@link ManualClock.jump}), and a NaN or infinite
   * step would leave `now()` unusable for good.
   */
  async advance(ms: number): Promise<void> {
    checkNumber('ManualClock.advance ms', ms, 0, Number.MAX_VALUE)
    return this.#inTurn(() => this.#advanceBy(ms))
  }

  /**
   * Fires timers one after another until none is left (or `limit` have fired). A timer set to
   * `Infinity` never falls due, as on the system clock, so it is left pending. Runs after any
   * `advance()` still under way, as a later `advance()` does.
   *
   * @throws InvalidOptionError (rejects) when `limit` is not a whole number >= 1.
   */
  async runAll(limit = 10_000): Promise<void> {
    checkInteger('ManualClock.runAll limit', limit, 1)
    return this.#inTurn(async () => {
      // Checked once more after the last allowed firing: exactly `limit` timers is not too many.
      for (let fired = 0; ; fired++) {
        const next = this.#earliest()
        if (next === undefined || next.at === Number.POSITIVE_INFINITY) return
        if (fired === limit) break
        await this.#advanceBy(next.at - this.#now)
      }
      throw new Error(
        `ManualClock.runAll: more than ${limit} timers fired; is something rescheduling forever?`,
      )
    })
  }

  // Moves of time run one at a time, in call order: a test that starts an advance without
  // awaiting it and then another had the two interleave at every flush, the later (shorter) one
  // setting now() back below timers the earlier had already fired.
  #inTurn(move: () => Promise<void>): Promise<void> {
    const turn = this.#lastMove.then(move)
    this.#lastMove = turn.then(
      () => {},
      () => {},
    )
    return turn
  }

  async #advanceBy(ms: number): Promise<void> {
    const target = this.#now + ms
    await flushJobs()
    for (;;) {
      const next = this.#earliest()
      if (next === undefined || next.at > target) break
      this.#timers.splice(this.#timers.indexOf(next), 1)
      this.#now = Math.max(this.#now, next.at)
      next.callback()
      await flushJobs()
    }
    this.#now = target
    await flushJobs()
  }

  #earliest(): PendingTimer | undefined {
    let best: PendingTimer | undefined
    for (const t of this.#timers)
      if (best === undefined || t.at < best.at || (t.at === best.at && t.id < best.id)) best = t
    return best
  }
}

/** Lets every queued promise job (and the jobs those queue) run. */
export async function flushJobs(): Promise<void> {
  // setImmediate runs after the whole microtask queue has drained, several rounds over.
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve))
}
