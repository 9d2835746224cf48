import { AsyncLocalStorage } from 'node:async_hooks'
import { type Clock, sleep, storedTime } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { AbortedError, InvalidOptionError } from '../core/errors.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkSignal,
  optionKeys,
} from '../core/validate.js'
import { TimeoutError } from '../index.js'
import { yieldToEventLoop } from '../stores/batches.js'
import { type SqlExecutor, sqlErrorKind } from '../stores/index.js'
import { checkOptionKeys } from './checks.js'
import {
  ProjectionFailedError,
  RebuildBlockedError,
  type RebuildBlockingForeignKey,
  RebuildContendedError,
  RebuildSupersededError,
} from './errors.js'
import { type EventRow, type EventStore, type EventStoreImpl, internalsOf } from './event-store.js'
import { publish } from './events.js'
import { failureDelayMs, isStoreClosed, LogWaker, safeListener } from './follower.js'
import {
  createTables,
  ensureProjections,
  foreignKeysFollowRenames,
  handles,
  type ProjectionDefinition,
  physicalTable,
  projectionContext,
  validateProjection,
} from './projections.js'
import { projectionPlace, readStoredPosition, storedPosition } from './stored-position.js'
import type { RecordedEvent } from './types.js'

/** Options of {@link createProjector}. */
export interface ProjectorOptions {
  /**
   * Events applied per transaction (each batch commits its read-model changes and the
   * checkpoint together).
   * @default 500
   */
  readonly batchSize?: number | undefined
  /**
   * How long a caught-up projector waits before looking again: the polling interval on
   * SQLite, and on PostgreSQL the longest wait between notifications.
   * @default 1000 on SQLite, 5000 on PostgreSQL
   */
  readonly pollIntervalMs?: number | undefined
  /**
   * First delay after a failed batch (rolled back as a whole); doubles up to
   * `retryMaxDelayMs`. When `apply` failed on an event, the events before it are applied and
   * checkpointed first (in a transaction of their own), and the retry starts at that event: an
   * event that always fails stops the projection right before it (see `lag()` and `onError`)
   * rather than being skipped, and holds back no event before it.
   * @default 100
   */
  readonly retryBaseDelayMs?: number | undefined
  /**
   * Longest delay between retries after failures.
   * @default 30000
   */
  readonly retryMaxDelayMs?: number | undefined
  /**
   * Called with every failed batch: a failing `apply` as a `ProjectionFailedError` naming the
   * event, with the application's error as `cause`. The loop retries every failure but its
   * driver's `STORE_CLOSED` (the driver was closed under it): reported once, the loop then
   * ends, as if stopped.
   * @default ignores failures
   */
  readonly onError?: ((error: unknown) => void) | undefined
  /**
   * How many rounds a rebuild's swap may take before it fails with `RebuildContendedError`
   * (nothing swapped in). Each try of the swap transaction is a round, and so is each further
   * lock round of an inline projection's swap on PostgreSQL (it waits for one live table, takes
   * the others `NOWAIT` and gives them back when one is busy; each such round follows an
   * append's commit, or a lock wait that ran out: see `swapLockTimeoutMs`). A try that fails
   * with a deadlock (40P01), serialization failure (40001) or lock timeout (55P03) is tried
   * again while rounds are left. Without a bound, a stream of appends that always holds one of
   * the tables would keep the rebuild going round for ever.
   * @default 100
   */
  readonly maxSwapRounds?: number | undefined
  /**
   * On PostgreSQL, the longest a rebuild's swap waits for any one lock (its `lock_timeout`):
   * the checkpoint row, an inline projection's live table, the rename of a table (which waits
   * for every transaction that has read it). A wait that runs out ends its round (a lock round
   * of an inline swap, or the whole try of the swap, rolled back) and the swap goes round again
   * within `maxSwapRounds`; when none are left it fails with `RebuildContendedError` naming
   * the lock. Without it, one long transaction on a live table would hold the rebuild for ever,
   * and with it every query queued behind the swap's rename. Above PostgreSQL's default
   * `deadlock_timeout` (1 s), so a deadlock is still reported as one. Not used on SQLite, whose
   * swap only waits for the write lock (bounded by the driver's `busyTimeoutMs`).
   * @default 2000
   */
  readonly swapLockTimeoutMs?: number | undefined
  /**
   * Time source for polling, retries, lag and `waitFor`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** How far a projection is behind the log. */
export interface ProjectionLag {
  /** The projection's checkpoint: the last position applied. */
  readonly position: number
  /** The log's head (the largest position `readAll` returns now). */
  readonly head: number
  /** `head - position`: how many positions behind (an upper bound of events: positions have holes). */
  readonly positions: number
  /**
   * How long the oldest event not yet applied has been in the log, in ms (0 when caught up).
   */
  readonly ms: number
}

const projectorOptions = optionKeys<ProjectorOptions>({
  batchSize: true,
  pollIntervalMs: true,
  retryBaseDelayMs: true,
  retryMaxDelayMs: true,
  onError: true,
  maxSwapRounds: true,
  swapLockTimeoutMs: true,
  clock: true,
})

/** Options of {@link Projector.waitFor}. */
export interface WaitForOptions {
  /**
   * Give up after this long with `TimeoutError`: an integer >= 0, or `Infinity` for no timeout
   * (wait until the position is applied or `signal` aborts).
   * @default 5000
   */
  readonly timeoutMs?: number | undefined
  /** Aborts the wait (rejects with `AbortedError`). */
  readonly signal?: AbortSignal | undefined
}

/** Options of {@link Projector.rebuild}. */
export interface RebuildOptions {
  /**
   * Events applied per transaction while filling the fresh tables.
   * @default the projector's batchSize
   */
  readonly batchSize?: number | undefined
  /**
   * Cancels the rebuild: looked at before it starts, between the fill's batches and before
   * each try of the swap (a batch or swap in progress runs to its end). An aborted rebuild
   * drops its fresh tables, swaps nothing in and rejects with `AbortedError` (`cause` the
   * signal's reason).
   */
  readonly signal?: AbortSignal | undefined
}

const waitForOptions = optionKeys<WaitForOptions>({ timeoutMs: true, signal: true })
const rebuildOptions = optionKeys<RebuildOptions>({ batchSize: true, signal: true })
const catchUpOptions = optionKeys<NonNullable<Parameters<Projector['catchUp']>[0]>>({
  signal: true,
})

/**
 * `waitFor`'s `timeoutMs`: an integer >= 0, or `Infinity`, which means no timeout (as it does
 * for `withDeadline`): refused, a caller had to make up a large number to wait without a limit.
 * NaN, negatives, fractions and non-numbers are refused with `InvalidOptionError`.
 */
function checkWaitTimeout(value: unknown): number {
  if (value === Number.POSITIVE_INFINITY) return value
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new InvalidOptionError('timeoutMs', 'an integer >= 0, or Infinity for no timeout', value)
  }
  return value
}

/** What a rebuild did. */
export interface RebuildResult {
  /** The position the rebuilt tables reflect at the swap. */
  readonly position: number
  /** Events applied to the fresh tables. */
  readonly events: number
}

/**
 * Maintains a projection's read model from the log, in its own process or beside the
 * application. Each batch runs in one transaction: lock the checkpoint row, read the events
 * after it, apply them, store the new checkpoint, commit. A crash at any point leaves
 * read model and checkpoint together, so no event is applied twice or skipped, and several
 * projector instances of one projection take turns instead of racing.
 */
export interface Projector {
  /** The projection's name. */
  readonly name: string
  /** Whether the projection runs inline (in appends) rather than in this projector. */
  readonly inline: boolean
  /**
   * Starts following the log in the background (idempotent). Not available for inline
   * projections, which need no projector. Right after a `stop()` it begins once the stopped
   * loop has finished its batch. The loop runs in breakwater's own async context, not the
   * caller's: a deadline (`withDeadline`) or an open transaction around `start()` does not
   * reach the batches it runs later.
   */
  start(): void
  /**
   * Stops the background loop after the batch in progress (every call resolves once it has
   * ended, also a second one). Called from the projection's own
   * `apply` (project until some event, then stop), it resolves at once (waiting would wait for
   * that batch, whose transaction holds the checkpoint lock) and the loop stops once the batch
   * has committed.
   */
  stop(): Promise<void>
  /**
   * Applies batches until the projection has caught up with the head; returns its position.
   * The caller's own work: its batches run in the caller's async context (a deadline set around
   * the call bounds them).
   */
  catchUp(options?: { readonly signal?: AbortSignal | undefined }): Promise<number>
  /**
   * The checkpoint (last applied position), read from the database. An inline projection has
   * applied every committed event: its position is the head. One registered on a log that
   * already had events (added to a running system) has only applied the events appended since:
   * until it is rebuilt, its position is the one before the log's first event.
   */
  position(): Promise<number>
  /** The projection's lag behind the log. */
  lag(): Promise<ProjectionLag>
  /**
   * Resolves once the read model reflects every event up to `position` (read-your-writes:
   * pass `AppendResult.lastPosition`). Inline projections resolve at once, except one that
   * lacks the events from before its registration: it waits for its rebuild. A rebuild does
   * not take that back: its swap applies at least every event up to the checkpoint it
   * replaces, so the checkpoint never goes back and the swapped-in tables reflect whatever
   * position a `waitFor` resolved for before.
   * @throws TimeoutError when it does not happen within `timeoutMs` (never with `Infinity`)
   */
  waitFor(position: number, options?: WaitForOptions): Promise<void>
  /**
   * Rebuilds the read model from position 0 into fresh tables, then swaps them in atomically
   * (with the checkpoint); queries keep reading the old tables until the swap. Works for
   * async and inline projections. A rebuild that fails (or is aborted) swaps nothing in and
   * drops its fresh tables (unless a newer rebuild has taken over, which dropped them), then
   * rejects with its own failure; should that clean-up fail too, its error is attached to the
   * failure as `suppressed` (an array), not put in its place.
   *
   * Rebuilding under changed code: nothing records which code a projection's tables were built
   * by, so a projector still running the old code (an instance not yet redeployed) goes on
   * applying new events with the old `apply` to the rebuilt tables. Stop every old projector
   * (and, for an inline projection, every old appending process) before rebuilding, or rebuild
   * the changed projection under a new name and tables and switch the queries over.
   * @throws AbortedError when `signal` aborts it (nothing swapped in, fresh tables dropped)
   * @throws ProjectionFailedError when `apply` throws on an event (nothing swapped in, fresh
   * tables dropped)
   * @throws RebuildBlockedError when views (PostgreSQL) or foreign keys that would stay with
   * the old tables depend on the projection's tables
   */
  rebuild(options?: RebuildOptions): Promise<RebuildResult>
}

// The projector whose projection's apply the current async context runs in.
const applying = new AsyncLocalStorage<SqlProjector>()

/** Whether the rebuild filling `generation` is still the projection's rebuild in progress. */
function ownsRebuild(row: ProjectionRow, generation: number): boolean {
  return row.rebuild_generation !== null && Number(row.rebuild_generation) === generation
}

interface ProjectionRow {
  position: number | string
  generation: number | string
  rebuild_generation: number | string | null
  /** 1 last registered (or rebuilt) inline, 0 async, null before modes were recorded. */
  inline: number | string | null
}

class SqlProjector implements Projector {
  readonly name: string
  readonly inline: boolean
  readonly #store: EventStoreImpl
  readonly #projection: ProjectionDefinition
  /**
   * Whether the projection reads events of a type: only those are upcast (the others advance
   * the checkpoint unparsed), so an upcaster failing on a type it does not read cannot stop it.
   * A projection without `eventTypes` is a catch-all: every event is upcast for it.
   */
  readonly #wants = (type: string): boolean => handles(this.#projection, type)
  readonly #batchSize: number
  readonly #clock: Clock
  readonly #retryBaseMs: number
  readonly #retryMaxMs: number
  readonly #maxSwapRounds: number
  readonly #swapLockTimeoutMs: number
  readonly #onError: (error: unknown) => void
  readonly #waker: LogWaker
  #ready: Promise<void> | undefined
  #loop: Promise<void> | undefined
  /** The last loop stopped (it may still be finishing its batch). */
  #ending: Promise<void> | undefined
  #stop: AbortController | undefined
  #lastKnown = 0
  /** An inline projection known to hold every event (registered on an empty log, or rebuilt). */
  #complete = false
  readonly #progress = new Set<() => void>()

  constructor(store: EventStoreImpl, projection: ProjectionDefinition, options: ProjectorOptions) {
    checkObject('options', options)
    // A misspelt option (`pollIntervalMS`) was dropped without a word: its default was used.
    checkOptionKeys('options', options, projectorOptions)
    validateProjection('projection', projection)
    this.#store = store
    this.#projection = projection
    this.name = projection.name
    this.inline = store.inlineProjections.includes(projection)
    // A copy of an inline projection (a spread, the definition declared twice) would run as an
    // async one: started, it would apply every event again to the tables the appends write.
    if (!this.inline && store.inlineProjections.some((p) => p.name === projection.name)) {
      throw new InvalidOptionError(
        'projection',
        `the projection the store runs inline under the name "${projection.name}" (the same object), or another name`,
        projection.name,
      )
    }
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
    this.#maxSwapRounds = checkInteger('maxSwapRounds', options.maxSwapRounds ?? 100, 1)
    // PostgreSQL's lock_timeout is a 32-bit int of ms.
    this.#swapLockTimeoutMs = checkInteger(
      'swapLockTimeoutMs',
      options.swapLockTimeoutMs ?? 2000,
      1,
      2_147_483_647,
    )
    this.#onError =
      options.onError === undefined
        ? () => {}
        : safeListener(checkFunction('onError', options.onError))
    this.#clock = checkClock('clock', options.clock)
    this.#waker = new LogWaker(store, this.#clock, pollIntervalMs)
  }

  #ensure(): Promise<void> {
    this.#ready ??= ensureProjections(
      this.#store.db,
      [this.#projection],
      this.#clock,
      this.inline,
    ).catch((error: unknown) => {
      this.#ready = undefined
      throw error
    })
    return this.#ready
  }

  start(): void {
    if (this.inline) {
      throw new InvalidOptionError(
        'projection',
        'an async projection (inline projections run in appends)',
        this.name,
      )
    }
    if (this.#loop !== undefined) return
    const stop = new AbortController()
    this.#stop = stop
    // The loop runs in breakwater's own async context, never the caller's of start(): a
    // deadline set around an application's startup would otherwise bound every batch (and the
    // projection's apply) forever after, and an open transaction's context would follow it.
    this.#loop = detached(() => this.#follow(stop.signal, this.#ending))
  }

  stop(): Promise<void> {
    this.#stop?.abort()
    const loop = this.#loop
    this.#loop = undefined
    if (loop !== undefined) this.#ending = loop
    // From inside a batch, the loop awaits the caller: it ends once the batch has committed.
    if (applying.getStore() === this) return Promise.resolve()
    // A second stop() (two parts of a shutdown) waits for the same loop: resolved at once, it
    // would let the caller close the database under the batch still in progress.
    return this.#ending ?? Promise.resolve()
  }

  async #follow(signal: AbortSignal, previous: Promise<void> | undefined): Promise<void> {
    // A loop being stopped ends by closing the waker this one listens through: start after it.
    await previous
    let failures = 0
    let listening = false
    while (!signal.aborted) {
      try {
        if (!listening) {
          await this.#waker.start()
          listening = true
        }
        const { applied, position } = await this.#batch()
        failures = 0
        if (applied > 0) {
          this.#waker.progressed()
          // Catching up, batch after batch: on SQLite nothing else of the process (timers, I/O,
          // requests) would run until the projection had caught up (see yieldToEventLoop).
          await yieldToEventLoop()
        } else await this.#waker.wait(position, signal)
      } catch (error) {
        if (signal.aborted) break
        failures++
        publish('projection-error', { projection: this.name, error })
        this.#onError(error)
        // The driver was closed under the projector: no retry can succeed, so it ends here,
        // reported once (the batch rolled back; the checkpoint holds what was applied).
        if (isStoreClosed(error)) break
        await sleep(
          this.#clock,
          failureDelayMs(failures, this.#retryBaseMs, this.#retryMaxMs),
          signal,
        ).catch(() => {})
      }
    }
    await this.#waker.close()
  }

  /**
   * One batch (see {@link #batchBefore}). When `apply` fails on an event, the batch rolls back as
   * a whole; the events before that one are then applied and checkpointed in a batch of their
   * own, so that one failing event holds back neither them (read-your-writes, lag) nor the
   * checkpoint, which stops right before it, as for an event that cannot be upcast. The
   * failure, a {@link ProjectionFailedError} naming the event, is then thrown (reported and
   * retried from that event).
   */
  async #batch(): Promise<{ applied: number; position: number }> {
    try {
      return await this.#batchBefore(undefined)
    } catch (error) {
      if (!(error instanceof ApplyFailure)) throw error
      if (error.first) throw error.failure
      try {
        await this.#batchBefore(error.failure.position)
      } catch (prefixError) {
        throw withSuppressed(error.failure, unwrapApply(prefixError))
      }
      throw error.failure
    }
  }

  /**
   * One transaction: lock checkpoint, read, apply, store checkpoint. With `before`, only the
   * events below that position are applied (it is the event `apply` failed on).
   */
  async #batchBefore(before: number | undefined): Promise<{ applied: number; position: number }> {
    await this.#ensure()
    const store = this.#store
    const result = await store.db.transaction(async (tx) => {
      const row = await this.#lockRow(tx)
      if (row.inline !== null && Number(row.inline) === 1) throw this.#registeredInline()
      const position = storedPosition(row.position, projectionPlace(this.name, 'position'))
      const page = await store.readAllOfTypes(
        { fromPosition: position + 1, limit: this.#batchSize, tx },
        this.#wants,
      )
      let { failure } = page
      if (page.position === undefined) return { applied: 0, position, failure }
      let events = page.events
      let through = page.position
      let read = page.read
      if (before !== undefined && through >= before) {
        // The page holds that event, so every row below it is in the page (a page is the
        // log's prefix after the checkpoint): the checkpoint may move up to just before it.
        events = events.filter((event) => event.position < before)
        through = before - 1
        read = events.length
        // An event that cannot be upcast after it is not this batch's concern.
        failure = undefined
      }
      if (through > position) {
        await this.#applyAll(tx, events, 0, true).catch((error: unknown) => {
          // Nothing before it in the log since the checkpoint: no batch of its own to apply.
          if (error instanceof ApplyFailure && error.failure.position === position + 1) {
            error.first = true
          }
          throw error
        })
        await tx.execute(store.statements.saveProjectionPosition, [
          this.name,
          through,
          storedTime(this.#clock),
        ])
      }
      // Events of types the projection does not read count as applied: the checkpoint passed them.
      return { applied: read, position: Math.max(through, position), failure }
    })
    if (result.applied > 0) {
      publish('projection-batch', {
        projection: this.name,
        applied: result.applied,
        position: result.position,
      })
    }
    this.#advanced(result.position)
    // An event that cannot be upcast ends the batch: the events before it commit, and it
    // fails the batch after them (reported and retried like a failing apply), so the
    // checkpoint stops right before it.
    if (result.failure !== undefined) throw result.failure
    return { applied: result.applied, position: result.position }
  }

  /**
   * The refusal of an async batch on a projection that stores last registered inline: its
   * stored position is where its last rebuild ended (appends do not move it), so following
   * the log from there would apply every later event a second time to the tables the appends
   * wrote.
   */
  #registeredInline(): InvalidOptionError {
    return new InvalidOptionError(
      'projection',
      `a projection not run inline: "${this.name}" was last registered inline by an event store (inlineProjections), so its checkpoint does not say what its tables hold; rebuild() it to run it async`,
      this.name,
    )
  }

  async #lockRow(tx: SqlExecutor): Promise<ProjectionRow> {
    // FOR UPDATE on PostgreSQL: two projector instances (or a rebuild's swap) serialize here,
    // and each reads the checkpoint the previous one committed. SQLite's write lock already
    // serializes the whole transaction.
    const rows = await tx.query<ProjectionRow>(this.#store.statements.projectionForUpdate, [
      this.name,
    ])
    const row = rows[0]
    if (row === undefined) throw new Error(`projection "${this.name}" is not registered`)
    return row
  }

  /**
   * Applies `events` to the tables of `generation`. A failure of `apply` is thrown as a
   * {@link ProjectionFailedError} naming the event (a rebuild's: into a generation other than
   * 0), wrapped, with `locate` (the live batch's, see `#batch`), in an {@link ApplyFailure}.
   */
  async #applyAll(
    tx: SqlExecutor,
    events: readonly RecordedEvent[],
    generation: number,
    locate = false,
  ) {
    const context = projectionContext(tx, this.#projection, generation)
    await applying.run(this, async () => {
      for (const event of events) {
        if (!handles(this.#projection, event.type)) continue
        try {
          await this.#projection.apply(event, context)
        } catch (error) {
          const failure = new ProjectionFailedError(this.name, event, error, generation !== 0)
          throw locate ? new ApplyFailure(failure) : failure
        }
      }
    })
  }

  #advanced(position: number): void {
    if (position > this.#lastKnown) this.#lastKnown = position
    for (const wake of [...this.#progress]) wake()
  }

  async catchUp(options: { readonly signal?: AbortSignal | undefined } = {}): Promise<number> {
    checkObject('options', options)
    checkOptionKeys('options', options, catchUpOptions)
    const signal = checkSignal('signal', options.signal)
    if (this.inline) return this.position()
    for (let batch = 0; ; batch++) {
      if (signal?.aborted) throw new AbortedError(signal.reason)
      // The caller's process runs on between batches (see #follow).
      if (batch > 0) await yieldToEventLoop()
      const { applied, position } = await this.#batch()
      if (applied < this.#batchSize) return position
    }
  }

  async position(): Promise<number> {
    if (this.inline) return this.#inlinePosition(await this.#store.headPosition())
    await this.#ensure()
    const rows = await this.#store.db.query<ProjectionRow>(this.#store.statements.projection, [
      this.name,
    ])
    const row = rows[0]
    return row === undefined
      ? 0
      : storedPosition(row.position, projectionPlace(this.name, 'position'))
  }

  /**
   * An inline projection has applied every event appended since its registration (its stored
   * position only says where its last rebuild ended). Registered on a log that had events, it
   * lacks those until a rebuild: it is then complete only up to the log's first event.
   */
  async #inlinePosition(head: number): Promise<number> {
    if (this.#complete) return head
    await this.#ensure()
    const rows = await this.#store.db.query<{
      missing_through: number | string | null
      first_position: number | string | null
    }>(this.#store.statements.inlineProjection, [this.name])
    const stored = rows[0]?.missing_through ?? null
    if (stored === null) {
      this.#complete = true
      return head
    }
    // Read as the position is: Number() made text NaN (reported as lacking whatever it was) and
    // a negative number complete.
    const missing = storedPosition(stored, projectionPlace(this.name, 'missing_through'))
    const first = rows[0]?.first_position ?? null
    // Positions up to `missing` may all have been rolled back (PostgreSQL): nothing is lacking.
    if (first === null || Number(first) > missing) return head
    return Math.min(head, Number(first) - 1)
  }

  async lag(): Promise<ProjectionLag> {
    const head = await this.#store.headPosition()
    const position = this.inline ? await this.#inlinePosition(head) : await this.position()
    if (position >= head) return { position, head, positions: 0, ms: 0 }
    const oldest = await this.#store.firstCreatedAfter(position)
    return {
      position,
      head,
      positions: head - position,
      ms: oldest === undefined ? 0 : Math.max(0, this.#clock.now() - oldest),
    }
  }

  async waitFor(position: number, options: WaitForOptions = {}): Promise<void> {
    checkInteger('position', position, 0)
    checkObject('options', options)
    // A misspelt timeout (`timeout`) waited the default 5 s instead.
    checkOptionKeys('options', options, waitForOptions)
    const timeoutMs = checkWaitTimeout(options.timeoutMs ?? 5000)
    const signal = checkSignal('signal', options.signal)
    if (position <= this.#lastKnown) return
    // A complete inline projection has every committed event; one that lacks the events from
    // before its registration reflects no position above them until it is rebuilt.
    if (this.inline) {
      if (!this.#complete) await this.position()
      if (this.#complete) return
    }
    const deadline = this.#clock.now() + timeoutMs
    let delayMs = 2
    for (;;) {
      if (signal?.aborted) throw new AbortedError(signal.reason)
      const current = await this.position()
      if (current > this.#lastKnown) this.#lastKnown = current
      if (current >= position || (this.inline && this.#complete)) return
      const left = deadline - this.#clock.now()
      if (left <= 0) throw new TimeoutError(timeoutMs)
      // Woken early when this process's projector commits a batch; otherwise poll (another
      // process may run the projector).
      const wake = new AbortController()
      const onProgress = (): void => wake.abort()
      const onAbort = (): void => wake.abort()
      this.#progress.add(onProgress)
      signal?.addEventListener('abort', onAbort, { once: true })
      try {
        // A batch that committed while position() was in flight has already woken nobody.
        if (this.#lastKnown >= position) return
        await sleep(this.#clock, Math.min(delayMs, left), wake.signal).catch(() => {})
      } finally {
        this.#progress.delete(onProgress)
        signal?.removeEventListener('abort', onAbort)
      }
      delayMs = Math.min(delayMs * 2, 100)
    }
  }

  async rebuild(options: RebuildOptions = {}): Promise<RebuildResult> {
    checkObject('options', options)
    checkOptionKeys('options', options, rebuildOptions)
    const batchSize = checkInteger('batchSize', options.batchSize ?? this.#batchSize, 1, 100_000)
    const signal = checkSignal('signal', options.signal)
    if (signal?.aborted) throw new AbortedError(signal.reason)
    await this.#ensure()
    const store = this.#store
    const projection = this.#projection

    // 1. A fresh generation of tables (dropping what a crashed, or still running, rebuild may
    // have left). The number is above that rebuild's too: were it reused, a rebuild still
    // filling the dropped tables would go on filling the recreated ones, and both rebuilds
    // would apply every event to them. Its tables gone, the other rebuild fails instead.
    const generation = await store.db.transaction(async (tx) => {
      const row = await this.#lockRow(tx)
      // A view on a live table would fail the swap's DROP after all the fill's work (PostgreSQL):
      // refused here, before any. The swap looks again for views created during the fill.
      if (tx.dialect === 'postgres') {
        for (const table of Object.keys(projection.tables)) await this.#refuseViews(tx, table)
      }
      // A generation that cannot be read (a row changed outside breakwater) leaves no number
      // known to be above every rebuild that may still fill its tables: refused, before anything
      // is created or dropped (Number() named tables after NaN or a negative number).
      const generationOf = (column: 'generation' | 'rebuild_generation', value: unknown) =>
        storedPosition(value, projectionPlace(this.name, column), 'a generation')
      const pending =
        row.rebuild_generation === null
          ? 0
          : generationOf('rebuild_generation', row.rebuild_generation)
      const next = Math.max(generationOf('generation', row.generation), pending) + 1
      if (row.rebuild_generation !== null) {
        await this.#dropTables(tx, pending)
      }
      await this.#dropTables(tx, next)
      await createTables(tx, projection, next)
      // A foreign key that would stay with a table the swap drops would fail (or, on SQLite,
      // empty) that DROP after all the fill's work: refused here, the fresh tables rolled back.
      // The swap looks again for keys added during the fill.
      await this.#refuseForeignKeys(tx, next, false)
      await tx.execute(store.statements.setRebuildGeneration, [
        this.name,
        next,
        storedTime(this.#clock),
      ])
      return next
    })

    // 2. Fill them from the start of the log, batch by batch, without holding any lock the
    // live projector or the appends need.
    let position = 0
    let applied = 0
    for (let batch = 0; ; batch++) {
      // The process runs on between batches (see #follow); no lock is held here.
      if (batch > 0) await yieldToEventLoop()
      if (signal?.aborted) throw await this.#abandon(generation, new AbortedError(signal.reason))
      // Rows read end the fill (a short page is the log's end); events applied are reported.
      let count: { readonly read: number; readonly applied: number }
      try {
        count = await store.db.transaction(async (tx) => {
          const page = await store.readAllOfTypes(
            { fromPosition: position + 1, limit: batchSize, tx },
            this.#wants,
          )
          if (page.failure !== undefined) throw page.failure
          await this.#applyAll(tx, page.events, generation)
          if (page.position !== undefined) position = page.position
          return { read: page.read, applied: page.events.length }
        })
      } catch (error) {
        // A later rebuild dropped these tables under this one: the driver's "no such table"
        // is that, and the caller is told so (the clean-up finds the later rebuild's
        // generation in the row).
        throw await this.#abandon(generation, error, true)
      }
      applied += count.applied
      if (count.read < batchSize) break
    }

    // 3. Swap: stop the live side, apply what was appended meanwhile, rename, commit. A try
    // that fails with a deadlock or serialization failure (whatever else the application runs
    // beside it), or whose wait for a lock ran out (swapLockTimeoutMs), rolled back as a whole:
    // it is tried again from the fill's end, within the rounds the lock rounds also count
    // against.
    const rounds: SwapRounds = {
      used: 0,
      max: this.#maxSwapRounds,
      projection: this.name,
      lockTimeoutMs: this.#swapLockTimeoutMs,
      waiting: undefined,
    }
    let swapped: { readonly position: number; readonly events: number }
    for (;;) {
      if (signal?.aborted) throw await this.#abandon(generation, new AbortedError(signal.reason))
      rounds.used++
      rounds.waiting = undefined
      try {
        swapped = await this.#swap(generation, batchSize, rounds, position)
        break
      } catch (error) {
        // A deadlock or lock timeout met by a statement of `apply` (catching up in the swap)
        // ends the round as one of the swap's own does.
        const failure = error instanceof ProjectionFailedError ? error.cause : error
        // A later rebuild took over: the fresh tables are its to drop (it has).
        if (error instanceof RebuildSupersededError) throw error
        if (sqlErrorKind(failure) !== 'serialization-failure' && !isLockNotAvailable(failure))
          throw await this.#abandon(generation, error)
        if (rounds.used >= rounds.max)
          throw await this.#abandon(generation, contended(rounds, failure))
      }
    }
    const final = swapped.position
    applied += swapped.events
    this.#advanced(final)
    publish('projection-rebuilt', { projection: this.name, position: final, events: applied })
    return { position: final, events: applied }
  }

  /**
   * One try of a rebuild's swap, in one transaction: stop the live side, apply what was
   * appended after `from`, rename the fresh tables of `generation` into place, store the
   * checkpoint. Resolves with the position swapped in and the events it applied.
   */
  #swap(
    generation: number,
    batchSize: number,
    rounds: SwapRounds,
    from: number,
  ): Promise<{ readonly position: number; readonly events: number }> {
    const store = this.#store
    const projection = this.#projection
    // Set while this swap has legacy_alter_table on and has not put it back (see below).
    let legacyOn = false
    const swapped = store.db.transaction(async (tx) => {
      const postgres = tx.dialect === 'postgres'
      // Every lock this transaction waits for is bounded (PostgreSQL), the rename's above all:
      // queued for ACCESS EXCLUSIVE behind a long reader, it would hold the rebuild for ever
      // and every query of the table queued behind it. A wait that runs out (55P03) ends the
      // round; SQLite's swap waits only for the write lock, which the driver bounds already.
      if (postgres) await tx.execute(`SET LOCAL lock_timeout = ${rounds.lockTimeoutMs}`)
      rounds.waiting = `the checkpoint row of projection "${this.name}"`
      const row = await this.#lockRow(tx)
      rounds.waiting = undefined
      if (!ownsRebuild(row, generation)) throw new RebuildSupersededError(this.name)
      let read = (from: number) =>
        store.readAllOfTypes({ fromPosition: from, limit: batchSize, tx }, this.#wants)
      // A table added to the projection since it was registered has no live copy yet: the
      // fresh one is only renamed into place.
      const live: string[] = []
      for (const table of Object.keys(projection.tables)) {
        if (await tableExists(tx, table)) live.push(table)
      }
      if (this.inline && postgres && live.length > 0) {
        // Appends write an inline projection's live tables in their own transactions. Once
        // this lock is granted, every transaction that wrote them has committed, and the
        // appends still in flight will write the swapped-in tables (their statements resolve
        // the table name again after the lock), so the catch-up takes every committed event,
        // not only the prefix below the watermark: the in-flight appends apply their own.
        await lockAll(tx, live, rounds)
        read = async (from: number) => {
          const rows = await tx.query<EventRow>(store.statements.readAllCommitted, [
            from,
            batchSize,
          ])
          return store.pageOfTypes(rows, this.#wants)
        }
      }
      let position = from
      let events = 0
      // The checkpoint this swap replaces may be above what `read` returns now: on PostgreSQL
      // the watermark is not monotonic (an appender that read the sequence before a reader and
      // took its lock after holds it lower from then on; see src/cqrs/sql.ts), so a live batch
      // may have read further than this swap can. Stored below it, the checkpoint would go
      // back, and `waitFor` (already past it) would report positions the swapped-in tables
      // lack. Every position up to that checkpoint was read below a watermark by the batch or
      // swap that stored it, so no transaction can still write there: read without one.
      // One that cannot be read (a row changed outside breakwater) guards nothing: the swap
      // stores the position it reached in its place, so a rebuild repairs the row.
      const checkpoint = readStoredPosition(row.position) ?? 0
      while (position < checkpoint) {
        const rows = await tx.query<EventRow>(store.statements.readAllCommitted, [
          position + 1,
          batchSize,
        ])
        const within = rows.filter((r) => Number(r.position) <= checkpoint)
        const page = store.pageOfTypes(within, this.#wants)
        if (page.failure !== undefined) throw page.failure
        await this.#applyAll(tx, page.events, generation)
        events += page.events.length
        // Rows beyond the checkpoint, or the log's end, end the prefix: it is all applied.
        position =
          page.position === undefined || within.length < rows.length || rows.length < batchSize
            ? checkpoint
            : page.position
      }
      for (;;) {
        const page = await read(position + 1)
        if (page.failure !== undefined) throw page.failure
        if (page.position === undefined) break
        await this.#applyAll(tx, page.events, generation)
        position = page.position
        events += page.events.length
      }
      // SQLite's views name their tables, and a rename rewrites the views that read the table
      // to read it under its new name: a view of the live table would read `__old`, then
      // nothing once that is dropped. In legacy mode the rename leaves views alone, so they go
      // on reading the table by its name, which is the fresh table's from the swap on. The
      // mode belongs to the connection: it is put back whatever happens (left on where the
      // connection's owner had it on).
      if (!postgres && !(await legacyAlterTable(tx))) {
        legacyOn = true
        await tx.execute('PRAGMA legacy_alter_table = ON')
      }
      try {
        // Every live table is renamed away before any fresh one comes in, and the old ones are
        // dropped together at the end: a foreign key between two of the projection's tables
        // then goes with them, the live one's to the old table, the fresh one's to the fresh.
        const tables = Object.keys(projection.tables)
        for (const table of live) {
          const old = `${table}__old`
          // A rename waits for every transaction that has used the table, readers included.
          rounds.waiting = `table "${table}" (to rename it away)`
          await tx.execute(`ALTER TABLE ${table} RENAME TO ${old}`)
          rounds.waiting = undefined
          // A view created during the fill (PostgreSQL) follows the table to `__old` and would
          // fail the DROP with a driver error; the rename's ACCESS EXCLUSIVE lock keeps any new
          // one out from here on.
          if (postgres) await this.#refuseViews(tx, old, table)
        }
        for (const table of tables) {
          const fresh = physicalTable(table, generation)
          rounds.waiting = `table "${fresh}" (to rename it into place)`
          await tx.execute(`ALTER TABLE ${fresh} RENAME TO ${table}`)
          rounds.waiting = undefined
        }
        // A key added during the fill; on PostgreSQL the renames' locks keep any new one out.
        await this.#refuseForeignKeys(tx, generation, true)
        await dropAll(
          tx,
          live.map((table) => `${table}__old`),
        )
      } finally {
        if (legacyOn) {
          await tx.execute('PRAGMA legacy_alter_table = OFF').then(
            () => {
              legacyOn = false
            },
            () => {},
          )
        }
      }
      await tx.execute(store.statements.finishRebuild, [
        this.name,
        position,
        generation,
        storedTime(this.#clock),
        // Rebuilt from the log, the tables hold every event up to `position`: whichever mode
        // the projection ran in before, it runs in this projector's from now on.
        this.inline ? 1 : 0,
      ])
      return { position, events }
    })
    return swapped.finally(async () => {
      // A failure that SQLite answers by rolling the whole transaction back (a trigger's
      // RAISE(ROLLBACK), a full disk) leaves a tx that refuses every statement, the reset
      // above included: the driver puts the mode back once the transaction has ended, or the
      // application's own renames on this connection would leave its views unrewritten.
      if (legacyOn) await store.db.execute('PRAGMA legacy_alter_table = OFF').catch(() => {})
    })
  }

  /**
   * Throws `RebuildBlockedError` when views depend on `table` (PostgreSQL), reported under the
   * projection's name for it, `name`.
   */
  async #refuseViews(tx: SqlExecutor, table: string, name = table): Promise<void> {
    // A view depends on a table through its rewrite rule (pg_rewrite), materialized ones too.
    const rows = await tx.query<{ view: string }>(
      `SELECT DISTINCT v.oid::regclass::text AS view
       FROM pg_depend d
       JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
       JOIN pg_class v ON v.oid = r.ev_class
       WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass($1)
         AND v.oid <> d.refobjid
       ORDER BY 1`,
      [table],
    )
    if (rows.length > 0) {
      throw new RebuildBlockedError(
        this.name,
        name,
        rows.map((row) => row.view),
      )
    }
  }

  /**
   * Ends a rebuild that swaps nothing in (aborted by its signal, or failed), resolving with the
   * error for the caller to throw, `error`: drops the fresh tables of `generation` and clears the rebuild from the checkpoint
   * row, so that it leaves nothing behind. A later rebuild that has taken over dropped them
   * already, and the row's generation is its own: nothing is touched then, and with
   * `reportSuperseded` the caller gets `RebuildSupersededError` (`cause` the error) instead.
   * Should the clean-up fail (on a database that is failing too), `error` still goes to the
   * caller, the clean-up's failure attached as `suppressed`; the next rebuild drops what is
   * left.
   */
  async #abandon(generation: number, error: unknown, reportSuperseded = false): Promise<unknown> {
    let superseded: boolean
    try {
      superseded = await this.#store.db.transaction(async (tx) => {
        if (!ownsRebuild(await this.#lockRow(tx), generation)) return true
        await this.#dropTables(tx, generation)
        await tx.execute(this.#store.statements.setRebuildGeneration, [
          this.name,
          null,
          storedTime(this.#clock),
        ])
        return false
      })
    } catch (cleanupError) {
      return withSuppressed(error, cleanupError)
    }
    return superseded && reportSuperseded ? new RebuildSupersededError(this.name, error) : error
  }

  async #dropTables(tx: SqlExecutor, generation: number): Promise<void> {
    await dropAll(
      tx,
      Object.keys(this.#projection.tables).map((table) => physicalTable(table, generation)),
      'IF EXISTS ',
    )
  }

  /**
   * Throws `RebuildBlockedError` for a foreign key that would not reference the projection's
   * rebuilt table once the swap of `generation` is done: one bound to a table the swap drops
   * from a table it keeps (a table outside the projection, or a fresh copy whose definition
   * wrote the logical name), or, where keys name their table (SQLite with foreign_keys off),
   * one naming a fresh copy, which the swap renames. `renamed`: the swap's renames have run
   * (the live tables are `<table>__old`, the fresh ones under the logical names).
   */
  async #refuseForeignKeys(tx: SqlExecutor, generation: number, renamed: boolean): Promise<void> {
    const tables = Object.keys(this.#projection.tables)
    // Every name a table of the projection has now, to its logical name.
    const own = new Map<string, string>()
    for (const table of tables) {
      for (const name of [table, `${table}__old`, physicalTable(table, generation)]) {
        own.set(name, table)
      }
    }
    // The tables a key must not reference (by their names now), unless the key's own table is
    // dropped with them.
    let referenced: string[]
    let dropped: string[]
    if (renamed) {
      dropped = tables.map((table) => `${table}__old`)
      referenced = [...dropped, ...tables.map((table) => physicalTable(table, generation))]
    } else {
      dropped = []
      for (const table of tables) if (await tableExists(tx, table)) dropped.push(table)
      referenced = (await foreignKeysFollowRenames(tx))
        ? dropped
        : tables.map((table) => physicalTable(table, generation))
    }
    if (referenced.length === 0) return
    const blocking = (await foreignKeysTo(tx, referenced)).filter(
      (key) => !dropped.includes(key.referencing),
    )
    const first = blocking[0]
    if (first === undefined) return
    const table = own.get(first.referenced) ?? first.referenced
    const keys: RebuildBlockingForeignKey[] = blocking
      .filter((key) => (own.get(key.referenced) ?? key.referenced) === table)
      .map((key) => ({
        table: own.get(key.referencing) ?? key.referencing,
        constraint: key.constraint,
        ownTable: own.has(key.referencing),
      }))
    throw new RebuildBlockedError(this.name, table, [], keys)
  }
}

/**
 * A projection's `apply` failed in a live batch (internal: the projector reports `failure`,
 * which names the event and holds the application's error).
 */
class ApplyFailure extends Error {
  readonly failure: ProjectionFailedError
  /** It is the first position after the batch's checkpoint: no event comes before it. */
  first = false
  constructor(failure: ProjectionFailedError) {
    super(failure.message, { cause: failure })
    this.failure = failure
  }
}

/** The reported error for an {@link ApplyFailure}; any other error as it is. */
function unwrapApply(error: unknown): unknown {
  return error instanceof ApplyFailure ? error.failure : error
}

/**
 * Attaches `secondary` to `error`, the failure the caller gets, as `error.suppressed` (an array
 * of the errors that came after it), so that neither is lost. A value that cannot take a
 * property (a thrown string, a frozen object) is left as it is.
 */
function withSuppressed<E>(error: E, secondary: unknown): E {
  if (typeof error !== 'object' || error === null || !Object.isExtensible(error)) return error
  const target = error as { suppressed?: unknown }
  try {
    if (Array.isArray(target.suppressed)) target.suppressed.push(secondary)
    else if (target.suppressed === undefined) target.suppressed = [secondary]
  } catch {
    // A read-only `suppressed`: the caller still gets its error.
  }
  return error
}

/** The rounds a rebuild's swap has used (tries of its transaction and lock rounds) and may use. */
interface SwapRounds {
  used: number
  readonly max: number
  readonly projection: string
  /** The swap's lock_timeout (swapLockTimeoutMs). */
  readonly lockTimeoutMs: number
  /** The lock the swap is waiting for (or failed to get) now, for the error that names it. */
  waiting: string | undefined
}

/**
 * Whether a statement failed because a lock was not available (55P03 lock_not_available): its
 * wait ran out (lock_timeout) or, with NOWAIT, another session held it.
 */
function isLockNotAvailable(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '55P03'
}

/** The error for a swap out of rounds; `cause` ended the last one (if a failure did). */
function contended(rounds: SwapRounds, cause?: unknown): RebuildContendedError {
  const lockWait =
    isLockNotAvailable(cause) && rounds.waiting !== undefined
      ? { waitedFor: rounds.waiting, timeoutMs: rounds.lockTimeoutMs }
      : undefined
  return new RebuildContendedError(rounds.projection, rounds.max, cause, lockWait)
}

/**
 * Locks every table of `tables` IN EXCLUSIVE MODE (PostgreSQL) without ever waiting for one
 * while holding another. An append's inline `apply` writes the same tables, in whatever order
 * it likes: a plain `LOCK TABLE a, b` holding `a` and waiting for `b` while such an append
 * holds `b` and waits for `a` is a deadlock, which PostgreSQL breaks by aborting one side
 * (40P01, usually the rebuild, after all its work). Instead, each round waits for one table
 * only (the one found busy last) and takes the others with NOWAIT; if one is busy, the round's
 * locks are given back (rolled back to a savepoint) and the next round waits for that one. A
 * waiting round holds none of the tables, so no cycle can form through them, and every round
 * after the first waits for a transaction that held a table to end: rounds follow the
 * appends' commits, they do not spin. Appends that always hold one of the tables could still
 * keep it going round for ever: each round after the first counts against `rounds`, and a
 * busy table found with none left fails the swap with {@link RebuildContendedError}. The
 * waiting lock is bounded by the transaction's lock_timeout: a wait that runs out (a long
 * transaction holds the table, not an append) is a round too, given back and waited for again.
 */
async function lockAll(
  tx: SqlExecutor,
  tables: readonly string[],
  rounds: SwapRounds,
): Promise<void> {
  const order = [...tables].sort()
  let first = 0
  for (;;) {
    await tx.execute('SAVEPOINT breakwater_swap_locks')
    rounds.waiting = `table "${order[first]}" (to lock it IN EXCLUSIVE MODE)`
    try {
      await tx.execute(`LOCK TABLE ${order[first]} IN EXCLUSIVE MODE`)
    } catch (error) {
      if (!isLockNotAvailable(error)) throw error
      if (rounds.used >= rounds.max) throw contended(rounds, error)
      rounds.used++
      await tx.execute('ROLLBACK TO SAVEPOINT breakwater_swap_locks')
      continue
    }
    rounds.waiting = undefined
    let busy: number | undefined
    for (let i = 0; i < order.length && busy === undefined; i++) {
      if (i === first) continue
      try {
        await tx.execute(`LOCK TABLE ${order[i]} IN EXCLUSIVE MODE NOWAIT`)
      } catch (error) {
        // Someone holds it. Anything else is a real failure.
        if (!isLockNotAvailable(error)) throw error
        busy = i
      }
    }
    if (busy === undefined) {
      await tx.execute('RELEASE SAVEPOINT breakwater_swap_locks')
      return
    }
    if (rounds.used >= rounds.max) throw contended(rounds)
    rounds.used++
    await tx.execute('ROLLBACK TO SAVEPOINT breakwater_swap_locks')
    first = busy
  }
}

/**
 * Drops `tables` (`ifExists`: `'IF EXISTS '` or nothing), foreign keys among them included. On
 * PostgreSQL in one statement: dropped one by one, a table another of them references would be
 * refused. On SQLite, which drops one table per statement and, with foreign_keys on, deletes a
 * referenced table's rows first, the keys are deferred to the commit (PRAGMA
 * defer_foreign_keys, reset by it): the rows of a table referenced by another of them are then
 * no violation once that one is dropped too.
 */
async function dropAll(tx: SqlExecutor, tables: readonly string[], ifExists = ''): Promise<void> {
  if (tables.length === 0) return
  if (tx.dialect === 'postgres') {
    await tx.execute(`DROP TABLE ${ifExists}${tables.join(', ')}`)
    return
  }
  await tx.execute('PRAGMA defer_foreign_keys = ON')
  for (const table of tables) await tx.execute(`DROP TABLE ${ifExists}${table}`)
}

/** A foreign key found by {@link foreignKeysTo}. */
interface ForeignKeyRow {
  /** The table the key is on, as the database names it. */
  readonly referencing: string
  /** The table it references, one of those asked about. */
  readonly referenced: string
  /** Its name (PostgreSQL), or `FOREIGN KEY (<columns>)` (SQLite, which keeps no names). */
  readonly constraint: string
}

/** The foreign keys that reference any of `tables`, ordered by table and constraint. */
function foreignKeysTo(tx: SqlExecutor, tables: readonly string[]): Promise<ForeignKeyRow[]> {
  if (tx.dialect === 'postgres') {
    // Bound to the table (its oid), whatever name the key was written with.
    return tx.query<ForeignKeyRow>(
      `SELECT conrelid::regclass::text AS referencing, confrelid::regclass::text AS referenced,
         conname AS "constraint"
       FROM pg_constraint
       WHERE contype = 'f' AND confrelid IN (SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
       ORDER BY 1, 3`,
      [tables],
    )
  }
  // SQLite keeps the name as written (in any case) and, with foreign_keys off, even of a table
  // that does not exist; a key of several columns has a row per column.
  const names = tables.map((_, i) => `$${i + 1}`).join(', ')
  return tx.query<ForeignKeyRow>(
    `SELECT m.name AS referencing, lower(f."table") AS referenced,
       'FOREIGN KEY (' || group_concat(f."from", ', ') || ')' AS "constraint"
     FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f
     WHERE m.type = 'table' AND lower(f."table") IN (${names})
     GROUP BY m.name, f.id
     ORDER BY 1, 3`,
    tables,
  )
}

/** Whether SQLite's legacy_alter_table mode is on for the connection. */
async function legacyAlterTable(tx: SqlExecutor): Promise<boolean> {
  const rows = await tx.query<{ legacy_alter_table: number | bigint }>('PRAGMA legacy_alter_table')
  return Number(rows[0]?.legacy_alter_table ?? 0) === 1
}

/** Whether a table of this name exists (a projection's live table). */
async function tableExists(tx: SqlExecutor, table: string): Promise<boolean> {
  const rows = await tx.query(
    tx.dialect === 'postgres'
      ? 'SELECT 1 WHERE to_regclass($1) IS NOT NULL'
      : "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    [table],
  )
  return rows.length > 0
}

/**
 * Creates the projector of a projection: an async projection's driver (start it, or call
 * `catchUp`), or, for a projection the store runs inline, the handle for its `rebuild`, `lag`
 * and `waitFor`. Registers the projection and creates its tables on first use. An unknown
 * (misspelt) option, here or in `catchUp`, `waitFor` and `rebuild`, is refused with
 * `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const projector = createProjector(store, orderHistory)
 * projector.start()
 * const { lastPosition } = await store.append('order-1', [placed])
 * await projector.waitFor(lastPosition, { timeoutMs: 2000 })
 * ```
 */
export function createProjector(
  store: EventStore,
  projection: ProjectionDefinition,
  options: ProjectorOptions = {},
): Projector {
  return new SqlProjector(internalsOf(store), projection, options)
}
