/**
 * A FIFO async mutex. better-sqlite3 runs statements synchronously on one shared connection, so
 * an async transaction must keep every other statement of the driver out until it ends; waiters
 * are served in arrival order so a stream of transactions cannot starve a plain statement.
 */
export class AsyncMutex {
  #locked = false
  #waiters: Waiter[] = []
  #head = 0

  /** True while someone holds the lock. */
  get locked(): boolean {
    return this.#locked
  }

  /** Takes the lock if it is free and nobody is queued; never waits. */
  tryAcquire(): boolean {
    if (this.#locked) return false
    this.#locked = true
    return true
  }

  /** Resolves once the caller holds the lock. */
  acquire(): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve()
    return new Promise<void>((resolve) => {
      this.#waiters.push({ grant: resolve, gaveUp: false })
    })
  }

  /**
   * Resolves to true once the caller holds the lock, or to false (without it) when `timeoutMs`
   * passed first: the waiter then leaves the queue.
   */
  acquireWithin(timeoutMs: number): Promise<boolean> {
    if (this.tryAcquire()) return Promise.resolve(true)
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        grant: () => {
          clearTimeout(timer)
          resolve(true)
        },
        gaveUp: false,
      }
      const timer = setTimeout(() => {
        waiter.gaveUp = true
        resolve(false)
      }, timeoutMs)
      this.#waiters.push(waiter)
    })
  }

  /** Hands the lock to the next waiter, or frees it. */
  release(): void {
    while (this.#head < this.#waiters.length) {
      const next = this.#waiters[this.#head]!
      this.#head++
      // Compact now and then so a long-lived mutex does not keep every served waiter.
      if (this.#head > 1024 && this.#head * 2 > this.#waiters.length) {
        this.#waiters = this.#waiters.slice(this.#head)
        this.#head = 0
      }
      if (next.gaveUp) continue
      // The lock passes directly to the waiter: `locked` stays true, so nobody can barge in.
      next.grant()
      return
    }
    this.#locked = false
  }
}

interface Waiter {
  readonly grant: () => void
  /** Set when acquireWithin timed out: the lock must not be handed to it any more. */
  gaveUp: boolean
}
