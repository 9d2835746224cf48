import type { Clock, TimerHandle } from './clock.js'

/**
 * An idle wait that ends early when woken: by a notification, by `wake()` from the same
 * process, or by the stop signal. A wake that arrives while nobody waits is remembered, so a
 * notification that lands during a batch makes the next wait return at once instead of being
 * lost.
 */
export class Waker {
  readonly #clock: Clock
  #pending = false
  #resolve: (() => void) | undefined
  #timer: TimerHandle | undefined

  constructor(clock: Clock) {
    this.#clock = clock
  }

  /** Ends the current wait, or the next one if none is running. */
  wake(): void {
    if (this.#resolve !== undefined) this.#finish()
    else this.#pending = true
  }

  /** Waits up to `delayMs`; resolves (never rejects) on timeout, wake or abort. */
  wait(delayMs: number, signal: AbortSignal): Promise<void> {
    if (this.#pending || signal.aborted) {
      this.#pending = false
      return Promise.resolve()
    }
    return new Promise<void>((resolve) => {
      const onAbort = (): void => this.#finish()
      signal.addEventListener('abort', onAbort, { once: true })
      this.#resolve = () => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }
      this.#timer = this.#clock.setTimeout(() => this.#finish(), Math.max(0, delayMs))
    })
  }

  #finish(): void {
    const resolve = this.#resolve
    if (resolve === undefined) return
    this.#resolve = undefined
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer)
    this.#timer = undefined
    resolve()
  }
}
