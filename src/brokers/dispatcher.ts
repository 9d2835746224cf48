import { type Clock, type TimerHandle, within } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { BrokerError, type BrokerKind } from './errors.js'
import type { IncomingMessage } from './types.js'

/**
 * How a delivery ends: `ack` (the handler succeeded), `retry` (it failed, or it was handed back
 * because too many deliveries were held: redeliver after the adapter's retry delay), `release`
 * (never handled because the subscription is closing: redeliver as soon as possible, to anyone
 * in the group).
 */
export type Outcome = 'ack' | 'retry' | 'release'

/**
 * A delivery's position in the broker's log: the NATS stream sequence, the Redis entry id
 * (as a bigint). Numbers and bigints compare with each other.
 */
export type DeliveryOrder = number | bigint

/** One message received from a broker, with the adapter's way to settle it. */
export interface Delivery {
  readonly message: IncomingMessage
  /**
   * The position in the broker's log, when the broker has one; a key's deliveries run in this
   * order. Without it, arrival order is used, and a delivery handed back keeps its first
   * position when it comes back (matched by message id).
   */
  readonly order?: DeliveryOrder
  /** Acks or returns the message. May reject (connection lost); the dispatcher reports it. */
  settle(outcome: Outcome): Promise<void> | void
}

/** Options of a {@link KeyedDispatcher}. */
export interface DispatcherOptions {
  /** The subscription's handler. */
  readonly handler: (message: IncomingMessage) => Promise<void>
  /** Handlers running at once, across keys. */
  readonly concurrency: number
  /**
   * Deliveries held (queued plus running) before {@link KeyedDispatcher.room} reaches 0; a
   * delivery that arrives beyond it is handed back (`retry`), unless it is an awaited one
   * coming back.
   */
  readonly capacity: number
  /**
   * Deliveries of one key held while it waits for an awaited one; beyond it, newcomers of the
   * key are handed back (`retry`). A key that only waits behind its running handler is bounded
   * by `capacity` alone.
   */
  readonly maxHeldPerKey: number
  /**
   * How long a key's later deliveries wait for an earlier one that was handed back (or
   * abandoned) to come back before they run anyway: it may have gone to another subscriber of
   * the group, or been deleted from the broker.
   */
  readonly holdTimeoutMs: number
  readonly clock: Clock
  /** Names the adapter in the `BROKER_UNAVAILABLE` error of a given-up wait. */
  readonly broker: BrokerKind
  /** Receives handler failures, settle failures and given-up waits (phase `settle`). */
  readonly onError: (error: unknown, phase: 'handler' | 'settle', message: IncomingMessage) => void
}

interface Entry<D> {
  readonly delivery: D
  readonly order: DeliveryOrder
}

interface Awaited {
  readonly order: DeliveryOrder
  readonly message: IncomingMessage
  readonly timer: TimerHandle
}

/**
 * The lane a message runs in: its key's, or, for a message without a key (`''`, as every message
 * of a producer that sets none arrives), a lane of its own, by its id. Keyless messages are not
 * ordered: in one shared lane, one whose handler failed every time held back every other keyless
 * message for as long as it was redelivered (for ever, on NATS). Copies of one keyless message
 * still run one at a time. The prefixes keep a key from naming an id's lane.
 */
function laneOf(key: string, id: string): string {
  return key === '' ? `#${id}` : `=${key}`
}

/** One lane's state: an ordering key's, or one keyless message's (see {@link laneOf}). */
interface KeyState<D> {
  /** Deliveries not started yet, sorted by order. */
  readonly queue: Array<Entry<D>>
  /** The delivery whose handler runs, if any. */
  running: Entry<D> | undefined
  /** Deliveries of this key handed back or abandoned, not yet back, by message id. */
  readonly awaited: Map<string, Awaited>
}

/**
 * Runs handlers for the deliveries of one subscription: at most `concurrency` at once, one at a
 * time per ordering key, in log order per key, so per-key order survives concurrency,
 * redelivery and reconnects. A message without a key (`''`) is ordered with nothing: it runs on
 * its own, and its failures hold back no other message.
 *
 * A delivery that is not acknowledged (its handler failed, it was handed back, or its
 * connection was lost before it ran, see {@link abandon}) is *awaited*: later deliveries of its
 * key are held until it comes back from the broker and has run, then run in log order. Waits are
 * bounded: at most `maxHeldPerKey` per waiting key and `capacity` in all are held (beyond, the
 * newcomer is handed back with `retry` and awaited in turn), and a key stops waiting after
 * `holdTimeoutMs`.
 *
 * Every delivery pushed is settled exactly once, except those {@link abandon} returns.
 */
export class KeyedDispatcher<D extends Delivery = Delivery> {
  readonly #options: DispatcherOptions
  readonly #lanes = new Map<string, KeyState<D>>()
  // Lanes whose first queued delivery may start now (no handler running, nothing earlier
  // awaited).
  readonly #ready: string[] = []
  readonly #readySet = new Set<string>()
  readonly #settling = new Set<Promise<void>>()
  #queued = 0
  #running = 0
  #awaited = 0
  // Arrival positions for deliveries without a broker order, and the first one of each such
  // message still in play (every copy of a message takes its first position).
  #arrivals = 0
  readonly #firstArrival = new Map<string, number>()
  // Ids handled successfully lately, oldest first (bounded): a copy of one of them that goes
  // back is not awaited, since the broker may take the first copy's ack for the message and
  // never redeliver it.
  readonly #handled = new Set<string>()
  readonly #handledLimit: number
  #closed = false
  // Set when close() gave up on handlers still running: none of them settles (or reports) when
  // it finishes later, as its connection is closed and the broker redelivers the message.
  #cutOff = false
  // Open pauses: while any is, deliveries are queued (and held, and counted) but none starts.
  #pauses = 0
  #roomWaiters: Array<() => void> = []
  #idleWaiters: Array<() => void> = []

  constructor(options: DispatcherOptions) {
    this.#options = options
    this.#handledLimit = Math.max(1_024, options.capacity * 16)
  }

  /** Deliveries held: queued (waiting or held) plus running. */
  get size(): number {
    return this.#queued + this.#running
  }

  /**
   * How many more new deliveries an adapter should fetch: the capacity less the deliveries held
   * and those awaited. An awaited delivery is on its way back and is always taken when it comes
   * (see {@link push}), so it counts as held. Without it, a key waiting for a failed message
   * left room while each newcomer of that key was handed back: a Redis subscription read the
   * whole stream into handed-back entries (each held here with its payload), and its claim loop,
   * bringing them back `prefetch` at a time in stream order, returned the failed message only
   * after all of them, past `holdTimeoutMs`, so the key's later messages ran before it.
   */
  get room(): number {
    return Math.max(0, this.#options.capacity - this.size - this.#awaited)
  }

  /** Deliveries handed back or abandoned that later ones of their key wait for. */
  get awaited(): number {
    return this.#awaited
  }

  /** Every delivery held (running first), e.g. to extend their ack deadlines. */
  held(): D[] {
    const all: D[] = []
    for (const state of this.#lanes.values()) {
      if (state.running !== undefined) all.push(state.running.delivery)
    }
    for (const state of this.#lanes.values()) {
      for (const entry of state.queue) all.push(entry.delivery)
    }
    return all
  }

  /**
   * Whether a delivery of message `id` (key `key`) is held (queued or running), awaited, or was
   * handled lately: a copy of it arriving is not news to this dispatcher.
   */
  tracks(key: string, id: string): boolean {
    if (this.#handled.has(id)) return true
    const state = this.#lanes.get(laneOf(key, id))
    if (state === undefined) return false
    if (state.running?.delivery.message.id === id || state.awaited.has(id)) return true
    return state.queue.some((entry) => entry.delivery.message.id === id)
  }

  /**
   * Stops starting handlers until the returned function is called (once; later calls do
   * nothing). Deliveries pushed meanwhile are queued in order as usual, count against the
   * capacity and are listed by {@link held}; running handlers finish. An adapter pauses while
   * it cannot yet tell whether an earlier delivery of some key is still on its way (see the NATS
   * subscriber after a lost connection). Pauses nest: handlers start again when all are over.
   */
  pause(): () => void {
    this.#pauses++
    let resumed = false
    return () => {
      if (resumed) return
      resumed = true
      this.#pauses--
      this.#pump()
    }
  }

  /** Resolves once {@link room} is above 0, or the dispatcher is closed. */
  whenRoom(): Promise<void> {
    if (this.room > 0 || this.#closed) return Promise.resolve()
    return new Promise((resolve) => this.#roomWaiters.push(resolve))
  }

  /** Queues a delivery; after {@link close} it is released at once. */
  push(delivery: D): void {
    if (this.#closed) {
      this.#settle(delivery, 'release')
      return
    }
    const { message } = delivery
    const lane = laneOf(message.key, message.id)
    const state = this.#state(lane)
    const awaited = state.awaited.get(message.id)
    if (awaited !== undefined) this.#forget(state, message.id, awaited)
    let order = delivery.order ?? this.#arrivalOf(message.id)
    // A copy of an awaited delivery ends the wait, so it takes the awaited one's place: a copy
    // further down the log (the message published again, as a relay restarted after a crash
    // does) queued at its own position let the key's later messages, held for the wait, run
    // before it.
    if (awaited !== undefined && awaited.order < order) order = awaited.order
    // Beyond the bounds, hand the newcomer back: it comes back later and keeps its place. An
    // awaited delivery coming back is always taken, or its key could wait forever.
    if (
      awaited === undefined &&
      (this.size >= this.#options.capacity ||
        (state.awaited.size > 0 && state.queue.length >= this.#options.maxHeldPerKey))
    ) {
      this.#handBack(state, { delivery, order }, 'retry')
      this.#refresh(lane, state)
      return
    }
    insertSorted(state.queue, { delivery, order })
    this.#queued++
    this.#refresh(lane, state)
    this.#pump()
  }

  /**
   * Drops the queued (not running) deliveries that `belongs` selects, without settling them,
   * e.g. those of a connection that is gone: the broker redelivers them by itself. They are
   * awaited like handed-back ones, so later deliveries of their keys wait for them. Returns them.
   */
  abandon(belongs: (delivery: D) => boolean): D[] {
    const dropped: D[] = []
    for (const [lane, state] of this.#lanes) {
      const keep: Array<Entry<D>> = []
      for (const entry of state.queue) {
        if (belongs(entry.delivery)) {
          dropped.push(entry.delivery)
          this.#await(state, entry)
        } else {
          keep.push(entry)
        }
      }
      if (keep.length !== state.queue.length) {
        this.#queued -= state.queue.length - keep.length
        state.queue.splice(0, state.queue.length, ...keep)
        this.#refresh(lane, state)
      }
    }
    this.#wakeRoom()
    return dropped
  }

  /**
   * Gives up the deliveries `lost` selects (queued or running), which the broker has handed to
   * another consumer (it runs them): queued ones are removed without settling and are not
   * awaited; a running one runs on (its settle is the adapter's to refuse). The queued
   * deliveries of their keys that come after the earliest lost one are handed back
   * (`release`) and awaited, so they do not run here beside and before the other consumer's
   * run of it. Returns the removed queued deliveries.
   */
  forsake(lost: (delivery: D) => boolean): D[] {
    const dropped: D[] = []
    for (const [lane, state] of this.#lanes) {
      let earliest: DeliveryOrder | undefined
      if (state.running !== undefined && lost(state.running.delivery)) {
        earliest = state.running.order
      }
      const keep: Array<Entry<D>> = []
      for (const entry of state.queue) {
        if (lost(entry.delivery)) {
          dropped.push(entry.delivery)
          if (earliest === undefined || entry.order < earliest) earliest = entry.order
        } else {
          keep.push(entry)
        }
      }
      if (earliest === undefined) continue
      const stay: Array<Entry<D>> = []
      for (const entry of keep) {
        if (entry.order > earliest) this.#handBack(state, entry, 'release')
        else stay.push(entry)
      }
      this.#queued -= state.queue.length - stay.length
      state.queue.splice(0, state.queue.length, ...stay)
      this.#refresh(lane, state)
    }
    this.#wakeRoom()
    this.#pump()
    return dropped
  }

  /**
   * Stops starting handlers, releases every queued delivery, and resolves once the running
   * handlers have finished and every settle has completed, with 0. With `timeoutMs`, it waits
   * for running handlers at most that long on the clock: if some are still running then, it
   * resolves with their number at once, and none of them settles (nor reports) when it ends, so
   * the adapter can close the connection and leave their messages to the broker.
   */
  async close(timeoutMs?: number): Promise<number> {
    if (!this.#closed) {
      this.#closed = true
      for (const state of this.#lanes.values()) {
        for (const entry of state.queue) this.#settle(entry.delivery, 'release')
        state.queue.length = 0
        for (const awaited of state.awaited.values())
          this.#options.clock.clearTimeout(awaited.timer)
        state.awaited.clear()
      }
      this.#queued = 0
      this.#awaited = 0
      this.#ready.length = 0
      this.#readySet.clear()
      this.#wakeRoom()
    }
    const unfinished = await this.#handlersDone(timeoutMs)
    if (unfinished > 0) {
      this.#cutOff = true
      return unfinished
    }
    while (this.#settling.size > 0) await Promise.all([...this.#settling])
    return 0
  }

  /** Waits for the running handlers, at most `timeoutMs`; resolves with those still running. */
  async #handlersDone(timeoutMs: number | undefined): Promise<number> {
    if (this.#cutOff) return this.#running
    const idle = (async () => {
      while (this.#running > 0) {
        await new Promise<void>((resolve) => this.#idleWaiters.push(resolve))
      }
    })()
    if (timeoutMs === undefined || this.#running === 0) {
      await idle
      return 0
    }
    // within() holds the process open while it waits: close() is awaited, and a process held
    // by nothing else must not exit before it answers.
    const gaveUp = new Error('handlers still running')
    try {
      await within(idle, this.#options.clock, timeoutMs, () => gaveUp)
    } catch (error) {
      if (error !== gaveUp) throw error
    }
    return this.#running
  }

  #arrivalOf(id: string): number {
    let order = this.#firstArrival.get(id)
    if (order === undefined) {
      order = ++this.#arrivals
      this.#firstArrival.set(id, order)
      // Bounded: a message forgotten here is one long gone (handled elsewhere or given up).
      if (this.#firstArrival.size > this.#handledLimit) {
        const oldest = this.#firstArrival.keys().next().value
        if (oldest !== undefined) this.#firstArrival.delete(oldest)
      }
    }
    return order
  }

  #state(lane: string): KeyState<D> {
    let state = this.#lanes.get(lane)
    if (state === undefined) {
      state = { queue: [], running: undefined, awaited: new Map() }
      this.#lanes.set(lane, state)
    }
    return state
  }

  /** Marks the lane ready when its first queued delivery may start; drops an empty lane. */
  #refresh(lane: string, state: KeyState<D>): void {
    const head = state.queue[0]
    if (head === undefined) {
      if (state.running === undefined && state.awaited.size === 0) this.#lanes.delete(lane)
      return
    }
    if (state.running !== undefined || this.#readySet.has(lane)) return
    for (const awaited of state.awaited.values()) if (awaited.order < head.order) return
    this.#readySet.add(lane)
    this.#ready.push(lane)
  }

  #pump(): void {
    while (!this.#closed && this.#pauses === 0 && this.#running < this.#options.concurrency) {
      const lane = this.#ready.shift()
      if (lane === undefined) return
      this.#readySet.delete(lane)
      const state = this.#lanes.get(lane)
      const entry = state?.queue[0]
      if (state === undefined || entry === undefined || state.running !== undefined) continue
      // Something earlier may have become awaited since the key was marked ready.
      let blocked = false
      for (const awaited of state.awaited.values()) if (awaited.order < entry.order) blocked = true
      if (blocked) continue
      state.queue.shift()
      this.#queued--
      this.#running++
      state.running = entry
      // Pushes come from driver callbacks, which run in the context the connection (or the
      // subscription) was opened in: a handler must not inherit the deadline or request store
      // of whoever happened to subscribe (a bounded startup, a request handler), which would
      // fail every later delivery with a long-expired deadline.
      void detached(() => this.#run(entry, lane, state))
    }
  }

  async #run(entry: Entry<D>, lane: string, state: KeyState<D>): Promise<void> {
    const { delivery } = entry
    try {
      await this.#options.handler(delivery.message)
      if (!this.#cutOff) this.#settle(delivery, 'ack')
      const id = delivery.message.id
      this.#firstArrival.delete(id)
      this.#handled.delete(id)
      this.#handled.add(id)
      if (this.#handled.size > this.#handledLimit) {
        const oldest = this.#handled.values().next().value
        if (oldest !== undefined) this.#handled.delete(oldest)
      }
      // A copy of this message handed back earlier (a redelivery that overlapped this one)
      // may not come back: the broker may take this ack for the message.
      const copy = state.awaited.get(id)
      if (copy !== undefined) this.#forget(state, id, copy)
    } catch (error) {
      if (!this.#cutOff) this.#report(error, 'handler', delivery.message)
      // The deliveries of this key queued behind it stay held until it comes back and runs.
      if (this.#cutOff) {
        // Given up by close(): the connection is gone and the broker redelivers it.
      } else if (this.#closed) this.#settle(delivery, 'retry')
      else this.#handBack(state, entry, 'retry')
    }
    state.running = undefined
    this.#running--
    this.#refresh(lane, state)
    this.#wakeRoom()
    if (this.#running === 0) {
      const idle = this.#idleWaiters
      this.#idleWaiters = []
      for (const wake of idle) wake()
    }
    this.#pump()
  }

  /** Returns a delivery to the broker and waits for it before later ones of its key. */
  #handBack(state: KeyState<D>, entry: Entry<D>, outcome: Outcome): void {
    this.#await(state, entry)
    this.#settle(entry.delivery, outcome)
  }

  #await(state: KeyState<D>, entry: Entry<D>): void {
    const { message } = entry.delivery
    // Already handled: later messages need not wait for this copy.
    if (this.#handled.has(message.id)) return
    // Copies of one message (a redelivery beside a republished copy further down the log) are
    // one wait, at the earliest position any of them held: taking a later copy's position let
    // the key's messages in between run before the message (the mirror of push's rule).
    let order = entry.order
    const previous = state.awaited.get(message.id)
    if (previous !== undefined) {
      if (previous.order < order) order = previous.order
      this.#forget(state, message.id, previous)
    }
    const timeoutMs = this.#options.holdTimeoutMs
    const timer = this.#options.clock.setTimeout(() => {
      if (state.awaited.get(message.id)?.timer !== timer) return
      this.#forget(state, message.id, state.awaited.get(message.id)!)
      const lane = laneOf(message.key, message.id)
      // A keyless message held nothing back: its lane is its own.
      if (message.key === '') {
        this.#refresh(lane, state)
        return
      }
      const error = new BrokerError(
        'BROKER_UNAVAILABLE',
        this.#options.broker,
        `message ${message.id} was handed back for redelivery and did not come back within ` +
          `${timeoutMs} ms; later messages of its key run without it`,
      )
      this.#report(error, 'settle', message)
      this.#refresh(lane, state)
      this.#pump()
    }, timeoutMs)
    state.awaited.set(message.id, { order, message, timer })
    this.#awaited++
  }

  #forget(state: KeyState<D>, id: string, awaited: Awaited): void {
    this.#options.clock.clearTimeout(awaited.timer)
    state.awaited.delete(id)
    this.#awaited--
    // It counted against the room (see room): a wait given up frees it.
    this.#wakeRoom()
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

/** Inserts after every entry of lower or equal order (a key's queue is short). */
function insertSorted<D>(queue: Array<Entry<D>>, entry: Entry<D>): void {
  let index = queue.length
  while (index > 0 && queue[index - 1]!.order > entry.order) index--
  queue.splice(index, 0, entry)
}
