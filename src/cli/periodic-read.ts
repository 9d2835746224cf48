// A slow read (the relay's whole-outbox figures scan the pending rows: over a second at a
// million) that a frequent caller (each Prometheus scrape of each relay) must not run each time,
// nor wait for.
import type { Clock } from '../core/clock.js'

/** What {@link PeriodicRead.latest} returns. */
export interface LatestRead<T> {
  /** The value of the last read that succeeded; undefined until one has. */
  readonly value: T | undefined
  /** Whether the last read that finished succeeded (false until one has). */
  readonly ok: boolean
}

/** The last value of a read refreshed in the background, see {@link periodicRead}. */
export interface PeriodicRead<T> {
  /**
   * The last value read, without waiting. Starts a read in the background when none is running
   * and the last one started `intervalMs` ago or more (or never, or the clock stepped back
   * behind it); its value is served from the next call on.
   */
  latest(): LatestRead<T>
  /** Settles once no read is running. */
  idle(): Promise<void>
}

/** Options of {@link periodicRead}. */
export interface PeriodicReadOptions {
  /** Least time between the starts of two reads, in ms (0: a read per call, one at a time). */
  readonly intervalMs: number
  readonly clock: Pick<Clock, 'now'>
  /** Receives a failed read's error; the last value stays, `ok` turns false. */
  readonly onError: (error: unknown) => void
}

/**
 * Runs `read` at most once per `intervalMs`, never two at once, when a caller asks for the
 * value: nobody asking (no scraper) costs nothing.
 */
export function periodicRead<T>(
  read: () => Promise<T>,
  options: PeriodicReadOptions,
): PeriodicRead<T> {
  const { intervalMs, clock, onError } = options
  let last: LatestRead<T> = { value: undefined, ok: false }
  let startedAt: number | undefined
  let running: Promise<void> | undefined

  function due(now: number): boolean {
    if (startedAt === undefined) return true
    const elapsed = now - startedAt
    // A wall clock set back: waiting for it to pass the last start again could take hours.
    return elapsed < 0 || elapsed >= intervalMs
  }

  return {
    latest() {
      const now = clock.now()
      if (running === undefined && due(now)) {
        startedAt = now
        running = (async () => {
          try {
            last = { value: await read(), ok: true }
          } catch (error) {
            last = { value: last.value, ok: false }
            onError(error)
          } finally {
            running = undefined
          }
        })()
      }
      return last
    },
    async idle() {
      await running
    },
  }
}
