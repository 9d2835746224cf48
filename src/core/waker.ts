import { type Clock, keepProcessAlive, type TimerHandle, timerDelayMs } from './clock.js'

/**
 * An idle wait that ends early when woken: by a notification, by `wake()` from the same
 * process, or by the stop signal. A wake that arrives while nobody waits is remembered, so a
 * notification that lands during a batch makes the next wait return at once instead of being
 * lost.
 *
 * Waits may overlap: each ends on its own timer or its own signal, and a wake ends all of those
 * running (and is then not remembered). The callers run one loop each, but a second wait must
 * never orphan the first (its promise never settling, its timer left pending).
 *
 * With `keepAlive`, a wait holds the process open (see {@link keepProcessAlive}): the idle wait
 * of a started worker that is meant to run until stopped, as a listening server does.
 */
export class Waker {
  readonly #clock: Clock
  readonly #keepAlive: boolean
  #pending = false
  // The running waits, each as the function that ends it.
  readonly #waits = new Set<() => void>()

  constructor(clock: Clock, keepAlive = false) {
    this.#clock = clock
    this.#keepAlive = keepAlive
  }

  /** Ends every running wait, or the next one if none is running. */
  wake(): void {
    if (this.#waits.size === 0) {
      this.#pending = true
      return
    }
    for (const finish of [...this.#waits]) finish()
  }

  /**
   * Waits up to `delayMs` (read by {@link timerDelayMs}: NaN or negative is 0); resolves (never rejects)
   * on its timeout, a wake, or `signal` aborting. Clears its timer and abort listener when it ends.
   */
  wait(delayMs: number, signal: AbortSignal): Promise<void> {
    if (this.#pending || signal.aborted) {
      this.#pending = false
      return Promise.resolve()
    }
    return new Promise<void>((resolve) => {
      // Declared first: an injected clock may run a callback before setTimeout returns.
      let timer: TimerHandle | undefined
      const finish = (): void => {
        if (!this.#waits.delete(finish)) return
        if (timer !== undefined) this.#clock.clearTimeout(timer)
        signal.removeEventListener('abort', finish)
        resolve()
      }
      this.#waits.add(finish)
      signal.addEventListener('abort', finish, { once: true })
      timer = this.#clock.setTimeout(finish, timerDelayMs(delayMs))
      if (this.#keepAlive) keepProcessAlive(timer)
      // Ended during setTimeout: the handle was not known yet, so clear it now.
      if (!this.#waits.has(finish)) this.#clock.clearTimeout(timer)
    })
  }
}
