import type { IncomingMessage } from '../brokers/types.js'
import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkStoredKey, maxStoredNameBytes } from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { diagnosticsChannel } from '../policies/events.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from '../stores/index.js'
import { PoisonMessageError, unstorableIdReason } from './errors.js'
import { inboxStatements } from './sql.js'
import { wholeMsClock } from './time.js'
import { checkTransactionExecutor } from './transaction.js'

/** Options of {@link createInbox}. */
export interface InboxOptions {
  /**
   * The consumer's name: message ids are deduplicated per consumer, so two services (or two
   * handlers) sharing a database each handle every message once. A non-empty string of at most
   * 256 UTF-8 bytes without NUL characters or lone surrogates (it is part of an index key).
   */
  readonly consumer: string
  /**
   * Source of `received_at` (used by `pruneInbox`).
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * Called with each message refused for good as poison (see {@link PoisonMessageError}):
   * nothing was written, `fn` did not run, and the message is acknowledged. Log or keep it
   * here; it is also published on the diagnostics channel `breakwater:outbox:message-refused`.
   * A listener that throws does not change the outcome.
   * @default ignore (the channel still reports it)
   */
  readonly onRefused?:
    | ((message: { readonly id: string }, error: PoisonMessageError) => void)
    | undefined
}

/** The outcome of {@link Inbox.handle}. */
export type InboxResult<T> =
  | { readonly duplicate: false; readonly refused?: undefined; readonly value: T }
  /** The message was handled before: `fn` did not run. */
  | { readonly duplicate: true; readonly refused?: undefined }
  /**
   * The message can never be handled (its id cannot be stored, see
   * {@link PoisonMessageError}): nothing was written and `fn` did not run. Acknowledge it.
   */
  | { readonly duplicate: false; readonly refused: PoisonMessageError }

/** Consumer-side deduplication; see {@link createInbox}. */
export interface Inbox {
  /** The consumer name. */
  readonly consumer: string
  /**
   * Records `(consumer, message.id)` in `tx` and runs `fn` in the same transaction. A message
   * already recorded is a redelivery: `fn` does not run and the result says `duplicate`, so
   * the caller acknowledges it. If `fn` throws, the transaction rolls back, the record with
   * it, and the redelivered message runs `fn` again (so let the error reach the transaction:
   * one that catches it and commits keeps the record without the effect). `tx` must be a
   * transaction (the driver itself is refused with `InvalidOptionError`: the record would
   * commit on its own), as is a message without a string id or an `fn` that is not a
   * function, before anything is written. No statement is sent synchronously within the call
   * (`fn` runs after an await, so the record must be in the same transaction as its writes):
   * inside a synchronous better-sqlite3 `db.transaction(() => ...)` body, which has committed
   * by then, the record is refused (`TRANSACTION_MISUSE`) and nothing is written; wrap it in
   * `BEGIN IMMEDIATE` ... `COMMIT` instead. A message whose id is empty, holds a NUL
   * character or a lone surrogate (text the database cannot store as it is), or is longer than
   * 2048 UTF-8 bytes (more than PostgreSQL can index, alike on SQLite) is poison: no
   * delivery of it can ever be recorded, so rather than throw (and be redelivered forever) the
   * inbox refuses it for good: nothing is written, `fn` does not run, the result holds the
   * `PoisonMessageError` (`POISON_MESSAGE`) in `refused`, and `onRefused` and the channel
   * `breakwater:outbox:message-refused` report it. The caller resolves, so the broker acks it.
   */
  handle<M extends { readonly id: string }, T>(
    tx: SqlExecutor,
    message: M,
    fn: (tx: SqlExecutor, message: M) => Promise<T>,
  ): Promise<InboxResult<T>>
}

/** The keys InboxOptions takes (internal: not exported from the package root). */
export const inboxOptions = optionKeys<InboxOptions>({
  consumer: true,
  clock: true,
  onRefused: true,
})

class SqlInbox implements Inbox {
  readonly consumer: string
  readonly #clock: Clock
  readonly #onRefused: InboxOptions['onRefused']

  constructor(options: InboxOptions) {
    checkObject('inbox', options)
    // A misspelt onRefused was dropped without a word: poison messages went unreported.
    checkOptionKeys('inbox', options, inboxOptions)
    // Stored as text, as message ids are (a lone surrogate would make two ids one record, and
    // the second message's effect would be skipped as a duplicate). It shares the record's
    // index key with the message id: capped so that any id within maxStoredIdBytes fits.
    this.consumer = checkStoredKey('inbox.consumer', options.consumer, maxStoredNameBytes)
    const clock = wholeMsClock(checkClock('inbox.clock', options.clock))
    this.#clock = clock
    this.#onRefused =
      options.onRefused === undefined
        ? undefined
        : checkFunction<NonNullable<InboxOptions['onRefused']>>(
            'inbox.onRefused',
            options.onRefused,
          )
  }

  async handle<M extends { readonly id: string }, T>(
    tx: SqlExecutor,
    message: M,
    fn: (tx: SqlExecutor, message: M) => Promise<T>,
  ): Promise<InboxResult<T>> {
    checkInboxTransaction(tx)
    const id = message?.id
    // A caller's mistake (no message, an id that is no string): no broker delivers that.
    if (typeof id !== 'string') throw new InvalidOptionError('message.id', 'a string', id)
    // Before the record is written: a record without its effect would make the redelivery
    // of this message a duplicate that never runs.
    checkFunction('fn', fn)
    if (unstorableIdReason(id) !== undefined)
      return { duplicate: false, refused: this.#refuse(message) }
    // fn runs after an await (the record's), so the record must not be sent synchronously
    // either: in a synchronous better-sqlite3 transaction body (db.transaction(() => ...)) it
    // committed with that body, alone, and fn's writes, sent after the commit, were refused
    // (the effect lost, the redelivery a duplicate). Sent after an await, it is refused too.
    await Promise.resolve()
    const { rowCount } = await tx.execute(inboxStatements[tx.dialect].record, [
      this.consumer,
      message.id,
      this.#clock.now(),
    ])
    if (rowCount === 0) return { duplicate: true }
    return { duplicate: false, value: await fn(tx, message) }
  }

  // The wire's data, not the caller's mistake, and the same on every delivery: as the broker
  // adapters do with a message they cannot identify, it is reported and let go rather than
  // thrown, which only had the broker redeliver it forever (holding back its key meanwhile).
  #refuse(message: { readonly id: string }): PoisonMessageError {
    const error = reportRefused(this.consumer, message.id)
    try {
      this.#onRefused?.(message, error)
    } catch {
      // A throwing listener must not turn the refusal back into a redelivery.
    }
    return error
  }
}

const refusedChannel = diagnosticsChannel('outbox', 'message-refused')

/**
 * Publishes a message refused for good on `breakwater:outbox:message-refused` and returns its
 * `PoisonMessageError` (`reason`: see its constructor). Also a reactor's (src/saga/choreography.ts).
 */
export function reportRefused(
  consumer: string,
  messageId: string,
  reason?: string,
): PoisonMessageError {
  const error = new PoisonMessageError(consumer, messageId, reason)
  if (refusedChannel.hasSubscribers) refusedChannel.publish({ consumer, messageId, error })
  return error
}

/**
 * Refuses an executor that is not a transaction's (see {@link checkTransactionExecutor}): the
 * record would commit at once, and an `fn` that then failed would leave it without its effect,
 * so the redelivery would be taken for a duplicate and the effect lost for good.
 */
function checkInboxTransaction(tx: unknown): void {
  checkTransactionExecutor(
    tx,
    "the transaction of the handler's writes (db.transaction's tx), not the driver: the inbox record must commit with them",
  )
}

/**
 * Creates an inbox: consumer-side deduplication that makes a handler's effect exactly-once.
 * An unknown (misspelt) option is refused with `InvalidOptionError`.
 * `inbox.handle(tx, message, fn)` records the message id in the consumer's own database in
 * the same transaction as `fn`'s writes, so either both commit or neither does, and a
 * redelivered message (at-least-once brokers, relays publishing a batch again after a crash)
 * is acknowledged without running `fn` twice. Run `migrateInbox(db)` once first.
 *
 * @example
 * ```ts
 * import { createInbox } from 'breakwater/outbox'
 * const inbox = createInbox({ consumer: 'notifications' })
 * await subscriber.subscribe('orders', 'notifications', (message) =>
 *   db.transaction(async (tx) => {
 *     await inbox.handle(tx, message, async (tx) => {
 *       await tx.execute('INSERT INTO emails (order_id) VALUES ($1)', [message.key])
 *     })
 *   }),
 * )
 * ```
 */
export function createInbox(options: InboxOptions): Inbox {
  return new SqlInbox(options)
}

/**
 * A ready-made handler for `Subscriber.subscribe`: each message runs `fn` inside a new
 * transaction on `db` through an inbox for `consumer`. Duplicates resolve without running
 * `fn`; a failing `fn` rolls back and rejects, so the broker redelivers the message. A poison
 * message (see {@link PoisonMessageError}) resolves without running `fn` (acknowledged, not
 * redelivered) and is reported to `options.onRefused`. `options` takes the other
 * {@link InboxOptions}; a `consumer` there too is refused with `InvalidOptionError` (one of the
 * two names was ignored without a word).
 *
 * @example
 * ```ts
 * import { inboxHandler } from 'breakwater/outbox'
 * await subscriber.subscribe('orders', 'billing', inboxHandler(db, 'billing', async (tx, m) => {
 *   await tx.execute('INSERT INTO invoices (order_id) VALUES ($1)', [m.key])
 * }))
 * ```
 */
export function inboxHandler(
  db: SqlDriver,
  consumer: string,
  fn: (tx: SqlTransaction, message: IncomingMessage) => Promise<void>,
  options: Omit<InboxOptions, 'consumer'> = {},
): (message: IncomingMessage) => Promise<void> {
  checkSqlDriver('db', db, 'a SqlDriver')
  checkFunction('fn', fn)
  checkObject('options', options)
  // The argument silently won over it: one of the two names was ignored without a word.
  if ((options as InboxOptions).consumer !== undefined)
    throw new InvalidOptionError(
      'options.consumer',
      'no consumer in the options (it is the second argument of inboxHandler)',
      (options as InboxOptions).consumer,
    )
  const inbox = createInbox({ ...options, consumer })
  return (message) =>
    db.transaction(async (tx) => {
      await inbox.handle(tx, message, () => fn(tx, message))
    })
}
