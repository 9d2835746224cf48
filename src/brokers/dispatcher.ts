import type { IncomingMessage } from './types.js'

/**
 * How a delivery ends: `ack` (the handler succeeded), `retry` (it failed: redeliver after the
 * adapter's retry delay), `release` (never handled because the subscription is closing:
 * redeliver as soon as possible, to anyone in the group).
 */
export type Outcome = 'ack' | 'retry' | 'release'

/** One message received from a broker, with the adapter's way to settle it. */
export interface Delivery {
  readonly message: IncomingMessage
  /** Acks or returns the message. May reject (connection lost); the dispatcher reports it. */
  settle(outcome: Outcome): Promise<void> | void
}

/** Options of a {@link KeyedDispatcher}. */
export interface DispatcherOptions {
  /** The subscription's handler. */
  readonly handler: (message: IncomingMessage) => Promise<void>
  /** Handlers running at once, across keys. */
  readonly concurrency: number
  /** Deliveries held (queued plus running) before {@link KeyedDispatcher.room} reaches 0. */
  readonly capacity: number
  /** Receives handler failures and settle failures. */
  readonly onError: (error: unknown, phase: 'handler' | 'settle', message: IncomingMessage) => void
}

/**
 * Runs handlers for the deliveries of one subscription: at most `concurrency` at once, one at a
 * time per ordering key, in arrival order per key, so per-key order survives concurrency.
 *
 * When a handler fails, the deliveries of the same key queued behind it are returned unhandled
 * (`retry`) too: redelivered in order after the failed one, instead of overtaking it. Every
 * delivery is settled exactly once.
 */
export class KeyedDispatcher<D extends Delivery = Delivery> {
  readonly #options: DispatcherOptions
  // Deliveries not started yet, per key. A key is in #ready exactly when it has queued
  // deliveries and none running.
  readonly #queues = new Map<string, D[]>()
  readonly #ready: string[] = []
  readonly #running = new Set<D>()
  readonly #runningKeys = new Set<string>()
  readonly #settling = new Set<Promise<void>>()
  #queued = 0
  #closed = false
  // Set by close({ drainQueued: true }): queued deliveries still run, new ones are released.
  #draining = false
  #roomWaiters: Array<() => void> = []
  #idleWaiters: Array<() => void> = []

  constructor(options: DispatcherOptions) {
    this.#options = options
  }

  /** Deliveries held: queued plus running. */
  get size(): number {
    return this.#queued + this.#running.size
  }

  /** How many more deliveries fit before the capacity is reached. */
  get room(): number {
    return Math.max(0, this.#options.capacity - this.size)
  }

  /** Every delivery held (running first), e.g. to extend their ack deadlines. */
  held(): D[] {
    const all = [...this.#running]
    for (const queue of this.#queues.values()) all.push(...queue)
    return all
  }

  /** Resolves once {@link room} is above 0, or the dispatcher is closed. */
  whenRoom(): Promise<void> {
    if (this.room > 0 || this.#closed) return Promise.resolve()
    return new Promise((resolve) => this.#roomWaiters.push(resolve))
  }

  /** Queues a delivery; after {@link close} it is released at once. */
  push(delivery: D): void {
    if (this.#closed || this.#draining) {
      this.#settle(delivery, 'release')
      return
    }
    const key = delivery.message.key
    let queue = this.#queues.get(key)
    if (queue === undefined) {
      queue = []
      this.#queues.set(key, queue)
      if (!this.#runningKeys.has(key)) this.#ready.push(key)
    }
    queue.push(delivery)
    this.#queued++
    this.#pump()
  }

  /**
   * Stops starting handlers, releases every queued delivery, and resolves once the running
   * handlers have finished and every settle has completed.
   */
  async close(options: { drainQueued?: boolean } = {}): Promise<void> {
    if (options.drainQueued === true && !this.#closed) {
      // The session's connection is gone, but its queued deliveries were already handed to us
      // in order. Releasing them would let the broker redeliver them only after its ack wait,
      // behind later messages of the same key that a new session receives first. So run them
      // now, in order, before the next session starts; their acks fail with the connection
      // and the broker redelivers them later as duplicates, which the inbox absorbs.
      this.#draining = true
      while (this.size > 0) {
        await new Promise<void>((resolve) => this.#idleWaiters.push(resolve))
      }
    }
    if (!this.#closed) {
      this.#closed = true
      const queued = [...this.#queues.values()].flat()
      this.#queues.clear()
      this.#ready.length = 0
      this.#queued = 0
      for (const delivery of queued) this.#settle(delivery, 'release')
      this.#wakeRoom()
    }
    while (this.#running.size > 0) {
      await new Promise<void>((resolve) => this.#idleWaiters.push(resolve))
    }
    while (this.#settling.size > 0) await Promise.all([...this.#settling])
  }

  #pump(): void {
    while (!this.#closed && this.#running.size < this.#options.concurrency) {
      const key = this.#ready.shift()
      if (key === undefined) return
      const queue = this.#queues.get(key)!
      const delivery = queue.shift()!
      if (queue.length === 0) this.#queues.delete(key)
      this.#queued--
      this.#running.add(delivery)
      this.#runningKeys.add(key)
      void this.#run(delivery, key)
    }
  }

  async #run(delivery: D, key: string): Promise<void> {
    try {
      await this.#options.handler(delivery.message)
      this.#settle(delivery, 'ack')
    } catch (error) {
      this.#report(error, 'handler', delivery.message)
      this.#settle(delivery, 'retry')
      // Successors of a failed message go back after it, so they cannot overtake it.
      const behind = this.#queues.get(key)
      if (behind !== undefined) {
        this.#queues.delete(key)
        this.#queued -= behind.length
        for (const next of behind) this.#settle(next, 'retry')
      }
    }
    this.#running.delete(delivery)
    this.#runningKeys.delete(key)
    if (this.#queues.has(key)) this.#ready.push(key)
    this.#wakeRoom()
    if (this.#running.size === 0) {
      const idle = this.#idleWaiters
      this.#idleWaiters = []
      for (const wake of idle) wake()
    }
    this.#pump()
  }

  #settle(delivery: D, outcome: Outcome): void {
    let pending: Promise<void>
    try {
      pending = Promise.resolve(delivery.settle(outcome))
    } catch (error) {
      pending = Promise.reject(error)
    }
    const tracked = pending.then(
      () => {},
      (error: unknown) => this.#report(error, 'settle', delivery.message),
    )
    this.#settling.add(tracked)
    void tracked.finally(() => this.#settling.delete(tracked))
  }

  #wakeRoom(): void {
    if (this.#roomWaiters.length === 0 || (this.room === 0 && !this.#closed)) return
    const waiters = this.#roomWaiters
    this.#roomWaiters = []
    for (const wake of waiters) wake()
  }

  #report(error: unknown, phase: 'handler' | 'settle', message: IncomingMessage): void {
    try {
      this.#options.onError(error, phase, message)
    } catch {
      // A throwing error listener must not break message flow.
    }
  }
}
