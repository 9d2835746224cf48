/**
 * A FIFO async mutex. better-sqlite3 runs statements synchronously on one shared connection, so
 * an async transaction must keep every other statement of the driver out until it ends; waiters
 * are served in arrival order so a stream of transactions cannot starve a plain statement.
 */
export class AsyncMutex {
  #locked = false
  #waiters: Array<() => void> = []
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
      this.#waiters.push(resolve)
    })
  }

  /** Hands the lock to the next waiter, or frees it. */
  release(): void {
    if (this.#head < this.#waiters.length) {
      const next = this.#waiters[this.#head]!
      this.#head++
      // Compact now and then so a long-lived mutex does not keep every served waiter.
      if (this.#head > 1024 && this.#head * 2 > this.#waiters.length) {
        this.#waiters = this.#waiters.slice(this.#head)
        this.#head = 0
      }
      // The lock passes directly to the waiter: `locked` stays true, so nobody can barge in.
      next()
      return
    }
    this.#locked = false
  }
}
