import type { Clock } from '../core/clock.js'
import { describeValue, InvalidOptionError } from '../core/errors.js'
import { isStorableText, jsonTextOf } from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOneOf,
  checkSignal,
  isDroppedPromise,
  isObjectRecord,
  optionKeys,
} from '../core/validate.js'
import { canonicalJson, sha256Hex } from '../idempotency/fingerprint.js'
import {
  createIdempotency,
  type Idempotency,
  IdempotencyMismatchError,
} from '../idempotency/index.js'
import { recordPlace } from '../idempotency/sql-store.js'
import { retry } from '../index.js'
import type { Outbox, OutboxEvent } from '../outbox/index.js'
import { parseStoredJson, StoredDataError } from '../stores/errors.js'
import { type SqlExecutor, sqlErrorKind } from '../stores/index.js'
import { checkOptionKeys } from './checks.js'
import { WrongExpectedVersionError } from './errors.js'
import {
  checkExpected,
  checkKey,
  checkName,
  checkTx,
  type EventStore,
  type EventStoreImpl,
  internalsOf,
  maxSnapshotNameBytes,
  txOptions,
} from './event-store.js'
import { publish } from './events.js'
import type { EventShape, ExpectedVersion, NewEvent, RecordedEvent } from './types.js'

/**
 * The decide/evolve description of an aggregate (Jérémie Chassaing's "decider"): the state is
 * the fold of the stream's events with `evolve`, starting from `initialState()`, and `decide`
 * turns a command and that state into new events (or throws a domain error). Both functions
 * must be pure: a command is decided again from fresh state after a version conflict.
 * `initialState` and `evolve` are synchronous (a promise they return fails the command with
 * `InvalidOptionError`); `decide` may be async. Typed by a union of events (`E`, see `Event`),
 * `decide` must return members of it (a wrong payload does not compile) and `evolve`'s
 * `switch (event.type)` narrows `event.data`.
 *
 * @example
 * ```ts
 * type Cart = { items: number; checkedOut: boolean }
 * type CartEvent =
 *   | Event<'item-added', { sku: string }>
 *   | Event<'checked-out', Record<string, never>>
 * const cart: Decider<{ kind: 'add'; sku: string } | { kind: 'checkout' }, CartEvent, Cart> = {
 *   initialState: () => ({ items: 0, checkedOut: false }),
 *   evolve: (s, e) => (e.type === 'item-added' ? { ...s, items: s.items + 1 } : { ...s, checkedOut: true }),
 *   decide: (c, s) => {
 *     if (s.checkedOut) throw new Error('cart is checked out')
 *     return c.kind === 'add' ? [{ type: 'item-added', data: { sku: c.sku } }] : [{ type: 'checked-out', data: {} }]
 *   },
 * }
 * ```
 */
export interface Decider<C, E extends EventShape, S> {
  /** The state of a stream without events. */
  initialState(): S
  /**
   * The state after one more event. A handler without a transaction (no snapshots, outbox,
   * inline projections or idempotency) also folds the decided events before appending them,
   * as they will be recorded but with `position` 0 (it is assigned by the write), so an evolve
   * that throws on them fails the command without writing anything; the returned state is
   * folded from the recorded events.
   */
  evolve(state: S, event: RecordedEvent<E>): S
  /** The events a command produces in a state (none: nothing is appended). */
  decide(command: C, state: S): readonly NewEvent<E>[] | Promise<readonly NewEvent<E>[]>
}

/** Snapshot settings of a command handler. */
export interface SnapshotOptions<S> {
  /** Write a snapshot whenever the stream's version crosses a multiple of this. */
  readonly every: number
  /**
   * The snapshot's name; change it (e.g. `cart-v2`) when `evolve` or the state's shape
   * changes, so old snapshots are ignored.
   * @default 'default'
   */
  readonly name?: string | undefined
  /**
   * Turns the state into JSON text. Text holding a NUL or a lone surrogate (which the
   * databases cannot store alike) is refused with `InvalidOptionError`, failing the command
   * without writing. The default refuses (with `InvalidOptionError`, failing the
   * command without writing) a state JSON cannot hold; with the default `deserialize` too, also
   * one it would not give back as is (a `Date`, `Map`, `Set`, class instance): give both
   * functions for such states.
   * @default JSON.stringify
   */
  readonly serialize?: ((state: S) => string) | undefined
  /**
   * Turns the JSON text back into a state, synchronously.
   * @default JSON.parse
   */
  readonly deserialize?: ((text: string) => S) | undefined
}

/** Integration events published through the outbox with the append. */
export interface CommandOutboxOptions<E extends EventShape, S> {
  /** The outbox (`createOutbox()` from `breakwater/outbox`; run its migrations first). */
  readonly outbox: Outbox
  /**
   * Maps the appended domain events (and the state after them) to the integration events to
   * publish; they are enqueued in the append's transaction, after it, so they are published
   * if and only if the events were appended. Return an array (`[]` for none): anything else
   * fails the command with `InvalidOptionError` and writes nothing.
   */
  readonly map: (
    events: readonly RecordedEvent<E>[],
    state: S,
    stream: string,
  ) => readonly OutboxEvent[]
}

/** Options of {@link createCommandHandler}. */
export interface CommandHandlerOptions<C, E extends EventShape, S> {
  /** The aggregate's decide/evolve functions. */
  readonly decider: Decider<C, E, S>
  /**
   * Attempts per command: a version conflict (another command appended to the stream first)
   * or a serialization failure re-reads the stream and decides again, up to this many times.
   * @default 5
   */
  readonly maxAttempts?: number | undefined
  /**
   * Backoff ceiling of the first retry (full jitter, doubling per retry).
   * @default 5
   */
  readonly baseDelayMs?: number | undefined
  /**
   * Longest backoff between attempts.
   * @default 500
   */
  readonly maxDelayMs?: number | undefined
  /**
   * Idempotent commands: a command with a `commandId` is decided and appended at most once;
   * a repeat returns the recorded result (`replayed: true`). The record is written in the
   * append's transaction. Needs the idempotency migrations (`migrateIdempotency(db)`) on the
   * store's database.
   * @default undefined (commandId only goes into the events' metadata)
   */
  readonly idempotency?:
    | {
        /**
         * The scope command ids live in.
         * @default 'commands'
         */
        readonly scope?: string | undefined
        /**
         * Where the command id is claimed (see `claim` in docs/idempotency.md).
         *
         * `'leased'` commits the claim on its own before the command runs: a process that dies
         * mid-command leaves the id in progress until `leaseMs` ends, and a repeat meanwhile
         * waits (up to 10 s) then throws `IdempotencyInProgressError`.
         *
         * `'in-transaction'` makes the claim the first statement of the command's own
         * transaction (the one that loads, appends and records the result): a crash rolls it
         * back with everything else, and a repeat runs at once. A concurrent repeat waits in the
         * database for the first to commit (holding a pooled connection on PostgreSQL), then
         * replays. Recommended for commands run from saga steps, whose retries come sooner than
         * a lease ends. Costs a replay 3 statements instead of 1 on PostgreSQL.
         * @default 'leased'
         */
        readonly claim?: 'leased' | 'in-transaction' | undefined
        /**
         * How long one execution owns a command id before another may take over. With `claim:
         * 'in-transaction'`, how long the command's transaction may stay open.
         * @default 60000
         */
        readonly leaseMs?: number | undefined
        /**
         * How long recorded results are kept.
         * @default 86400000
         */
        readonly retentionMs?: number | undefined
        /**
         * What a command looks like, stored with its id: the same id with another command (or on
         * another stream) throws `IdempotencyMismatchError` instead of replaying the first result.
         * Return `''` to compare the stream only; leave out fields a retry may change (a request
         * timestamp). The default is the command's JSON with object keys sorted (`toJSON` is
         * used; functions, symbols and `undefined` fields do not count, nor do the contents of a
         * `Map` or `Set`); a command JSON cannot hold (a `bigint`, a cycle) fails with
         * `InvalidOptionError` before anything runs, so give a function for such commands.
         * @default the command's canonical JSON
         */
        readonly fingerprint?: ((command: C) => string) | undefined
      }
    | undefined
  /**
   * Integration events to enqueue in the outbox with every append.
   * @default undefined (none)
   */
  readonly outbox?: CommandOutboxOptions<E, S> | undefined
  /**
   * Snapshots for long streams: load = latest snapshot + the events after it.
   * @default undefined (always fold the whole stream)
   */
  readonly snapshots?: SnapshotOptions<S> | undefined
  /**
   * Time source for retry delays and idempotency leases.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Options of {@link CommandHandler.handle}. */
export interface HandleOptions {
  /** The command's id: with the handler's `idempotency` option, repeats are replayed. */
  readonly commandId?: string | undefined
  /**
   * A precondition from the caller (e.g. an HTTP `If-Match`): checked against the loaded
   * version and never retried.
   * @default no precondition
   */
  readonly expectedVersion?: ExpectedVersion | undefined
  /** Merged into every appended event's metadata (besides `commandId`). */
  readonly metadata?: Readonly<Record<string, unknown>> | undefined
  /** Aborts retries. */
  readonly signal?: AbortSignal | undefined
}

/** What handling a command did. */
export interface CommandResult<E extends EventShape, S> {
  /** The stream. */
  readonly stream: string
  /** The appended events (empty when the decision produced none). */
  readonly events: readonly RecordedEvent<E>[]
  /** The stream's version after the command. */
  readonly version: number
  /** The global position of the last appended event (0 when none): pass it to `waitFor`. */
  readonly lastPosition: number
  /** The state after the command. */
  readonly state: S
  /** True when this is the recorded result of an earlier execution of the same commandId. */
  readonly replayed: boolean
}

/** Loaded state of a stream. */
export interface LoadedState<S> {
  /** The folded state. */
  readonly state: S
  /** The stream version it reflects. */
  readonly version: number
  /** Whether a snapshot was used. */
  readonly fromSnapshot: boolean
}

type AnyHandlerOptions = CommandHandlerOptions<unknown, EventShape, unknown>
const handlerOptions = optionKeys<AnyHandlerOptions>({
  decider: true,
  maxAttempts: true,
  baseDelayMs: true,
  maxDelayMs: true,
  idempotency: true,
  outbox: true,
  snapshots: true,
  clock: true,
})
const idempotencyOptions = optionKeys<NonNullable<AnyHandlerOptions['idempotency']>>({
  scope: true,
  claim: true,
  leaseMs: true,
  retentionMs: true,
  fingerprint: true,
})
const outboxOptions = optionKeys<CommandOutboxOptions<EventShape, unknown>>({
  outbox: true,
  map: true,
})
const snapshotOptions = optionKeys<SnapshotOptions<unknown>>({
  every: true,
  name: true,
  serialize: true,
  deserialize: true,
})
const handleOptions = optionKeys<HandleOptions>({
  commandId: true,
  expectedVersion: true,
  metadata: true,
  signal: true,
})

/** Handles commands for one kind of aggregate. */
export interface CommandHandler<C, E extends EventShape, S> {
  /**
   * Loads the stream's state, decides, and appends at the loaded version, retrying on
   * conflicts; inline projections, the outbox and the idempotency record commit in the same
   * transaction.
   * @throws WrongExpectedVersionError when conflicts outlast `maxAttempts`, or the caller's
   *   `expectedVersion` does not hold
   * @throws IdempotencyMismatchError when the `commandId` was used for another command or stream
   */
  handle(stream: string, command: C, options?: HandleOptions): Promise<CommandResult<E, S>>
  /** Loads a stream's state (snapshot + tail when snapshots are on). */
  load(stream: string, options?: { readonly tx?: SqlExecutor | undefined }): Promise<LoadedState<S>>
}

interface RecordedResult<S> {
  readonly events: readonly RecordedEvent[]
  readonly version: number
  readonly lastPosition: number
  readonly state: S
}

class StoreCommandHandler<C, E extends EventShape, S> implements CommandHandler<C, E, S> {
  readonly #store: EventStoreImpl
  readonly #decider: Decider<C, E, S>
  readonly #policy: ReturnType<typeof retry>
  readonly #idempotency: Idempotency | undefined
  readonly #scope: string
  readonly #fingerprint: ((command: C) => string) | undefined
  readonly #outbox: CommandOutboxOptions<E, S> | undefined
  readonly #snapshots:
    | {
        every: number
        name: string
        serialize: (state: S) => string
        /** `stream` names the snapshot when the default's stored text is not JSON. */
        deserialize: (text: string, stream: string) => S
      }
    | undefined
  // Conflicts with the caller's own precondition: never retried.
  readonly #preconditionFailures = new WeakSet<object>()

  constructor(store: EventStore, options: CommandHandlerOptions<C, E, S>) {
    this.#store = internalsOf(store)
    checkObject('options', options)
    // A misspelt option (`maxAttempt`, `snapshot`) was dropped without a word.
    checkOptionKeys('options', options, handlerOptions)
    const decider = checkObject('decider', options.decider)
    checkFunction('decider.initialState', decider.initialState)
    checkFunction('decider.evolve', decider.evolve)
    checkFunction('decider.decide', decider.decide)
    this.#decider = options.decider
    const clock = checkClock('clock', options.clock)
    const maxAttempts = checkInteger('maxAttempts', options.maxAttempts ?? 5, 1, 1000)
    const baseDelayMs = checkInteger('baseDelayMs', options.baseDelayMs ?? 5, 0)
    const maxDelayMs = checkInteger('maxDelayMs', options.maxDelayMs ?? 500, baseDelayMs)
    this.#policy = retry({
      maxAttempts,
      baseDelayMs,
      maxDelayMs,
      jitter: 'full',
      clock,
      shouldRetry: (error) => this.#retryable(error),
    })
    if (options.idempotency !== undefined) {
      const settings = checkObject('idempotency', options.idempotency)
      checkOptionKeys('idempotency', settings, idempotencyOptions)
      const scope = settings.scope ?? 'commands'
      if (typeof scope !== 'string' || scope === '') {
        throw new InvalidOptionError('idempotency.scope', 'a non-empty string', scope)
      }
      this.#scope = scope
      this.#fingerprint =
        settings.fingerprint === undefined
          ? undefined
          : checkFunction<(command: C) => string>('idempotency.fingerprint', settings.fingerprint)
      // Checked here, to name the option as the caller wrote it.
      const claim = checkOneOf('idempotency.claim', settings.claim ?? 'leased', [
        'leased',
        'in-transaction',
      ])
      this.#idempotency = createIdempotency({
        store: this.#store.db,
        claim,
        onConcurrent: 'wait',
        clock,
        // Checked here with the bounds createIdempotency applies, which would name them as its
        // own options (leaseMs), not as the caller wrote them.
        ...(settings.leaseMs === undefined
          ? {}
          : { leaseMs: checkInteger('idempotency.leaseMs', settings.leaseMs, 1) }),
        ...(settings.retentionMs === undefined
          ? {}
          : { retentionMs: checkInteger('idempotency.retentionMs', settings.retentionMs, 1) }),
      })
    } else {
      this.#scope = 'commands'
      this.#fingerprint = undefined
      this.#idempotency = undefined
    }
    if (options.outbox !== undefined) {
      const outbox = checkObject('outbox', options.outbox)
      checkOptionKeys('outbox', outbox, outboxOptions)
      checkObject('outbox.outbox', outbox.outbox)
      checkFunction('outbox.outbox.enqueue', (outbox.outbox as Outbox).enqueue)
      checkFunction('outbox.map', outbox.map)
      this.#outbox = options.outbox
    }
    if (options.snapshots !== undefined) {
      const s = checkObject('snapshots', options.snapshots)
      checkOptionKeys('snapshots', s, snapshotOptions)
      const every = checkInteger('snapshots.every', s.every, 1)
      // PostgreSQL cannot store NUL, and stores a lone surrogate as U+FFFD; and the name is a
      // key with the stream id: bounded so that both fit one index entry (see checkKey).
      const name = checkKey('snapshots.name', s.name ?? 'default', maxSnapshotNameBytes)
      const serialize =
        s.serialize === undefined
          ? undefined
          : checkFunction<(state: S) => string>('snapshots.serialize', s.serialize)
      const deserialize =
        s.deserialize === undefined
          ? undefined
          : checkFunction<(text: string) => S>('snapshots.deserialize', s.deserialize)
      this.#snapshots = {
        every,
        name,
        serialize: (state) => {
          if (serialize !== undefined) {
            const text = serialize(state)
            // Anything else would reach the database as a NULL or a number: a bare driver error.
            // A NUL fails PostgreSQL's insert (22021, rolling back every later command that
            // writes a snapshot: the stream would be stuck) and a lone surrogate is stored
            // there as U+FFFD while SQLite keeps it: refused alike on both.
            if (typeof text !== 'string' || !isStorableText(text)) {
              throw new InvalidOptionError(
                'snapshots.serialize',
                'to return a string without NUL characters or lone surrogates',
                text,
              )
            }
            return text
          }
          // Loaded with JSON.parse, the state must be plain JSON data: a Date, Set, Map or class
          // instance would load as a string or a bare object, so a snapshot load would differ
          // from the fold (silently, until decide trips on it). A custom deserialize revives
          // what it knows, so only what JSON cannot write at all is refused then.
          if (deserialize === undefined) checkPlainState(state)
          return jsonTextOf('snapshot state', state, snapshotStateExpected)
        },
        // Not JSON (a row changed outside breakwater): StoredDataError naming the stream and the
        // snapshot, not a bare SyntaxError. A custom deserialize reports its own errors.
        deserialize:
          deserialize === undefined
            ? (text, stream) =>
                parseStoredJson(text, () => ({
                  table: 'breakwater_snapshots',
                  row: `snapshot ${JSON.stringify(name)} of stream ${JSON.stringify(stream)}`,
                  column: 'state',
                })) as S
            : (text) => deserialize(text),
      }
    }
  }

  #retryable(error: unknown): boolean {
    if (error instanceof WrongExpectedVersionError) {
      return !this.#preconditionFailures.has(error)
    }
    const kind = sqlErrorKind(error)
    return kind === 'serialization-failure' || kind === 'busy'
  }

  async load(
    stream: string,
    options: { readonly tx?: SqlExecutor | undefined } = {},
  ): Promise<LoadedState<S>> {
    // As handle() does: '' would read as a never-written stream, and a name PostgreSQL cannot
    // store as given would fail there with a bare driver error (or read another stream).
    checkName('stream', stream)
    checkObject('options', options)
    checkOptionKeys('options', options, txOptions)
    const { truncateBefore: _, ...loaded } = await this.#load(
      stream,
      checkTx(options.tx) ?? this.#store.db,
    )
    return loaded
  }

  #fold(state: S, events: readonly RecordedEvent[]): S {
    let folded = state
    for (const event of events) {
      // An async evolve: decide would see a promise as the state (and be handed every later
      // event's fold of it), and the command would return one.
      folded = synchronous(
        'decider.evolve',
        'the new state',
        this.#decider.evolve(folded, event as RecordedEvent<E>),
      )
    }
    return folded
  }

  /** {@link load}, also returning the first version the fold could see (moved by a delete). */
  async #load(
    stream: string,
    executor: SqlExecutor,
  ): Promise<LoadedState<S> & { truncateBefore: number }> {
    const store = this.#store
    let state = synchronous(
      'decider.initialState',
      'the initial state',
      this.#decider.initialState(),
    )
    const snapshots = this.#snapshots
    if (snapshots !== undefined) {
      const snapshot = await store.readSnapshotText(executor, stream, snapshots.name)
      if (snapshot !== undefined) {
        const read = await store.readStreamFrom(stream, snapshot.version + 1, executor)
        // A delete (and recreate) between the two reads hides what the snapshot folded.
        if (read.truncateBefore <= snapshot.version) {
          const restored = synchronous(
            'snapshots.deserialize',
            'the state',
            snapshots.deserialize(snapshot.state, stream),
          )
          state = this.#fold(restored, read.events)
          return {
            state,
            version: read.version,
            fromSnapshot: true,
            truncateBefore: read.truncateBefore,
          }
        }
      }
    }
    const read = await store.readStreamFrom(stream, 1, executor)
    state = this.#fold(state, read.events)
    return {
      state,
      version: read.version,
      fromSnapshot: false,
      truncateBefore: read.truncateBefore,
    }
  }

  async handle(
    stream: string,
    command: C,
    options: HandleOptions = {},
  ): Promise<CommandResult<E, S>> {
    // Before anything runs: the append would refuse the stream only after load and decide.
    checkKey('stream', stream)
    checkObject('options', options)
    // A misspelt expectedVersion or commandId dropped the precondition or the deduplication.
    checkOptionKeys('options', options, handleOptions)
    const commandId = options.commandId
    if (commandId !== undefined && (typeof commandId !== 'string' || commandId === '')) {
      throw new InvalidOptionError('commandId', 'a non-empty string', commandId)
    }
    // A malformed precondition (a typo, -1) would otherwise match nothing and be reported as
    // a version conflict.
    if (options.expectedVersion !== undefined) checkExpected(options.expectedVersion)
    // Spread into every event's metadata: a string or an array would become {"0": ...}.
    if (options.metadata !== undefined) checkObject('metadata', options.metadata)
    // The retry policy would refuse it too, but as 'retry.execute(signal)', an option the
    // caller never wrote.
    checkSignal('signal', options.signal)
    await this.#store.prepare()
    const idempotency = this.#idempotency
    if (idempotency === undefined || commandId === undefined) {
      const transactional =
        this.#outbox !== undefined ||
        this.#snapshots !== undefined ||
        this.#store.inlineProjections.length > 0
      const result = await this.#retrying(stream, options.signal, () =>
        transactional
          ? this.#store.db.transaction((tx) => this.#attempt(stream, command, options, tx))
          : this.#attempt(stream, command, options, undefined),
      )
      this.#store.announce(result.lastPosition)
      return { stream, ...result, replayed: false } as CommandResult<E, S>
    }
    const fingerprint = this.#fingerprintOf(stream, command)
    const scope = this.#scope
    // Whether the attempt that produced the result ran here. Reset per attempt: an attempt
    // whose commit failed rolled back, and the retry may then replay what a concurrent
    // duplicate recorded meanwhile, which this call must report as a replay.
    let ran = false
    const execute = async (context: { readonly tx: SqlExecutor }) => {
      const outcome = await this.#attempt(stream, command, options, context.tx)
      ran = true
      return outcome
    }
    const result = await this.#retrying(stream, options.signal, async () => {
      ran = false
      for (;;) {
        try {
          // A replay's state is its JSON form (typed Jsonified<S>); the handler's result is
          // typed S as before.
          return (await idempotency.run<RecordedResult<S>>(commandId, execute, {
            scope,
            fingerprint,
          })) as RecordedResult<S>
        } catch (error) {
          if (!(error instanceof IdempotencyMismatchError)) throw error
        }
        // Records written before commands were fingerprinted hold the stream alone: a repeat of
        // such a command (a client's retry across the upgrade) is still a repeat.
        try {
          return (await idempotency.run<RecordedResult<S>>(
            commandId,
            () => {
              throw keyFreed
            },
            { scope, fingerprint: stream },
          )) as RecordedResult<S>
        } catch (error) {
          // The record went away meanwhile (expired): the key is free, claim it again.
          if (error === keyFreed) continue
          if (error instanceof IdempotencyMismatchError) throw commandMismatch(commandId)
          throw error
        }
      }
    })
    if (ran) this.#store.announce(result.lastPosition)
    else checkReplayed(result, commandId)
    return { stream, ...result, replayed: !ran } as CommandResult<E, S>
  }

  /**
   * What an idempotent command is recorded as: a hash of its stream and its fingerprint text.
   * The `c1:` tag keeps it apart from the bare stream that older records hold.
   */
  #fingerprintOf(stream: string, command: C): string {
    let text: string
    if (this.#fingerprint !== undefined) {
      text = this.#fingerprint(command)
      if (typeof text !== 'string') {
        throw new InvalidOptionError('idempotency.fingerprint', 'to return a string', text)
      }
    } else {
      try {
        // An object always has JSON text: only a throw means there is none.
        text = canonicalJson({ command })!
      } catch {
        // A bigint (TypeError) or a cycle (RangeError): no JSON, so no fingerprint.
        throw new InvalidOptionError(
          'command',
          'a command JSON can represent, for idempotency (or give idempotency.fingerprint)',
          command,
        )
      }
    }
    return text === ''
      ? `c1:${sha256Hex(stream)}`
      : `c1:${sha256Hex(JSON.stringify([stream, text]))}`
  }

  /** Runs `fn` under the retry policy, publishing each retry with the error behind it. */
  #retrying<T>(stream: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    let lastError: unknown
    return this.#policy.execute(async ({ attempt }) => {
      if (attempt > 1) publish('command-retry', { stream, attempt, error: lastError })
      try {
        return await fn()
      } catch (error) {
        lastError = error
        throw error
      }
    }, signal)
  }

  async #attempt(
    stream: string,
    command: C,
    options: HandleOptions,
    tx: SqlExecutor | undefined,
  ): Promise<RecordedResult<S>> {
    const loaded = await this.#load(stream, tx ?? this.#store.db)
    const precondition = options.expectedVersion
    if (precondition !== undefined) {
      const info = await this.#store.streamInfo(stream, tx === undefined ? {} : { tx })
      const holds =
        precondition === 'any' ||
        (precondition === 'noStream' && (loaded.version === 0 || info.deleted)) ||
        (precondition === 'streamExists' && info.exists) ||
        precondition === loaded.version
      if (!holds) {
        const error = new WrongExpectedVersionError(
          stream,
          precondition,
          loaded.version,
          info.deleted,
        )
        this.#preconditionFailures.add(error)
        throw error
      }
    }
    const decided = await this.#decider.decide(command, loaded.state)
    if (!Array.isArray(decided)) {
      throw new InvalidOptionError('decider.decide', 'to return an array of events', decided)
    }
    if (decided.length === 0) {
      return { events: [], version: loaded.version, lastPosition: 0, state: loaded.state }
    }
    const extra =
      options.commandId === undefined && options.metadata === undefined
        ? undefined
        : {
            ...options.metadata,
            ...(options.commandId === undefined ? {} : { commandId: options.commandId }),
          }
    const events =
      extra === undefined
        ? decided
        : decided.map((event) => ({ ...event, metadata: { ...event.metadata, ...extra } }))
    // The handler announces the append itself once its transaction has committed.
    const appended = await this.#store.appendQuietly<E>(
      stream,
      events,
      { expectedVersion: loaded.version, ...(tx === undefined ? {} : { tx }) },
      false,
      // Without a transaction the append commits on its own: an evolve that throws on the
      // events after that would fail the command with its events stored, and every later load
      // of the stream. So fold them first, as they will be recorded; in a transaction, the
      // fold below rolls the append back instead.
      tx === undefined ? (drafts) => this.#fold(loaded.state, drafts) : undefined,
    )
    const state = this.#fold(loaded.state, appended.events)
    const snapshots = this.#snapshots
    if (
      snapshots !== undefined &&
      tx !== undefined &&
      Math.floor(appended.version / snapshots.every) > Math.floor(loaded.version / snapshots.every)
    ) {
      // A delete committed between the load and the append (PostgreSQL: the load locks nothing)
      // is not a conflict for the append, which recreates the stream at the deleted version, but
      // the state folded the events the delete hid: as a snapshot it would bring them back on
      // every load. The stream row is locked by the append now; if a delete moved its first
      // visible version, conflict, so the command is decided again on the stream as it is.
      const info = await tx.query<{ truncate_before: number | string }>(
        this.#store.statements.streamInfo,
        [stream],
      )
      if (Number(info[0]?.truncate_before ?? 1) !== loaded.truncateBefore) {
        throw new WrongExpectedVersionError(stream, loaded.version, loaded.version, true)
      }
      await this.#store.writeSnapshot(
        tx,
        stream,
        snapshots.name,
        appended.version,
        snapshots.serialize(state),
      )
    }
    // Last, once the events are in: integration events commit with them or not at all.
    if (this.#outbox !== undefined && tx !== undefined) {
      const integration: unknown = this.#outbox.map(appended.events, state, stream)
      // A lone event (which outbox.enqueue itself takes) has no length: it would be skipped,
      // the domain events committing without it. Refused, it rolls the whole command back.
      if (!Array.isArray(integration)) {
        throw new InvalidOptionError(
          'outbox.map',
          'to return an array of outbox events (empty for none)',
          integration,
        )
      }
      if (integration.length > 0) await this.#outbox.outbox.enqueue(tx, integration)
    }
    return {
      events: appended.events,
      version: appended.version,
      lastPosition: appended.lastPosition,
      state,
    }
  }
}

/**
 * `value`, returned by a callback that must be synchronous (`option`); a promise is refused with
 * `InvalidOptionError` ("to return `what`, not a promise"), its outcome dropped.
 */
function synchronous<T>(option: string, what: string, value: T): T {
  if (isDroppedPromise(value)) {
    throw new InvalidOptionError(option, `to return ${what}, not a promise`, value)
  }
  return value
}

const snapshotStateExpected =
  'a state JSON holds as is (plain objects and arrays, strings, finite numbers, booleans, null), or give snapshots.serialize and snapshots.deserialize'

/**
 * Refuses a snapshot state that `JSON.parse(JSON.stringify(state))` would not give back: an
 * object that is not a plain object or array (a Date, Map, Set, class instance, boxed value),
 * a `toJSON`, a function or symbol, a bigint, a non-finite number, an array hole or
 * `undefined` element (read back as null), a cycle. An `undefined` object field is allowed: JSON
 * leaves it out, and it reads back as absent, which a fold sees alike.
 */
function checkPlainState(state: unknown): void {
  const inPath = new Set<object>()
  const refuse = (path: string, what: string): never => {
    throw new InvalidOptionError(
      'snapshot state',
      `${snapshotStateExpected}; ${path} is ${what}`,
      state,
    )
  }
  const visit = (value: unknown, path: string): void => {
    switch (typeof value) {
      case 'string':
      case 'boolean':
        return
      case 'number':
        if (!Number.isFinite(value)) refuse(path, String(value))
        return
      case 'object':
        break
      default:
        refuse(path, `a ${typeof value}`)
    }
    if (value === null) return
    const object = value as object
    if (inPath.has(object)) refuse(path, 'a cycle')
    const proto = Object.getPrototypeOf(object) as unknown
    const isArray = Array.isArray(object)
    if (!isArray && proto !== Object.prototype && proto !== null) {
      refuse(
        path,
        `a ${(object.constructor as { name?: string } | undefined)?.name || 'non-plain object'}`,
      )
    }
    if (typeof (object as { toJSON?: unknown }).toJSON === 'function')
      refuse(path, 'an object with toJSON')
    inPath.add(object)
    if (isArray) {
      const array = object as unknown[]
      for (let i = 0; i < array.length; i++) {
        if (array[i] === undefined) refuse(`${path}[${i}]`, 'undefined (read back as null)')
        visit(array[i], `${path}[${i}]`)
      }
    } else {
      for (const [key, field] of Object.entries(object)) {
        if (field !== undefined) visit(field, `${path}.${key}`)
      }
    }
    inPath.delete(object)
  }
  visit(state, 'state')
}

/**
 * Refuses a replayed result that is JSON but not what the handler records (`null`, `{}`: a record
 * changed outside breakwater), which was returned as a result without events, version or
 * position. StoredDataError naming the command id, as for a result that is not JSON.
 */
function checkReplayed(result: unknown, commandId: string): void {
  const count = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0
  if (
    isObjectRecord(result) &&
    Array.isArray(result.events) &&
    count(result.version) &&
    count(result.lastPosition)
  )
    return
  throw new StoredDataError(
    recordPlace(commandId, 'response_body')(),
    `is not a command result (events, version, lastPosition): ${describeValue(result)}`,
  )
}

// Thrown by the claim of a key that was meant only to replay an older record, and found none.
const keyFreed = new Error('the command id is free')

function commandMismatch(commandId: string): IdempotencyMismatchError {
  const error = new IdempotencyMismatchError(commandId)
  error.message = `The command id ${JSON.stringify(commandId)} was already used for another command (or on another stream)`
  return error
}

/**
 * Creates a command handler for one decider over an event store. An unknown (misspelt) option,
 * here (also in `idempotency`, `outbox` and `snapshots`) or in `handle` and `load`, is refused
 * with `InvalidOptionError` (`INVALID_OPTION`).
 *
 * @example
 * ```ts
 * const carts = createCommandHandler(store, { decider: cart, idempotency: {} })
 * const { events, lastPosition } = await carts.handle('cart-42', { kind: 'add', sku: 'A1' }, {
 *   commandId: request.headers['idempotency-key'],
 * })
 * ```
 */
export function createCommandHandler<C, E extends EventShape, S>(
  store: EventStore,
  options: CommandHandlerOptions<C, E, S>,
): CommandHandler<C, E, S> {
  return new StoreCommandHandler(store, options)
}
