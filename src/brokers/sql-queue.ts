import { isUtf8 } from 'node:buffer'
import { randomUUID } from 'node:crypto'
import { type Clock, maxTimerDelayMs, sleep, type TimerHandle, within } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { BreakwaterError, describeValue, InvalidOptionError } from '../core/errors.js'
import {
  checkStoredKey,
  exceedsBytes,
  isStorableText,
  maxStoredIdBytes,
  maxStoredNameBytes,
} from '../core/text.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { Waker } from '../core/waker.js'
import { removeInBatches, yieldToEventLoop } from '../stores/batches.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import {
  type AppliedMigration,
  type Migration,
  runMigrations,
  type SqlDialect,
  type SqlDriver,
  type SqlExecutor,
  type SqlTransaction,
  type Unlisten,
} from '../stores/index.js'
import { executeLast, measuredOnceBegun, queryLast } from '../stores/measured.js'
import { closeAll, subscriberErrorReporter, throwIfAborted } from './common.js'
import { SubscriptionCloseTimeoutError } from './errors.js'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'

// The embedded broker: a queue in the application's own SQLite or PostgreSQL database, so a
// single machine needs nothing installed. Messages are stored once; each consumer group gets a
// delivery row per message (fan-out at publish, backfilled when a group first subscribes), and
// competing consumers of a group lease delivery rows with a visibility timeout.

/** The messages table. */
export const queueTable = 'breakwater_queue'
/** Consumer groups per topic. */
export const queueGroupsTable = 'breakwater_queue_groups'
/** One row per (group, message) until the group acknowledges it. */
export const queueDeliveriesTable = 'breakwater_queue_deliveries'
/** The PostgreSQL channel publishers notify (payload: the topic). */
export const QUEUE_CHANNEL = 'breakwater_queue'

// Group creation takes this advisory lock exclusively; publishers and the pruner take it
// shared ("bwqueue!" in ASCII). See registerGroup.
const groupLockKey = '7095768478631387425'

// PostgreSQL: a group's lease lock, held to commit by every statement that leases a group's
// deliveries or changes how long one is held (extension, retry, release). "Is an earlier
// message of this key held?" is read from the lease statement's snapshot, and FOR UPDATE SKIP
// LOCKED passes over rows another transaction is writing: without the lock, while consumer A's
// lease of a key's message n was not yet committed, consumer B skipped that row, did not see it
// held, and leased message n + 1 of the key, to run beside (often before) n. The lock is taken
// by a statement of its own before the lease statement: a snapshot taken after the wait sees
// what the previous holder committed. Two-key form (class 'bwqu', a hash of topic and group):
// a space apart from the single-key locks of group creation and migrations; two groups whose
// hashes collide only lease one after the other.
const leaseLock = `SELECT pg_advisory_xact_lock(1651994997, hashtext($1::text || chr(31) || $2::text))`

/**
 * Runs `last` (the transaction's last statement) behind the group's lease lock on PostgreSQL,
 * the two sent together; on SQLite, whose one writer already runs them one at a time, alone.
 */
async function behindLeaseLock<T>(
  tx: SqlTransaction,
  topic: string,
  group: string,
  last: () => Promise<T>,
): Promise<T> {
  if (tx.dialect !== 'postgres') return last()
  // Pipelined: the lock and the statement go out without waiting for each other and run in
  // order on the server, so the lock costs no round trip of its own.
  const [, result] = await Promise.all([tx.query(leaseLock, [topic, group]), last()])
  return result
}

/** The numbered migrations of the `queue` capability. */
export const sqlQueueMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'create-queue',
    sqlite: [
      `CREATE TABLE ${queueTable} (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL,
  message_id TEXT NOT NULL,
  msg_key TEXT NOT NULL,
  payload BLOB NOT NULL,
  headers TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE (topic, message_id)
)`,
      `CREATE INDEX ${queueTable}_topic ON ${queueTable} (topic, seq)`,
      `CREATE INDEX ${queueTable}_created_at ON ${queueTable} (created_at)`,
      `CREATE TABLE ${queueGroupsTable} (
  topic TEXT NOT NULL,
  group_name TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (topic, group_name)
)`,
      `CREATE TABLE ${queueDeliveriesTable} (
  topic TEXT NOT NULL,
  group_name TEXT NOT NULL,
  seq INTEGER NOT NULL,
  msg_key TEXT NOT NULL,
  held_until INTEGER,
  lease_token TEXT,
  delivery_count INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (topic, group_name, seq)
)`,
      // Leased or delayed deliveries, per key: usually a handful, so "is an earlier message of
      // this key still held?" is a cheap probe.
      `CREATE INDEX ${queueDeliveriesTable}_held ON ${queueDeliveriesTable} (topic, group_name, msg_key, seq) WHERE held_until IS NOT NULL`,
      `CREATE INDEX ${queueDeliveriesTable}_seq ON ${queueDeliveriesTable} (seq)`,
    ],
    postgres: [
      `CREATE TABLE ${queueTable} (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  topic TEXT NOT NULL,
  message_id TEXT NOT NULL,
  msg_key TEXT NOT NULL,
  payload BYTEA NOT NULL,
  headers TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (topic, message_id)
)`,
      `CREATE INDEX ${queueTable}_topic ON ${queueTable} (topic, seq)`,
      `CREATE INDEX ${queueTable}_created_at ON ${queueTable} (created_at)`,
      `CREATE TABLE ${queueGroupsTable} (
  topic TEXT NOT NULL,
  group_name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (topic, group_name)
)`,
      `CREATE TABLE ${queueDeliveriesTable} (
  topic TEXT NOT NULL,
  group_name TEXT NOT NULL,
  seq BIGINT NOT NULL,
  msg_key TEXT NOT NULL,
  held_until BIGINT,
  lease_token TEXT,
  delivery_count INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (topic, group_name, seq)
)`,
      `CREATE INDEX ${queueDeliveriesTable}_held ON ${queueDeliveriesTable} (topic, group_name, msg_key, seq) WHERE held_until IS NOT NULL`,
      `CREATE INDEX ${queueDeliveriesTable}_seq ON ${queueDeliveriesTable} (seq)`,
    ],
  },
]

/**
 * Applies the `queue` capability's pending migrations (the SQL queue's tables).
 *
 * @example
 * ```ts
 * import { migrateSqlQueue } from 'breakwater/outbox'
 * await migrateSqlQueue(db)
 * ```
 */
export function migrateSqlQueue(db: SqlDriver): Promise<AppliedMigration[]> {
  return runMigrations(db, 'queue', sqlQueueMigrations)
}

// A delivery may be leased when it is not held (never leased, lease ended, retry delay over)
// and no earlier delivery of the same key in the group is held: a failed message waiting for
// its retry keeps the later messages of its key behind it. A message without a key ('') is
// ordered with nothing: one failing for ever would otherwise hold every keyless message.
// On SQLite, a held_until that is not a number (text set by hand: SQLite keeps it as text,
// which sorts above every number) has run out: it never did before, so the message was never
// delivered again and held the rest of its key for ever. Until it is leased again (which writes
// a number there) it still holds the later messages of its key, so they keep their order.
const leasable = (
  dialect: 'sqlite' | 'postgres',
): string => `(w.held_until IS NULL OR w.held_until <= $3${
  dialect === 'sqlite' ? " OR typeof(w.held_until) NOT IN ('integer', 'real')" : ''
})
    AND (w.msg_key = '' OR NOT EXISTS (
      SELECT 1 FROM ${queueDeliveriesTable} h
      WHERE h.topic = w.topic AND h.group_name = w.group_name AND h.msg_key = w.msg_key
        AND h.seq < w.seq AND h.held_until IS NOT NULL AND h.held_until > $3))`

// The delivery count a lease writes. A stored count that is not a whole number from 0 (changed
// outside breakwater: SQLite keeps text, a blob or a fraction as it is, either database a
// negative number) reached the handler as deliveryCount -4 or 2.5, and stayed off by as much;
// such a count is taken as delivered before (2): it cannot tell, and a handler that reads 1 as
// a first delivery must not skip its checks on a message that may have been handled.
const nextDeliveryCount = (dialect: SqlDialect, alias: string): string => {
  const count = `${alias}delivery_count`
  const whole =
    dialect === 'sqlite' ? `typeof(${count}) = 'integer' AND ${count} >= 0` : `${count} >= 0`
  return `CASE WHEN ${whole} THEN ${count} + 1 ELSE 2 END`
}

interface QueueStatements {
  /** PostgreSQL: $1..$5 arrays (topic, id, key, payload, headers), $6 now, $7 channel. */
  readonly publishMany: string
  /** SQLite: $1 topic, $2 id, $3 key, $4 payload, $5 headers, $6 now; returns seq. */
  readonly insertMessage: string
  /** SQLite: $1 topic, $2 seq, $3 key. */
  readonly fanOut: string
  /** $1 topic, $2 group, $3 now. */
  readonly addGroup: string
  /** $1 topic, $2 group. */
  readonly backfill: string
  /** $1 topic, $2 group, $3 now, $4 lease end, $5 token, $6 limit. */
  readonly lease: string
  /** SQLite: $1 seqs (JSON). */
  readonly readMessages: string
  /** $1 topic, $2 group, $3 seq, $4 token. */
  readonly ack: string
  /** $1 topic, $2 group, $3 seq, $4 token, $5 retry at. */
  readonly retry: string
  /** $1 topic, $2 group, $3 seqs (list), $4 token. */
  readonly release: string
  /** $1 topic, $2 group, $3 token, $4 lease end; returns the seqs still held under the token. */
  readonly extend: string
  /** $1 cutoff, $2 batch size. */
  readonly prune: string
}

const shared = {
  insertMessage: `INSERT INTO ${queueTable} (topic, message_id, msg_key, payload, headers, created_at)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (topic, message_id) DO NOTHING RETURNING seq`,
  fanOut: `INSERT INTO ${queueDeliveriesTable} (topic, group_name, seq, msg_key)
SELECT topic, group_name, $2, $3 FROM ${queueGroupsTable} WHERE topic = $1`,
  addGroup: `INSERT INTO ${queueGroupsTable} (topic, group_name, created_at) VALUES ($1, $2, $3)
ON CONFLICT (topic, group_name) DO NOTHING`,
  backfill: `INSERT INTO ${queueDeliveriesTable} (topic, group_name, seq, msg_key)
SELECT topic, $2, seq, msg_key FROM ${queueTable} WHERE topic = $1
ON CONFLICT (topic, group_name, seq) DO NOTHING`,
  ack: `DELETE FROM ${queueDeliveriesTable}
WHERE topic = $1 AND group_name = $2 AND seq = $3 AND lease_token = $4`,
  retry: `UPDATE ${queueDeliveriesTable} SET held_until = $5, lease_token = NULL
WHERE topic = $1 AND group_name = $2 AND seq = $3 AND lease_token = $4`,
  extend: `UPDATE ${queueDeliveriesTable} SET held_until = $4
WHERE topic = $1 AND group_name = $2 AND lease_token = $3 RETURNING seq`,
}

// SQLite: at most $2 messages in one range of the created_at index that no group still has to
// handle, oldest first.
const sqlitePrunable = (range: string): string => `SELECT m.seq FROM ${queueTable} m
  WHERE ${range}
    AND NOT EXISTS (SELECT 1 FROM ${queueDeliveriesTable} d WHERE d.seq = m.seq)
  ORDER BY m.created_at LIMIT $2`

const statements: Readonly<Record<SqlDialect, QueueStatements>> = {
  postgres: {
    ...shared,
    // One round trip for the whole batch: store (dropping ids already stored for the topic),
    // fan out to the groups, notify subscribers at commit.
    publishMany: `WITH ins AS (
  INSERT INTO ${queueTable} (topic, message_id, msg_key, payload, headers, created_at)
  SELECT t, i, k, p, h, $6::bigint
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[]) WITH ORDINALITY AS u(t, i, k, p, h, ord)
  ORDER BY ord
  ON CONFLICT (topic, message_id) DO NOTHING
  RETURNING seq, topic, msg_key
), fan AS (
  INSERT INTO ${queueDeliveriesTable} (topic, group_name, seq, msg_key)
  SELECT ins.topic, g.group_name, ins.seq, ins.msg_key
  FROM ins JOIN ${queueGroupsTable} g ON g.topic = ins.topic
)
SELECT pg_notify($7, topics.topic) FROM (SELECT DISTINCT topic FROM ins) AS topics`,
    // Run behind the group's lease lock (see leaseLock), so competing consumers of a group lease
    // one after the other, each seeing what the previous one leased. FOR UPDATE SKIP LOCKED
    // passes over rows an ack or a retry is writing right now rather than waiting for it; a
    // row updated and committed in between is re-checked against the conditions before it is
    // taken.
    lease: `WITH picked AS (
  SELECT w.seq FROM ${queueDeliveriesTable} w
  WHERE w.topic = $1 AND w.group_name = $2 AND ${leasable('postgres')}
  ORDER BY w.seq
  LIMIT $6
  FOR UPDATE SKIP LOCKED
), leased AS (
  UPDATE ${queueDeliveriesTable} d
  SET held_until = $4, lease_token = $5, delivery_count = ${nextDeliveryCount('postgres', 'd.')}
  FROM picked WHERE d.topic = $1 AND d.group_name = $2 AND d.seq = picked.seq
  RETURNING d.seq, d.delivery_count
)
SELECT leased.seq, leased.delivery_count, m.message_id, m.msg_key, m.payload, m.headers
FROM leased LEFT JOIN ${queueTable} m ON m.seq = leased.seq
ORDER BY leased.seq`,
    readMessages: '',
    release: `UPDATE ${queueDeliveriesTable}
SET held_until = NULL, lease_token = NULL, delivery_count = delivery_count - 1
WHERE topic = $1 AND group_name = $2 AND seq = ANY($3::bigint[]) AND lease_token = $4`,
    prune: `DELETE FROM ${queueTable} WHERE seq IN (
  SELECT m.seq FROM ${queueTable} m
  WHERE m.created_at <= $1
    AND NOT EXISTS (SELECT 1 FROM ${queueDeliveriesTable} d WHERE d.seq = m.seq)
  ORDER BY m.created_at LIMIT $2
  FOR UPDATE SKIP LOCKED)`,
  },
  sqlite: {
    ...shared,
    publishMany: '',
    lease: `UPDATE ${queueDeliveriesTable}
SET held_until = $4, lease_token = $5, delivery_count = ${nextDeliveryCount('sqlite', '')}
WHERE topic = $1 AND group_name = $2 AND seq IN (
  SELECT w.seq FROM ${queueDeliveriesTable} w
  WHERE w.topic = $1 AND w.group_name = $2 AND ${leasable('sqlite')}
  ORDER BY w.seq
  LIMIT $6)
RETURNING seq, delivery_count`,
    // SQLite keeps what another writer gave it: a blob in a TEXT column, text in the BLOB one,
    // bytes that are not UTF-8 in either. The id comes as its bytes (checked in #lease), the key
    // as text and a text payload as its bytes (what publishing that string stores).
    readMessages: `SELECT seq, CAST(message_id AS BLOB) AS message_id, CAST(msg_key AS TEXT) AS msg_key,
  CASE WHEN typeof(payload) = 'text' THEN CAST(payload AS BLOB) ELSE payload END AS payload, headers
FROM ${queueTable} WHERE seq IN (SELECT value FROM json_each($1))`,
    release: `UPDATE ${queueDeliveriesTable}
SET held_until = NULL, lease_token = NULL, delivery_count = delivery_count - 1
WHERE topic = $1 AND group_name = $2 AND seq IN (SELECT value FROM json_each($3)) AND lease_token = $4`,
    // A created_at that is not a number (text or a blob set by hand: SQLite keeps it as it is
    // in the INTEGER column, and it sorts above every number) made `<= $1` never true, and such
    // a message, handled by every group, was kept for ever. Its age cannot be told: it counts
    // as old enough, through a second range of the created_at index (text and blobs sort
    // above '', numbers below), joined by UNION ALL: one OR would lose the range's bound.
    prune: `DELETE FROM ${queueTable} WHERE seq IN (
  SELECT seq FROM (${sqlitePrunable('m.created_at <= $1')})
  UNION ALL SELECT seq FROM (${sqlitePrunable(`m.created_at >= ''`)})
  LIMIT $2)`,
  },
}

/** The queue's statements per dialect: internal, exported for tests that check their plans. */
export { statements as queueStatements }

/** Handed to the `onError` option of {@link createSqlQueue}. */
export interface SqlQueueErrorEvent {
  /** What was thrown. */
  readonly error: unknown
  /**
   * `handler`: a handler rejected (the message is redelivered after `retryDelayMs`);
   * `refused`: a stored message cannot be read back (its headers column is not the JSON record
   * of strings the publisher writes, or its payload is a number, not bytes, which SQLite keeps:
   * edited, corrupted or written by another writer), so the group's delivery of it
   * was removed without calling the handler; the error (`BROKER_REJECTED`) says why and
   * `message` holds its id, key and payload (headers empty; payload empty when it is the
   * problem), while the message row itself stays
   * in `breakwater_queue` until pruned; also a delivery whose seq points at no message (changed
   * outside breakwater), removed without `message`, the error naming the seq; `settle`: an ack, retry or release could not be
   * written, or (`BROKER_UNAVAILABLE`) an ack or a lease extension found the batch's lease run
   * out and taken by another consumer, so none of the batch's other messages is started here;
   * `connection`: leasing failed (the subscription retries with backoff).
   */
  readonly phase: 'handler' | 'refused' | 'settle' | 'connection'
  readonly topic: string
  readonly group: string
  /** The message being handled, refused or settled. */
  readonly message?: IncomingMessage
}

/** Options of {@link createSqlQueue}. */
export interface SqlQueueOptions {
  /**
   * Source of time for leases, retry delays and polling.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
  /**
   * How long a leased message stays invisible to the group's other consumers. A running
   * handler's lease is extended every third of it; a consumer that dies loses its leases after
   * at most this long, and the messages are delivered again.
   * @default 30_000
   */
  readonly visibilityTimeoutMs?: number | undefined
  /**
   * Wait before a message whose handler failed is delivered again. Later messages of its key
   * wait behind it.
   * @default 1_000
   */
  readonly retryDelayMs?: number | undefined
  /**
   * How long a subscription's `close()` (and the queue's) waits for running handlers. A handler
   * still running then is given up: `close()` rejects with `SubscriptionCloseTimeoutError`
   * (`SUBSCRIPTION_CLOSE_TIMEOUT`), its lease is no longer extended, and nothing is written for
   * it or its batch, also when it finishes later: the lease runs out (`visibilityTimeoutMs`)
   * and the message is delivered again. 0 gives up on any handler still running at once.
   * @default 30_000
   */
  readonly closeTimeoutMs?: number | undefined
  /**
   * Messages leased per round per subscription.
   * @default 64
   */
  readonly prefetch?: number | undefined
  /**
   * Handlers running at once per subscription. Messages of one key never run concurrently and
   * keep their order, whatever this is.
   * @default 1
   */
  readonly concurrency?: number | undefined
  /**
   * First idle wait after a round found nothing; doubles up to `maxPollIntervalMs`. A publish
   * through this queue in the same process, or a PostgreSQL notification, ends it early.
   * @default 10
   */
  readonly pollIntervalMs?: number | undefined
  /**
   * Longest idle wait.
   * @default 1_000 with LISTEN (PostgreSQL), 250 without
   */
  readonly maxPollIntervalMs?: number | undefined
  /**
   * Wakes subscribers on PostgreSQL notifications from publishers in other processes.
   * @default true
   */
  readonly listen?: boolean | undefined
  /**
   * Whether a subscription (until it or the queue is closed) keeps the Node.js process alive, as a listening server does.
   * With false, its timers (like every breakwater timer) let the process exit when nothing
   * else holds it open. Only the system clock's timers can be held; a test clock's cannot.
   * @default true
   */
  readonly keepAlive?: boolean | undefined
  /**
   * Receives handler failures, refused (unreadable) messages, failed acks and lease errors.
   * One that throws is ignored. Every error is also published on the diagnostics channel
   * `breakwater:broker:error`, with or without it.
   * @default console.error: one line naming the queue, phase, topic, group and message id,
   * then the error
   */
  readonly onError?: ((event: SqlQueueErrorEvent) => void) | undefined
}

/** The SQL queue: a {@link Broker} stored in a SQLite or PostgreSQL database. */
export type SqlQueue = Broker

interface ResolvedOptions {
  readonly clock: Clock
  readonly visibilityTimeoutMs: number
  readonly retryDelayMs: number
  readonly closeTimeoutMs: number
  readonly prefetch: number
  readonly concurrency: number
  readonly pollIntervalMs: number
  readonly maxPollIntervalMs: number
  readonly listen: boolean
  readonly keepAlive: boolean
  readonly onError: (event: SqlQueueErrorEvent) => void
}

/** The keys SqlQueueOptions takes (internal: not exported from the package root). */
export const sqlQueueOptions = optionKeys<SqlQueueOptions>({
  clock: true,
  visibilityTimeoutMs: true,
  retryDelayMs: true,
  closeTimeoutMs: true,
  prefetch: true,
  concurrency: true,
  pollIntervalMs: true,
  maxPollIntervalMs: true,
  listen: true,
  keepAlive: true,
  onError: true,
})

function resolveOptions(db: SqlDriver, options: SqlQueueOptions): ResolvedOptions {
  checkObject('sqlQueue', options)
  // A misspelt visibilityTimeoutMs or onError was dropped without a word and its default used.
  checkOptionKeys('sqlQueue', options, sqlQueueOptions)
  const clock = checkClock('sqlQueue.clock', options.clock)
  if (options.listen !== undefined && typeof options.listen !== 'boolean')
    throw new InvalidOptionError('sqlQueue.listen', 'a boolean', options.listen)
  const listen = (options.listen ?? true) && typeof db.listen === 'function'
  if (options.keepAlive !== undefined && typeof options.keepAlive !== 'boolean')
    throw new InvalidOptionError('sqlQueue.keepAlive', 'a boolean', options.keepAlive)
  const pollIntervalMs = checkInteger(
    'sqlQueue.pollIntervalMs',
    options.pollIntervalMs ?? 10,
    1,
    maxTimerDelayMs,
  )
  return {
    clock,
    visibilityTimeoutMs: checkInteger(
      'sqlQueue.visibilityTimeoutMs',
      options.visibilityTimeoutMs ?? 30_000,
      3,
      maxTimerDelayMs,
    ),
    retryDelayMs: checkInteger(
      'sqlQueue.retryDelayMs',
      options.retryDelayMs ?? 1_000,
      0,
      maxTimerDelayMs,
    ),
    closeTimeoutMs: checkInteger(
      'sqlQueue.closeTimeoutMs',
      options.closeTimeoutMs ?? 30_000,
      0,
      maxTimerDelayMs,
    ),
    prefetch: checkInteger('sqlQueue.prefetch', options.prefetch ?? 64, 1, 10_000),
    concurrency: checkInteger('sqlQueue.concurrency', options.concurrency ?? 1, 1, 10_000),
    pollIntervalMs,
    maxPollIntervalMs: checkInteger(
      'sqlQueue.maxPollIntervalMs',
      options.maxPollIntervalMs ?? Math.max(pollIntervalMs, listen ? 1_000 : 250),
      pollIntervalMs,
      maxTimerDelayMs,
    ),
    listen,
    keepAlive: options.keepAlive ?? true,
    onError: subscriberErrorReporter(
      'sqlQueue',
      options.onError === undefined
        ? undefined
        : checkFunction<(event: SqlQueueErrorEvent) => void>('sqlQueue.onError', options.onError),
    ),
  }
}

function toBuffer(payload: Uint8Array | string): Buffer {
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8')
  return Buffer.isBuffer(payload)
    ? payload
    : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)
}

/**
 * Checks a batch before anything of it is written. A message no attempt can store fails the
 * whole batch with `BROKER_REJECTED` (not retryable) naming `messages[i]` and the field, as the
 * brokers' adapters refuse what they cannot carry (it was `INVALID_OPTION`, the code of a
 * caller's bad option): the message's own fault, which a relay charges to its event.
 */
function checkMessages(messages: readonly OutgoingMessage[]): void {
  if (!Array.isArray(messages)) throw new InvalidOptionError('messages', 'an array', messages)
  messages.forEach((m: OutgoingMessage, i) => {
    try {
      checkMessage(m, i)
    } catch (error) {
      if (!(error instanceof InvalidOptionError)) throw error
      throw new BreakwaterError('BROKER_REJECTED', `sql-queue: ${error.message}`, { cause: error })
    }
  })
}

/** Throws `InvalidOptionError` naming the field of `messages[i]` that cannot be stored. */
function checkMessage(m: OutgoingMessage, i: number): void {
  if (typeof m !== 'object' || m === null)
    throw new InvalidOptionError(`messages[${i}]`, 'a message', m)
  // Stored as text: a NUL fails on PostgreSQL with a bare driver error, and a lone surrogate
  // is stored as U+FFFD there, so two different ids would be one and the second dropped as a
  // duplicate. Refused on both databases alike. They are index keys too (topic with id; topic,
  // group and key in the held index every lease writes), capped so that PostgreSQL can index
  // them: a long key was taken here and then failed every lease of its batch for good.
  checkStoredKey(`messages[${i}].id`, m.id)
  checkStoredKey(`messages[${i}].topic`, m.topic, maxStoredNameBytes)
  if (typeof m.key !== 'string' || !isStorableText(m.key) || exceedsBytes(m.key, maxStoredIdBytes))
    throw new InvalidOptionError(
      `messages[${i}].key`,
      `a string of at most ${maxStoredIdBytes} UTF-8 bytes without NUL characters or lone surrogates`,
      m.key,
    )
  if (typeof m.payload !== 'string' && !(m.payload instanceof Uint8Array))
    throw new InvalidOptionError(`messages[${i}].payload`, 'a string or Uint8Array', m.payload)
  // Stored as JSON and handed to subscribers as parsed: a number or an object would arrive as
  // one where a string is promised, a string or array as the whole headers. (Missing headers
  // are stored as none.)
  const headers: unknown = m.headers
  if (headers === undefined || headers === null) return
  if (typeof headers !== 'object' || Array.isArray(headers))
    throw new InvalidOptionError(`messages[${i}].headers`, 'a record of strings', headers)
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value !== 'string')
      throw new InvalidOptionError(`messages[${i}].headers.${name}`, 'a string', value)
  }
}

interface Leased {
  /**
   * The delivery's seq as the row holds it, so the statements that settle it find that row: a
   * seq changed outside breakwater (text, a blob, on SQLite) became NaN through Number(), and an
   * ack of NaN matched nothing, so the delivery was leased again every visibility timeout.
   */
  readonly seq: unknown
  readonly message: IncomingMessage | undefined
  /** Why the stored message cannot be handed to the handler, when it cannot. */
  readonly refused?: BreakwaterError
}

/**
 * The headers stored for a message: the JSON record of strings the publisher writes, or
 * undefined (with the parse error, if any) for anything else, which only a hand edit or a
 * corruption leaves. Parsed per row, so one bad row cannot fail the lease of its whole batch.
 */
function storedHeaders(
  text: string | null,
): { readonly headers: Record<string, string> } | { readonly error: unknown } {
  let parsed: unknown
  try {
    parsed = JSON.parse(text ?? '{}')
  } catch (error) {
    return { error }
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return { error: undefined }
  }
  for (const value of Object.values(parsed)) {
    if (typeof value !== 'string') return { error: undefined }
  }
  return { headers: parsed as Record<string, string> }
}

/**
 * A stored message id as the handler is given it; empty when the row holds none a string can
 * carry. SQLite hands it over as its bytes: another writer may have left a blob or bytes that
 * are not UTF-8 there, and decoded, every such byte sequence became U+FFFD, so two different
 * ids arrived as one and an inbox dropped the second as a duplicate without a word. Such an id
 * is read as absent, as an empty one, and the message is then delivered as `<topic>:<seq>`
 * (stable across redeliveries), as the Redis adapter gives `<topic>:<entry id>`.
 */
function storedMessageId(id: string | Buffer): string {
  if (typeof id === 'string') return id
  return isUtf8(id) ? id.toString('utf8') : ''
}

// Where a leased seq sorts: a seq that is not a number (it points at no message) goes first.
function orderOf(seq: unknown): number {
  return typeof seq === 'number' ? seq : Number.NEGATIVE_INFINITY
}

// A seq for a message: a blob (SQLite) as its size, anything else as describeValue words it.
function describeSeq(seq: unknown): string {
  return seq instanceof Uint8Array ? `a blob of ${seq.length} bytes` : describeValue(seq)
}

// A seq as a Set key: as the row holds it, so a seq changed outside breakwater (text, a blob, on
// SQLite) matches what the extension returns for the same row.
function seqKey(seq: unknown): string {
  if (typeof seq === 'number') return String(seq)
  if (seq instanceof Uint8Array) return `blob:${Buffer.from(seq).toString('hex')}`
  return `${typeof seq}:${String(seq)}`
}

/** A leased batch while its handlers run. */
interface Batch {
  /** The lease token every delivery of the batch was leased under. */
  readonly token: string
  /** The batch's deliveries (seqKey) whose ack, retry or release has not been sent yet. */
  readonly mine: Set<string>
  /**
   * Set once an ack or an extension showed that the lease ran out and another consumer took
   * some of the batch: no chain or message of it starts after that.
   */
  lost: boolean
  /** Stops extending the batch's leases (close() gave up on its handlers). */
  readonly stopExtending: () => void
}

class QueueSubscription implements Subscription {
  readonly topic: string
  readonly group: string
  readonly #db: SqlDriver
  readonly #sql: QueueStatements
  readonly #options: ResolvedOptions
  readonly #handler: (message: IncomingMessage) => Promise<void>
  readonly #onClosed: (subscription: QueueSubscription) => void
  readonly #stop = new AbortController()
  // A wait that a publish in this process, a notification or closing ends early.
  readonly #wakeable: Waker
  #loop: Promise<void> = Promise.resolve()
  #closing: Promise<void> | undefined
  // Handlers running now, and the batches they belong to.
  #running = 0
  readonly #batches = new Set<Batch>()
  // Set when close() gave up on running handlers: nothing more is written for any batch, so
  // their leases run out and the messages come back (see closeTimeoutMs).
  #cutOff = false

  constructor(
    db: SqlDriver,
    options: ResolvedOptions,
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
    onClosed: (subscription: QueueSubscription) => void,
  ) {
    this.#db = db
    this.#sql = statements[db.dialect]
    this.#options = options
    this.topic = topic
    this.group = group
    this.#handler = handler
    this.#onClosed = onClosed
    // The system clock unrefs its timers, and on SQLite nothing else holds the process (no
    // LISTEN connection): the idle waits of a running subscription are referenced, so it
    // receives until closed, as a listening server does.
    this.#wakeable = new Waker(options.clock, options.keepAlive)
  }

  start(): void {
    // The loop (its leases, timers and handlers) outlives the subscribe() call: it must not
    // run under the caller's deadline, request store or open transaction for ever after.
    this.#loop = detached(() => this.#run())
  }

  wake(): void {
    this.#wakeable.wake()
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#stop.abort()
      const unfinished = await this.#loopEnded()
      this.#onClosed(this)
      if (unfinished > 0) {
        throw new SubscriptionCloseTimeoutError(
          'sql-queue',
          this.topic,
          this.group,
          this.#options.closeTimeoutMs,
          unfinished,
        )
      }
    })()
    return this.#closing
  }

  // Waits for the loop; after closeTimeoutMs with handlers still running, gives them up and
  // resolves with their number. A loop waiting on a statement, not a handler, is waited for:
  // the driver bounds that.
  async #loopEnded(): Promise<number> {
    const { clock, closeTimeoutMs } = this.#options
    // within() holds the process open while it waits: the caller is blocked on close(), and
    // with a handler stuck on nothing that holds the process (on SQLite nothing else does once
    // shutdown began) it exited mid-close instead.
    const gaveUp = new Error('handlers still running')
    let timedOut = false
    try {
      await within(this.#loop, clock, closeTimeoutMs, () => gaveUp)
    } catch (error) {
      if (error !== gaveUp) throw error
      timedOut = true
    }
    if (!timedOut || this.#running === 0) {
      await this.#loop
      return 0
    }
    this.#cutOff = true
    for (const batch of this.#batches) batch.stopExtending()
    return this.#running
  }

  get #closed(): boolean {
    return this.#stop.signal.aborted
  }

  async #run(): Promise<void> {
    const { pollIntervalMs, maxPollIntervalMs, clock } = this.#options
    let idleMs = pollIntervalMs
    let failures = 0
    while (!this.#closed) {
      const token = randomUUID()
      let batch: Leased[]
      try {
        batch = await this.#lease(token)
        failures = 0
      } catch (error) {
        this.#options.onError({ error, phase: 'connection', topic: this.topic, group: this.group })
        const delay = Math.min(
          maxPollIntervalMs * 4,
          pollIntervalMs * 2 ** Math.min(failures++, 20),
        )
        await sleep(clock, delay, this.#stop.signal).catch(() => {})
        continue
      }
      if (batch.length === 0) {
        await this.#wakeable.wait(idleMs, this.#stop.signal)
        idleMs = Math.min(maxPollIntervalMs, idleMs * 2)
        continue
      }
      idleMs = pollIntervalMs
      await this.#dispatch(batch, token)
      // better-sqlite3 answers with promises already resolved: without a turn of the event
      // loop here, a backlog ran as one chain of microtasks and held off the process's timers,
      // I/O and signal handlers until it was empty.
      await yieldToEventLoop()
    }
  }

  async #lease(token: string): Promise<Leased[]> {
    const { clock, visibilityTimeoutMs, prefetch } = this.#options
    type Row = {
      seq: unknown
      delivery_count: number
      /** Text (PostgreSQL), its bytes (SQLite), or null when the seq names no message. */
      message_id: string | Buffer | null
      msg_key: string | null
      /** Bytes, or (SQLite, written by another writer) a number. */
      payload: unknown
      headers: string | null
    }
    // The lease starts when its statement runs, not when it was asked for: its transaction may
    // first wait for SQLite's write lock (up to the busy timeout) or a pool connection, and a
    // lease dated before that wait could run out before the handler's first extension, handing
    // a live consumer's message to another one. What is held (another consumer's lease, a
    // retry delay, an earlier message of the key) is judged as of when it was asked for: a
    // lease that ran out during the wait may only have gone unextended because its extension
    // was queued behind the same writer or pool. On PostgreSQL the statement commits with its
    // transaction (BEGIN, statement and COMMIT in one round trip, as the statement alone).
    const rows = await measuredOnceBegun(
      this.#db,
      clock,
      async (tx, now, asked): Promise<Row[]> => {
        const params = [this.topic, this.group, asked, now + visibilityTimeoutMs, token, prefetch]
        if (tx.dialect === 'postgres') {
          return behindLeaseLock(tx, this.topic, this.group, () =>
            queryLast<Row>(tx, this.#sql.lease, params),
          )
        }
        const leased = await tx.query<{ seq: unknown; delivery_count: number }>(
          this.#sql.lease,
          params,
        )
        if (leased.length === 0) return []
        const messages = await tx.query<Row>(this.#sql.readMessages, [
          JSON.stringify(leased.map((r) => r.seq)),
        ])
        // A message's seq is its rowid, an integer; a delivery's seq that is not one finds none.
        const bySeq = new Map(messages.map((m) => [m.seq, m]))
        return leased
          .map((l) => {
            const m = bySeq.get(l.seq)
            return {
              seq: l.seq,
              delivery_count: l.delivery_count,
              message_id: m?.message_id ?? null,
              msg_key: m?.msg_key ?? null,
              payload: m?.payload ?? null,
              headers: m?.headers ?? null,
            }
          })
          .sort((a, b) => orderOf(a.seq) - orderOf(b.seq))
      },
    )
    return rows.map((row): Leased => {
      const seq = row.seq
      if (row.message_id === null) return { seq, message: undefined }
      const stored = storedHeaders(row.headers)
      const payload = row.payload instanceof Uint8Array ? row.payload : undefined
      const message: IncomingMessage = {
        id: storedMessageId(row.message_id) || `${this.topic}:${seq}`,
        topic: this.topic,
        key: row.msg_key ?? '',
        payload: payload ?? Buffer.alloc(0),
        headers: 'headers' in stored ? stored.headers : {},
        deliveryCount: Number(row.delivery_count),
      }
      if ('headers' in stored && payload !== undefined) return { seq, message }
      // Retrying cannot repair the row, and failing the lease would hold every message of the
      // batch (and, leased again, for ever): the message is refused on its own instead.
      const problem =
        payload === undefined
          ? `its stored payload is ${describeValue(row.payload)}, not bytes (written outside breakwater)`
          : 'its stored headers are not the JSON record of strings the publisher writes (edited or corrupted)'
      const refused = new BreakwaterError(
        'BROKER_REJECTED',
        `sql-queue: refused message ${JSON.stringify(message.id)} (seq ${seq}) of topic ${JSON.stringify(this.topic)}: ${problem}, so group ${JSON.stringify(this.group)} skips it; the message stays in ${queueTable} until pruned`,
        'error' in stored ? { cause: stored.error } : {},
      )
      return { seq, message, refused }
    })
  }

  async #dispatch(leased: Leased[], token: string): Promise<void> {
    const { clock, visibilityTimeoutMs, concurrency } = this.#options
    // Keep the leases alive while handlers run, so a slow handler is not handed to another
    // consumer; a consumer that dies stops extending and its leases run out.
    let extender: TimerHandle | undefined
    const batch: Batch = {
      token,
      mine: new Set(leased.map((item) => seqKey(item.seq))),
      lost: false,
      stopExtending: () => {
        const timer = extender
        extender = undefined
        clock.clearTimeout(timer)
      },
    }
    this.#batches.add(batch)
    const extend = (): void => {
      extender = clock.setTimeout(
        () => {
          const expected = [...batch.mine]
          // Measured once its transaction has begun: a wait for the writer or a connection is
          // not taken off the extension. (BEGIN and COMMIT travel with it on PostgreSQL.)
          measuredOnceBegun(this.#db, clock, (tx, now) =>
            behindLeaseLock(tx, this.topic, this.group, () =>
              queryLast<{ seq: unknown }>(tx, this.#sql.extend, [
                this.topic,
                this.group,
                token,
                now + visibilityTimeoutMs,
              ]),
            ),
          )
            .then((rows) => {
              // A delivery this consumer still means to settle (not one whose settle was sent
              // meanwhile) that the token no longer holds was taken by another consumer: the
              // lease ran out (a stalled process) and every delivery of the batch with it.
              const held = new Set(rows.map((row) => seqKey(row.seq)))
              if (expected.some((seq) => batch.mine.has(seq) && !held.has(seq))) {
                this.#lose(batch, 'an extension of its lease found it taken by another consumer')
              }
            })
            .catch((error: unknown) =>
              this.#options.onError({
                error,
                phase: 'settle',
                topic: this.topic,
                group: this.group,
              }),
            )
            .finally(() => {
              if (extender !== undefined) extend()
            })
        },
        Math.max(1, Math.floor(visibilityTimeoutMs / 3)),
      )
    }
    extend()
    try {
      const chains = new Map<string | Leased, Leased[]>()
      for (const item of leased) {
        if (item.message === undefined) {
          // The delivery points at no message: its seq was changed outside breakwater (a
          // message is pruned only once no delivery names it). Leased again it would find none
          // again, so it is removed, and reported: which message it stood for cannot be told.
          this.#options.onError({
            error: new BreakwaterError(
              'BROKER_REJECTED',
              `sql-queue: the delivery of seq ${describeSeq(item.seq)} to group ${JSON.stringify(this.group)} of topic ${JSON.stringify(this.topic)} points at no message in ${queueTable} (the row was changed outside breakwater), so it was removed from ${queueDeliveriesTable}`,
            ),
            phase: 'refused',
            topic: this.topic,
            group: this.group,
          })
          await this.#ack(item, batch)
          continue
        }
        if (item.refused !== undefined) {
          // Reported with the message, so it is never lost without a word, then removed from
          // the group's deliveries: leased again it would only fail again, and hold its key.
          this.#options.onError({
            error: item.refused,
            phase: 'refused',
            topic: this.topic,
            group: this.group,
            message: item.message,
          })
          await this.#ack(item, batch)
          continue
        }
        // A keyless message is a chain of its own: it is ordered with nothing.
        const lane = item.message.key === '' ? item : item.message.key
        const chain = chains.get(lane)
        if (chain === undefined) chains.set(lane, [item])
        else chain.push(item)
      }
      const queue = [...chains.values()]
      const worker = async (): Promise<void> => {
        for (let chain = queue.shift(); chain !== undefined; chain = queue.shift()) {
          if (batch.lost) {
            // The lease ran out and another consumer may hold any of these: none is started,
            // and what is still this consumer's goes back at once, not when the lease ends.
            await this.#release([...chain, ...queue.splice(0).flat()], batch)
            return
          }
          await this.#runChain(chain, batch)
        }
      }
      await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker))
    } finally {
      batch.stopExtending()
      this.#batches.delete(batch)
    }
  }

  // Reports, once per batch, that its lease was lost; the batch's unstarted messages are then
  // left (released) rather than run beside (and before) the other consumer's runs of them.
  #lose(batch: Batch, how: string, message?: IncomingMessage): void {
    if (batch.lost) return
    batch.lost = true
    const which =
      message === undefined ? 'a batch' : `the batch of message ${JSON.stringify(message.id)}`
    this.#options.onError({
      error: new BreakwaterError(
        'BROKER_UNAVAILABLE',
        `sql-queue: the lease of ${which} of topic ${JSON.stringify(this.topic)} ran out (${how}), and another consumer of group ${JSON.stringify(this.group)} took some of it: what it took will be handled again (dedupe by id), and this consumer starts none of the batch's other messages`,
        { retryable: true },
      ),
      phase: 'settle',
      topic: this.topic,
      group: this.group,
      ...(message === undefined ? {} : { message }),
    })
  }

  // One key's messages, strictly in order. After a failure, on close, or once the batch's
  // lease is known lost, the rest of the chain goes back unhandled, so nothing overtakes the
  // failed message or runs beside another consumer's run of it.
  async #runChain(chain: Leased[], batch: Batch): Promise<void> {
    for (let i = 0; i < chain.length; i++) {
      const item = chain[i]!
      const message = item.message!
      if (this.#closed || batch.lost) {
        await this.#release(chain.slice(i), batch)
        return
      }
      this.#running++
      try {
        await this.#handler(message)
      } catch (error) {
        this.#running--
        // Given up by close(): nothing is written, its lease runs out and it comes back.
        if (this.#cutOff) return
        this.#options.onError({
          error,
          phase: 'handler',
          topic: this.topic,
          group: this.group,
          message,
        })
        batch.mine.delete(seqKey(item.seq))
        // The delay runs from when the statement runs, not from before its wait.
        await this.#settle(
          this.#sql.retry,
          (now) => [
            this.topic,
            this.group,
            item.seq,
            batch.token,
            now + this.#options.retryDelayMs,
          ],
          message,
        )
        await this.#release(chain.slice(i + 1), batch)
        return
      }
      this.#running--
      if (this.#cutOff) return
      const acked = await this.#ack(item, batch)
      if (acked === undefined) {
        // The ack failed (reported): it may not have happened (a connection lost after the
        // statement was sent leaves that unknown), and then the message comes back once its
        // lease runs out. Handled now, the key's later messages would come before it: they go
        // back too, and are leased again only after it, as the key's order wants.
        await this.#release(chain.slice(i + 1), batch)
        return
      }
      if (acked === 0) {
        // The lease ran out while the handler ran (a stalled process, extensions the database
        // did not take) and another consumer took it: that one runs this message again, and
        // holds the key's later ones and maybe the batch's other keys, leased under the same
        // token. Running them here too would run them beside (and before) its runs of them.
        // Whatever is still ours goes back.
        this.#lose(batch, 'its ack found it taken while the handler ran', message)
        await this.#release(chain.slice(i + 1), batch)
        return
      }
    }
  }

  // Removes the group's delivery: resolves to the rows removed (0: the token no longer holds
  // it), or undefined when the statement failed.
  #ack(item: Leased, batch: Batch): Promise<number | undefined> {
    batch.mine.delete(seqKey(item.seq))
    return this.#settle(
      this.#sql.ack,
      () => [this.topic, this.group, item.seq, batch.token],
      item.message,
      false,
    )
  }

  async #release(items: Leased[], batch: Batch): Promise<void> {
    if (items.length === 0) return
    const seqs = items.map((item) => item.seq)
    for (const seq of seqs) batch.mine.delete(seqKey(seq))
    await this.#settle(
      this.#sql.release,
      () => [
        this.topic,
        this.group,
        this.#db.dialect === 'postgres' ? seqs : JSON.stringify(seqs),
        batch.token,
      ],
      items[0]!.message,
    )
  }

  // A failed settle is reported, not thrown: the lease runs out and the message comes back.
  // Resolves to the rows it changed (0: the lease is no longer this token's), or undefined
  // when it failed. Params are built from the time once the statement's transaction has begun
  // (see measuredOnceBegun). A retry or a release changes how long a delivery is held, so it
  // runs behind the group's lease lock (see leaseLock); an ack only removes a delivery whose
  // handler finished, which a concurrent lease may pass over without harm.
  async #settle(
    sql: string,
    params: (now: number) => unknown[],
    message: IncomingMessage | undefined,
    locked = true,
  ): Promise<number | undefined> {
    // close() gave up on this subscription's handlers: the statement could come after the
    // queue's close, with the database closed, and the leases are left to run out.
    if (this.#cutOff) return undefined
    try {
      if (!locked) return (await this.#db.execute(sql, params(this.#options.clock.now()))).rowCount
      return await measuredOnceBegun(this.#db, this.#options.clock, (tx, now) =>
        behindLeaseLock(tx, this.topic, this.group, () => executeLast(tx, sql, params(now))),
      )
    } catch (error) {
      this.#options.onError({
        error,
        phase: 'settle',
        topic: this.topic,
        group: this.group,
        ...(message === undefined ? {} : { message }),
      })
      return undefined
    }
  }
}

/**
 * A call on a closed SQL queue: `publish()` or `subscribe()` after `close()`. The same code and
 * message as the NATS, RabbitMQ and Redis adapters' (`BROKER_UNAVAILABLE`, `the publisher is
 * closed`), so a caller handles every broker's closed side alike; `broker` is `'sql-queue'`.
 *
 * @example
 * ```ts
 * import { BreakwaterError } from 'breakwater'
 * await queue.close()
 * await queue.publisher.publish(batch).catch((e) => BreakwaterError.is(e) && e.code) // 'BROKER_UNAVAILABLE'
 * ```
 */
export class SqlQueueClosedError extends BreakwaterError {
  /** Always `'sql-queue'`, like `BrokerError.broker` for the other adapters. */
  readonly broker = 'sql-queue' as const

  constructor(what: 'publisher' | 'subscriber') {
    super('BROKER_UNAVAILABLE', `sql-queue: the ${what} is closed`, { retryable: true })
  }
}

class SqlQueueBroker implements SqlQueue, Publisher, Subscriber {
  readonly #db: SqlDriver
  readonly #sql: QueueStatements
  readonly #options: ResolvedOptions
  readonly #subscriptions = new Set<QueueSubscription>()
  #unlisten: Promise<Unlisten | undefined> | undefined
  #closed = false

  constructor(db: SqlDriver, options: SqlQueueOptions) {
    checkQueueDb(db)
    this.#db = db
    this.#sql = statements[db.dialect]
    this.#options = resolveOptions(db, options)
  }

  get publisher(): Publisher {
    return this
  }

  get subscriber(): Subscriber {
    return this
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal)
    // Refused like the other brokers' closed publishers: a publish after close() would still
    // store the batch, and a caller shutting down would not learn that its queue is closed.
    if (this.#closed) throw new SqlQueueClosedError('publisher')
    checkMessages(messages)
    if (messages.length === 0) return
    const now = this.#options.clock.now()
    await this.#db.transaction(async (tx) => {
      if (tx.dialect === 'postgres') {
        await tx.query(`SELECT pg_advisory_xact_lock_shared(${groupLockKey})`)
        await tx.query(this.#sql.publishMany, [
          messages.map((m) => m.topic),
          messages.map((m) => m.id),
          messages.map((m) => m.key),
          messages.map((m) => toBuffer(m.payload)),
          messages.map((m) => JSON.stringify(m.headers ?? {})),
          now,
          QUEUE_CHANNEL,
        ])
      } else {
        for (const m of messages) await this.#insertSqlite(tx, m, now)
      }
    })
    // Subscribers in this process need no notification round trip.
    const topics = new Set(messages.map((m) => m.topic))
    for (const subscription of this.#subscriptions) {
      if (topics.has(subscription.topic)) subscription.wake()
    }
  }

  async #insertSqlite(tx: SqlExecutor, m: OutgoingMessage, now: number): Promise<void> {
    const inserted = await tx.query<{ seq: number }>(this.#sql.insertMessage, [
      m.topic,
      m.id,
      m.key,
      toBuffer(m.payload),
      JSON.stringify(m.headers ?? {}),
      now,
    ])
    const seq = inserted[0]?.seq
    if (seq !== undefined) await tx.execute(this.#sql.fanOut, [m.topic, seq, m.key])
  }

  async subscribe(
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
  ): Promise<Subscription> {
    if (this.#closed) throw new SqlQueueClosedError('subscriber')
    checkStoredKey('topic', topic, maxStoredNameBytes)
    checkStoredKey('group', group, maxStoredNameBytes)
    checkFunction('handler', handler)
    await this.#registerGroup(topic, group)
    // close() may have run during either wait and could not see this subscription: starting
    // it now would leave a loop polling (and a LISTEN connection open) after close().
    if (this.#closed) throw new SqlQueueClosedError('subscriber')
    if (this.#options.listen) await this.#listen()
    if (this.#closed) throw new SqlQueueClosedError('subscriber')
    const subscription = new QueueSubscription(
      this.#db,
      this.#options,
      topic,
      group,
      handler,
      (s) => this.#subscriptions.delete(s),
    )
    this.#subscriptions.add(subscription)
    subscription.start()
    return subscription
  }

  // A new group receives every message still stored for its topic (those published before it
  // subscribed included), so a consumer that starts after the producer misses nothing. On
  // PostgreSQL the exclusive advisory lock waits for publishers in flight (they hold it
  // shared until COMMIT) and holds new ones back until the group is committed: a message is
  // either committed before the backfill reads the table, or fanned out to the new group.
  async #registerGroup(topic: string, group: string): Promise<void> {
    await this.#db.transaction(async (tx) => {
      if (tx.dialect === 'postgres') await tx.query(`SELECT pg_advisory_xact_lock(${groupLockKey})`)
      const added = await tx.execute(this.#sql.addGroup, [topic, group, this.#options.clock.now()])
      if (added.rowCount > 0) await tx.execute(this.#sql.backfill, [topic, group])
    })
  }

  async #listen(): Promise<void> {
    // The LISTEN connection is shared by later subscriptions and outlives this call: opened in
    // breakwater's own context, not the first subscriber's.
    this.#unlisten ??= detached(() =>
      this.#db.listen!(QUEUE_CHANNEL, (notification) => {
        for (const subscription of this.#subscriptions) {
          if (notification.reconnected || notification.payload === subscription.topic) {
            subscription.wake()
          }
        }
      }),
    ).catch((error: unknown) => {
      // Polling still delivers; LISTEN only shortens the wait.
      this.#options.onError({ error, phase: 'connection', topic: '*', group: '*' })
      return undefined
    })
    await this.#unlisten
  }

  async close(): Promise<void> {
    this.#closed = true
    try {
      await closeAll(this.#subscriptions)
    } finally {
      const unlisten = await this.#unlisten
      this.#unlisten = undefined
      await unlisten?.().catch(() => {})
    }
  }
}

/**
 * Creates the SQL queue broker on a SQLite or PostgreSQL database: the embedded default, so a
 * single machine needs no broker installed. Run `migrateSqlQueue(db)` first.
 *
 * - Publisher: a batch is stored in one transaction (a message id already stored for its topic
 *   is dropped, so a relay's re-publish after a crash is not delivered twice) and is durable
 *   when `publish()` resolves.
 * - Subscriber: consumer groups (each group gets every message; consumers in a group compete),
 *   leases with a visibility timeout, acknowledgement (the group's delivery row is deleted)
 *   only after the handler resolved, redelivery with a growing `deliveryCount` after a handler
 *   failure (`retryDelayMs`) or an expired lease. A group keeps per-key order across all its
 *   consumers, in one process or many: a key's next message is leased only once no earlier
 *   one is held (leased or waiting for its retry), and on PostgreSQL a group's consumers lease
 *   one after the other (a transaction-scoped advisory lock per topic and group), each seeing
 *   what the previous one leased. Only a consumer stalled past `visibilityTimeoutMs` breaks
 *   it: another consumer takes its batch meanwhile, and the stalled one, once an ack or a
 *   lease extension shows the loss, finishes only the handler it was running and starts none
 *   of the batch's other messages (the error goes to `onError`, phase `settle`). A message
 *   with the empty key is ordered with nothing: it waits for no other, and none waits for it.
 *   A running subscription keeps the Node.js process alive until it or the queue is closed,
 *   like a listening server (`keepAlive: false` turns that off).
 *
 * Stored messages are kept for late-joining groups and for dedupe until `pruneSqlQueue`
 * removes the acknowledged ones.
 *
 * Ids, keys, topics and groups are stored as index keys: a message id or key is at most 2048
 * UTF-8 bytes and a topic or group name at most 256 (PostgreSQL cannot index much more; SQLite
 * is held to the same caps), or `publish()` fails with `BROKER_REJECTED` naming it
 * (`messages[1].key`), `subscribe()` with `INVALID_OPTION` (`topic`), before anything is
 * written.
 *
 * A message row another writer put in `breakwater_queue` is delivered as it can be read: an
 * empty id, or (SQLite) a blob or bytes that are not UTF-8 where the id belongs, gives the id
 * `<topic>:<seq>`, as the Redis adapter gives `<topic>:<entry id>`; a key held as a blob is its
 * text (bytes that are not UTF-8 as U+FFFD), a payload held as text its bytes. One whose headers
 * are not the JSON record of strings the publisher writes, or whose payload is a number, is
 * refused: see {@link SqlQueueErrorEvent.phase}. Such a row reaches a group only if a delivery
 * row names it (the publisher writes one per group), or when the group is created after it.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming
 * it (`sqlQueue.visibilityTimeout`).
 *
 * @example
 * ```ts
 * import { createSqlQueue, migrateSqlQueue } from 'breakwater/outbox'
 * await migrateSqlQueue(db)
 * const queue = createSqlQueue(db)
 * await queue.subscriber.subscribe('orders', 'billing', async (m) => {
 *   console.log(m.id, Buffer.from(m.payload).toString())
 * })
 * await queue.publisher.publish([{ id: 'e1', topic: 'orders', key: 'o1', payload: '{}', headers: {} }])
 * ```
 */
export function createSqlQueue(db: SqlDriver, options: SqlQueueOptions = {}): SqlQueue {
  return new SqlQueueBroker(db, options)
}

/** Options of {@link pruneSqlQueue}. */
export interface PruneSqlQueueOptions {
  /**
   * Messages stored at least this long ago, and acknowledged by every group, are removed. This
   * is also the window in which a duplicate id is dropped and a new group is backfilled.
   * @default 86_400_000 (one day)
   */
  readonly olderThanMs?: number | undefined
  /**
   * Messages removed per statement.
   * @default 1000
   */
  readonly batchSize?: number | undefined
  /**
   * At most this many batches per call.
   * @default 100
   */
  readonly maxBatches?: number | undefined
  /**
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Refuses, naming option `db`, anything that is not a SQLite or PostgreSQL SqlDriver. */
function checkQueueDb(db: SqlDriver): void {
  checkSqlDriver('db', db)
}

/** The keys PruneSqlQueueOptions takes (internal: not exported from the package root). */
export const pruneSqlQueueOptions = optionKeys<PruneSqlQueueOptions>({
  olderThanMs: true,
  batchSize: true,
  maxBatches: true,
  clock: true,
})

/**
 * Removes stored queue messages older than `olderThanMs` that no group still has to handle, in
 * bounded batches; returns how many. A message whose `created_at` was changed outside
 * breakwater to text or a blob (SQLite) counts as old enough: its age cannot be told. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) before anything is removed.
 *
 * @example
 * ```ts
 * import { pruneSqlQueue } from 'breakwater/outbox'
 * await pruneSqlQueue(db, { olderThanMs: 3_600_000 })
 * ```
 */
export async function pruneSqlQueue(
  db: SqlDriver,
  options: PruneSqlQueueOptions = {},
): Promise<number> {
  checkQueueDb(db)
  checkObject('pruneSqlQueue', options)
  // A misspelt olderThanMs pruned with the one-day default: messages still wanted were removed.
  checkOptionKeys('pruneSqlQueue', options, pruneSqlQueueOptions)
  const clock = checkClock('pruneSqlQueue.clock', options.clock)
  const olderThanMs = checkInteger(
    'pruneSqlQueue.olderThanMs',
    options.olderThanMs ?? 86_400_000,
    0,
  )
  const batchSize = checkInteger('pruneSqlQueue.batchSize', options.batchSize ?? 1000, 1, 100_000)
  const maxBatches = checkInteger('pruneSqlQueue.maxBatches', options.maxBatches ?? 100, 1)
  const sql = statements[db.dialect]
  const cutoff = clock.now() - olderThanMs
  return removeInBatches(batchSize, maxBatches, () =>
    db.transaction(async (tx) => {
      // Shared with publishers: a group being created never sees a message vanish under its
      // backfill.
      if (tx.dialect === 'postgres')
        await tx.query(`SELECT pg_advisory_xact_lock_shared(${groupLockKey})`)
      return (await tx.execute(sql.prune, [cutoff, batchSize])).rowCount
    }),
  )
}
