import { BreakwaterError } from '../core/errors.js'
import { isTransientFailure } from '../policies/classify.js'
import type { ExpectedVersion } from './types.js'

/**
 * An append (or delete, or metadata write) found the stream in another state than its
 * `expectedVersion` demanded; nothing was written (code `WRONG_EXPECTED_VERSION`). Not
 * retryable as is: the same write would fail again. Re-read the stream, decide again and
 * append at the new version (command handlers do this on their own).
 *
 * @example
 * ```ts
 * try { await store.append('order-1', events, { expectedVersion: 3 }) }
 * catch (error) {
 *   if (error instanceof WrongExpectedVersionError) console.log(error.expected, error.actual)
 * }
 * ```
 */
export class WrongExpectedVersionError extends BreakwaterError {
  /** The stream written to. */
  readonly stream: string
  /** What the caller expected. */
  readonly expected: ExpectedVersion
  /** The stream's actual version (0: never written; a deleted stream keeps its last version). */
  readonly actual: number
  /** Whether the stream is soft-deleted. */
  readonly deleted: boolean

  constructor(stream: string, expected: ExpectedVersion, actual: number, deleted: boolean) {
    super(
      'WRONG_EXPECTED_VERSION',
      `Stream "${stream}" was expected at ${describeExpected(expected)} but is at version ${actual}${deleted ? ' (deleted)' : ''}`,
    )
    this.stream = stream
    this.expected = expected
    this.actual = actual
    this.deleted = deleted
  }
}

function describeExpected(expected: ExpectedVersion): string {
  return typeof expected === 'number' ? `version ${expected}` : `"${expected}"`
}

/**
 * A projection rebuild found, when it came to swap its tables in, that a later rebuild of the
 * same projection had started (code `REBUILD_SUPERSEDED`): the later one owns the projection's
 * fresh tables now, so this one swapped nothing in. Not retryable: the later rebuild finishes
 * the work.
 *
 * @example
 * ```ts
 * try { await projector.rebuild() }
 * catch (error) {
 *   if (!(error instanceof RebuildSupersededError)) throw error // another instance rebuilds
 * }
 * ```
 */
export class RebuildSupersededError extends BreakwaterError {
  /** The projection. */
  readonly projection: string

  /** @param cause What the rebuild's own work failed with, when it found out that way. */
  constructor(projection: string, cause?: unknown) {
    super(
      'REBUILD_SUPERSEDED',
      `projection "${projection}": this rebuild was superseded by another one that started later`,
      cause === undefined ? {} : { cause },
    )
    this.projection = projection
  }
}

/**
 * A projection's first run could not create one of its tables (code `PROJECTION_SETUP_FAILED`):
 * `cause` holds the database's error. Under a role without CREATE on the schema the database
 * says only `permission denied for schema public`; this names the projection and the table,
 * and on 42501 what the role needs. Errors callers retry on (a serialization failure, a busy
 * database) are not wrapped.
 */
export class ProjectionSetupError extends BreakwaterError {
  /** The projection. */
  readonly projection: string
  /** The table (its name in the projection's `tables`) whose definition failed. */
  readonly table: string

  /** @param cause The database's error. */
  constructor(projection: string, table: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause)
    // 42501 insufficient_privilege.
    const hint =
      (cause as { code?: unknown } | null)?.code === '42501'
        ? ". A projection's first run creates its tables: the role needs CREATE on the schema, or a role that has it (the one that migrates) runs the projection once and grants this role SELECT, INSERT, UPDATE and DELETE on the tables it creates"
        : ''
    super(
      'PROJECTION_SETUP_FAILED',
      `projection "${projection}": creating its table "${table}" on its first run failed: ${reason}${hint}`,
      { cause },
    )
    this.projection = projection
    this.table = table
  }
}

/**
 * A projection rebuild's swap did not get through within `maxSwapRounds` rounds (code
 * `REBUILD_CONTENDED`): on PostgreSQL an inline projection's swap kept finding one of its live
 * tables held by appends, or a lock the swap waited for was not granted within
 * `swapLockTimeoutMs` (a lock timeout, 55P03: another session held it; `waitedFor` says which
 * lock), or the swap kept failing with a deadlock (40P01) or serialization failure (40001),
 * whichever used up the rounds (`cause` holds the last such failure). Nothing was swapped in:
 * queries keep reading the old tables, and the fresh ones were dropped (as by any rebuild that
 * fails). Retryable: rebuild again when appends are calmer (or the long transaction has ended),
 * or allow more rounds or a longer `swapLockTimeoutMs`.
 *
 * @example
 * ```ts
 * try { await projector.rebuild() }
 * catch (error) {
 *   if (error instanceof RebuildContendedError) console.log(`gave up after ${error.rounds} rounds`, error.waitedFor)
 * }
 * ```
 */
export class RebuildContendedError extends BreakwaterError {
  /** The projection. */
  readonly projection: string
  /** The rounds the swap took (its `maxSwapRounds`). */
  readonly rounds: number
  /**
   * The lock whose wait ran out in the last round (`swapLockTimeoutMs`), as in `table "orders"
   * (to rename it)`; undefined when the last round ended otherwise.
   */
  readonly waitedFor: string | undefined

  /**
   * @param cause The deadlock, serialization failure or lock timeout that ended the last round,
   *   if one did.
   * @param lockWait What the last round waited for when its lock timeout ran out, and that timeout.
   */
  constructor(
    projection: string,
    rounds: number,
    cause?: unknown,
    lockWait?: { readonly waitedFor: string; readonly timeoutMs: number },
  ) {
    super(
      'REBUILD_CONTENDED',
      `projection "${projection}": the rebuild's swap did not get through in ${rounds} rounds (maxSwapRounds)${
        lockWait !== undefined
          ? `: the last waited swapLockTimeoutMs (${lockWait.timeoutMs} ms) for a lock on ${lockWait.waitedFor} and did not get it (another session held a conflicting lock: a long transaction on that table)`
          : cause === undefined
            ? ': a live table was held by another transaction every time'
            : `: ${messageOf(cause)}`
      }; nothing was swapped in`,
      cause === undefined ? { retryable: true } : { cause, retryable: true },
    )
    this.projection = projection
    this.rounds = rounds
    this.waitedFor = lockWait?.waitedFor
  }
}

/**
 * A foreign key that keeps a projection from being rebuilt (see {@link RebuildBlockedError}).
 */
export interface RebuildBlockingForeignKey {
  /**
   * The table the key is on: a table outside the projection, or (`ownTable`) one of the
   * projection's own, by its logical name.
   */
  readonly table: string
  /**
   * The constraint: its name on PostgreSQL; on SQLite, which does not report constraint names,
   * `FOREIGN KEY (<columns>)`.
   */
  readonly constraint: string
  /** Whether `table` is one of the projection's own tables (its definition names the other). */
  readonly ownTable: boolean
}

/**
 * A projection rebuild found that its swap could not soundly replace one of the projection's
 * tables (code `REBUILD_BLOCKED`). The swap renames the live table away, renames the rebuilt one
 * into its place and drops the old one. Two things depend on the old table itself rather than its
 * name. Views (PostgreSQL; `views`): PostgreSQL refuses the DROP while a view depends on the
 * table, and a view cannot be moved soundly (it may carry grants, owners and views of its own).
 * Foreign keys (`foreignKeys`) that reference it: PostgreSQL binds a key to the table, and SQLite
 * with `foreign_keys` on rewrites it on the rename, so the key would stay with the old table:
 * PostgreSQL refuses the DROP, and SQLite's DROP would delete the referencing rows (ON DELETE
 * CASCADE) or fail, and leave the key naming a dropped table. A key from a table outside the
 * projection has to be dropped before the rebuild and added again after it; a key of one of
 * the projection's tables to another has to be written with the table definition's `tables`
 * argument, so that the rebuilt copy references the rebuilt table. Found before the fill, the
 * rebuild did no work; found at the swap (created during the fill), the swap rolled back:
 * either way nothing was swapped in, and the live tables, views and keys are as they were.
 * Not retryable as is.
 *
 * @example
 * ```ts
 * try { await projector.rebuild() }
 * catch (error) {
 *   if (error instanceof RebuildBlockedError) console.log(error.table, error.views, error.foreignKeys)
 * }
 * ```
 */
export class RebuildBlockedError extends BreakwaterError {
  /** The projection. */
  readonly projection: string
  /** The projection's table the views or foreign keys depend on. */
  readonly table: string
  /** The dependent views, as PostgreSQL names them (schema-qualified outside the search path). */
  readonly views: readonly string[]
  /** The foreign keys that reference the table and could not follow it to the rebuilt one. */
  readonly foreignKeys: readonly RebuildBlockingForeignKey[]

  constructor(
    projection: string,
    table: string,
    views: readonly string[],
    foreignKeys: readonly RebuildBlockingForeignKey[] = [],
  ) {
    super(
      'REBUILD_BLOCKED',
      `projection "${projection}": cannot rebuild: ${blockage(table, views, foreignKeys)}. Nothing was swapped in`,
    )
    this.projection = projection
    this.table = table
    this.views = views
    this.foreignKeys = foreignKeys
  }
}

/** What keeps `table` from being swapped, and what to do about it, for the error's message. */
function blockage(
  table: string,
  views: readonly string[],
  foreignKeys: readonly RebuildBlockingForeignKey[],
): string {
  const reasons: string[] = []
  if (views.length > 0) {
    reasons.push(
      `table "${table}" has dependent view(s) ${views.join(', ')}, which the swap would have to drop with the old table; drop them before the rebuild and create them again after it`,
    )
  }
  const keys = (ownTable: boolean): string[] =>
    foreignKeys
      .filter((key) => key.ownTable === ownTable)
      .map((key) => `${key.constraint} of table "${key.table}"`)
  const outside = keys(false)
  if (outside.length > 0) {
    reasons.push(
      `table "${table}" is referenced by foreign key(s) ${outside.join(', ')}, which would stay with the old table the swap drops; drop them before the rebuild and add them again after it`,
    )
  }
  const own = keys(true)
  if (own.length > 0) {
    reasons.push(
      `the projection's foreign key(s) ${own.join(', ')} would reference the old table "${table}", which the swap drops, instead of its rebuilt copy; write the REFERENCES clause with the table definition's third argument, \${tables('${table}')}`,
    )
  }
  return reasons.join('; ')
}

/**
 * An event could not be brought to the current schema version of its type (code
 * `UPCAST_FAILED`): an upcaster threw on it (`cause` holds what it threw), or no chain of
 * upcasters leads from its stored version to the current one (the oldest registered upcaster
 * reads a later version). Every read that meets the event fails with this error rather than
 * hand the event on in a shape its readers do not expect; subscriptions and projectors report
 * it to `onError` and retry it, never moving past it. Not retryable as is: register (or fix)
 * the missing upcaster. An append of such an event fails the same way and writes nothing.
 *
 * @example
 * ```ts
 * try { await store.readStream('order-1') }
 * catch (error) {
 *   if (error instanceof UpcastError) log.error({ stream: error.stream, at: error.position }, error.message)
 * }
 * ```
 */
export class UpcastError extends BreakwaterError {
  /** The event's type. */
  readonly type: string
  /** The schema version it is stored at. */
  readonly schemaVersion: number
  /** The type's current schema version, which reads must return. */
  readonly currentVersion: number
  /** The event's stream. */
  readonly stream: string
  /** Its position in the log (0 for an event of an append, which has none yet). */
  readonly position: number
  /** Its id. */
  readonly eventId: string

  /**
   * @param event Which event, where.
   * @param cause What the upcaster of `fromVersion` threw; undefined when no upcaster reads
   *   the event's version.
   */
  constructor(
    event: {
      readonly type: string
      readonly schemaVersion: number
      readonly currentVersion: number
      readonly stream: string
      readonly position: number
      readonly eventId: string
    },
    cause?: { readonly error: unknown; readonly fromVersion: number },
  ) {
    const where =
      event.position > 0
        ? `stream "${event.stream}", position ${event.position}`
        : `stream "${event.stream}", not yet written`
    const what = `event "${event.type}" v${event.schemaVersion} (${where}, id "${event.eventId}")`
    super(
      'UPCAST_FAILED',
      cause === undefined
        ? `Cannot upcast ${what} to v${event.currentVersion}: no upcaster reads "${event.type}" v${event.schemaVersion}`
        : `Upcasting ${what} to v${event.currentVersion} failed in the upcaster of v${cause.fromVersion}: ${messageOf(cause.error)}`,
      cause === undefined ? {} : { cause: cause.error },
    )
    this.type = event.type
    this.schemaVersion = event.schemaVersion
    this.currentVersion = event.currentVersion
    this.stream = event.stream
    this.position = event.position
    this.eventId = event.eventId
  }
}

/** Which event a projection's `apply` or a subscription's handler failed on. */
interface FailedEvent {
  readonly position: number
  readonly stream: string
  readonly type: string
  readonly id: string
}

/**
 * What the failures of an application's code on an event have in common: the event, named in
 * the message and in fields, and the application's error as `cause`. See
 * {@link ProjectionFailedError} and {@link SubscriptionHandlerError}.
 */
export abstract class EventHandlingError extends BreakwaterError {
  /** The event's position in the log; 0 for an event that was never written (see `inline`). */
  readonly position: number
  /** The event's stream. */
  readonly stream: string
  /** The event's type. */
  readonly type: string
  /** The event's id. */
  readonly eventId: string

  /**
   * @param who What failed, starting the message (`projection "orders"`).
   * @param what What it did (`apply failed`).
   * @param event The event it failed on.
   * @param cause What the application's code threw.
   */
  constructor(
    code: 'PROJECTION_FAILED' | 'SUBSCRIPTION_HANDLER_FAILED',
    who: string,
    what: string,
    event: FailedEvent,
    cause: unknown,
  ) {
    // Position 0: an event of an append that failed (an inline projection's), never in the log.
    const where = event.position > 0 ? `position ${event.position}` : 'not written'
    super(
      code,
      `${who}: ${what} on event "${event.type}" (stream "${event.stream}", ${where}, id "${event.id}"): ${messageOf(cause)}`,
      // As retryable as what the code threw: a lock timeout, deadlock or lost connection is
      // about the moment, not the event, so retry() around catchUp() may try again; a bug is not.
      { cause, retryable: isTransientFailure(cause) },
    )
    this.position = event.position
    this.stream = event.stream
    this.type = event.type
    this.eventId = event.id
  }
}

/**
 * A projection's `apply` threw on an event (code `PROJECTION_FAILED`): `cause` holds what it
 * threw (also a database error of a statement it ran), and the error names the projection and
 * the event (`position`, `stream`, `type`, `eventId`). A projector's batch rolled back:
 * `catchUp` rejects with it, `start()`'s loop reports it to `onError` (and the
 * `projection-error` channel) and retries the event after its delay, never moving past it; the
 * events before it in the batch are applied and checkpointed first. A `rebuild()` (`rebuild`
 * true) rejects with it, nothing swapped in. An inline projection's (`inline` true) is what
 * the append (or command) rejects with: its transaction rolled back, so the event is not in
 * the log and `position` is 0 (the position it was given in that transaction is not reported:
 * it names no event, or on SQLite a later append's). A busy database or a serialization
 * failure in an inline `apply` is not wrapped: it is the transaction's, and a command handler
 * retries it. `retryable` (read by `classifyFailure`, so by `retry()` around `catchUp()`) only
 * when `cause` is transient (a lock timeout, a deadlock, a serialization failure, a lost
 * connection): otherwise the event fails until the projection (or the data it depends on) is
 * fixed.
 *
 * @example
 * ```ts
 * const projector = createProjector(store, orderHistory, {
 *   onError: (error) => {
 *     if (error instanceof ProjectionFailedError) log.error({ at: error.position, id: error.eventId }, error.message)
 *   },
 * })
 * ```
 */
export class ProjectionFailedError extends EventHandlingError {
  /** The projection. */
  readonly projection: string
  /** Whether a `rebuild()` (filling fresh tables) failed, rather than a live batch. */
  readonly rebuild: boolean
  /** Whether an inline projection failed, in an append's transaction (which rolled back). */
  readonly inline: boolean

  /**
   * @param event The event `apply` threw on.
   * @param cause What it threw.
   */
  constructor(
    projection: string,
    event: FailedEvent,
    cause: unknown,
    rebuild: boolean,
    inline = false,
  ) {
    super(
      'PROJECTION_FAILED',
      `projection "${projection}"${rebuild ? ' (rebuild)' : inline ? ' (inline)' : ''}`,
      'apply failed',
      event,
      cause,
    )
    this.projection = projection
    this.rebuild = rebuild
    this.inline = inline
  }
}

/**
 * A subscription's handler threw on an event (code `SUBSCRIPTION_HANDLER_FAILED`): `cause`
 * holds what it threw, and the error names the subscription and the event (`position`,
 * `stream`, `type`, `eventId`). Reported to the subscription's `onError`; the events before it
 * are handled (and checkpointed), and the event is delivered again after the retry delay,
 * never skipped.
 *
 * @example
 * ```ts
 * store.subscribe(handler, {
 *   name: 'mailer',
 *   onError: (error) => {
 *     if (error instanceof SubscriptionHandlerError) log.error({ at: error.position }, error.message)
 *   },
 * })
 * ```
 */
export class SubscriptionHandlerError extends EventHandlingError {
  /** The subscription's checkpoint name (undefined for one without). */
  readonly subscription: string | undefined

  /**
   * @param event The event the handler threw on.
   * @param cause What it threw.
   */
  constructor(subscription: string | undefined, event: FailedEvent, cause: unknown) {
    super(
      'SUBSCRIPTION_HANDLER_FAILED',
      subscription === undefined ? 'subscription' : `subscription "${subscription}"`,
      'the handler failed',
      event,
      cause,
    )
    this.subscription = subscription
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
