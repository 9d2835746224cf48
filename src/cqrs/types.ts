import type { SqlExecutor } from '../stores/index.js'

/**
 * The domain part of an event: its type and its JSON-serializable data. It is what every event
 * type of the cqrs API must extend, and the default of their type parameters: left out, an
 * event's `data` is `unknown`. Give a union of {@link Event}s instead to have appends checked
 * and reads narrowed by `type`.
 */
export interface EventShape {
  /** The event's type, e.g. `order-placed`. */
  readonly type: string
  /** The body; stored as JSON text. */
  readonly data: unknown
}

/**
 * One kind of event: a `type` tag and the `data` it carries. A union of these is an event type
 * the cqrs API narrows on: `switch (event.type)` gives each case its own `data`. The defaults
 * are {@link EventShape}'s untyped form. `Data` is what the application writes and reads back
 * as JSON: a `Date` in it reads back as a string, so declare the form JSON gives back.
 *
 * @example
 * ```ts
 * type CartEvent =
 *   | Event<'item-added', { sku: string; quantity: number }>
 *   | Event<'checked-out', { at: number }>
 * const store = createEventStore<CartEvent>(db)
 * const { events } = await store.readStream('cart-42')
 * for (const event of events) {
 *   if (event.type === 'item-added') console.log(event.data.sku) // data: { sku; quantity }
 * }
 * ```
 */
export type Event<Type extends string = string, Data = unknown> = {
  /** The event's type, e.g. `order-placed`. */
  readonly type: Type
  /** The body; stored as JSON text. */
  readonly data: Data
}

/** Extra fields of an event to append, besides its type and data. */
export interface NewEventFields {
  /**
   * The event's id (e.g. used as the outbox message id downstream).
   * @default a random UUID
   */
  readonly id?: string | undefined
  /**
   * Free-form JSON metadata: correlation id, causation id, user.
   * @default {}
   */
  readonly metadata?: Readonly<Record<string, unknown>> | undefined
  /**
   * The schema version of `data`.
   * @default the current version of the type, as the event store's upcasters define it (1 when
   * the type has none)
   */
  readonly schemaVersion?: number | undefined
}

/**
 * An event handed to `append`. With a union of event shapes, `NewEvent<OrderEvent>` keeps the
 * union discriminated by `type`.
 */
export type NewEvent<E extends EventShape = EventShape> = E & NewEventFields

/** What the event store adds to an event when it records it. */
export interface EventEnvelope {
  /** The event's id. */
  readonly id: string
  /** The stream it belongs to. */
  readonly stream: string
  /** Its version in the stream: 1 for the stream's first event. */
  readonly version: number
  /**
   * Its global position: unique, increasing in the order readers of `readAll` see events.
   * Positions may have holes (appends that rolled back), never reorderings.
   */
  readonly position: number
  /** The schema version of `data` as read (after upcasting: the current one). */
  readonly schemaVersion: number
  /** The event's metadata (an empty object when none was given). */
  readonly metadata: Readonly<Record<string, unknown>>
  /** When it was appended, in epoch milliseconds (the appending store's clock). */
  readonly createdAt: number
}

/** An event as read back from the store: the domain shape plus its {@link EventEnvelope}. */
export type RecordedEvent<E extends EventShape = EventShape> = E & EventEnvelope

/**
 * The optimistic concurrency check of an append:
 * - `'any'`: no check.
 * - `'noStream'`: the stream has no events (never written, or soft-deleted).
 * - `'streamExists'`: the stream has events and is not deleted.
 * - a number `n`: the stream's version is exactly `n` (0: never written). A soft-deleted stream
 *   keeps the version of its last event, so appending at that version also recreates it.
 */
export type ExpectedVersion = 'any' | 'noStream' | 'streamExists' | number

/** Options of `EventStore.append`. */
export interface AppendOptions {
  /**
   * The concurrency check; a mismatch throws `WrongExpectedVersionError` and appends nothing.
   * `null` is refused (`INVALID_OPTION`), not read as `'any'`.
   * @default 'any'
   */
  readonly expectedVersion?: ExpectedVersion | undefined
  /**
   * Append inside this transaction (a breakwater `tx`, or the application's own through
   * `fromPgClient`/`fromBetterSqlite`/`fromKysely`): the events commit with the caller's other
   * writes. Without it the append commits on its own. The driver itself is refused
   * (`InvalidOptionError`): each of its statements would commit alone, the expectation check
   * apart from the write.
   *
   * Keep such transactions short: until it ends, followers of `readAll` cannot read past its
   * events (see `docs/cqrs.md`, "global positions").
   */
  readonly tx?: SqlExecutor | undefined
}

/** What `EventStore.append` returns. */
export interface AppendResult<E extends EventShape = EventShape> {
  /** The stream's version after the append (the version of its last event). */
  readonly version: number
  /**
   * The global position of the first appended event. On PostgreSQL, events of concurrent
   * appends may take positions between this append's own.
   */
  readonly firstPosition: number
  /** The global position of the last appended event (what `waitFor` takes). */
  readonly lastPosition: number
  /** The appended events as recorded. */
  readonly events: readonly RecordedEvent<E>[]
}

/** Options of `EventStore.readStream`. */
export interface ReadStreamOptions {
  /**
   * The first version to read (inclusive).
   * @default 1 forwards, the last version backwards
   */
  readonly from?: number | undefined
  /**
   * Reading order.
   * @default 'forwards'
   */
  readonly direction?: 'forwards' | 'backwards' | undefined
  /**
   * The most events to return; 0 returns none, only the stream's version and flags.
   * @default unlimited
   */
  readonly limit?: number | undefined
  /** Read through this executor (e.g. inside a transaction). */
  readonly tx?: SqlExecutor | undefined
}

/** What `EventStore.readStream` returns. Events, version and flags come from one snapshot. */
export interface ReadStreamResult<E extends EventShape = EventShape> {
  /** The events read, in the requested direction. */
  readonly events: readonly RecordedEvent<E>[]
  /**
   * The stream's current version: the version of its last event, 0 if it never had one. A
   * soft-deleted stream keeps its last version (its events are hidden).
   */
  readonly version: number
  /** Whether the stream has events and is not deleted. */
  readonly exists: boolean
  /** Whether the stream is soft-deleted (and not appended to since). */
  readonly deleted: boolean
}

/** Options of `EventStore.readAll`. */
export interface ReadAllOptions {
  /**
   * The first global position to return (inclusive); 0 reads from the start.
   * @default 0
   */
  readonly fromPosition?: number | undefined
  /**
   * The most events to return; 0 returns none (as `readStream`'s does).
   * @default 1000
   */
  readonly limit?: number | undefined
  /** Read through this executor (e.g. inside the projector's transaction). */
  readonly tx?: SqlExecutor | undefined
}

/** A stream's state, without its events. */
export interface StreamInfo {
  /** The stream's version (0 when it never had an event). */
  readonly version: number
  /** Whether it has events and is not deleted. */
  readonly exists: boolean
  /** Whether it is soft-deleted. */
  readonly deleted: boolean
  /** Its metadata (an empty object when none was set). */
  readonly metadata: Readonly<Record<string, unknown>>
}

/** Options of `EventStore.deleteStream` and `EventStore.setStreamMetadata`. */
export interface StreamWriteOptions {
  /**
   * The concurrency check against the stream's version. `null` is refused, not read as `'any'`.
   * @default 'any'
   */
  readonly expectedVersion?: ExpectedVersion | undefined
  /** Run inside this transaction (not the driver itself: refused, see `AppendOptions.tx`). */
  readonly tx?: SqlExecutor | undefined
}
