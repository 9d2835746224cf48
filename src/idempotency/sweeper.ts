import type { Clock, TimerHandle } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { removeInBatches } from '../stores/batches.js'
import type { SqlDriver } from '../stores/index.js'
import { createSqlIdempotencyStore } from './sql-store.js'
import type { IdempotencyStore } from './store.js'

/** Options of {@link sweepExpired}. */
export interface SweepOptions {
  /**
   * Records deleted per statement. Small batches keep each DELETE short, so request claims
   * never wait long behind the sweeper.
   * @default 1000
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call; the rest waits for the next call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * The clock that says what has expired.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** The keys SweepOptions takes (internal: not exported from the package root). */
export const sweepOptions = optionKeys<SweepOptions>({
  batchSize: true,
  maxBatches: true,
  clock: true,
})

function storeOf(target: unknown): IdempotencyStore {
  const candidate = checkObject('store', target)
  if (typeof candidate.sweep === 'function') return candidate as unknown as IdempotencyStore
  if (typeof candidate.transaction === 'function') {
    return createSqlIdempotencyStore(candidate as unknown as SqlDriver)
  }
  throw new InvalidOptionError('store', 'an IdempotencyStore or a SqlDriver', target)
}

function batchSettings(options: SweepOptions): { batchSize: number; maxBatches: number } {
  return {
    batchSize: checkInteger('batchSize', options.batchSize ?? 1000, 1, 1_000_000),
    maxBatches: checkInteger('maxBatches', options.maxBatches ?? 100, 1),
  }
}

async function sweepBatches(
  store: IdempotencyStore,
  clock: Clock,
  batchSize: number,
  maxBatches: number,
): Promise<number> {
  return removeInBatches(batchSize, maxBatches, () => store.sweep(clock.now(), batchSize))
}

/**
 * Deletes idempotency records whose retention has ended, in bounded batches (each batch one
 * short statement in its own transaction), and returns how many it deleted.
 *
 * An unknown (misspelt) option, a bad value or a store it cannot use rejects the returned
 * promise with `InvalidOptionError` (`INVALID_OPTION`) naming it; nothing is thrown at the call.
 *
 * @example
 * ```ts
 * const deleted = await sweepExpired(db, { batchSize: 500 })
 * ```
 */
export async function sweepExpired(
  store: IdempotencyStore | SqlDriver,
  options: SweepOptions = {},
): Promise<number> {
  // async: a refusal below rejects the promise the caller handles, rather than throwing at the
  // call past its .catch() (as in a timer's sweepExpired(db, cfg).catch(log)).
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, sweepOptions, { bareNames: true })
  const { batchSize, maxBatches } = batchSettings(options)
  return sweepBatches(storeOf(store), checkClock('clock', options.clock), batchSize, maxBatches)
}

/** Options of {@link createSweeper}. */
export interface SweeperOptions extends SweepOptions {
  /** The store to sweep: an idempotency store or a `SqlDriver`. */
  readonly store: IdempotencyStore | SqlDriver
  /**
   * Time between sweeps.
   * @default 60000
   */
  readonly intervalMs?: number | undefined
  /**
   * Called with the error when a sweep fails; the sweeper keeps going.
   * @default ignore
   */
  readonly onError?: ((error: unknown) => void) | undefined
}

/** The keys SweeperOptions takes (internal: not exported from the package root). */
export const sweeperOptions = optionKeys<SweeperOptions>({
  store: true,
  intervalMs: true,
  onError: true,
  batchSize: true,
  maxBatches: true,
  clock: true,
})

/** A background sweeper made by {@link createSweeper}. */
export interface Sweeper {
  /**
   * Sweeps now (waiting for a sweep in progress first) and returns how many it deleted. The
   * caller's own work: it runs in the caller's async context (a deadline set around the call
   * bounds it), unlike the sweeps of the timer.
   */
  sweepNow(): Promise<number>
  /** Stops the timer and waits for a sweep in progress. */
  close(): Promise<void>
}

/**
 * Starts a sweeper that calls {@link sweepExpired} every `intervalMs` on the clock. Its timer
 * never keeps the process alive, and runs in breakwater's own async context, not the caller's:
 * a deadline (`withDeadline`) or an open transaction around this call does not reach the
 * sweeps. Close it on shutdown.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * const sweeper = createSweeper({ store: db, intervalMs: 60_000 })
 * process.on('SIGTERM', () => void sweeper.close())
 * ```
 */
export function createSweeper(options: SweeperOptions): Sweeper {
  checkObject('options', options)
  // A misspelt option was dropped without a word and its default used instead.
  checkOptionKeys('options', options, sweeperOptions, { bareNames: true })
  const store = storeOf(options.store)
  const clock = checkClock('clock', options.clock)
  const intervalMs = checkInteger('intervalMs', options.intervalMs ?? 60_000, 1)
  const { batchSize, maxBatches } = batchSettings(options)
  const onError =
    options.onError === undefined
      ? () => {}
      : checkFunction<(error: unknown) => void>('onError', options.onError)
  let timer: TimerHandle | undefined
  let running: Promise<number> | undefined
  let closed = false

  const sweep = async (byTimer: boolean): Promise<number> => {
    while (running !== undefined) await running.catch(() => 0)
    // The timer's sweep may have waited behind another one while close() came: none after it.
    if (byTimer && closed) return 0
    running = sweepBatches(store, clock, batchSize, maxBatches)
    try {
      return await running
    } finally {
      running = undefined
    }
  }

  const sweepNow = (): Promise<number> => sweep(false)

  const schedule = (): void => {
    if (closed) return
    // Set in breakwater's own async context, never the caller's of createSweeper(): a deadline
    // set around an application's startup would otherwise bound every sweep forever after (the
    // timer fires in the context it was set in, and each sweep sets the next timer).
    timer = detached(() =>
      clock.setTimeout(() => {
        timer = undefined
        sweep(true)
          .catch((error: unknown) => {
            try {
              onError(error)
            } catch {
              // A failing error listener must not stop the sweeper.
            }
          })
          .finally(schedule)
      }, intervalMs),
    )
  }
  schedule()

  return {
    sweepNow,
    async close() {
      closed = true
      if (timer !== undefined) clock.clearTimeout(timer)
      timer = undefined
      while (running !== undefined) await running.catch(() => 0)
    },
  }
}
