import { type Clock, sleep, type TimerHandle } from '../core/clock.js'
import { BreakwaterError } from '../core/errors.js'
import type { SqlDriver, Unlisten } from '../stores/index.js'
import type { EventStoreImpl } from './event-store.js'
import { eventsChannel, postgresFollowChannel, postgresFollowStart, postgresNotify } from './sql.js'

// The shortest wait before re-reading when a notification announced a position that `readAll`
// does not return yet (an older transaction is still open); doubles up to the poll interval.
const firstRecheckMs = 2

/**
 * Decides how long a follower of the log (subscription, projector) waits after it has read
 * everything `readAll` returns. On PostgreSQL it listens on the append channel: a notification
 * wakes it at once, and its payload (the appended position) tells whether events are known to
 * be pending, in which case it re-reads after a short, growing delay rather than the full poll
 * interval (the notified events become readable when older transactions finish). It listens
 * on its store's own channel (`breakwater_events_<oid>`, since migration 6), so the appends of
 * stores in other schemas of the database do not wake it; before migration 6, on the database's
 * channel, which every store shares. On SQLite it polls.
 */
export class LogWaker {
  readonly #store: EventStoreImpl
  readonly #clock: Clock
  readonly #pollIntervalMs: number
  #unlisten: Unlisten | undefined
  #knownHead = 0
  #dirty = false
  #recheckMs = firstRecheckMs
  #wake: (() => void) | undefined

  constructor(store: EventStoreImpl, clock: Clock, pollIntervalMs: number) {
    this.#store = store
    this.#clock = clock
    this.#pollIntervalMs = pollIntervalMs
  }

  /** Starts listening where the driver can; resolves when LISTEN is in place. */
  async start(): Promise<void> {
    const listen = this.#store.db.listen
    if (listen === undefined) return
    // Which channel: read before LISTEN. A follower started before migration 6 stays on the
    // database's channel (every store's appends wake it, as before) until it is restarted.
    if (this.#unlisten === undefined) {
      const rows = await this.#store.db.query<{ channel: string }>(postgresFollowChannel)
      const channel = rows[0]?.channel ?? eventsChannel
      // Called again after a failed start: listen only once.
      this.#unlisten ??= await listen.call(this.#store.db, channel, (notification) => {
        if (notification.reconnected) {
          // Anything sent while the connection was down is lost: read again.
          this.#dirty = true
        } else {
          const position = Number(notification.payload)
          if (Number.isFinite(position) && position > this.#knownHead) this.#knownHead = position
          else this.#dirty = true
        }
        // Not waiting: the loop is reading, and its read may have begun before this commit
        // (NOTIFY is sent at commit). Its next wait must read again at once rather than sleep
        // until a timed re-check (or, on a poll interval alone, until the next poll).
        if (this.#wake === undefined) this.#dirty = true
        else this.#wake()
      })
    }
    // Appends that notified before LISTEN was in place: the largest position handed out so far
    // (committed or not) says whether something may still become readable.
    const rows = await this.#store.db.query<{ position: number | string }>(postgresFollowStart)
    const taken = Number(rows[0]?.position ?? 0)
    if (taken > this.#knownHead) this.#knownHead = taken
  }

  /** Records progress: a read that returned events resets the short re-check delay. */
  progressed(): void {
    this.#recheckMs = firstRecheckMs
  }

  /** Waits until there may be something new after `position`, or `signal` aborts. */
  async wait(position: number, signal: AbortSignal): Promise<void> {
    // An abort that already happened would never fire the listener below.
    if (signal.aborted) return
    if (this.#dirty) {
      this.#dirty = false
      return
    }
    let delayMs = this.#pollIntervalMs
    if (this.#knownHead > position) {
      delayMs = Math.min(this.#recheckMs, this.#pollIntervalMs)
      this.#recheckMs = Math.min(this.#recheckMs * 2, this.#pollIntervalMs)
    }
    const wakeup = new AbortController()
    const onStop = (): void => wakeup.abort()
    signal.addEventListener('abort', onStop, { once: true })
    this.#wake = () => wakeup.abort()
    try {
      await sleep(this.#clock, delayMs, wakeup.signal)
    } catch {
      // Woken by a notification or stopped: either way, the caller looks again.
    } finally {
      this.#wake = undefined
      signal.removeEventListener('abort', onStop)
    }
  }

  /** Stops listening. */
  async close(): Promise<void> {
    const unlisten = this.#unlisten
    this.#unlisten = undefined
    this.#wake?.()
    await unlisten?.().catch(() => {})
  }
}

/**
 * Wraps a follower's `onError` so that a listener that throws cannot break the loop that
 * reports to it: the subscription or projector would otherwise end, its loop's promise
 * rejected with nobody awaiting it (an unhandled rejection), and stop tell nothing.
 */
export function safeListener(onError: (error: unknown) => void): (error: unknown) => void {
  return (error) => {
    try {
      onError(error)
    } catch {
      // The listener's own failure has nowhere better to go; the loop keeps retrying.
    }
  }
}

/**
 * Whether `error` is a closed driver's refusal (`STORE_CLOSED`). A closed driver stays closed
 * (none reopens), so a follower's retry cannot succeed: it reports the error once and ends
 * instead of reporting it at every backoff until stopped.
 */
export function isStoreClosed(error: unknown): boolean {
  return BreakwaterError.is(error) && error.code === 'STORE_CLOSED'
}

/** Exponential delay for failure number `failures` (1-based), with equal jitter. */
export function failureDelayMs(failures: number, baseMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(30, failures - 1))
  return ceiling / 2 + (Math.random() * ceiling) / 2
}

/**
 * Sends the post-commit NOTIFY of appends on PostgreSQL, coalesced: appends within `delayMs` of
 * each other share one notification (carrying the largest position), at most one is in flight
 * per store, and under a steady stream of appends one goes out per `delayMs`, so a burst of
 * appends costs a few tiny statements, not one each.
 */
export class AppendNotifier {
  readonly #db: SqlDriver
  readonly #clock: Clock
  readonly #delayMs: number
  #pending = 0
  #sending = false
  #timer: TimerHandle | undefined

  constructor(db: SqlDriver, clock: Clock, delayMs: number) {
    this.#db = db
    this.#clock = clock
    this.#delayMs = delayMs
  }

  /** Announces that events up to `position` have committed. */
  appended(position: number): void {
    if (position > this.#pending) this.#pending = position
    if (this.#sending || this.#timer !== undefined) return
    this.#arm()
  }

  #arm(): void {
    if (this.#delayMs === 0) {
      void this.#send()
      return
    }
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined
      void this.#send()
    }, this.#delayMs)
  }

  async #send(): Promise<void> {
    this.#sending = true
    const position = this.#pending
    this.#pending = 0
    try {
      // A lost notification only delays followers until their next poll.
      await this.#db.query(postgresNotify, [position]).catch(() => {})
    } finally {
      this.#sending = false
    }
    // Appends made meanwhile wait for the next window rather than going out at once: sent back
    // to back, notifications would cost a sequential appender one extra statement per append.
    if (this.#pending > 0) this.#arm()
  }
}
