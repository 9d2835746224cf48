import {
  type Clock,
  keepProcessAlive,
  maxTimerDelayMs,
  systemClock,
  type TimerHandle,
} from '../core/clock.js'

/**
 * Something that wants a callback at an absolute time. The queue writes `queueIndex` (its
 * position in the heap, -1 when not queued) so removal needs no search and no extra object.
 */
export interface TimerEntry {
  /** When to fire, in the clock's milliseconds; only {@link TimerEntry.clockStepped} moves it. */
  readonly atMs: number
  /** Position in the queue; owned by the queue. Start at -1. */
  queueIndex: number
  /** Called once at `atMs` unless removed first, with the clock's reading, at least `atMs`. */
  fire(nowMs: number): void
  /**
   * The clock stepped by `stepMs` (negative: back) while the entry was queued: move `atMs`, and
   * every time taken from the same reading of the clock, by as much, so that the entry still
   * fires after the time it had left. Only what falls due before `beforeMs` moves (an entry made
   * of several, such as a {@link TimerList}, moves those of its own that do). Called by the queue
   * only, and only when `atMs` is before `beforeMs`.
   */
  clockStepped(stepMs: number, beforeMs: number): void
}

/**
 * A step of the wall clock smaller than this is not told from the delay of a timer (or the
 * fraction of a millisecond of an injected clock): the queue follows larger steps only.
 */
const stepToleranceMs = 10

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
 * exact. Entries always fire at their exact time: nothing is rounded into coarse buckets. While
 * anything is queued the timer holds the process open (every entry is a call someone awaits);
 * the idle timer left in place does not.
 *
 * Steps of the wall clock: the entries' times are `clock.now()` times, but the timer counts
 * elapsed time (Node's timers are monotonic). When the clock stepped back (an NTP correction),
 * comparing them with the stepped clock held every timeout back by the size of the step: a
 * 500 ms timeout with the clock stepped back 5 s ran out after 5.5 s, an hour's step held it for
 * the hour. So the queue follows a step back, moving the times of the entries queued before it
 * by as much (see {@link TimerEntry.clockStepped}): each still fires after the time it had left.
 * It learns of a step in two ways, neither reading any other clock:
 * - Every entry is added with the reading of the clock it was timed from (`add(entry, nowMs)`),
 *   and the timer reads the clock when armed and when it fires. A reading below the latest one
 *   means the clock went back at least by the difference, and every queued entry was timed
 *   before the step: all move by that difference. Exact while readings come often (a busy
 *   service); otherwise late by at most the time between the last reading before the step and
 *   the first after it.
 * - When the timer fires, the time it was armed for has truly passed: a clock reading short of
 *   it by `delta` means the clock went back `delta` since it was armed (in one step or more).
 *   The entries queued when it was armed were all timed before: they move by `delta`, exactly.
 *   They are the ones due before the earliest entry added (or timed, see
 *   {@link TimerQueue.observe}) since. An entry added since may have been timed before the step,
 *   after it, or between two steps, and the queue cannot tell which: it moves by what is sure,
 *   the lowest reading taken for one of them less the clock's now (the clock cannot have gone
 *   back less than that after any of them), which is late by at most the timer's delay and
 *   never early. (Before, these moved by all of `delta` when every one of them read above the
 *   clock's now, and otherwise not at all; but an entry timed after a first step of the clock
 *   reads above the clock's now after a second, and fired early by the first.)
 * A step forward needs nothing: entries fall due early, as wall-clock times do. A clock whose
 * timers fire when `now()` reaches them (fake timers, ManualClock's `advance()`) never looks
 * stepped; ManualClock's `jump()` steps it as NTP does.
 */
export class TimerQueue {
  readonly #clock: Clock
  readonly #keepIdleTimer: boolean
  #heap: TimerEntry[] = []
  #handle: TimerHandle = undefined
  #armedAtMs = Number.POSITIVE_INFINITY
  // The clock's reading when the timer was armed, and its delay: when it fires, the clock should
  // read at least their sum.
  #armedNowMs = Number.NaN
  #armedDelayMs = 0
  // The lowest reading an entry was timed from since the timer was armed (Infinity: none).
  #addedMinNowMs = Number.POSITIVE_INFINITY
  // The earliest time of an entry added (or timed, see observe) since the timer was armed
  // (Infinity: none). Everything queued earlier than it was queued when the timer was armed.
  #addedMinAtMs = Number.POSITIVE_INFINITY
  // The latest reading of the clock the queue has seen.
  #seenMs = Number.NEGATIVE_INFINITY
  // systemClock only: the global setTimeout that armed the timer, and the clearTimeout that
  // goes with it (see #followTimers).
  #armedBy: unknown
  #clearArmed: typeof globalThis.clearTimeout | undefined
  readonly #onTimer = (): void => this.#run()

  constructor(clock: Clock) {
    this.#clock = clock
    this.#keepIdleTimer = clock === systemClock
  }

  /** Number of queued entries. */
  get size(): number {
    return this.#heap.length
  }

  /**
   * Queues `entry` to fire at `entry.atMs`. The entry must not be queued already. `nowMs` is the
   * clock's reading its time was taken from, read just now (it tells a step of the clock, see
   * {@link TimerQueue}); without one (an entry queued again) the queue reads nothing.
   */
  add(entry: TimerEntry, nowMs?: number): void {
    if (nowMs !== undefined) this.observe(nowMs, entry.atMs)
    else this.#followTimers()
    const heap = this.#heap
    entry.queueIndex = heap.length
    heap.push(entry)
    this.#up(entry.queueIndex)
    if (entry.atMs < this.#armedAtMs) this.#arm(entry.atMs, nowMs)
    // The idle timer left armed (no later than this entry) waits for someone again.
    else if (heap.length === 1) keepProcessAlive(this.#handle)
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
    if (heap.length === 0) {
      if (!this.#keepIdleTimer) this.#disarm()
      // Kept for the next entry, but nobody waits for it: it must not hold the process open.
      else (this.#handle as { unref?: () => void } | undefined)?.unref?.()
    }
  }

  /**
   * Something is about to be timed from `nowMs`, a reading of the clock taken just now, for
   * `atMs` (a {@link TimerList} adding a node: the list's one entry may be queued already). Call
   * before adding anything timed from it.
   */
  observe(nowMs: number, atMs: number): void {
    this.#followTimers()
    this.#followStep(nowMs)
    if (nowMs < this.#addedMinNowMs) this.#addedMinNowMs = nowMs
    if (atMs < this.#addedMinAtMs) this.#addedMinAtMs = atMs
  }

  // systemClock looks the global timers up at call time, so fake timers (vi.useFakeTimers(),
  // @sinonjs/fake-timers) drive it. A timer armed under one fake clock belongs to it: once the
  // globals change (installed, uninstalled, another fake clock) it will not fire, and the kept
  // idle timer made every later entry wait for it: after one timeout under fake timers, no
  // timeout on the real clock ever ran out. Such a timer is cleared with the clearTimeout of its
  // own clock (the current one would not know it; @sinonjs/fake-timers warns) and the timer armed
  // anew on the current globals.
  #followTimers(): void {
    if (!this.#keepIdleTimer || this.#handle === undefined) return
    if (globalThis.setTimeout === this.#armedBy) return
    try {
      this.#clearArmed?.(this.#handle as Parameters<typeof globalThis.clearTimeout>[0])
    } catch {
      // A fake clock's own clearTimeout after uninstall(): nothing fires there any more anyway.
    }
    this.#handle = undefined
    this.#armedAtMs = Number.POSITIVE_INFINITY
    this.#armedNowMs = Number.NaN
    const top = this.#heap[0]
    if (top !== undefined) this.#arm(top.atMs)
  }

  // A reading below the latest one seen: the clock stepped back since, and everything queued
  // was timed before the step. Moves it all by the difference; true when it did.
  #followStep(nowMs: number): boolean {
    const seenMs = this.#seenMs
    if (nowMs >= seenMs - stepToleranceMs) {
      if (nowMs > seenMs) this.#seenMs = nowMs
      return false
    }
    this.#seenMs = nowMs
    this.#shift(nowMs - seenMs)
    // Armed before the step, the timer can no longer tell it: armed again from this reading.
    const top = this.#heap[0]
    if (top !== undefined) this.#arm(top.atMs, nowMs)
    return true
  }

  // Moves the entries due before `beforeMs` by `stepMs`. Those are the earliest ones, and all
  // move alike (back): the heap stays in order.
  #shift(stepMs: number, beforeMs = Number.POSITIVE_INFINITY): void {
    for (const entry of this.#heap) {
      if (entry.atMs >= beforeMs) continue
      try {
        entry.clockStepped(stepMs, beforeMs)
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }

  #run(): void {
    const expectedMs = this.#armedNowMs + this.#armedDelayMs
    const addedMinNowMs = this.#addedMinNowMs
    const addedMinAtMs = this.#addedMinAtMs
    this.#handle = undefined
    this.#armedAtMs = Number.POSITIVE_INFINITY
    this.#armedNowMs = Number.NaN
    const heap = this.#heap
    const now = this.#clock.now()
    // The time the timer was armed for has passed, whatever the clock reads (see TimerQueue):
    // what was queued when the timer was armed moves by the whole step, what was added since by
    // the part of it sure to have come after each (two moves, the first for the earliest only,
    // keep the heap in order).
    const stepMs = expectedMs - now
    if (stepMs > stepToleranceMs) {
      this.#seenMs = now
      const sureMs = Math.min(stepMs, Math.max(0, addedMinNowMs - now))
      if (sureMs < stepMs) this.#shift(sureMs - stepMs, addedMinAtMs)
      if (sureMs > 0) this.#shift(-sureMs)
    } else this.#followStep(now)
    for (;;) {
      const top = heap[0]
      if (top === undefined || top.atMs > now) break
      this.remove(top)
      // An entry's callback must not stop the others from firing.
      try {
        top.fire(now)
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
    const next = heap[0]
    if (next !== undefined && next.atMs < this.#armedAtMs) this.#arm(next.atMs)
  }

  // Arms the timer for `atMs`. `nowMs`: the clock's reading just taken, already followed (see
  // #followStep); without it the clock is read, and a step it tells arms the timer anew.
  #arm(atMs: number, nowMs?: number): void {
    const now = nowMs ?? this.#clock.now()
    if (nowMs === undefined && this.#followStep(now)) return
    if (this.#handle !== undefined) this.#clock.clearTimeout(this.#handle)
    this.#armedAtMs = atMs
    // Longer delays would make Node fire after 1 ms; the run then re-arms for the rest.
    const delayMs = Math.min(maxTimerDelayMs, Math.max(0, atMs - now))
    this.#armedNowMs = now
    this.#armedDelayMs = delayMs
    this.#addedMinNowMs = Number.POSITIVE_INFINITY
    this.#addedMinAtMs = Number.POSITIVE_INFINITY
    if (this.#keepIdleTimer) {
      // The queue's delays are at most maxTimerDelayMs: the handle is the global timers' own.
      this.#armedBy = globalThis.setTimeout
      this.#clearArmed = globalThis.clearTimeout
    }
    this.#handle = this.#clock.setTimeout(this.#onTimer, delayMs)
    // Armed only for queued entries, each a call someone awaits: a timeout exists to end a call
    // that would never settle, and with an unreferenced timer a script awaiting such a call
    // would exit (code 13, unsettled await) before the timeout could answer it.
    keepProcessAlive(this.#handle)
  }

  #disarm(): void {
    if (this.#handle === undefined) return
    this.#clock.clearTimeout(this.#handle)
    this.#handle = undefined
    this.#armedAtMs = Number.POSITIVE_INFINITY
    this.#armedNowMs = Number.NaN
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

/**
 * A node of a {@link TimerList}. The list writes the links; `timerAtMs` must not change while
 * the node is listed.
 */
export interface TimerNode {
  /** The previous (earlier or same-time) node; owned by the list. Start undefined. */
  timerPrev: TimerNode | undefined
  /** The next (later or same-time) node; owned by the list. Start undefined. */
  timerNext: TimerNode | undefined
  /** When to fire, in the clock's milliseconds; only {@link TimerNode.clockStepped} moves it. */
  readonly timerAtMs: number
  /** Called once at `timerAtMs` unless removed first; the node is no longer listed then. */
  timerFired(): void
  /** As {@link TimerEntry.clockStepped}: moves `timerAtMs` by `stepMs`. Called by the list only. */
  clockStepped(stepMs: number): void
}

/**
 * Nodes kept in time order in a doubly linked list, with a single entry in the clock's
 * {@link TimerQueue} for the earliest of them.
 *
 * Why: the calls of one timeout policy all wait the same duration, so they arrive in time order
 * and adding one is a link at the tail, removing one an unlink, whatever the number in flight.
 * With one heap entry per call, 100,000 calls in flight made each add and remove a walk through
 * a heap of 100,000 scattered objects. A node that arrives out of order (the clock went
 * back) is still placed in order, walking back from the tail.
 */
export class TimerList implements TimerEntry {
  /** When the list's earliest node fires; Infinity while empty. Owned by the list. */
  atMs = Number.POSITIVE_INFINITY
  queueIndex = -1
  readonly #queue: TimerQueue
  #head: TimerNode | undefined
  #tail: TimerNode | undefined
  #firing = false

  constructor(clock: Clock) {
    this.#queue = timerQueueFor(clock)
  }

  /**
   * Lists `node`, which must not be listed already. `nowMs`: the clock's reading its time was
   * taken from, just now (see {@link TimerQueue.add}); none for a node timed earlier.
   */
  add(node: TimerNode, nowMs?: number): void {
    const atMs = node.timerAtMs
    if (nowMs !== undefined) this.#queue.observe(nowMs, atMs)
    let before = this.#tail
    while (before !== undefined && before.timerAtMs > atMs) before = before.timerPrev
    node.timerPrev = before
    if (before === undefined) {
      const head = this.#head
      node.timerNext = head
      if (head === undefined) this.#tail = node
      else head.timerPrev = node
      this.#head = node
      this.#reschedule()
    } else {
      const after = before.timerNext
      node.timerNext = after
      if (after === undefined) this.#tail = node
      else after.timerPrev = node
      before.timerNext = node
    }
  }

  /** Unlists `node`, which must be listed here; it will not fire. */
  remove(node: TimerNode): void {
    const wasHead = this.#unlink(node)
    if (wasHead) this.#reschedule()
  }

  /** Timer queue callback: fires every node that is due. */
  fire(now: number): void {
    this.#firing = true
    try {
      for (;;) {
        const head = this.#head
        if (head === undefined || head.timerAtMs > now) break
        this.#unlink(head)
        // A node's callback must not stop the others from firing.
        try {
          head.timerFired()
        } catch (error) {
          queueMicrotask(() => {
            throw error
          })
        }
      }
    } finally {
      this.#firing = false
    }
    this.#reschedule()
  }

  /** Timer queue callback: the clock stepped; moves the nodes due before `beforeMs`, the first ones. */
  clockStepped(stepMs: number, beforeMs: number): void {
    for (let node = this.#head; node !== undefined && node.timerAtMs < beforeMs; ) {
      const next = node.timerNext
      node.clockStepped(stepMs)
      node = next
    }
    this.atMs = this.#head!.timerAtMs
  }

  // True when `node` was the head.
  #unlink(node: TimerNode): boolean {
    const prev = node.timerPrev
    const next = node.timerNext
    if (prev === undefined) this.#head = next
    else prev.timerNext = next
    if (next === undefined) this.#tail = prev
    else next.timerPrev = prev
    node.timerPrev = undefined
    node.timerNext = undefined
    return prev === undefined
  }

  // Keeps the list's one queue entry at the time of its head.
  #reschedule(): void {
    if (this.#firing) return
    const head = this.#head
    const atMs = head === undefined ? Number.POSITIVE_INFINITY : head.timerAtMs
    if (atMs === this.atMs && (this.queueIndex >= 0 || head === undefined)) return
    this.#queue.remove(this)
    this.atMs = atMs
    if (head !== undefined) this.#queue.add(this)
  }
}
