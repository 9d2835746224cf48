import { randomUUID } from 'node:crypto'
import { type Clock, storedTime } from '../core/clock.js'
import { describeValue, InvalidOptionError } from '../core/errors.js'
import { checkStoredName, exceedsBytes, jsonTextOf } from '../core/text.js'
import {
  checkClock,
  checkInteger,
  checkKnownOptions,
  checkObject,
  optionKeys,
} from '../core/validate.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import { parseStoredJson, StoredDataError, type StoredPlace } from '../stores/errors.js'
import type { SqlDialect, SqlDriver, SqlExecutor } from '../stores/index.js'
import {
  AppendBatcher,
  type AppendOutcome,
  appendAlone,
  type BatchedAppend,
} from './append-batcher.js'
import { checkOptionKeys } from './checks.js'
import { UpcastError, WrongExpectedVersionError } from './errors.js'
import { publish } from './events.js'
import { AppendNotifier } from './follower.js'
import {
  applyInline,
  ensureProjections,
  type ProjectionDefinition,
  validateProjection,
} from './projections.js'
import {
  type CqrsStatements,
  cqrsStatements,
  postgresAppend,
  sqliteInsertChunk,
  sqliteInsertEvents,
  sqliteLastPosition,
  sqliteStreamForAppend,
  sqliteUpsertStream,
} from './sql.js'
import { storedPosition } from './stored-position.js'
import { createSubscription, type Subscription, type SubscriptionOptions } from './subscription.js'
import type {
  AppendOptions,
  AppendResult,
  EventShape,
  ExpectedVersion,
  NewEvent,
  ReadAllOptions,
  ReadStreamOptions,
  ReadStreamResult,
  RecordedEvent,
  StreamInfo,
  StreamWriteOptions,
} from './types.js'
import { type Upcaster, UpcasterChain } from './upcasters.js'

/** Options of {@link createEventStore}. */
export interface EventStoreOptions {
  /**
   * Schema evolution steps, applied on every read. The highest version per type is also the
   * version new events of that type are written with.
   * @default []
   */
  readonly upcasters?: readonly Upcaster[] | undefined
  /**
   * Projections applied inside every append's transaction, so their read models are
   * consistent with the log at commit. Their tables are created on first use.
   * @default []
   */
  readonly inlineProjections?: readonly ProjectionDefinition[] | undefined
  /**
   * On PostgreSQL, wake subscriptions and projectors with `NOTIFY breakwater_events` (payload:
   * the last appended position) instead of leaving them to their next poll. Standalone appends
   * and command handlers notify right after their commit, coalesced, in a tiny transaction of
   * their own. An append inside the caller's transaction (`tx`) notifies inside it, because only
   * that is delivered at its commit; PostgreSQL serializes the commits of notifying
   * transactions (with their WAL flush), so such appends do not commit concurrently.
   * @default true
   */
  readonly notify?: boolean | undefined
  /**
   * How long a standalone append (or command) waits before notifying, so that appends close
   * together share one notification; 0 notifies right after each commit. Followers hear of an
   * append at most this much later.
   * @default 5
   */
  readonly notifyDelayMs?: number | undefined
  /**
   * On PostgreSQL, group commit: standalone appends (no `tx`, no inline projections) made while
   * an earlier one is still being written go out together, as one statement and one
   * transaction, so concurrent appends share one round trip and one WAL flush. Each append's
   * expectation is still checked on its own: a conflict fails that append only. A lone append
   * is sent at once, as without this option. One statement is in flight at a time: an append
   * waiting for a stream row that an open transaction holds (an append in a caller's `tx`)
   * holds back every later standalone append of the store until that transaction ends.
   * @default true
   */
  readonly groupCommit?: boolean | undefined
  /**
   * Source of `createdAt`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

const storeOptions = optionKeys<EventStoreOptions>({
  upcasters: true,
  inlineProjections: true,
  notify: true,
  notifyDelayMs: true,
  groupCommit: true,
  clock: true,
})
const appendOptions = optionKeys<AppendOptions>({ expectedVersion: true, tx: true })
/** The fields of an appended event; any other (`metdata`) is refused instead of dropped. */
const newEventFields = optionKeys<NewEvent>({
  type: true,
  data: true,
  id: true,
  metadata: true,
  schemaVersion: true,
})
const readStreamOptions = optionKeys<ReadStreamOptions>({
  from: true,
  direction: true,
  limit: true,
  tx: true,
})
const readAllOptions = optionKeys<ReadAllOptions>({ fromPosition: true, limit: true, tx: true })
const streamWriteOptions = optionKeys<StreamWriteOptions>({ expectedVersion: true, tx: true })
/** The known keys of the options of reads that take only a transaction (`{ tx }`). */
export const txOptions = optionKeys<{ readonly tx?: SqlExecutor }>({ tx: true })

// The key of EventStore's phantom field: a type only (`declare`), so no value is emitted and
// no store has the field.
declare const storedEvents: unique symbol

/**
 * An event-sourced log over a breakwater SQL driver (SQLite or PostgreSQL): streams with
 * optimistic concurrency, a gap-safe global order, subscriptions and snapshots. Run
 * {@link migrateCqrs} once first.
 *
 * `E` is the union of the events the application stores (see `Event`): appends must be
 * members of it, and reads, subscriptions and results are typed by it, so `switch
 * (event.type)` narrows `event.data`. Each of those methods also takes a narrower union of its
 * own (`readStream<CartEvent>('cart-1')`). The default, {@link EventShape}, leaves `data`
 * `unknown`. The type is the application's word, not a check: a read hands back what the log
 * holds (after upcasting), whatever `E` says, so keep `E` in step with the upcasters and with
 * every writer of the log.
 *
 * `EventStore<A>` goes where `EventStore<B>` is taken only when `A` is part of `B` (its reads
 * stay within `B`): a store of other events, of more events, or an untyped store (it claims
 * nothing) is refused there. Any store goes where an untyped `EventStore` is taken.
 */
export interface EventStore<E extends EventShape = EventShape> {
  /**
   * Never present: a type-only field that makes the store covariant in `E`. TypeScript does not
   * compare the bounds of the methods' type parameters (`F extends E`), so without it every
   * `EventStore<A>` was assignable to every `EventStore<B>`.
   */
  readonly [storedEvents]?: E | undefined
  /** The database the store lives in. */
  readonly db: SqlDriver
  /** Its dialect. */
  readonly dialect: SqlDialect
  /**
   * Appends events to a stream, atomically, checking `expectedVersion` first. On PostgreSQL a
   * standalone append is one statement (one round trip, one transaction).
   *
   * On a typed store the events are checked against `E` (or the narrower `F` given), as object
   * literals are: a wrong or missing field of `data`, an extra one, or a type outside the union
   * is a compile error. On an untyped store `F` is inferred from the events, as before.
   * @throws WrongExpectedVersionError when the stream is not in the expected state
   */
  append<F extends E = E>(
    stream: string,
    // Typed, F is not inferred from the events (it would take the literals' own types, extra
    // fields and all, and check nothing): they are checked against it.
    events: readonly NewEvent<EventShape extends E ? F : NoInfer<F>>[],
    options?: AppendOptions,
  ): Promise<AppendResult<F>>
  /** Reads a stream's events (forwards or backwards from a version) and its current version. */
  readStream<F extends E = E>(
    stream: string,
    options?: ReadStreamOptions,
  ): Promise<ReadStreamResult<F>>
  /**
   * Reads the log in global position order from `fromPosition` (inclusive). Never returns an
   * event while an event at a smaller position may still commit: a reader that continues from
   * the last position it got never skips one (see `docs/cqrs.md`).
   */
  readAll<F extends E = E>(options?: ReadAllOptions): Promise<RecordedEvent<F>[]>
  /** The largest position `readAll` can return now (0 for an empty log). */
  headPosition(options?: { readonly tx?: SqlExecutor | undefined }): Promise<number>
  /** A stream's version, flags and metadata. */
  streamInfo(
    stream: string,
    options?: { readonly tx?: SqlExecutor | undefined },
  ): Promise<StreamInfo>
  /** Replaces a stream's metadata (a JSON object); creates an empty stream row if needed. */
  setStreamMetadata(
    stream: string,
    metadata: Readonly<Record<string, unknown>>,
    options?: StreamWriteOptions,
  ): Promise<void>
  /**
   * Soft-deletes a stream: its events disappear from `readStream` (they stay in `readAll`, the
   * immutable log), its snapshots are dropped, and it counts as "no stream" for expectations.
   * A later append recreates it: versions continue after the last one, and the events from
   * before the delete stay hidden. Deleting a missing or deleted stream does nothing.
   */
  deleteStream(stream: string, options?: StreamWriteOptions): Promise<void>
  /**
   * Follows the log: catches up from the stored checkpoint (or `fromPosition`), then goes live
   * (LISTEN/NOTIFY on PostgreSQL, polling on SQLite). Delivery is at least once; use a
   * projector for exactly-once read-model updates. The subscription runs in breakwater's own
   * async context, not the caller's: a deadline (`withDeadline`) or an open transaction around
   * `subscribe()` does not reach the handler.
   */
  subscribe<F extends E = E>(
    handler: (event: RecordedEvent<F>) => Promise<void> | void,
    options?: SubscriptionOptions,
  ): Subscription
}

const emptyMetadata: Readonly<Record<string, unknown>> = Object.freeze({})

/** A row of breakwater_events as selected by the statements in sql.ts. */
export interface EventRow {
  position: number | string
  stream_id: string
  stream_version: number | string
  event_id: string
  type: string
  schema_version: number | string
  data: string
  metadata: string | null
  created_at: number | string
}

interface StreamRow {
  version: number | string
  deleted: boolean | number
  truncate_before: number | string
  metadata: string | null
}

const expectedKinds = { any: 0, noStream: 1, streamExists: 2 } as const

// Group-commit statements in flight at once (each holds one pooled connection).
const groupCommitInFlight = 1

/** @internal Validates an expected version (appends, deletes, metadata, command handlers). */
export function checkExpected(value: unknown): ExpectedVersion {
  if (value === 'any' || value === 'noStream' || value === 'streamExists') return value
  // Safe integers only: above 2^53 a version is no longer exact, and a value such as 1e21
  // would reach PostgreSQL as "1e+21" and fail there with a bare driver error.
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value
  const integers =
    typeof value === 'number' && value > Number.MAX_SAFE_INTEGER
      ? 'an integer in [0, 2^53 - 1]'
      : 'an integer >= 0'
  throw new InvalidOptionError(
    'expectedVersion',
    `"any", "noStream", "streamExists" or ${integers}`,
    value,
  )
}

/**
 * The expectation of a store write: `'any'` only when the option is left out (undefined). Null
 * is refused by {@link checkExpected}: `expectedVersion: loaded?.version ?? null` would
 * otherwise write with no concurrency check at all.
 */
function expectedOf(value: unknown): ExpectedVersion {
  return value === undefined ? 'any' : checkExpected(value)
}

/**
 * @internal Checks a stream, event type or id, checkpoint or snapshot name:
 * {@link checkStoredName}. A lone surrogate would otherwise be sent as U+FFFD, so on PostgreSQL
 * `'s\ud800'` and `'s\udc00'` would silently name one stream.
 */
export const checkName: (option: string, value: unknown) => string = checkStoredName

/**
 * Whether `JSON.parse(JSON.stringify(value))` gives `value` back as is, for a value that
 * stringified without error (so no cycle, bigint or non-finite number): only plain objects and
 * arrays of strings, numbers, booleans and null. An `undefined` object field counts as plain
 * (left out by JSON, it reads back as absent); a Date, Map, Set, class instance, `toJSON`,
 * function or `undefined` array element does not.
 */
function isPlainJson(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) {
    return typeof value !== 'function' && typeof value !== 'symbol'
  }
  if (Array.isArray(value)) {
    for (const item of value) if (item === undefined || !isPlainJson(item)) return false
    return true
  }
  const proto = Object.getPrototypeOf(value) as unknown
  if (proto !== Object.prototype && proto !== null) return false
  if (typeof (value as { toJSON?: unknown }).toJSON === 'function') return false
  for (const key in value) {
    const field = (value as Record<string, unknown>)[key]
    if (field !== undefined && !isPlainJson(field)) return false
  }
  return true
}

function checkStream(stream: unknown): string {
  return checkName('stream', stream)
}

/**
 * @internal The longest stream id or checkpoint name, in UTF-8 bytes. They are index keys
 * (the stream id of two, one of them with the version), and PostgreSQL refuses an index entry
 * over about 2,700 bytes with a bare "index row size" error, while SQLite stores any length: the
 * cap keeps both databases alike and the error clear. Snapshot names share a key with the stream
 * id, hence their own smaller cap.
 */
export const maxKeyBytes = 2048

/** @internal The longest snapshot name, in UTF-8 bytes (see {@link maxKeyBytes}). */
export const maxSnapshotNameBytes = 256

/**
 * @internal {@link checkName} for a name stored as an index key: also at most `maxBytes` UTF-8
 * bytes. Checked where such a key is created (appends, stream metadata, checkpoints); reads
 * accept any name, since a stream stored before the cap (SQLite) must stay readable.
 */
export function checkKey(option: string, value: unknown, maxBytes = maxKeyBytes): string {
  const name = checkName(option, value)
  if (exceedsBytes(name, maxBytes)) {
    throw new InvalidOptionError(option, `a name of at most ${maxBytes} UTF-8 bytes`, name)
  }
  return name
}

/**
 * @internal Refuses a `tx` option that cannot run statements (`{}`, a string, a number): it
 * failed later with a bare TypeError (`tx.query is not a function`) that named neither the
 * option nor what it takes. Only the two methods the store calls are looked at, so any
 * executor passes: a transaction, the application's own (`fromPgClient`), and for reads the
 * driver.
 */
export function checkTx(tx: unknown): SqlExecutor | undefined {
  if (
    tx !== undefined &&
    (typeof tx !== 'object' ||
      tx === null ||
      typeof (tx as Partial<SqlExecutor>).query !== 'function' ||
      typeof (tx as Partial<SqlExecutor>).execute !== 'function')
  ) {
    throw new InvalidOptionError(
      'tx',
      "a transaction (the tx given to db.transaction's callback)",
      tx,
    )
  }
  return tx as SqlExecutor | undefined
}

/**
 * Refuses the driver itself (it has `close`) as the `tx` of a write. Each of its statements
 * commits on its own: on SQLite an append's read of the stream row, its bump and its insert,
 * and on PostgreSQL a delete's or metadata write's `FOR UPDATE` and the write after it, would
 * no longer be one step, so two writers would both pass the expectation and the stream row
 * could end up ahead of the events. Leave `tx` out to write on its own.
 */
function checkWriteTx(tx: SqlExecutor | undefined): void {
  checkTx(tx)
  if (tx !== undefined && typeof (tx as Partial<SqlDriver>).close === 'function') {
    throw new InvalidOptionError(
      'tx',
      "a transaction (db.transaction's tx, or the application's own), not the driver (leave tx out to write on its own)",
      tx,
    )
  }
}

/** Whether a stream at `version` (deleted or not) satisfies `expected`. */
export function expectationHolds(
  expected: ExpectedVersion,
  version: number,
  deleted: boolean,
): boolean {
  if (expected === 'any') return true
  if (expected === 'noStream') return version === 0 || deleted
  if (expected === 'streamExists') return version > 0 && !deleted
  return version === expected
}

const everyType = (): boolean => true

/** @internal A page of the log as a follower of some event types reads it. */
export interface FollowerPage {
  /** The wanted events before the first that cannot be upcast, upcast. */
  readonly events: RecordedEvent[]
  /** How many rows were consumed, wanted or not (all of the page's, unless `failure`). */
  readonly read: number
  /** The position of the last row consumed; undefined when none was. */
  readonly position: number | undefined
  /** Why the row after the consumed ones could not be upcast (or read at all). */
  readonly failure: UpcastError | StoredDataError | undefined
}

interface PendingAppend<E extends EventShape> {
  readonly stream: string
  readonly events: readonly NewEvent<E>[]
  readonly expected: ExpectedVersion
  readonly prepared: PreparedEvents
  readonly createdAt: number
  readonly notifyInTx: boolean
}

interface PreparedEvents {
  readonly ids: string[]
  readonly types: string[]
  readonly versions: number[]
  readonly data: string[]
  readonly metadata: (string | null)[]
  readonly metadataObjects: Readonly<Record<string, unknown>>[]
  /** The events' data as reads return it (the caller's own object when JSON keeps it as is). */
  readonly values: unknown[]
  /** For an event that names an older schema version: its data and version as reads see them. */
  readonly upcast: ([unknown, number] | undefined)[]
}

/**
 * The appended events as recorded: `version` is the stream's version after them, `positions`
 * theirs (0 for each while they are not written yet).
 */
function recordedEvents<E extends EventShape>(
  stream: string,
  events: readonly NewEvent<E>[],
  prepared: PreparedEvents,
  createdAt: number,
  version: number,
  positions?: readonly number[],
): RecordedEvent<E>[] {
  const count = events.length
  const recorded: RecordedEvent<E>[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const event = events[i]!
    const [data, schemaVersion] = prepared.upcast[i] ?? [prepared.values[i], prepared.versions[i]!]
    recorded[i] = {
      type: event.type,
      data,
      id: prepared.ids[i]!,
      stream,
      version: version - count + 1 + i,
      position: positions === undefined ? 0 : positions[i]!,
      schemaVersion,
      metadata: prepared.metadataObjects[i]!,
      createdAt,
    } as RecordedEvent<E>
  }
  return recorded
}

/** @internal The implementation behind {@link EventStore}; other cqrs modules use its extras. */
export class EventStoreImpl implements EventStore {
  readonly db: SqlDriver
  readonly dialect: SqlDialect
  readonly clock: Clock
  readonly upcasters: UpcasterChain
  readonly statements: CqrsStatements
  readonly inlineProjections: readonly ProjectionDefinition[]
  readonly notify: boolean
  #prepared: Promise<void> | undefined
  #preparedDone = false
  readonly #notifier: AppendNotifier | undefined
  readonly #batcher: AppendBatcher | undefined

  constructor(db: SqlDriver, options: EventStoreOptions) {
    checkSqlDriver('db', db, 'a breakwater SqlDriver (SQLite or PostgreSQL)')
    checkObject('options', options)
    // A misspelt option (`notfy`) was dropped without a word: its default was used instead.
    checkOptionKeys('options', options, storeOptions)
    this.db = db
    this.dialect = db.dialect
    this.statements = cqrsStatements[db.dialect]
    this.clock = checkClock('clock', options.clock)
    this.upcasters = new UpcasterChain(options.upcasters ?? [])
    const inline = options.inlineProjections ?? []
    if (!Array.isArray(inline)) {
      throw new InvalidOptionError('inlineProjections', 'an array of projections', inline)
    }
    const names = new Set<string>()
    inline.forEach((p, i) => {
      const { name } = validateProjection(`inlineProjections[${i}]`, p)
      // A name is one registration row: a second projection of that name would never get its
      // tables created, and every append would fail on them.
      if (names.has(name)) {
        throw new InvalidOptionError(
          `inlineProjections[${i}].name`,
          'a name no other inline projection has',
          name,
        )
      }
      names.add(name)
    })
    this.inlineProjections = inline
    const notify = options.notify ?? true
    if (typeof notify !== 'boolean') throw new InvalidOptionError('notify', 'a boolean', notify)
    this.notify = notify
    const notifyDelayMs = checkInteger('notifyDelayMs', options.notifyDelayMs ?? 5, 0, 60_000)
    this.#notifier =
      notify && db.dialect === 'postgres'
        ? new AppendNotifier(db, this.clock, notifyDelayMs)
        : undefined
    const groupCommit = options.groupCommit ?? true
    if (typeof groupCommit !== 'boolean') {
      throw new InvalidOptionError('groupCommit', 'a boolean', groupCommit)
    }
    this.#batcher =
      groupCommit && db.dialect === 'postgres'
        ? new AppendBatcher(db, groupCommitInFlight)
        : undefined
  }

  /**
   * Creates the inline projections' tables (once per store object). Command handlers call it
   * before opening their transaction; an append without `tx` calls it itself.
   */
  prepare(): Promise<void> {
    if (this.inlineProjections.length === 0) return Promise.resolve()
    this.#prepared ??= ensureProjections(this.db, this.inlineProjections, this.clock, true).then(
      () => {
        this.#preparedDone = true
      },
      (error: unknown) => {
        this.#prepared = undefined
        throw error
      },
    )
    return this.#prepared
  }

  async append<E extends EventShape>(
    stream: string,
    events: readonly NewEvent<E>[],
    options: AppendOptions = {},
  ): Promise<AppendResult<E>> {
    checkObject('options', options)
    // A misspelt expectedVersion appended at any version: no concurrency check at all.
    checkOptionKeys('options', options, appendOptions)
    // In the caller's transaction the only way to wake followers at its commit is NOTIFY in
    // that transaction; on its own the append announces itself after committing.
    const result = await this.appendQuietly(stream, events, options, options.tx !== undefined)
    if (options.tx === undefined) this.announce(result.lastPosition)
    return result
  }

  /**
   * @internal Appends without the post-commit notification (`notifyInTx`: NOTIFY inside the
   * transaction instead). Callers that own the transaction call {@link announce} after it
   * commits. With an exact expected version, `beforeWrite` sees the events as they will be
   * recorded (their position, assigned by the write, is 0) before anything is written: if it
   * throws, the append fails and writes nothing.
   */
  async appendQuietly<E extends EventShape>(
    stream: string,
    events: readonly NewEvent<E>[],
    options: AppendOptions,
    notifyInTx: boolean,
    beforeWrite?: (drafts: readonly RecordedEvent<E>[]) => void,
  ): Promise<AppendResult<E>> {
    checkKey('stream', stream)
    if (!Array.isArray(events) || events.length === 0) {
      throw new InvalidOptionError('events', 'a non-empty array of events', events)
    }
    const expected = expectedOf(options.expectedVersion)
    checkWriteTx(options.tx)
    const prepared = this.#prepare(stream, events)
    const createdAt = storedTime(this.clock)
    if (beforeWrite !== undefined && typeof expected === 'number') {
      beforeWrite(recordedEvents(stream, events, prepared, createdAt, expected + events.length))
    }
    const tx = options.tx
    const append = { stream, events, expected, prepared, createdAt, notifyInTx }
    if (this.inlineProjections.length > 0) {
      if (tx === undefined) {
        await this.prepare()
        return this.db.transaction((t) => this.#appendInline(t, append))
      }
      if (!this.#preparedDone) await ensureProjections(tx, this.inlineProjections, this.clock, true)
      return this.#appendInline(tx, append)
    }
    return this.#appendRaw(tx, append)
  }

  /** @internal Wakes followers (PostgreSQL) after events up to `position` committed. */
  announce(position: number): void {
    if (this.#notifier !== undefined && position > 0) this.#notifier.appended(position)
  }

  async #appendInline<E extends EventShape>(
    tx: SqlExecutor,
    append: PendingAppend<E>,
  ): Promise<AppendResult<E>> {
    const result = await this.#appendRaw(tx, append)
    await applyInline(tx, this.inlineProjections, result.events)
    return result
  }

  /** Appends through `tx` (or on its own when undefined), without inline projections. */
  async #appendRaw<E extends EventShape>(
    tx: SqlExecutor | undefined,
    append: PendingAppend<E>,
  ): Promise<AppendResult<E>> {
    const { stream, events, expected, prepared, createdAt } = append
    let version: number
    let positions: readonly number[]
    if (this.dialect === 'postgres' && tx === undefined && !append.notifyInTx) {
      const batched: BatchedAppend = {
        stream,
        kind: typeof expected === 'number' ? 3 : expectedKinds[expected],
        expected: typeof expected === 'number' ? expected : 0,
        ids: prepared.ids,
        types: prepared.types,
        versions: prepared.versions,
        data: prepared.data,
        metadata: prepared.metadata,
        createdAt,
      }
      const outcome: AppendOutcome =
        this.#batcher === undefined
          ? await appendAlone(this.db, batched)
          : await this.#batcher.append(batched)
      if (!outcome.ok || outcome.positions === null) {
        refuse(stream, expected, outcome.version, outcome.deleted)
      }
      version = outcome.version
      positions = outcome.positions
    } else if (this.dialect === 'postgres') {
      const kind = typeof expected === 'number' ? 3 : expectedKinds[expected]
      const rows = await (tx ?? this.db).query<{
        r_ok: boolean
        r_version: number | string
        r_positions: (number | string)[] | null
        r_deleted: boolean
      }>(postgresAppend, [
        stream,
        kind,
        typeof expected === 'number' ? expected : 0,
        prepared.ids,
        prepared.types,
        prepared.versions,
        prepared.data,
        prepared.metadata,
        createdAt,
        append.notifyInTx && this.notify,
      ])
      const row = rows[0]
      if (row === undefined) throw new Error('breakwater_append returned no row')
      if (!row.r_ok || row.r_positions === null) {
        refuse(stream, expected, Number(row.r_version), row.r_deleted === true)
      }
      version = Number(row.r_version)
      positions = row.r_positions.map(Number)
    } else {
      const run = async (t: SqlExecutor): Promise<[number, number[]]> =>
        this.#appendSqlite(t, stream, expected, prepared, createdAt)
      ;[version, positions] = tx === undefined ? await this.db.transaction(run) : await run(tx)
    }
    const count = events.length
    const recorded = recordedEvents(stream, events, prepared, createdAt, version, positions)
    const firstPosition = positions[0]!
    const lastPosition = positions[count - 1]!
    publish('appended', { stream, count, version, lastPosition })
    return { version, firstPosition, lastPosition, events: recorded }
  }

  // SQLite: the caller's transaction holds the database's write lock (BEGIN IMMEDIATE), so
  // reading the stream row and MAX(position) and then writing cannot interleave with another
  // writer, in this process or any other.
  async #appendSqlite(
    tx: SqlExecutor,
    stream: string,
    expected: ExpectedVersion,
    prepared: PreparedEvents,
    createdAt: number,
  ): Promise<[number, number[]]> {
    const rows = await tx.query<{ version: number; deleted: number }>(sqliteStreamForAppend, [
      stream,
    ])
    const current = rows[0]
    const currentVersion = current === undefined ? 0 : streamVersion(stream, current.version)
    const deleted = current !== undefined && streamDeleted(stream, current.deleted)
    if (!expectationHolds(expected, currentVersion, deleted)) {
      publish('conflict', { stream, expected, actual: currentVersion })
      throw new WrongExpectedVersionError(stream, expected, currentVersion, deleted)
    }
    const count = prepared.ids.length
    const version = currentVersion + count
    await tx.execute(sqliteUpsertStream, [stream, version, createdAt])
    const last = await tx.query<{ position: number }>(sqliteLastPosition)
    const firstPosition = Number(last[0]?.position ?? 0) + 1
    for (let start = 0; start < count; start += sqliteInsertChunk) {
      const end = Math.min(count, start + sqliteInsertChunk)
      const params: unknown[] = []
      for (let i = start; i < end; i++) {
        params.push(
          firstPosition + i,
          stream,
          currentVersion + i + 1,
          prepared.ids[i],
          prepared.types[i],
          prepared.versions[i],
          prepared.data[i],
          prepared.metadata[i],
          createdAt,
        )
      }
      await tx.execute(sqliteInsertEvents(end - start), params)
    }
    const positions = new Array<number>(count)
    for (let i = 0; i < count; i++) positions[i] = firstPosition + i
    return [version, positions]
  }

  #prepare(stream: string, events: readonly NewEvent[]): PreparedEvents {
    const n = events.length
    const prepared: PreparedEvents = {
      ids: new Array(n),
      types: new Array(n),
      versions: new Array(n),
      data: new Array(n),
      metadata: new Array(n),
      metadataObjects: new Array(n),
      values: new Array(n),
      upcast: new Array(n),
    }
    for (let i = 0; i < n; i++) {
      const event = events[i]
      if (typeof event !== 'object' || event === null) {
        throw new InvalidOptionError(`events[${i}]`, 'an event object', event)
      }
      // checkKnownOptions, not checkOptionKeys: `data: null` is JSON null, a value.
      checkKnownOptions(`events[${i}]`, event, newEventFields)
      checkName(`events[${i}].type`, event.type)
      // Only a missing id is generated: null is refused, as for every option.
      const id = checkName(`events[${i}].id`, event.id === undefined ? randomUUID() : event.id)
      const data = jsonTextOf(`events[${i}].data`, event.data)
      const metadata = event.metadata
      // An array would be stored and read back as the event's "metadata object".
      if (metadata !== undefined) checkObject(`events[${i}].metadata`, metadata)
      const version =
        event.schemaVersion === undefined
          ? this.upcasters.currentVersion(event.type)
          : checkInteger(`events[${i}].schemaVersion`, event.schemaVersion, 1, 2_147_483_647)
      prepared.ids[i] = id
      prepared.types[i] = event.type
      prepared.versions[i] = version
      prepared.data[i] = data
      // Handed on (the append's result, inline projections, a command's evolve) as every read
      // returns it: a Date, class instance or toJSON would otherwise reach them as the caller's object
      // while the log holds its JSON. Plain data is the same either way and is not copied.
      prepared.values[i] = isPlainJson(event.data) ? event.data : JSON.parse(data)
      // Own keys, not Object.keys: metadata of symbol keys only was stored as null, unchecked.
      const hasMetadata = metadata !== undefined && Reflect.ownKeys(metadata).length > 0
      const metadataText = hasMetadata
        ? jsonTextOf(`events[${i}].metadata`, metadata, 'a JSON-serializable object')
        : null
      prepared.metadata[i] = metadataText
      prepared.metadataObjects[i] =
        metadataText === null || metadata === undefined
          ? emptyMetadata
          : isPlainJson(metadata)
            ? metadata
            : (JSON.parse(metadataText) as Readonly<Record<string, unknown>>)
      // An event that names an older schema version is handed on (to inline projections,
      // command handlers' evolve and the caller) as every read returns it: upcast, from the
      // stored text as a read would, so an upcaster never sees the caller's own object. Done
      // before anything is written: an event the upcasters cannot read would stop every
      // reader of the log, so the append fails instead.
      if (!this.upcasters.empty && version < this.upcasters.currentVersion(event.type)) {
        prepared.upcast[i] = this.upcasters.upcast(
          event.type,
          version,
          JSON.parse(data),
          prepared.metadataObjects[i]!,
          { stream, position: 0, eventId: id },
        )
      }
    }
    return prepared
  }

  async readStream<E extends EventShape = EventShape>(
    stream: string,
    options: ReadStreamOptions = {},
  ): Promise<ReadStreamResult<E>> {
    checkStream(stream)
    checkObject('options', options)
    checkOptionKeys('options', options, readStreamOptions)
    const direction = options.direction ?? 'forwards'
    if (direction !== 'forwards' && direction !== 'backwards') {
      throw new InvalidOptionError('direction', '"forwards" or "backwards"', direction)
    }
    const from =
      options.from === undefined
        ? direction === 'forwards'
          ? 1
          : Number.MAX_SAFE_INTEGER
        : checkInteger('from', options.from, 0)
    const limit =
      options.limit === undefined
        ? this.statements.noLimit
        : checkInteger('limit', options.limit, 0)
    const { truncateBefore: _, ...result } = await this.#readStream<E>(
      checkTx(options.tx) ?? this.db,
      stream,
      direction,
      from,
      limit,
    )
    return result
  }

  /** @internal Reads forwards from `from`, also returning the first visible version. */
  readStreamFrom(
    stream: string,
    from: number,
    executor: SqlExecutor,
  ): Promise<ReadStreamResult & { truncateBefore: number }> {
    return this.#readStream(executor, stream, 'forwards', from, this.statements.noLimit)
  }

  async #readStream<E extends EventShape>(
    executor: SqlExecutor,
    stream: string,
    direction: 'forwards' | 'backwards',
    from: number,
    limit: number | null,
  ): Promise<ReadStreamResult<E> & { truncateBefore: number }> {
    const fast =
      direction === 'forwards'
        ? this.statements.readStreamForwardsFast
        : this.statements.readStreamBackwardsFast
    const sql =
      direction === 'forwards'
        ? this.statements.readStreamForwards
        : this.statements.readStreamBackwards
    type Row = {
      current_version: number | string
      stream_deleted: boolean | number
      truncate_before: number | string
    } & { [K in keyof EventRow]: EventRow[K] | null }
    if (limit === 0) {
      // LIMIT 0 would also drop the row the JOIN form adds for the stream itself, reporting an
      // existing stream as never written: read the stream row alone (no events to agree with).
      const info = await executor.query<StreamRow>(this.statements.streamInfo, [stream])
      const { version, exists, deleted } = streamInfoOf(stream, info[0])
      const truncateBefore =
        info[0] === undefined
          ? 1
          : streamVersion(stream, info[0].truncate_before, 'truncate_before')
      return { events: [], version, exists, deleted, truncateBefore }
    }
    let rows: Row[] = []
    if (fast !== undefined) rows = await executor.query<Row>(fast, [stream, from, limit])
    // No event in range (or SQLite): the JOIN form reports the stream row on its own.
    if (rows.length === 0) rows = await executor.query<Row>(sql, [stream, from, limit])
    const first = rows[0]
    if (first === undefined) {
      return { events: [], version: 0, exists: false, deleted: false, truncateBefore: 1 }
    }
    const version = streamVersion(stream, first.current_version)
    const deleted = streamDeleted(stream, first.stream_deleted)
    // SQLite compares text above every number: a text truncate_before hid every event.
    const truncateBefore = streamVersion(stream, first.truncate_before, 'truncate_before')
    const events: RecordedEvent<E>[] = []
    for (const row of rows) {
      if (row.position !== null) events.push(this.toRecorded<E>(row as EventRow))
    }
    return {
      events,
      version,
      exists: version > 0 && !deleted,
      deleted,
      truncateBefore,
    }
  }

  async readAll<E extends EventShape = EventShape>(
    options: ReadAllOptions = {},
  ): Promise<RecordedEvent<E>[]> {
    // Here, not in #readAllRows: the followers' own reads are built by breakwater.
    checkObject('options', options)
    checkOptionKeys('options', options, readAllOptions)
    const rows = await this.#readAllRows(options)
    const events: RecordedEvent<E>[] = new Array(rows.length)
    for (let i = 0; i < rows.length; i++) events[i] = this.toRecorded<E>(rows[i]!)
    return events
  }

  /**
   * @internal {@link readAll} for followers (subscriptions, projectors): the events before the
   * first one that cannot be upcast, and that failure. Failing the whole page would hold back
   * the events before it too, and leave the follower's checkpoint up to a page short of it.
   */
  async readAllUntilFailure(
    options: ReadAllOptions,
  ): Promise<{ events: RecordedEvent[]; failure: UpcastError | StoredDataError | undefined }> {
    const { events, failure } = await this.readAllOfTypes(options, everyType)
    return { events, failure }
  }

  /**
   * @internal {@link readAllUntilFailure} for a reader of some event types only (a projector):
   * rows of other types are neither parsed nor upcast, so an upcaster failing on them does not
   * stop the reader. `read` counts the rows consumed (before the failure, if any), and
   * `position` is the last of them: the reader's checkpoint may move there.
   */
  async readAllOfTypes(
    options: ReadAllOptions,
    wants: (type: string) => boolean,
  ): Promise<FollowerPage> {
    return this.pageOfTypes(await this.#readAllRows(options), wants)
  }

  /** @internal {@link readAllOfTypes} over rows already read. */
  pageOfTypes(rows: readonly EventRow[], wants: (type: string) => boolean): FollowerPage {
    const events: RecordedEvent[] = []
    let position: number | undefined
    let read = 0
    for (const row of rows) {
      if (wants(row.type)) {
        try {
          events.push(this.toRecorded(row))
        } catch (error) {
          if (!(error instanceof UpcastError || error instanceof StoredDataError)) throw error
          return { events, read, position, failure: error }
        }
      }
      read++
      position = Number(row.position)
    }
    return { events, read, position, failure: undefined }
  }

  async #readAllRows(options: ReadAllOptions): Promise<EventRow[]> {
    checkObject('options', options)
    const from = checkInteger('fromPosition', options.fromPosition ?? 0, 0)
    // 0 reads no events, as readStream's 0 reads none (followers never ask for 0).
    const limit = checkInteger('limit', options.limit ?? 1000, 0)
    const executor = checkTx(options.tx) ?? this.db
    const params: unknown[] = [from, limit]
    const watermarkSql = this.statements.readAllWatermark
    if (watermarkSql !== undefined) {
      // Two statements on purpose: the events' snapshot must be taken after the watermark.
      const watermark = await executor.query<{ watermark: number | string }>(watermarkSql)
      params.push(Number(watermark[0]!.watermark))
    }
    return executor.query<EventRow>(this.statements.readAll, params)
  }

  /** @internal Turns a row into an event, upcasting its data. */
  toRecorded<E extends EventShape>(row: EventRow): RecordedEvent<E> {
    const metadata =
      row.metadata === null
        ? emptyMetadata
        : (eventJson(row, 'metadata') as Readonly<Record<string, unknown>>)
    let data: unknown = eventJson(row, 'data')
    let schemaVersion = Number(row.schema_version)
    if (!this.upcasters.empty) {
      ;[data, schemaVersion] = this.upcasters.upcast(row.type, schemaVersion, data, metadata, {
        stream: row.stream_id,
        position: Number(row.position),
        eventId: row.event_id,
      })
    }
    return {
      type: row.type,
      data,
      id: row.event_id,
      stream: row.stream_id,
      version: Number(row.stream_version),
      position: Number(row.position),
      schemaVersion,
      metadata,
      createdAt: Number(row.created_at),
    } as RecordedEvent<E>
  }

  async headPosition(options: { readonly tx?: SqlExecutor | undefined } = {}): Promise<number> {
    checkObject('options', options)
    checkOptionKeys('options', options, txOptions)
    const rows = await (checkTx(options.tx) ?? this.db).query<{ position: number | string }>(
      this.statements.headPosition,
    )
    return Number(rows[0]?.position ?? 0)
  }

  /** @internal When the first final event after `position` was appended, if any. */
  async firstCreatedAfter(position: number): Promise<number | undefined> {
    const rows = await this.db.query<{ created_at: number | string | null }>(
      this.statements.firstAfter,
      [position],
    )
    const created = rows[0]?.created_at
    return created === undefined || created === null ? undefined : Number(created)
  }

  async streamInfo(
    stream: string,
    options: { readonly tx?: SqlExecutor | undefined } = {},
  ): Promise<StreamInfo> {
    checkStream(stream)
    checkObject('options', options)
    checkOptionKeys('options', options, txOptions)
    const rows = await (checkTx(options.tx) ?? this.db).query<StreamRow>(
      this.statements.streamInfo,
      [stream],
    )
    return streamInfoOf(stream, rows[0])
  }

  async setStreamMetadata(
    stream: string,
    metadata: Readonly<Record<string, unknown>>,
    options: StreamWriteOptions = {},
  ): Promise<void> {
    // It creates the stream's row when there is none.
    checkKey('stream', stream)
    checkObject('metadata', metadata)
    // A bare version (setStreamMetadata(s, m, 3)) would otherwise be ignored: written at 'any'.
    checkObject('options', options)
    checkOptionKeys('options', options, streamWriteOptions)
    const expected = expectedOf(options.expectedVersion)
    const text = jsonTextOf('metadata', metadata, 'a JSON-serializable object')
    checkWriteTx(options.tx)
    await this.#inTransaction(options.tx, async (tx) => {
      const now = storedTime(this.clock)
      const { found } = await this.#checkForWrite(tx, stream, expected)
      // With no row to lock (FOR UPDATE), an append (or another metadata write) may create the
      // stream meanwhile: an upsert would then wait for it and overwrite the metadata of a
      // stream its expectation no longer holds for. Insert only if still absent; otherwise the
      // row is committed by now, so check again, under its lock, and update.
      if (!found) {
        const { rowCount } = await tx.execute(this.statements.insertMetadata, [stream, text, now])
        if (rowCount === 1) return
        await this.#checkForWrite(tx, stream, expected)
      }
      await tx.execute(this.statements.upsertMetadata, [stream, text, false, now])
    })
  }

  async deleteStream(stream: string, options: StreamWriteOptions = {}): Promise<void> {
    checkStream(stream)
    // A bare version (deleteStream(s, 3)) would otherwise be ignored: deleted at 'any'.
    checkObject('options', options)
    checkOptionKeys('options', options, streamWriteOptions)
    const expected = expectedOf(options.expectedVersion)
    checkWriteTx(options.tx)
    await this.#inTransaction(options.tx, async (tx) => {
      const { info } = await this.#checkForWrite(tx, stream, expected)
      if (info.version === 0 || info.deleted) return
      await tx.execute(this.statements.markDeleted, [stream, true, storedTime(this.clock)])
      await tx.execute(this.statements.deleteSnapshots, [stream])
    })
  }

  /**
   * Checks `expected` against the stream's row, locking it; `found` is false when there is no
   * row (and so no lock). A conflict is reported as append reports one: the `conflict`
   * diagnostic, then `WrongExpectedVersionError`.
   */
  async #checkForWrite(
    tx: SqlExecutor,
    stream: string,
    expected: ExpectedVersion,
  ): Promise<{ info: StreamInfo; found: boolean }> {
    // FOR UPDATE on PostgreSQL: the check and the write see the same version.
    const rows = await tx.query<StreamRow>(this.statements.streamInfoForUpdate, [stream])
    const info = streamInfoOf(stream, rows[0])
    if (!expectationHolds(expected, info.version, info.deleted)) {
      publish('conflict', { stream, expected, actual: info.version })
      throw new WrongExpectedVersionError(stream, expected, info.version, info.deleted)
    }
    return { info, found: rows[0] !== undefined }
  }

  #inTransaction<T>(tx: SqlExecutor | undefined, fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return tx === undefined ? this.db.transaction(fn) : fn(tx)
  }

  /** @internal Reads a snapshot's version and state text; undefined when none. */
  async readSnapshotText(
    executor: SqlExecutor,
    stream: string,
    name: string,
  ): Promise<{ version: number; state: string } | undefined> {
    const rows = await executor.query<{ version: number | string; state: string }>(
      this.statements.readSnapshot,
      [stream, name],
    )
    const row = rows[0]
    if (row === undefined) return undefined
    // A fraction (SQLite) made the load fold events the state already holds (from 2.5 + 1).
    const version = storedPosition(
      row.version,
      () => ({
        table: 'breakwater_snapshots',
        row: `snapshot ${JSON.stringify(name)} of stream ${JSON.stringify(stream)}`,
        column: 'version',
      }),
      'a version',
    )
    return { version, state: row.state }
  }

  /** @internal Writes (or advances) a snapshot in `tx`. */
  async writeSnapshot(
    tx: SqlExecutor,
    stream: string,
    name: string,
    version: number,
    state: string,
  ): Promise<void> {
    await tx.execute(this.statements.writeSnapshot, [
      stream,
      name,
      version,
      state,
      storedTime(this.clock),
    ])
  }

  subscribe<E extends EventShape = EventShape>(
    handler: (event: RecordedEvent<E>) => Promise<void> | void,
    options: SubscriptionOptions = {},
  ): Subscription {
    return createSubscription(
      this,
      handler as (event: RecordedEvent) => Promise<void> | void,
      options,
    )
  }
}

/**
 * An event's JSON column, parsed. Text that is not JSON (a row changed outside breakwater)
 * fails with StoredDataError naming the event, which followers stop right before, as for an
 * UpcastError; a bare SyntaxError named nothing and failed the follower's whole page.
 */
function eventJson(row: EventRow, column: 'data' | 'metadata'): unknown {
  return parseStoredJson(row[column], () => ({
    table: 'breakwater_events',
    row: `event ${JSON.stringify(row.event_id)} (stream ${JSON.stringify(row.stream_id)}, position ${Number(row.position)})`,
    column,
  }))
}

/** Where a stream's `column` is stored: its row in breakwater_streams. */
const streamPlace = (stream: string, column: string) => (): StoredPlace => ({
  table: 'breakwater_streams',
  row: `stream ${JSON.stringify(stream)}`,
  column,
})

/**
 * A stream row's `version` (or `truncate_before`), which every append's concurrency check
 * compares. Changed outside breakwater and read with Number(), text (SQLite) failed every
 * append with a bare NOT NULL error, and a fraction or a negative number let an append at "any"
 * write events at versions 2.5, or -2, -1, 0 (after which "noStream" and expectedVersion 0
 * held on a stream with events). StoredDataError naming the stream instead; nothing written.
 */
function streamVersion(stream: string, value: unknown, column = 'version'): number {
  return storedPosition(value, streamPlace(stream, column), 'a version')
}

/**
 * A stream row's `deleted` flag: a BOOLEAN (PostgreSQL) or 0 or 1 (SQLite, which would keep
 * 'false' as text: read as true, "noStream" held on a stream with events).
 */
function streamDeleted(stream: string, value: unknown): boolean {
  // 0n / 1n: a better-sqlite3 Database with safe integers, through fromKysely.
  if (value === false || value === 0 || value === 0n) return false
  if (value === true || value === 1 || value === 1n) return true
  throw new StoredDataError(
    streamPlace(stream, 'deleted')(),
    `is not a flag (0 or 1): ${describeValue(value)}`,
  )
}

/**
 * A PostgreSQL append that was refused: a version conflict, or a negative stream version (a row
 * changed outside breakwater), which the append SQL never bumps.
 */
function refuse(
  stream: string,
  expected: ExpectedVersion,
  actual: number,
  deleted: boolean,
): never {
  streamVersion(stream, actual)
  publish('conflict', { stream, expected, actual })
  throw new WrongExpectedVersionError(stream, expected, actual, deleted)
}

function streamInfoOf(stream: string, row: StreamRow | undefined): StreamInfo {
  if (row === undefined)
    return { version: 0, exists: false, deleted: false, metadata: emptyMetadata }
  const version = streamVersion(stream, row.version)
  const deleted = streamDeleted(stream, row.deleted)
  return {
    version,
    exists: version > 0 && !deleted,
    deleted,
    metadata:
      row.metadata === null
        ? emptyMetadata
        : // Not JSON (a row changed outside breakwater): StoredDataError naming the stream.
          (parseStoredJson(row.metadata, () => ({
            table: 'breakwater_streams',
            row: `stream ${JSON.stringify(stream)}`,
            column: 'metadata',
          })) as Readonly<Record<string, unknown>>),
  }
}

/**
 * Creates an event store over a breakwater driver. Construction does no I/O; run
 * {@link migrateCqrs} once before the first use. An unknown (misspelt) option, here or in the
 * options of any of the store's methods (`append`, `readStream`, `subscribe`, ...), is refused
 * with `InvalidOptionError` (`INVALID_OPTION`) naming it; so is an appended event's field other
 * than `type`, `data`, `id`, `metadata` and `schemaVersion` (`events[1].metdata`), which would
 * otherwise be dropped.
 *
 * @example
 * ```ts
 * const db = await openDatabase('sqlite:./.breakwater/app.db')
 * await migrateCqrs(db)
 * const store = createEventStore(db)
 * await store.append('order-1', [{ type: 'order-placed', data: { total: 42 } }], {
 *   expectedVersion: 'noStream',
 * })
 * const { events, version } = await store.readStream('order-1')
 * ```
 *
 * Typed by the application's events (`E`, see {@link EventStore}), appends are checked and
 * reads narrow:
 *
 * ```ts
 * type OrderEvent =
 *   | Event<'order-placed', { total: number }>
 *   | Event<'order-cancelled', { reason: string }>
 * const orders = createEventStore<OrderEvent>(db)
 * await orders.append('order-1', [{ type: 'order-placed', data: { total: '42' } }]) // compile error
 * ```
 */
export function createEventStore<E extends EventShape = EventShape>(
  db: SqlDriver,
  options: EventStoreOptions = {},
): EventStore<E> {
  return new EventStoreImpl(db, options)
}

/** @internal The implementation of a store made by {@link createEventStore}. */
export function internalsOf(store: EventStore, option = 'store'): EventStoreImpl {
  if (!(store instanceof EventStoreImpl)) {
    throw new InvalidOptionError(option, 'an event store made by createEventStore', store)
  }
  return store
}
