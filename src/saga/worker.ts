import { randomBytes, randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import {
  type Clock,
  keepProcessAlive,
  maxTimerDelayMs,
  storedTime,
  type TimerHandle,
  within,
} from '../core/clock.js'
import { detached } from '../core/detached.js'
import { AbortedError, InvalidOptionError } from '../core/errors.js'
import { isStorableText } from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  optionKeys,
} from '../core/validate.js'
import { EventSource, TimeoutError } from '../index.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import { readStoredNumber, StoredDataError } from '../stores/errors.js'
import type { SqlDriver, Unlisten } from '../stores/index.js'
import { currentTransaction } from '../stores/transaction-context.js'
import { WriteBatcher } from './batcher.js'
import { type CompiledSaga, compiledSaga, type SagaDefinition } from './definition.js'
import { SagaWorkerStoppedError } from './errors.js'
import {
  emptyMetrics,
  type MutableSagaMetrics,
  publishSagaEvent,
  type SagaErrorPhase,
  type SagaEvent,
  type SagaWorkerMetrics,
  sagaInstruments,
} from './events.js'
import type { SagaFaults } from './faults.js'
import { checkSagaOptions } from './options.js'
import { claimedLeaseToken, InstanceRun, type RunnerHost, type RunOutcome } from './runner.js'
import { sagaNotifyChannel, sagaStatements } from './sql.js'
import { checkSagaId, initialSteps, refuseOtherSaga, serializeInput } from './start.js'
import { errorInfo, type SagaRow, type SagaStatus, storedState, storedText } from './state.js'
import {
  type BatchOutcome,
  type CommitWork,
  claimInstances,
  findMissingDefinitions,
  holdUnreadable,
  renewLeases,
  stringListParam,
  type TransitionWrite,
  writeTransition,
} from './store.js'

/**
 * The longest wait between two claims of a worker whose claims keep failing, in milliseconds
 * (unless `pollIntervalMs` is longer): each failure in a row doubles the wait from
 * `pollIntervalMs` up to this; a claim that succeeds brings it back to `pollIntervalMs`. A
 * NOTIFY (PostgreSQL) still wakes the worker at once.
 */
export const maxClaimBackoffMs = 5_000

/** The default of {@link SagaWorkerOptions.atCommitTimeoutMs}, in milliseconds. */
export const defaultAtCommitTimeoutMs = 30_000

/** Options of {@link createSagaWorker}. */
export interface SagaWorkerOptions {
  /** The database holding the sagas (run `migrateSagas(db)` first). The worker does not close it. */
  readonly db: SqlDriver
  /**
   * The definitions this worker runs. It claims only instances of these names and versions;
   * keep old versions registered until their instances are done.
   */
  readonly sagas: readonly SagaDefinition<unknown, unknown>[]
  /**
   * How long a claimed instance stays this worker's without renewal. A worker that dies (or
   * pauses) loses its instances after at most this long, and another worker resumes them from
   * the persisted state: it bounds crash recovery. Too short, and a worker blocked (a long GC
   * pause, a SQLite busy wait) loses instances it is still running; its writes are then
   * refused by fencing and the step is repeated elsewhere (with the same idempotency key).
   * @default 800
   */
  readonly leaseMs?: number | undefined
  /**
   * How often the leases of the instances in hand are renewed (one statement for all of them).
   * On PostgreSQL an instance whose row is locked at that moment (its step's `send` or
   * `atCommit` transaction is still open) is passed over for that round rather than waited
   * for, so one slow commit does not hold up the other instances' renewals. On SQLite such a
   * transaction holds the one writer, and the renewal waits for it: a claim asked for while the
   * leases were live does not take them (it judges leases as of when it asked), but one asked
   * for after a lease ran out may take that instance over before its renewal runs. Keep every
   * step transaction shorter than `leaseMs - renewIntervalMs` (local statements only in
   * `atCommit` and `send`), or raise `leaseMs`.
   * @default leaseMs / 3
   */
  readonly renewIntervalMs?: number | undefined
  /**
   * The most time a step's (or compensation's) `atCommit` work may take, all of it together,
   * measured on `clock` from when it starts inside the transaction that records the step. That
   * transaction holds the instance's row (PostgreSQL) or the database's one writer (SQLite:
   * every other saga, and everything else writing to the file, waits for it), so work that
   * never settles, such as an awaited network call that never answers, would hold it for ever.
   * When the bound elapses the transaction is rolled back (nothing of the step is recorded) and
   * the attempt fails with `SagaAtCommitTimeoutError` (retryable), as if the work had thrown it:
   * the step's `retry` (or `compensationRetry`) decides what next. The work cannot be forced to
   * stop; it is told instead: the signal it gets as its second argument aborts with that error
   * (pass it on to what it awaits). A statement it sends later on the ended transaction is
   * refused. On PostgreSQL a statement still running holds the connection, so the rollback
   * waits for it: bound statements with PostgreSQL's `statement_timeout`. A positive integer.
   * @default 30000 ({@link defaultAtCommitTimeoutMs})
   */
  readonly atCommitTimeoutMs?: number | undefined
  /**
   * How often an idle worker looks for runnable instances (new ones, due timers and retry
   * delays, expired leases). On PostgreSQL new sagas also wake it through NOTIFY.
   * @default 100
   */
  readonly pollIntervalMs?: number | undefined
  /**
   * How often the worker looks for instances it cannot run: due, unleased for this long, and of
   * a definition (name and version) it does not have, such as a version retired while instances
   * of it were still running. They are reported (a `definition-missing` event per definition,
   * with the count, and the gauge `breakwater.saga.definition_missing.instances`) and left
   * alone: another worker that has the definition runs them. One grouped read of the due
   * instances, at most once per interval on `clock`. A positive integer.
   * @default 60000
   */
  readonly missingDefinitionCheckIntervalMs?: number | undefined
  /**
   * The most instances this worker runs at once.
   * @default 16
   */
  readonly concurrency?: number | undefined
  /**
   * The worker's id, stored as the lease owner and in the timeline: a non-empty string of at
   * most 200 characters without NUL characters or lone surrogates (text both databases store
   * as given), or `InvalidOptionError` naming `workerId`.
   * @default `${hostname}:${pid}:${random}`
   */
  readonly workerId?: string | undefined
  /**
   * On PostgreSQL, LISTEN for the NOTIFY that `startSaga` sends, so new sagas start at once.
   * @default true
   */
  readonly listen?: boolean | undefined
  /**
   * Whether the started worker keeps the Node.js process alive, as a listening server does.
   * With false, its timers (like every breakwater timer) let the process exit when nothing
   * else holds it open. Only the system clock's timers can be held; a test clock's cannot.
   * @default true
   */
  readonly keepAlive?: boolean | undefined
  /**
   * A hook called at named points (see `SagaFaultPoint`), for crash tests. See
   * `sagaCrashAtFromEnv`.
   * @default undefined
   */
  readonly faults?: SagaFaults | undefined
  /**
   * The clock of leases, timers, retry delays and timeouts.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Options of {@link SagaWorker.run}. */
export interface RunSagaOptions {
  /**
   * The instance id (see `startSaga`); a second run with the same id runs nothing and reports
   * the existing instance. An id an instance of another saga (another name) holds is refused
   * with `SagaStateConflictError` (`SAGA_STATE_CONFLICT`): ids are shared by every definition.
   * @default a random UUID
   */
  readonly id?: string | undefined
}

/** What {@link SagaWorker.run} reports. */
export interface SagaOutcome<C = Record<string, unknown>> {
  /** The instance id. */
  readonly id: string
  /** False when the id already existed and nothing was run. */
  readonly created: boolean
  /**
   * The status after this worker's run: a finished status, `failed` when parked, or `running`/
   * `compensating` when the saga suspended (a timer, a retry delay, a reply) or was taken over;
   * any worker continues it then.
   */
  readonly status: SagaStatus
  /** The context as this worker last saw it. */
  readonly context: Readonly<Partial<C>>
  /** Why it compensated, was cancelled or parked. */
  readonly reason: string | undefined
}

/** Options of {@link SagaWorker.stop}. */
export interface StopSagaWorkerOptions {
  /**
   * How long to wait (on the worker's clock) for the steps in progress. When it elapses, stop()
   * resolves without them: each instance still running is abandoned (its step's `ctx.signal`
   * aborts with an `AbortedError` whose `cause` is a `TimeoutError`, and nothing more is written
   * for it once its step returns), its lease is no longer renewed nor released, and another
   * worker resumes it from the persisted state when the lease runs out (at most `leaseMs` after
   * its last renewal), repeating the step that was in progress with the same idempotency key.
   * A non-negative integer.
   * @default no limit: wait for every step in progress to end
   */
  readonly timeoutMs?: number | undefined
}

const workerOptions = optionKeys<SagaWorkerOptions>({
  db: true,
  sagas: true,
  leaseMs: true,
  renewIntervalMs: true,
  atCommitTimeoutMs: true,
  pollIntervalMs: true,
  missingDefinitionCheckIntervalMs: true,
  concurrency: true,
  workerId: true,
  listen: true,
  keepAlive: true,
  faults: true,
  clock: true,
})
const runOptions = optionKeys<RunSagaOptions>({ id: true })
const stopOptions = optionKeys<StopSagaWorkerOptions>({ timeoutMs: true })

/** Where a worker is in its life. */
export type SagaWorkerState = 'new' | 'running' | 'stopping' | 'stopped'

/** A saga worker: claims runnable instances with leases and runs them. */
export interface SagaWorker {
  /** The worker's id (lease owner). */
  readonly id: string
  /** `new`, `running` (after `start()`), `stopping`, `stopped`. */
  readonly state: SagaWorkerState
  /**
   * The worker's events, plain JSON-able objects; also published on the diagnostics channels
   * `breakwater:saga:<type>` and counted in the OpenTelemetry counter `breakwater.saga.events`.
   */
  readonly events: EventSource<SagaEvent>
  /**
   * Starts polling for runnable instances (and listening, on PostgreSQL). The poll loop and the
   * lease-renewal timer run in breakwater's own async context, not the caller's: a deadline
   * (`withDeadline`) or an open transaction around `start()` does not reach the steps the loop
   * runs later. Rejects if one read of the saga table fails (`STORE_CLOSED` on a closed
   * database, the driver's error when the migrations have not run); the worker is then
   * stopped. After {@link SagaWorker.stop}, or a start that failed, rejects with
   * `SagaWorkerStoppedError` (`SAGA_WORKER_STOPPED`): a worker runs once, create a new one.
   * Claims that fail in a row back off (see {@link maxClaimBackoffMs}).
   */
  start(): Promise<void>
  /**
   * Stops gracefully: no new claims; each instance in hand finishes the step it is running,
   * records it, and is given back (lease released) for another worker to continue at once.
   * Resolves when nothing is in hand, or once `timeoutMs` has elapsed (see
   * {@link StopSagaWorkerOptions.timeoutMs} for what happens to the instances still running).
   */
  stop(options?: StopSagaWorkerOptions): Promise<void>
  /**
   * Starts an instance already claimed by this worker and runs it here at once (no poll, no
   * claim round trip): resolves when it finishes or suspends. If this process dies meanwhile,
   * another worker resumes it after the lease expires, as for any instance. The run is the
   * caller's own work: its steps see the caller's async context (a deadline set around the call
   * bounds them), unlike the instances the poll loop runs. `definition` must be the object the
   * worker was created with for its name and version, else `InvalidOptionError`
   * (`INVALID_OPTION`) on `definition`.
   */
  run<I, C>(
    definition: SagaDefinition<I, C>,
    input: I,
    options?: RunSagaOptions,
  ): Promise<SagaOutcome<C>>
  /**
   * One claim round without the polling loop: claims what is runnable now (up to the free
   * concurrency) and resolves, with the number claimed, once those runs have finished or
   * suspended. For tests and scripts. Like {@link SagaWorker.run}, the runs it claims are the
   * caller's work and see the caller's async context.
   */
  poll(): Promise<number>
  /** The worker's counters. */
  metrics(): SagaWorkerMetrics
}

class SagaWorkerImpl implements SagaWorker, RunnerHost {
  readonly id: string
  readonly workerId: string
  readonly events = new EventSource<SagaEvent>()
  readonly db: SqlDriver
  readonly clock: Clock
  readonly leaseMs: number
  readonly atCommitTimeoutMs: number
  readonly faults: SagaFaults | undefined
  readonly #renewMs: number
  readonly #pollMs: number
  readonly #missingCheckMs: number
  /** When the next look for instances of missing definitions is due, on `clock`. */
  #missingCheckAt = Number.NEGATIVE_INFINITY
  #missingChecking = false
  /** The gauge attributes last reported, so a definition no longer missing is set back to 0. */
  #missingReported: Record<string, string>[] = []
  readonly #concurrency: number
  readonly #listen: boolean
  readonly #keepAlive: boolean
  readonly #sagas = new Map<string, CompiledSaga>()
  readonly #keys: unknown
  readonly #batcher: WriteBatcher
  readonly #metrics: MutableSagaMetrics = emptyMetrics()
  readonly #inHand = new Map<string, InstanceRun>()
  readonly #running = new Set<Promise<RunOutcome>>()
  /** run() calls inserting their instance and poll() calls claiming (not yet in `#running`). */
  readonly #starting = new Set<Promise<void>>()
  #state: SagaWorkerState = 'new'
  #loop: Promise<void> | undefined
  #wake: (() => void) | undefined
  #wakePending = false
  #saturated = false
  #renewTimer: TimerHandle | undefined
  #renewing = false
  #unlisten: Unlisten | undefined
  /** The first start() (all of them: a worker starts once). */
  #startup: Promise<void> | undefined
  /** start()'s read of the saga table, settled (never rejects). */
  #probing: Promise<void> | undefined
  /** Set when stop({ timeoutMs }) gave up waiting: every run in hand, or tracked later, is abandoned. */
  #abandonedBy: Error | undefined

  constructor(options: SagaWorkerOptions) {
    checkObject('options', options)
    // A misspelt option (`leaseMS`) was dropped without a word: its default was used instead.
    checkSagaOptions('options', options, workerOptions)
    const db = options.db
    checkSqlDriver('db', db, 'a SqlDriver (openDatabase)')
    this.db = db
    if (!Array.isArray(options.sagas) || options.sagas.length === 0)
      throw new InvalidOptionError('sagas', 'a non-empty array of saga definitions', options.sagas)
    options.sagas.forEach((definition, i) => {
      const saga = compiledSaga(definition, `sagas[${i}]`)
      if (this.#sagas.has(saga.key))
        throw new InvalidOptionError(`sagas[${i}]`, 'a name and version registered once', saga.key)
      this.#sagas.set(saga.key, saga)
    })
    this.#keys = stringListParam(db, [...this.#sagas.keys()])
    this.leaseMs = checkInteger('leaseMs', options.leaseMs ?? 800, 10, maxTimerDelayMs)
    this.#renewMs = checkInteger(
      'renewIntervalMs',
      options.renewIntervalMs ?? Math.max(1, Math.floor(this.leaseMs / 3)),
      1,
      this.leaseMs - 1,
    )
    this.atCommitTimeoutMs = checkInteger(
      'atCommitTimeoutMs',
      options.atCommitTimeoutMs ?? defaultAtCommitTimeoutMs,
      1,
      maxTimerDelayMs,
    )
    this.#pollMs = checkInteger('pollIntervalMs', options.pollIntervalMs ?? 100, 1, maxTimerDelayMs)
    this.#missingCheckMs = checkInteger(
      'missingDefinitionCheckIntervalMs',
      options.missingDefinitionCheckIntervalMs ?? 60_000,
      1,
      maxTimerDelayMs,
    )
    this.#concurrency = checkInteger('concurrency', options.concurrency ?? 16, 1, 10_000)
    this.#batcher = new WriteBatcher(db, 500)
    const workerId =
      options.workerId ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`
    // Written as the lease owner and into the timeline: a NUL or half of a surrogate pair made
    // every claim on PostgreSQL fail with a bare driver error (the worker never ran a saga).
    if (
      typeof workerId !== 'string' ||
      !isStorableText(workerId) ||
      workerId === '' ||
      workerId.length > 200
    )
      throw new InvalidOptionError(
        'workerId',
        'a non-empty string of at most 200 characters without NUL characters or lone surrogates',
        workerId,
      )
    this.id = workerId
    this.workerId = workerId
    if (options.listen !== undefined && typeof options.listen !== 'boolean')
      throw new InvalidOptionError('listen', 'a boolean', options.listen)
    this.#listen = options.listen ?? true
    if (options.keepAlive !== undefined && typeof options.keepAlive !== 'boolean')
      throw new InvalidOptionError('keepAlive', 'a boolean', options.keepAlive)
    this.#keepAlive = options.keepAlive ?? true
    this.faults =
      options.faults === undefined ? undefined : checkFunction<SagaFaults>('faults', options.faults)
    this.clock = checkClock('clock', options.clock)
  }

  get state(): SagaWorkerState {
    return this.#state
  }

  get stopping(): boolean {
    return this.#state === 'stopping' || this.#state === 'stopped'
  }

  metrics(): SagaWorkerMetrics {
    return { ...this.#metrics, inFlight: this.#inHand.size }
  }

  // ---- RunnerHost ------------------------------------------------------------------------

  emit(partial: Omit<SagaEvent, 'at' | 'worker'>): void {
    const event: SagaEvent = { at: this.clock.now(), worker: this.id, ...partial }
    sagaInstruments().events.add(1, { type: event.type, saga: event.saga ?? '' })
    publishSagaEvent(event)
    if (this.events.hasListeners) this.events.emit(event)
  }

  write(write: TransitionWrite, work: readonly CommitWork[]): Promise<BatchOutcome> {
    // Local work (atCommit, a command for the outbox) needs its own transaction.
    return work.length === 0 ? this.#batcher.write(write) : writeTransition(this.db, write, work)
  }

  count(metric: keyof MutableSagaMetrics): void {
    this.#metrics[metric]++
  }

  recordDuration(ms: number, saga: string): void {
    // The histogram is in seconds (see sagaInstruments); the events keep their `durationMs`.
    sagaInstruments().stepDuration.record(ms / 1000, { saga })
  }

  // ---- life cycle ------------------------------------------------------------------------

  start(): Promise<void> {
    // A worker runs once, as a relay does: a start() after stop() resolved and claimed nothing,
    // as if the worker ran.
    if (this.stopping) return Promise.reject(new SagaWorkerStoppedError(this.id))
    this.#startup ??= this.#start()
    return this.#startup
  }

  async #start(): Promise<void> {
    this.#state = 'running'
    // Subscribed at once (stop() may come while it is under way: see below), alongside the
    // probe; a failed subscription is reported once the probe has passed.
    const listening = this.#listen ? this.#subscribe() : undefined
    const probing = this.#probe()
    // stop() waits for the read (not for the subscription, which cleans up after itself): once
    // stop() resolves the worker sends nothing, and the caller may close the database.
    this.#probing = probing.catch(() => {})
    try {
      await probing
    } catch (error) {
      // A closed database (STORE_CLOSED) or one without the saga tables: the loop would have
      // reported it at every poll, for ever, after start() resolved.
      this.#state = 'stopped'
      const listened = await listening
      if (listened !== undefined && 'unlisten' in listened)
        await listened.unlisten().catch(() => {})
      throw error
    }
    const listened = await listening
    if (listened !== undefined) {
      // Polling still finds every saga; NOTIFY only makes it quicker.
      if ('error' in listened) this.#error(listened.error, 'listen')
      // stop() came while subscribing: it could not unsubscribe what it did not have yet.
      else if (this.#state !== 'running') await listened.unlisten().catch(() => {})
      else this.#unlisten = listened.unlisten
    }
    // The loop runs in breakwater's own async context, never the caller's of start(): a
    // deadline set around an application's startup would otherwise bound every step it runs
    // forever after, and an open SQLite transaction would refuse its claims.
    this.#loop = detached(() => this.#pollLoop())
  }

  /** LISTENs for startSaga's NOTIFY when the driver can; never rejects. */
  async #subscribe(): Promise<{ unlisten: Unlisten } | { error: unknown } | undefined> {
    if (this.db.listen === undefined) return undefined
    try {
      return { unlisten: await this.db.listen(sagaNotifyChannel, () => this.#wakeUp()) }
    } catch (error) {
      return { error }
    }
  }

  /** One read of the saga table, so that start() fails where every claim would. */
  async #probe(): Promise<void> {
    // Inside a transaction of this very SQLite driver the read would wait for that transaction,
    // which waits for start(): skipped, as the driver is open (it holds a transaction) and the
    // first claim reports a missing table.
    const current = currentTransaction.getStore()
    if (current?.driver === this.db && current.tx.open) return
    // In breakwater's own context, as the claims: not as a statement of a transaction around
    // start() (another driver's on the same SQLite file lets a read go ahead).
    await detached(() => this.db.query(sagaStatements[this.db.dialect].probe))
  }

  async stop(options: StopSagaWorkerOptions = {}): Promise<void> {
    checkObject('options', options)
    checkSagaOptions('options', options, stopOptions)
    const timeoutMs =
      options.timeoutMs === undefined
        ? undefined
        : checkInteger('options.timeoutMs', options.timeoutMs, 0, maxTimerDelayMs)
    if (this.#state === 'stopped') return
    // A worker never started may still have instances in hand (run(), poll()): it waits for
    // them too, as the TSDoc promises, rather than resolving while they still write.
    if (this.#state === 'new' || this.#state === 'running') this.#state = 'stopping'
    this.#wakeUp()
    const drained = this.#drain()
    if (timeoutMs === undefined) await drained
    else {
      // Timed from the call: nothing above awaits.
      const gaveUp = new TimeoutError(timeoutMs)
      try {
        await within(drained, this.clock, timeoutMs, () => gaveUp)
      } catch (error) {
        if (error !== gaveUp) throw error
        this.#abandonAll(new AbortedError(gaveUp))
      }
    }
    this.#stopRenewals()
    const unlisten = this.#unlisten
    this.#unlisten = undefined
    await unlisten?.().catch(() => {})
    this.#state = 'stopped'
  }

  async #drain(): Promise<void> {
    await this.#probing
    await this.#loop
    while (this.#running.size > 0 || this.#starting.size > 0)
      await Promise.allSettled([...this.#running, ...this.#starting])
  }

  // The leases are left as they are: neither renewed (renewals stop) nor released (a release
  // would let another worker start the step while this one may still be running it). A claim or
  // insert still in flight tracks its runs later; they are abandoned at once (see #track).
  #abandonAll(reason: AbortedError): void {
    this.#abandonedBy = reason
    for (const run of this.#inHand.values()) run.abandon(reason)
  }

  async #pollLoop(): Promise<void> {
    // Claims failed in a row (the database unreachable, its saga table gone): each one doubles
    // the wait before the next, up to maxClaimBackoffMs, so an outage is reported once per
    // wait rather than once per poll interval. A claim that succeeds resets it.
    let failures = 0
    while (this.#state === 'running') {
      await this.#checkMissingDefinitions()
      const free = this.#concurrency - this.#inHand.size
      if (free > 0) {
        try {
          const claimed = await this.#claim(free)
          failures = 0
          this.#saturated = claimed === free
          // A full batch suggests more is waiting: claim again at once while slots are free,
          // after letting I/O and timers run (on SQLite a burst of short sagas would otherwise
          // run in promise jobs alone and starve the rest of the process).
          if (this.#saturated && this.#inHand.size < this.#concurrency) {
            await yieldToEventLoop()
            continue
          }
        } catch (error) {
          failures++
          this.#error(error, 'claim')
        }
      }
      await this.#idle(
        failures === 0
          ? this.#pollMs
          : Math.max(this.#pollMs, Math.min(this.#pollMs * 2 ** failures, maxClaimBackoffMs)),
      )
    }
  }

  #idle(ms: number): Promise<void> {
    if (this.#wakePending || this.#state !== 'running') {
      this.#wakePending = false
      return Promise.resolve()
    }
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.#wake = undefined
        this.clock.clearTimeout(timer)
        resolve()
      }
      const timer = this.clock.setTimeout(done, ms)
      // The system clock unrefs its timers; a started worker is meant to hold the process the
      // way a listening server does, so its poll timer is re-referenced when it can be.
      if (this.#keepAlive) keepProcessAlive(timer)
      this.#wake = done
    })
  }

  #wakeUp(): void {
    const wake = this.#wake
    if (wake === undefined) this.#wakePending = true
    else wake()
  }

  async poll(): Promise<number> {
    const free = this.#concurrency - this.#inHand.size
    if (free <= 0 || this.stopping) return 0
    await this.#checkMissingDefinitions()
    const before = new Set(this.#running)
    // stop() waits for the claim too: what it takes must be run (and given back) before stop()
    // resolves, not after.
    const claiming = this.#claim(free)
    const settled = claiming.then(
      () => {},
      () => {},
    )
    this.#starting.add(settled)
    let claimed: number
    try {
      claimed = await claiming
    } finally {
      this.#starting.delete(settled)
    }
    await Promise.allSettled([...this.#running].filter((p) => !before.has(p)))
    return claimed
  }

  // The claim passes over instances of definitions this worker lacks, and so would every other
  // worker's if none has them: nothing would ever say so. The grouped read scans every due
  // instance, hence at most once per interval.
  async #checkMissingDefinitions(): Promise<void> {
    const now = storedTime(this.clock)
    if (this.#missingChecking || now < this.#missingCheckAt) return
    this.#missingChecking = true
    this.#missingCheckAt = now + this.#missingCheckMs
    try {
      const missing = await findMissingDefinitions(this.db, now - this.#missingCheckMs, this.#keys)
      const gauge = sagaInstruments().missingDefinition
      const reported = missing.map((m) => ({ saga: m.name, version: String(m.version) }))
      for (const gone of this.#missingReported) {
        if (!reported.some((r) => r.saga === gone.saga && r.version === gone.version))
          gauge.record(0, gone)
      }
      this.#missingReported = reported
      missing.forEach((m, i) => {
        gauge.record(m.count, reported[i])
        this.emit({ type: 'definition-missing', saga: m.name, version: m.version, count: m.count })
      })
    } catch (error) {
      this.#error(error, 'missing-definitions')
    } finally {
      this.#missingChecking = false
    }
  }

  async #claim(limit: number): Promise<number> {
    // Measured when the claim runs (after the writer or a pool connection), not now.
    const lease = { clock: this.clock, ms: this.leaseMs }
    const rows = await claimInstances(this.db, this.id, lease, this.#keys, limit, () => [
      ...this.#inHand.keys(),
    ])
    if (rows.length === 0) return 0
    this.#metrics.claimed += rows.length
    this.emit({ type: 'claimed', count: rows.length })
    const runs: InstanceRun[] = []
    for (const row of rows) {
      const saga = this.#sagas.get(row.definition)
      // The claim selects only registered definitions; this guards a hand-edited row.
      if (saga === undefined) continue
      // The claim leaves out the instances in hand as it goes out. Should one come back all the
      // same (a run tracked in between), it gets no second run and does not replace the one in
      // hand: the token the claim bumped fences that run's next write off, and the instance is
      // taken over once the claim's lease runs out.
      if (this.#inHand.has(row.id)) continue
      let run: InstanceRun
      try {
        run = new InstanceRun(this, saga, row)
      } catch (error) {
        // Its stored state cannot be read, or its step index names none of its steps
        // (StoredDataError, naming it): reported, and the others claimed with it still run;
        // thrown, it failed the whole claim, and every claim after it took it again. Its state
        // is left as it is; it is held for unreadableHoldMs, so that it is tried (and reported)
        // again once a minute, not at every lease (800 ms by default), until someone fixes it.
        this.#error(error, 'claim', row.id)
        const token = this.#claimedToken(row, error)
        if (token !== undefined)
          await holdUnreadable(this.db, row.id, token, this.clock).catch((renewal: unknown) =>
            this.#error(renewal, 'hold', row.id),
          )
        continue
      }
      this.#inHand.set(run.id, run)
      runs.push(run)
    }
    if (this.faults !== undefined) {
      try {
        await this.faults('after-claim', {
          sagaId: runs.length === 1 ? runs[0]!.id : undefined,
          step: undefined,
        })
      } catch {
        // As if the process died here: the claimed leases simply expire.
        for (const run of runs) this.#inHand.delete(run.id)
        return rows.length
      }
    }
    for (const run of runs) this.#track(run)
    return rows.length
  }

  /**
   * The lease token a claim returned for a row it cannot run, to fence its hold. The claim wrote
   * it (`lease_token + 1`, which on SQLite turns text into 1), so the hold matches the row when
   * the number read is the one stored. One that is not a whole number from 0 below 2^53
   * (changed outside breakwater: a negative one, a fraction on SQLite, or one past 2^53, which
   * the drivers read rounded) is reported too, naming the saga and the column, as `getSaga`
   * refuses it, unless `error`, the run's refusal, was already that report (InstanceRun reads
   * the token last). Read with `Number()`, it went unreported, and a rounded one matched nothing,
   * so the instance was claimed and reported again at every lease with no word on why. The hold
   * is sent with a negative token or a fraction, which it matches; not with a rounded one, which
   * matches nothing (and at 2^63, where the claim leaves it, PostgreSQL refuses the parameter as
   * out of range), nor with none (not a number at all): that instance is claimed again at the
   * next lease and reported again. Its row is left as it is.
   */
  #claimedToken(row: Pick<SagaRow, 'id' | 'lease_token'>, error: unknown): number | undefined {
    try {
      return claimedLeaseToken(row)
    } catch (refused) {
      const reported = error instanceof StoredDataError && error.column === 'lease_token'
      if (!reported) this.#error(refused, 'claim', row.id)
    }
    const token = readStoredNumber(row.lease_token)
    return token !== undefined && Math.abs(token) < 2 ** 53 ? token : undefined
  }

  #track(run: InstanceRun): Promise<RunOutcome> {
    if (this.#abandonedBy !== undefined) run.abandon(this.#abandonedBy)
    this.#ensureRenewals()
    const running = run.run().finally(() => {
      if (this.#inHand.get(run.id) === run) this.#inHand.delete(run.id)
      this.#running.delete(running)
      if (this.#inHand.size === 0) this.#stopRenewals()
      // A slot is free: if the last claim filled every slot, more may be waiting.
      if (this.#saturated) this.#wakeUp()
    })
    this.#running.add(running)
    return running
  }

  async run<I, C>(
    definition: SagaDefinition<I, C>,
    input: I,
    options: RunSagaOptions = {},
  ): Promise<SagaOutcome<C>> {
    checkObject('options', options)
    checkSagaOptions('options', options, runOptions)
    const given = compiledSaga(definition)
    const saga = this.#sagas.get(given.key)
    if (saga === undefined) {
      throw new InvalidOptionError(
        'definition',
        `a definition registered with this worker (${[...this.#sagas.keys()].join(', ')})`,
        given.key,
      )
    }
    // Another defineSaga() of the same name and version (steps changed without a bump) ran the
    // registered definition's steps, not the ones passed, without a word.
    if (saga !== given) {
      throw new InvalidOptionError(
        'definition',
        `the definition object registered with this worker as ${saga.key} (this one is another defineSaga() of that name and version: register it, or bump its version)`,
        given.key,
      )
    }
    if (this.stopping)
      throw new InvalidOptionError('worker', 'a worker that is not stopping', this.#state)
    const id = options.id === undefined ? randomUUID() : checkSagaId('options.id', options.id)
    const now = storedTime(this.clock)
    const serialized = serializeInput(saga, input)
    const steps = initialSteps(saga)
    // Until the run is tracked, stop() waits on this: a stop() that came during the insert
    // resolved at once, and the run then claimed and wrote after it (the caller may have closed
    // the database by then), leaving the instance leased to a stopped worker.
    let started!: () => void
    const starting = new Promise<void>((resolve) => {
      started = resolve
    })
    this.#starting.add(starting)
    let run: InstanceRun
    let tracked: Promise<RunOutcome>
    try {
      const created = await this.#batcher.insert({
        id,
        name: saga.name,
        version: saga.version,
        key: saga.key,
        input: serialized,
        steps,
        nextRunAt: now,
        leaseOwner: this.id,
        leaseExpiresAt: now + this.leaseMs,
        leaseToken: 1,
        attempt: 1,
        now,
        // Measured again when the insert goes out (after a flush in flight, the SQLite
        // writer), as transition writes are: see NewInstance.lease.
        lease: { clock: this.clock, ms: this.leaseMs },
      })
      if (created === undefined) return this.#stored(id, false, saga)
      const row: SagaRow = {
        id,
        name: saga.name,
        version: saga.version,
        definition: saga.key,
        status: 'running',
        input: serialized,
        context: '{}',
        steps,
        step_index: 0,
        attempt: 1,
        next_run_at: now,
        lease_owner: this.id,
        lease_expires_at: created.leaseExpiresAt,
        lease_token: 1,
        previous_owner: null,
        previous_expires_at: null,
        cancel_requested: 0,
        reason: null,
        created_at: now,
        updated_at: now,
        finished_at: null,
      }
      run = new InstanceRun(this, saga, row)
      this.#inHand.set(id, run)
      tracked = this.#track(run)
    } finally {
      this.#starting.delete(starting)
      started()
    }
    const outcome = await tracked
    // A run that was fenced off or gave up holds a state its last write did not store (the
    // status it was about to write, say 'completed'): what counts is what the database has.
    if (outcome === 'lost' || outcome === 'abandoned') return this.#stored(id, true)
    return {
      id,
      created: true,
      status: run.status,
      context: run.context as Partial<C>,
      reason: run.reason,
    }
  }

  /**
   * The outcome of instance `id` as stored. `started` is the saga a run found the id taken for
   * (created false): an instance of another saga holding it is refused, not reported as this
   * run's outcome.
   */
  async #stored<C>(id: string, created: boolean, started?: CompiledSaga): Promise<SagaOutcome<C>> {
    // The row, not getSaga: a run given up on a cancel_requested, attempt or step_index it
    // cannot read (reported, the instance held) still resolves with what is stored; getSaga
    // refuses such a row. Its JSON columns and reason are still read as getSaga reads them.
    const [row] = await this.db.query<SagaRow>(sagaStatements[this.db.dialect].selectOne, [id])
    if (started !== undefined) refuseOtherSaga(id, started, row)
    return {
      id,
      created,
      status: (row?.status ?? 'running') as SagaStatus,
      context: (row === undefined ? {} : storedState(row).context) as Partial<C>,
      reason: row === undefined ? undefined : storedText(row, 'reason'),
    }
  }

  // ---- leases ----------------------------------------------------------------------------

  #ensureRenewals(): void {
    // After stop({ timeoutMs }) gave up, the leases left behind run out; nothing renews them.
    if (this.#renewTimer !== undefined || this.#abandonedBy !== undefined) return
    // Set in breakwater's own context: the timer renews every instance in hand, whoever's call
    // (a run() inside the caller's deadline, the poll loop) happened to set it first.
    this.#renewTimer = detached(() =>
      this.clock.setTimeout(() => {
        this.#renewTimer = undefined
        void this.#renew()
      }, this.#renewMs),
    )
  }

  #stopRenewals(): void {
    if (this.#renewTimer === undefined) return
    this.clock.clearTimeout(this.#renewTimer)
    this.#renewTimer = undefined
  }

  async #renew(): Promise<void> {
    if (this.#renewing || this.#inHand.size === 0) return
    this.#renewing = true
    const sent = new Map([...this.#inHand].map(([id, run]) => [id, run]))
    const tokens = new Map([...sent].map(([id, run]) => [id, run.token]))
    try {
      // The lease end is measured when the statement runs, not when the timer fired: a flush
      // in flight or the SQLite writer may hold it up.
      const held = await this.#batcher.exclusive(() =>
        renewLeases(this.db, this.id, this.clock, this.leaseMs, [...sent.keys()]),
      )
      for (const [id, run] of sent) {
        if (this.#inHand.get(id) !== run) continue
        if (held.renewed.get(id) === tokens.get(id)) run.leaseExpiresAt = held.leaseEnd
        // Its row is locked, most likely by its own step's transaction, whose commit writes the
        // lease (extended or released): passed over this round, neither renewed nor lost.
        else if (held.locked.has(id)) continue
        // Its own write gave the lease up (the run ends once it returns): not a takeover. If
        // another worker did take over, that write is refused and says so.
        else if (run.givenBack) continue
        // Another worker claimed it after our lease ran out (a pause, a slow database).
        else run.markLost('renewal-refused')
      }
    } catch (error) {
      this.#error(error, 'renew')
    } finally {
      this.#renewing = false
      if (this.#inHand.size > 0) this.#ensureRenewals()
    }
  }

  #error(error: unknown, phase: SagaErrorPhase, sagaId?: string): void {
    this.#metrics.errors++
    this.emit({
      type: 'error',
      phase,
      ...(sagaId === undefined ? {} : { sagaId }),
      error: errorInfo(error),
    })
  }
}

// Not a timer: it only lets the event loop turn, so a test clock has nothing to drive here.
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/**
 * Creates a saga worker. Any number of workers (in any number of processes) may run against
 * one database: each claims runnable instances with a lease (PostgreSQL: `FOR UPDATE SKIP
 * LOCKED`; SQLite: one `UPDATE ... RETURNING`), renews the leases while steps run, and fences
 * every state write with the lease token, so a worker that lost an instance can no longer
 * change it. A worker that dies loses its leases after `leaseMs` and another resumes its
 * instances from the persisted state. Timers, retry delays and reply timeouts are persisted as
 * the instance's `next_run_at`, so they survive restarts. An unknown (misspelt) option, here or
 * in `run` and `stop`, is refused with `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const worker = createSagaWorker({ db, sagas: [orderSaga] })
 * await worker.start()
 * await startSaga(db, orderSaga, { orderId: 'o-42', amount: 99 })
 * process.once('SIGTERM', () => void worker.stop())
 * ```
 */
export function createSagaWorker(options: SagaWorkerOptions): SagaWorker {
  return new SagaWorkerImpl(options)
}
