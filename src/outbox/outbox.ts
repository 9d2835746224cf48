import { randomUUID } from 'node:crypto'
import { context, propagation } from '@opentelemetry/api'
import {
  hasEdgeWhitespace,
  KEY_HEADER,
  NATS_MSG_ID_HEADER,
  portableHeaderProblem,
} from '../brokers/common.js'
import type { Clock } from '../core/clock.js'
import { InvalidOptionError, withCause } from '../core/errors.js'
import { checkStoredKey, checkStoredName, hasLoneSurrogate, jsonTextOf } from '../core/text.js'
import {
  checkClock,
  checkInteger,
  checkKnownOptions,
  checkObject,
  checkOptionKeys,
  optionKeys,
} from '../core/validate.js'
import { checkSqlDriver } from '../stores/check-driver.js'
import type { SqlDriver, SqlExecutor, SqlTransaction } from '../stores/index.js'
import { defaultMaxPayloadBytes, oversizeBytes, PayloadTooLargeError } from './errors.js'
import { partitionOf } from './partition.js'
import { OUTBOX_CHANNEL, outboxStatements } from './sql.js'
import { wholeMsClock } from './time.js'
import { checkTransactionExecutor } from './transaction.js'

/** Header that carries the correlation id of an event (the flow it belongs to). */
export const CORRELATION_ID_HEADER = 'correlation-id'
/** Header that carries the causation id of an event (the message that caused it). */
export const CAUSATION_ID_HEADER = 'causation-id'
/** Header the relay adds with the event's type. */
export const EVENT_TYPE_HEADER = 'event-type'
/** Header the relay adds with the aggregate's type. */
export const AGGREGATE_TYPE_HEADER = 'aggregate-type'

/**
 * An event handed to {@link Outbox.enqueue}. Its text fields (id, aggregateType, aggregateId,
 * type, topic, correlationId, causationId) are non-empty strings without NUL characters or lone
 * surrogates (neither can be stored as they are), and the id and aggregateId, which are index
 * keys, are at most 2048 UTF-8 bytes (PostgreSQL cannot index much more). Those sent as headers
 * (all but topic: correlation-id, causation-id, event-type, aggregate-type, the key and NATS's
 * Nats-Msg-Id) hold no CR or LF and no leading or trailing whitespace, which some broker cannot
 * carry (nats.js refuses or trims them) and would refuse at every publish; anything else is
 * refused with `InvalidOptionError` naming the field (`events[1].id`) before writing, and so is
 * a field not listed here (`event.correlationID`): it would be dropped, and data belongs in the
 * payload or headers. A field whose value is `undefined` is ignored.
 */
export interface OutboxEvent {
  /**
   * The event's stable id, used by brokers and inboxes to drop duplicates. Unique in the outbox:
   * enqueuing an id twice fails the transaction.
   * @default a random UUID
   */
  readonly id?: string | undefined
  /** The kind of aggregate the event belongs to, e.g. `order`. */
  readonly aggregateType: string
  /** The aggregate's id: the ordering key. Events of one aggregate are published in order. */
  readonly aggregateId: string
  /** The event's type, e.g. `order-placed`. */
  readonly type: string
  /** The body: any JSON-serializable value, stored and published as JSON text. */
  readonly payload: unknown
  /**
   * Where the relay publishes it (subject, routing key, stream, queue topic).
   * @default the outbox's `topic` option
   */
  readonly topic?: string | undefined
  /** Extra headers (string values). Trace context is added unless the outbox turns it off. */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** Stored as the `correlation-id` header. */
  readonly correlationId?: string | undefined
  /** Stored as the `causation-id` header. */
  readonly causationId?: string | undefined
}

/** Options of {@link createOutbox}. */
export interface OutboxOptions {
  /**
   * The topic of events that name none: a fixed string, or a function of the event.
   * @default the event's aggregateType
   */
  readonly topic?: string | ((event: OutboxEvent) => string) | undefined
  /**
   * Copies the active OpenTelemetry context (W3C `traceparent`, `tracestate`, baggage) into the
   * headers, so consumers continue the producer's trace. A no-op unless an OpenTelemetry SDK
   * with a propagator is registered.
   * @default true
   */
  readonly propagateTraceContext?: boolean | undefined
  /**
   * On PostgreSQL, wakes relays (`NOTIFY breakwater_outbox`) when an enqueue commits (not at all
   * if it rolls back). Off means relays only poll. In the caller's own transaction the NOTIFY is
   * sent inside it, which PostgreSQL delivers at commit but pays for by serializing the commits
   * of notifying transactions; {@link Outbox.transaction} notifies right after its commit
   * instead, coalesced, so its writers commit concurrently.
   * @default true
   */
  readonly notify?: boolean | undefined
  /**
   * The largest payload `enqueue` takes: the UTF-8 bytes of its JSON text. A larger one is
   * refused with `PayloadTooLargeError` (`PAYLOAD_TOO_LARGE`) naming its size and this limit,
   * before anything is written. Brokers refuse large messages only at publish, after the
   * commit (a NATS server above its `max_payload`, 1 MiB by default), and a very large one
   * stalls the relay while it is written out (RabbitMQ's heartbeats starve). Raising it, raise
   * the relay's `maxPayloadBytes` to match, within what the broker takes: the relay
   * dead-letters a row above its own limit.
   * @default 1048576 (1 MiB, NATS's default max_payload)
   */
  readonly maxPayloadBytes?: number | undefined
  /**
   * Source of `created_at`.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Writes events into the outbox table inside the caller's transaction. */
export interface Outbox {
  /**
   * Writes one event in the caller's transaction (`tx`: a breakwater transaction, or any
   * executor wrapping the application's own: `fromPgClient`, `fromBetterSqlite`, `fromKysely`),
   * so the event commits or rolls back with the business write. Resolves to the event id.
   * The driver itself is refused with `InvalidOptionError` naming `tx`: the row would commit
   * on its own (on PostgreSQL, inside `db.transaction`, on another connection, surviving a
   * rollback); an event with no business write goes through `db.transaction` too.
   *
   * On SQLite the row is written by one statement issued synchronously within this call, so it
   * also works inside a synchronous better-sqlite3 `db.transaction(() => ...)` body.
   */
  enqueue(tx: SqlExecutor, event: OutboxEvent): Promise<string>
  /**
   * Writes several events, in order, with one statement (on PostgreSQL one per 1000 events);
   * resolves to their ids. On SQLite the statement is issued synchronously within this call,
   * as for one event, whatever the list's length.
   */
  enqueue(tx: SqlExecutor, events: readonly OutboxEvent[]): Promise<string[]>
  /**
   * Runs `fn` in a transaction of `db` (as `db.transaction`) and wakes relays right after it
   * commits, if `fn` enqueued anything (PostgreSQL, `notify` on). Enqueues inside it send no
   * NOTIFY within the transaction: PostgreSQL serializes the commits of notifying transactions
   * (each holds a global lock through its WAL flush), so writers that notify inside their
   * transactions cannot commit concurrently. The notifications of commits close together are
   * coalesced: at most one is in flight per database, and commits made meanwhile share the next.
   * A notification lost to a connection failure only delays relays until their next poll.
   *
   * @example
   * ```ts
   * await outbox.transaction(db, async (tx) => {
   *   await tx.execute('UPDATE orders SET state = $1 WHERE id = $2', ['paid', orderId])
   *   await outbox.enqueue(tx, { aggregateType: 'order', aggregateId: orderId, type: 'order-paid', payload: {} })
   * })
   * ```
   */
  transaction<T>(db: SqlDriver, fn: (tx: SqlTransaction) => Promise<T>): Promise<T>
}

/** The fields an {@link OutboxEvent} may have; any other is refused, naming it. */
const outboxEventFields = optionKeys<OutboxEvent>({
  id: true,
  aggregateType: true,
  aggregateId: true,
  type: true,
  payload: true,
  topic: true,
  headers: true,
  correlationId: true,
  causationId: true,
})

/** The keys OutboxOptions takes (internal: not exported from the package root). */
export const outboxOptions = optionKeys<OutboxOptions>({
  topic: true,
  propagateTraceContext: true,
  notify: true,
  maxPayloadBytes: true,
  clock: true,
})

/**
 * Sends `NOTIFY breakwater_outbox` after commits on one database, coalesced: one statement in
 * flight at a time; commits announced meanwhile share the next one.
 */
class CommitNotifier {
  readonly #db: SqlDriver
  #pending = false
  #sending = false

  constructor(db: SqlDriver) {
    this.#db = db
  }

  committed(): void {
    this.#pending = true
    if (!this.#sending) void this.#send()
  }

  async #send(): Promise<void> {
    this.#sending = true
    while (this.#pending) {
      this.#pending = false
      // A lost notification only delays relays until their next poll.
      await this.#db.query(notifyStatement, [OUTBOX_CHANNEL]).catch(() => {})
    }
    this.#sending = false
  }
}

const notifyStatement = "SELECT pg_notify($1, '')"

interface PreparedRow {
  readonly eventId: string
  readonly aggregateType: string
  readonly aggregateId: string
  readonly type: string
  readonly topic: string
  readonly payload: string
  readonly headers: string
  readonly partition: number
}

const traceSetter = {
  set(carrier: Record<string, string>, key: string, value: string) {
    carrier[key] = value
  },
}

// Above this, a multi-row insert is split on PostgreSQL: it handles large array parameters,
// but one giant statement would hold its row locks and memory for long. SQLite is never split:
// its write lock is held until the caller's commit anyway, and the statement must be issued
// synchronously within enqueue() (see the SQLite note of Outbox.enqueue): a second statement,
// sent after an await, would run after a synchronous better-sqlite3 transaction had already
// committed or rolled back, outside it.
const maxRowsPerStatement = 1000

// RFC 9110 field names (token characters), and what ends or breaks a header line.
const headerName = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const headerNameRule = "header names of letters, digits and ! # $ % & ' * + - . ^ _ ` | ~"
const headerValueBreak = /[\r\n\0]/
// Names set by the relay (the event's type and aggregate type) and by the NATS, RabbitMQ and
// Redis adapters (the key): a header of that name was overwritten by the relay without a word,
// or refused by the broker (BROKER_REJECTED) after the commit.
const reservedHeaders: ReadonlySet<string> = new Set([
  EVENT_TYPE_HEADER,
  AGGREGATE_TYPE_HEADER,
  KEY_HEADER,
])
// The headers the event's fields set, by lower-case name: HTTP reads names in any case, so a
// Correlation-Id header beside the field's correlation-id would be two values for one name.
const idFields: ReadonlyMap<string, 'correlationId' | 'causationId'> = new Map([
  [CORRELATION_ID_HEADER, 'correlationId'],
  [CAUSATION_ID_HEADER, 'causationId'],
])
const reservedHeaderRule = `a header name other than ${[...reservedHeaders].join(', ')}, which are reserved (set by the relay and the brokers from the event's type, aggregateType and aggregateId)`

class SqlOutbox implements Outbox {
  readonly #topic: string | ((event: OutboxEvent) => string) | undefined
  readonly #trace: boolean
  readonly #notify: boolean
  readonly #maxPayloadBytes: number
  readonly #clock: Clock
  // Transactions run by transaction(): their enqueues notify after commit, not inside.
  readonly #deferred = new WeakMap<SqlExecutor, { enqueued: boolean }>()
  readonly #notifiers = new WeakMap<SqlDriver, CommitNotifier>()

  constructor(options: OutboxOptions) {
    checkObject('outbox', options)
    // A misspelt notify or topic was dropped without a word and its default used.
    checkOptionKeys('outbox', options, outboxOptions)
    const topic = options.topic
    if (
      topic !== undefined &&
      typeof topic !== 'function' &&
      (typeof topic !== 'string' || topic === '')
    ) {
      throw new InvalidOptionError('outbox.topic', 'a non-empty string or a function', topic)
    }
    this.#topic = topic
    this.#trace = checkBoolean('outbox.propagateTraceContext', options.propagateTraceContext, true)
    this.#notify = checkBoolean('outbox.notify', options.notify, true)
    this.#maxPayloadBytes = checkInteger(
      'outbox.maxPayloadBytes',
      options.maxPayloadBytes ?? defaultMaxPayloadBytes,
      1,
    )
    const clock = wholeMsClock(checkClock('outbox.clock', options.clock))
    this.#clock = clock
  }

  async transaction<T>(db: SqlDriver, fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    checkSqlDriver('db', db, 'a SqlDriver')
    if (typeof fn !== 'function') throw new InvalidOptionError('fn', 'a function', fn)
    const state = { enqueued: false }
    const result = await db.transaction((tx) => {
      this.#deferred.set(tx, state)
      return fn(tx)
    })
    if (state.enqueued && this.#notify && db.dialect === 'postgres') {
      let notifier = this.#notifiers.get(db)
      if (notifier === undefined) {
        notifier = new CommitNotifier(db)
        this.#notifiers.set(db, notifier)
      }
      notifier.committed()
    }
    return result
  }

  enqueue(tx: SqlExecutor, event: OutboxEvent): Promise<string>
  enqueue(tx: SqlExecutor, events: readonly OutboxEvent[]): Promise<string[]>
  enqueue(
    tx: SqlExecutor,
    input: OutboxEvent | readonly OutboxEvent[],
  ): Promise<string | string[]> {
    // Everything up to the first statement runs synchronously (see the SQLite note above).
    let rows: PreparedRow[]
    try {
      // The driver itself was taken: the row committed on its own, and inside db.transaction
      // (db passed for tx by mistake) PostgreSQL wrote it on another pooled connection, so the
      // event was published for a business write that rolled back.
      checkTransactionExecutor(
        tx,
        "the transaction of the business write (db.transaction's tx, or fromPgClient, fromBetterSqlite or fromKysely of your own), not the driver: the event must commit with it",
      )
      if (Array.isArray(input)) {
        // By index, not map: map skips the holes of a sparse list, which then went to the
        // database unchecked (a bare NOT NULL error) and left holes in the ids resolved.
        const events = input as readonly OutboxEvent[]
        rows = []
        for (let i = 0; i < events.length; i++) rows.push(this.#prepare(events[i]!, `events[${i}]`))
      } else {
        rows = [this.#prepare(input as OutboxEvent, 'event')]
      }
    } catch (error) {
      return Promise.reject(error)
    }
    const createdAt = this.#clock.now()
    if (!Array.isArray(input)) return this.#insertOne(tx, rows[0]!, createdAt)
    if (rows.length === 0) return Promise.resolve([])
    return this.#insertMany(tx, rows, createdAt)
  }

  async #insertOne(tx: SqlExecutor, row: PreparedRow, createdAt: number): Promise<string> {
    const statements = outboxStatements[tx.dialect]
    const params = [
      row.eventId,
      row.aggregateType,
      row.aggregateId,
      row.type,
      row.topic,
      row.payload,
      row.headers,
      row.partition,
      createdAt,
    ]
    if (this.#notifiesInside(tx)) {
      await tx.query(statements.insertOneNotify, [...params, OUTBOX_CHANNEL])
    } else {
      await tx.execute(statements.insertOne, params)
    }
    return row.eventId
  }

  // NOTIFY inside the transaction, unless transaction() runs it (then: after its commit).
  #notifiesInside(tx: SqlExecutor): boolean {
    const deferred = this.#deferred.get(tx)
    if (deferred !== undefined) {
      deferred.enqueued = true
      return false
    }
    return this.#notify && tx.dialect === 'postgres'
  }

  async #insertMany(tx: SqlExecutor, rows: PreparedRow[], createdAt: number): Promise<string[]> {
    const statements = outboxStatements[tx.dialect]
    if (tx.dialect === 'sqlite') {
      // One statement, issued before the first await (see maxRowsPerStatement).
      const json = JSON.stringify(
        rows.map((r) => [
          r.eventId,
          r.aggregateType,
          r.aggregateId,
          r.type,
          r.topic,
          r.payload,
          r.headers,
          r.partition,
        ]),
      )
      await tx.execute(statements.insertMany, [json, createdAt])
      return rows.map((r) => r.eventId)
    }
    for (let start = 0; start < rows.length; start += maxRowsPerStatement) {
      const chunk = rows.slice(start, start + maxRowsPerStatement)
      const params = [
        chunk.map((r) => r.eventId),
        chunk.map((r) => r.aggregateType),
        chunk.map((r) => r.aggregateId),
        chunk.map((r) => r.type),
        chunk.map((r) => r.topic),
        chunk.map((r) => r.payload),
        chunk.map((r) => r.headers),
        chunk.map((r) => r.partition),
        createdAt,
      ]
      if (this.#notifiesInside(tx))
        await tx.query(statements.insertManyNotify, [...params, OUTBOX_CHANNEL])
      else await tx.execute(statements.insertMany, params)
    }
    return rows.map((r) => r.eventId)
  }

  #prepare(event: OutboxEvent, at: string): PreparedRow {
    if (typeof event !== 'object' || event === null)
      throw new InvalidOptionError(at, 'an outbox event object', event)
    // A misspelt field (`correlationID`) was dropped without a word; data belongs in the payload.
    checkKnownOptions(at, event, outboxEventFields)
    // Only undefined takes the default: `?? randomUUID()` gave id: null a random id (and
    // topic: null the default topic) where every other field refuses null. Compared here, not
    // by a second loop over the fields: this runs per event.
    const id = event.id === undefined ? randomUUID() : event.id
    // Index keys (the id's own, and the held-rows index a retry or dead letter puts the
    // aggregate id in): capped, or PostgreSQL fails the caller's transaction (or, for the
    // aggregate id, every charge of a failed publish) with a bare "index row size" error, and
    // an id SQLite took could be recorded by no PostgreSQL inbox.
    checkStoredKey(`${at}.id`, id)
    checkHeaderField(`${at}.id`, NATS_MSG_ID_HEADER, id)
    checkText(`${at}.aggregateType`, event.aggregateType)
    checkHeaderField(`${at}.aggregateType`, AGGREGATE_TYPE_HEADER, event.aggregateType)
    checkStoredKey(`${at}.aggregateId`, event.aggregateId)
    checkHeaderField(`${at}.aggregateId`, KEY_HEADER, event.aggregateId)
    checkText(`${at}.type`, event.type)
    checkHeaderField(`${at}.type`, EVENT_TYPE_HEADER, event.type)
    const topic =
      event.topic !== undefined
        ? event.topic
        : ((typeof this.#topic === 'function' ? this.#topic(event) : this.#topic) ??
          event.aggregateType)
    checkText(`${at}.topic`, topic)
    const payload = jsonTextOf(`${at}.payload`, event.payload)
    const bytes = oversizeBytes(payload, this.#maxPayloadBytes)
    if (bytes !== undefined)
      throw new PayloadTooLargeError(`${at}.payload`, bytes, this.#maxPayloadBytes, 'outbox')
    // No prototype: no header name reaches an Object.prototype member (__proto__ is refused below).
    const headers: Record<string, string> = Object.create(null)
    if (this.#trace) propagation.inject(context.active(), headers, traceSetter)
    if (event.headers !== undefined) {
      checkObject(`${at}.headers`, event.headers)
      checkNoSymbolHeaders(`${at}.headers`, event.headers)
      for (const name of Object.keys(event.headers)) {
        const value = readHeader(`${at}.headers.${name}`, event.headers, name)
        // What every broker carries: an HTTP field name (the webhook sends the headers as HTTP
        // headers; nats.js refuses a name with a space or a colon), not one of the reserved
        // names, and a value without CR, LF, NUL or half of a surrogate pair (no UTF-8 form:
        // the brokers' checkOutgoing refuses it). Any of these would be refused at publish,
        // long after the transaction committed, and the event would be dead-lettered.
        if (!headerName.test(name))
          throw new InvalidOptionError(`${at}.headers`, headerNameRule, name)
        if (reservedHeaders.has(name))
          throw new InvalidOptionError(`${at}.headers.${name}`, reservedHeaderRule, value)
        if (typeof value !== 'string')
          throw new InvalidOptionError(`${at}.headers.${name}`, 'a string', value)
        if (headerValueBreak.test(value) || hasLoneSurrogate(value))
          throw new InvalidOptionError(
            `${at}.headers.${name}`,
            'a string without CR, LF, NUL or half of a surrogate pair',
            value,
          )
        // The outbox does not know which broker the relay publishes to: a header one of them
        // refuses on every message (NATS: Nats-Msg-Id, a value it would trim; RabbitMQ:
        // x-death, __proto__, a name over 255 bytes) is refused here, before the commit.
        const problem = portableHeaderProblem(name, value)
        if (problem !== undefined)
          throw new InvalidOptionError(
            `${at}.headers.${name}`,
            `a header every supported broker carries (${problem})`,
            value,
          )
        // The field would overwrite the header without a word: one or the other, not both.
        const field = idFields.get(name.toLowerCase())
        if (field !== undefined && event[field] !== undefined)
          throw new InvalidOptionError(
            `${at}.headers.${name}`,
            `no ${name} header alongside the ${field} field, which sets it (give one of them)`,
            value,
          )
        headers[name] = value
      }
    }
    if (event.correlationId !== undefined) {
      checkText(`${at}.correlationId`, event.correlationId)
      checkHeaderField(`${at}.correlationId`, CORRELATION_ID_HEADER, event.correlationId)
      headers[CORRELATION_ID_HEADER] = event.correlationId
    }
    if (event.causationId !== undefined) {
      checkText(`${at}.causationId`, event.causationId)
      checkHeaderField(`${at}.causationId`, CAUSATION_ID_HEADER, event.causationId)
      headers[CAUSATION_ID_HEADER] = event.causationId
    }
    return {
      eventId: id,
      aggregateType: event.aggregateType,
      aggregateId: event.aggregateId,
      type: event.type,
      topic,
      payload,
      headers: JSON.stringify(headers),
      partition: partitionOf(event.aggregateId),
    }
  }
}

/**
 * Reads one header's value. A getter that throws is refused naming the header, its error the
 * `cause`, as the payload's are: read by Object.entries, its error escaped bare, naming no field.
 */
function readHeader(option: string, headers: Readonly<Record<string, string>>, name: string) {
  try {
    return headers[name]
  } catch (thrown) {
    throw withCause(
      new InvalidOptionError(
        option,
        `a header value that can be read (its getter threw: ${String(thrown)})`,
        undefined,
      ),
      thrown,
    )
  }
}

/**
 * Refuses an own enumerable symbol key in an event's headers: `Object.entries` skips it, so the
 * header was dropped without a word, where the payload refuses one (JSON would leave it out).
 * Non-enumerable ones are metadata, skipped as JSON skips them.
 */
function checkNoSymbolHeaders(option: string, headers: object): void {
  for (const symbol of Object.getOwnPropertySymbols(headers)) {
    if (Object.prototype.propertyIsEnumerable.call(headers, symbol))
      throw new InvalidOptionError(
        option,
        'header names that are strings (a symbol key would be left out)',
        String(symbol),
      )
  }
}

/**
 * Checks text stored in an outbox column (an event's fields), as
 * {@link checkStoredName} does: a NUL fails on PostgreSQL with a bare driver error that aborts
 * the caller's transaction, and a lone surrogate is stored as U+FFFD, so two different ids would
 * become one, and the id enqueue() returns would not be the one published.
 */
function checkText(option: string, value: unknown): asserts value is string {
  checkStoredName(option, value)
}

/**
 * @internal Why some broker adapter would refuse `value` as a header value on every message:
 * a CR, LF or NUL ends or breaks a header line (nats.js and HTTP refuse it), and NATS headers
 * cannot carry leading or trailing whitespace (nats.js trims it, so the NATS adapter refuses
 * it). Undefined when every adapter carries it. Also a reactor's (src/saga/choreography.ts),
 * whose emitted events inherit a consumed message's ids.
 *
 * Not one function with {@link portableHeaderProblem}, on purpose: they judge different headers.
 * That one judges an application's header, name and value (reserved and brokers' own names,
 * lone surrogates), and leaves CR, LF and NUL to the headers loop in `enqueue`, which refuses
 * them first with its own message. This one judges the value of a header breakwater sets itself
 * (ids and types), whose name is fine by construction and whose lone surrogates `checkStoredName`
 * refuses before, as text no database stores. Folding either into the other would change what
 * is refused with which message, and what a reactor answers for a message id with a lone
 * surrogate (this one passes it; enqueue's `checkText` refuses it later). The one rule they
 * share, edge whitespace, is one function already (`hasEdgeWhitespace`).
 */
export function headerValueProblem(value: string): string | undefined {
  if (headerValueBreak.test(value)) return 'it holds a CR, LF or NUL, which no header line carries'
  if (hasEdgeWhitespace(value))
    return 'it has leading or trailing whitespace, which NATS headers cannot carry (nats.js trims it)'
  return undefined
}

// The event's fields that are sent as headers: the ids and types by the relay, the aggregate id
// as the key (NATS and RabbitMQ send it as the breakwater-key header) and the id as NATS's
// Nats-Msg-Id. Checked as a header's value is, since a value some adapter refuses would be
// refused at every publish after the commit, and the event dead-lettered, holding back its
// aggregate.
function checkHeaderField(option: string, header: string, value: string): void {
  const problem = headerValueProblem(value)
  if (problem !== undefined)
    throw new InvalidOptionError(
      option,
      `text every supported broker carries as the ${header} header (${problem})`,
      value,
    )
}

/** Returns a boolean option's value or its default, else throws naming the option. */
export function checkBoolean(option: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback
  if (typeof value !== 'boolean') throw new InvalidOptionError(option, 'a boolean', value)
  return value
}

/**
 * Creates the producer side of the transactional outbox: `enqueue(tx, event)` writes events
 * into the outbox table in the caller's own transaction, so the business change and the events
 * it causes commit together or not at all. A relay (`createRelay`) publishes them afterwards.
 * Run `migrateOutbox(db)` once first. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { createOutbox, migrateOutbox } from 'breakwater/outbox'
 * await migrateOutbox(db)
 * const outbox = createOutbox({ topic: 'orders' })
 * await db.transaction(async (tx) => {
 *   await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o1', 42])
 *   await outbox.enqueue(tx, {
 *     aggregateType: 'order', aggregateId: 'o1', type: 'order-placed', payload: { total: 42 },
 *   })
 * })
 * ```
 */
export function createOutbox(options: OutboxOptions = {}): Outbox {
  return new SqlOutbox(options)
}
