import { type Clock, systemClock, type TimerHandle } from '../core/clock.js'
import { maxTimerDelayMs } from './backoff.js'

/**
 * Something that wants a callback at an absolute time. The queue writes `queueIndex` (its
 * position in the heap, -1 when not queued) so removal needs no search and no extra object.
 */
export interface TimerEntry {
  /** When to fire, in the clock's milliseconds. */
  readonly atMs: number
  /** Position in the queue; owned by the queue. Start at -1. */
  queueIndex: number
  /** Called once at `atMs` unless removed first. */
  fire(): void
}

/**
 * A deadline queue shared by every timeout and deadline on one clock: a binary min-heap of
 * entries served by a single clock timer armed for the earliest one.
 *
 * Why: a timeout that is set and cleared on every call costs a Node timer each time, and a
 * typical call finishes long before its timeout. Here adding and removing an entry is an
 * array operation, and on the system clock the one armed timer is left in place when the
 * queue empties: the next entry (usually later, since a policy's timeout is fixed) reuses it,
 * and a timer that fires with nothing due simply re-arms for the earliest entry. On injected
 * clocks (tests) the timer is cleared as soon as nothing is queued, so `pendingTimers` stays
 * exact. Entries always fire at their exact time: nothing is rounded into coarse buckets.
 */
export class TimerQueue {
  readonly #clock: Clock
  readonly #keepIdleTimer: boolean
  #heap: TimerEntry[] = []
  #handle: TimerHandle = undefined
  #armedAtMs = Number.POSITIVE_INFINITY
  readonly #onTimer = (): void => this.#run()

  constructor(clock: Clock) {
    this.#clock = clock
    this.#keepIdleTimer = clock === systemClock
  }

  /** Number of queued entries. */
  get size(): number {
    return this.#heap.length
  }

  /** Queues `entry` to fire at `entry.atMs`. The entry must not be queued already. */
  add(entry: TimerEntry): void {
    const heap = this.#heap
    entry.queueIndex = heap.length
    heap.push(entry)
    this.#up(entry.queueIndex)
    if (entry.atMs < this.#armedAtMs) this.#arm(entry.atMs)
  }

  /** Removes `entry` if it is queued; it will not fire. */
  remove(entry: TimerEntry): void {
    const index = entry.queueIndex
    if (index < 0) return
    entry.queueIndex = -1
    const heap = this.#heap
    const last = heap.pop()!
    if (index < heap.length) {
      heap[index] = last
      last.queueIndex = index
      this.#down(index)
      this.#up(last.queueIndex)
    }
    if (heap.length === 0 && !this.#keepIdleTimer) this.#disarm()
  }

  #run(): void {
    this.#handle = undefined
    this.#armedAtMs = Number.POSITIVE_INFINITY
    const heap = this.#heap
    const now = this.#clock.now()
    for (;;) {
      const top = heap[0]
      if (top === undefined || top.atMs > now) break
      this.remove(top)
      // An entry's callback must not stop the others from firing.
      try {
        top.fire()
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
    const next = heap[0]
    if (next !== undefined && next.atMs < this.#armedAtMs) this.#arm(next.atMs)
  }

  #arm(atMs: number): void {
    if (this.#handle !== undefined) this.#clock.clearTimeout(this.#handle)
    this.#armedAtMs = atMs
    // Longer delays would make Node fire after 1 ms; the run then re-arms for the rest.
    const delayMs = Math.min(maxTimerDelayMs, Math.max(0, atMs - this.#clock.now()))
    this.#handle = this.#clock.setTimeout(this.#onTimer, delayMs)
  }

  #disarm(): void {
    if (this.#handle === undefined) return
    this.#clock.clearTimeout(this.#handle)
    this.#handle = undefined
    this.#armedAtMs = Number.POSITIVE_INFINITY
  }

  #up(index: number): void {
    const heap = this.#heap
    const entry = heap[index]!
    while (index > 0) {
      const parentIndex = (index - 1) >> 1
      const parent = heap[parentIndex]!
      if (parent.atMs <= entry.atMs) break
      heap[index] = parent
      parent.queueIndex = index
      index = parentIndex
    }
    heap[index] = entry
    entry.queueIndex = index
  }

  #down(index: number): void {
    const heap = this.#heap
    const length = heap.length
    const entry = heap[index]!
    for (;;) {
      const left = 2 * index + 1
      if (left >= length) break
      const right = left + 1
      let child = left
      if (right < length && heap[right]!.atMs < heap[left]!.atMs) child = right
      const smaller = heap[child]!
      if (smaller.atMs >= entry.atMs) break
      heap[index] = smaller
      smaller.queueIndex = index
      index = child
    }
    heap[index] = entry
    entry.queueIndex = index
  }
}

const queues = new WeakMap<Clock, TimerQueue>()
let systemQueue: TimerQueue | undefined

/** The shared {@link TimerQueue} of `clock`, created on first use. */
export function timerQueueFor(clock: Clock): TimerQueue {
  if (clock === systemClock) {
    systemQueue ??= new TimerQueue(systemClock)
    return systemQueue
  }
  let queue = queues.get(clock)
  if (queue === undefined) {
    queue = new TimerQueue(clock)
    queues.set(clock, queue)
  }
  return queue
}
