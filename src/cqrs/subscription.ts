import { AsyncLocalStorage } from 'node:async_hooks'
import { type Clock, sleep, storedTime } from '../core/clock.js'
import { detached } from '../core/detached.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  optionKeys,
} from '../core/validate.js'
import { yieldToEventLoop } from '../stores/batches.js'
import { checkOptionKeys } from './checks.js'
import { SubscriptionHandlerError } from './errors.js'
import { checkKey, type EventStoreImpl } from './event-store.js'
import { failureDelayMs, isStoreClosed, LogWaker, safeListener } from './follower.js'
import { storedPosition } from './stored-position.js'
import type { RecordedEvent } from './types.js'

/** Options of `EventStore.subscribe`. */
export interface SubscriptionOptions {
  /**
   * The checkpoint name. With a name, the last handled position is stored in
   * `breakwater_checkpoints` after every batch and a restarted subscription resumes after it;
   * without one nothing is stored. The stored checkpoint only moves forward: a second instance
   * of the same name saving an older position leaves the newer one in place.
   * @default undefined (no checkpoint)
   */
  readonly name?: string | undefined
  /**
   * Where to start (inclusive) when no checkpoint is stored.
   * @default 0 (the beginning of the log)
   */
  readonly fromPosition?: number | undefined
  /**
   * Events read per query.
   * @default 500
   */
  readonly batchSize?: number | undefined
  /**
   * How long a caught-up subscription waits before looking again: the polling interval on
   * SQLite, and on PostgreSQL the longest wait between notifications (a safety net).
   * @default 1000 on SQLite, 5000 on PostgreSQL
   */
  readonly pollIntervalMs?: number | undefined
  /**
   * First delay after a failure (reading, or the handler throwing); doubles up to
   * `retryMaxDelayMs`. The failed event is delivered again: nothing is skipped.
   * @default 100
   */
  readonly retryBaseDelayMs?: number | undefined
  /**
   * Longest delay between retries after failures.
   * @default 30000
   */
  readonly retryMaxDelayMs?: number | undefined
  /**
   * Called with every failure (the subscription keeps retrying): a handler's error comes as a
   * `SubscriptionHandlerError` naming the event, with the handler's error as `cause`. The one
   * failure it does not retry is its driver's `STORE_CLOSED` (the driver was closed under it):
   * reported once, the subscription then ends, without storing its checkpoint.
   * @default ignores failures
   */
  readonly onError?: ((error: unknown) => void) | undefined
  /**
   * Time source for polling and retry delays.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const subscriptionOptions = optionKeys<SubscriptionOptions>({
  name: true,
  fromPosition: true,
  batchSize: true,
  pollIntervalMs: true,
  retryBaseDelayMs: true,
  retryMaxDelayMs: true,
  onError: true,
  clock: true,
})

// The subscription whose handler the current async context runs in.
const handling = new AsyncLocalStorage<StoreSubscription>()

/** A running subscription made by `EventStore.subscribe`. */
export interface Subscription {
  /** The checkpoint name, if any. */
  readonly name: string | undefined
  /** The position of the last event handled (before the first: fromPosition - 1, and at least 0). */
  readonly position: number
  /** Whether it has caught up with the log at least once (and is now following it live). */
  readonly live: boolean
  /**
   * Stops after the event being handled, stores the checkpoint, and stops listening. Called
   * from the subscription's own handler, it resolves at once (waiting would wait for that
   * handler) and the rest happens when the handler returns.
   */
  stop(): Promise<void>
}

class StoreSubscription implements Subscription {
  readonly name: string | undefined
  position: number
  live = false
  readonly #store: EventStoreImpl
  readonly #handler: (event: RecordedEvent) => Promise<void> | void
  readonly #batchSize: number
  readonly #clock: Clock
  readonly #retryBaseMs: number
  readonly #retryMaxMs: number
  readonly #onError: (error: unknown) => void
  readonly #waker: LogWaker
  readonly #stop = new AbortController()
  readonly #done: Promise<void>
  #saved: number

  constructor(
    store: EventStoreImpl,
    handler: (event: RecordedEvent) => Promise<void> | void,
    options: SubscriptionOptions,
  ) {
    checkObject('options', options)
    // A misspelt name (`nme`) left the subscription without a checkpoint: every restart began
    // again from the start of the log.
    checkOptionKeys('options', options, subscriptionOptions)
    this.#store = store
    this.#handler = checkFunction('handler', handler)
    // PostgreSQL cannot store NUL, and stores a lone surrogate as U+FFFD; and the name is a key
    // of breakwater_checkpoints, so it is bounded in length too (see checkKey).
    this.name = options.name === undefined ? undefined : checkKey('name', options.name)
    this.position = checkInteger('fromPosition', options.fromPosition ?? 0, 0) - 1
    if (this.position < 0) this.position = 0
    this.#saved = this.position
    this.#batchSize = checkInteger('batchSize', options.batchSize ?? 500, 1, 100_000)
    const pollIntervalMs = checkInteger(
      'pollIntervalMs',
      options.pollIntervalMs ?? (store.dialect === 'postgres' ? 5000 : 1000),
      1,
    )
    this.#retryBaseMs = checkInteger('retryBaseDelayMs', options.retryBaseDelayMs ?? 100, 1)
    this.#retryMaxMs = checkInteger(
      'retryMaxDelayMs',
      options.retryMaxDelayMs ?? 30_000,
      this.#retryBaseMs,
    )
    this.#onError =
      options.onError === undefined
        ? () => {}
        : safeListener(checkFunction('onError', options.onError))
    this.#clock = checkClock('clock', options.clock)
    this.#waker = new LogWaker(store, this.#clock, pollIntervalMs)
    // The loop runs in breakwater's own async context, never the caller's of subscribe(): a
    // deadline set around an application's startup would otherwise bound every handler call
    // forever after, and an open transaction's context would follow the loop's statements.
    this.#done = detached(() => this.#run())
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal
    let failures = 0
    let started = false
    while (!signal.aborted) {
      try {
        if (!started) {
          await this.#waker.start()
          if (this.name !== undefined) {
            const rows = await this.#store.db.query<{ position: number | string }>(
              this.#store.statements.loadCheckpoint,
              [this.name],
            )
            if (rows[0] !== undefined) {
              // Read before it replaces the position: one that cannot be read is reported (and
              // read again at the retry), and leaves nothing for the last save to store.
              this.position = storedPosition(rows[0].position, () => ({
                table: 'breakwater_checkpoints',
                row: `checkpoint ${JSON.stringify(this.name)}`,
                column: 'position',
              }))
            }
            this.#saved = this.position
          }
          started = true
        }
        const { events, failure } = await this.#store.readAllUntilFailure({
          fromPosition: this.position + 1,
          limit: this.#batchSize,
        })
        for (const event of events) {
          if (signal.aborted) break
          try {
            await handling.run(this, () => this.#handler(event))
          } catch (error) {
            throw new SubscriptionHandlerError(this.name, event, error)
          }
          this.position = event.position
        }
        await this.#saveCheckpoint()
        // An event that cannot be upcast: the ones before it are handled and checkpointed, and
        // it is reported and read again after the retry delay, like a failing handler.
        if (failure !== undefined && !signal.aborted) throw failure
        failures = 0
        if (events.length > 0) this.#waker.progressed()
        if (events.length < this.#batchSize && !signal.aborted) {
          this.live = true
          await this.#waker.wait(this.position, signal)
        } else {
          // Catching up, batch after batch: on SQLite nothing else of the process (timers, I/O,
          // requests) would run until the subscription had caught up (see yieldToEventLoop).
          await yieldToEventLoop()
        }
      } catch (error) {
        if (signal.aborted) break
        if (isStoreClosed(error)) {
          // The driver was closed under the subscription: reported once, it ends. Its last
          // checkpoint save would only fail (and be reported) the same way.
          this.#onError(error)
          await this.#waker.close()
          return
        }
        failures++
        this.#onError(error)
        await sleep(
          this.#clock,
          failureDelayMs(failures, this.#retryBaseMs, this.#retryMaxMs),
          signal,
        ).catch(() => {})
      }
    }
    await this.#saveCheckpoint().catch((error: unknown) => this.#onError(error))
    await this.#waker.close()
  }

  async #saveCheckpoint(): Promise<void> {
    if (this.name === undefined || this.position === this.#saved) return
    const position = this.position
    await this.#store.db.execute(this.#store.statements.saveCheckpoint, [
      this.name,
      position,
      storedTime(this.#clock),
    ])
    this.#saved = position
  }

  stop(): Promise<void> {
    this.#stop.abort()
    return handling.getStore() === this ? Promise.resolve() : this.#done
  }
}

/** @internal Used by `EventStore.subscribe`. */
export function createSubscription(
  store: EventStoreImpl,
  handler: (event: RecordedEvent) => Promise<void> | void,
  options: SubscriptionOptions,
): Subscription {
  return new StoreSubscription(store, handler, options)
}
