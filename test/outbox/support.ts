// Real databases for the outbox tests (a SQLite file, a PostgreSQL database on the test server)
// with the outbox, queue and inbox migrations applied, and small helpers to watch them.
import type { IncomingMessage, OutgoingMessage, Publisher } from '../../src/brokers/types.js'
import {
  createRelay,
  createSqlQueue,
  migrateInbox,
  migrateOutbox,
  migrateSqlQueue,
  type Relay,
  type RelayOptions,
  type SqlQueue,
  type SqlQueueOptions,
} from '../../src/outbox/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

/** A migrated database for one test (or file). */
export interface OutboxDb {
  readonly db: SqlDriver
  readonly url: string
  /** Opens another connection (pool) to the same database, closed with the rest. */
  another(): Promise<SqlDriver>
  close(): Promise<void>
}

/** One engine under test. */
export interface DbTarget {
  readonly dialect: 'sqlite' | 'postgres'
  open(name: string): Promise<OutboxDb>
}

async function migrated(url: string, drop: () => Promise<void>): Promise<OutboxDb> {
  const db = await openDatabase(url)
  const others: SqlDriver[] = []
  try {
    await migrateOutbox(db)
    await migrateSqlQueue(db)
    await migrateInbox(db)
  } catch (error) {
    await db.close()
    await drop()
    throw error
  }
  return {
    db,
    url,
    async another() {
      const other = await openDatabase(url)
      others.push(other)
      return other
    },
    async close() {
      for (const other of others) await other.close()
      await db.close()
      await drop()
    },
  }
}

export const sqliteTarget: DbTarget = {
  dialect: 'sqlite',
  async open(name) {
    const file = createTestSqlite(name)
    return migrated(file.url, async () => file.cleanup())
  },
}

export const postgresTarget: DbTarget = {
  dialect: 'postgres',
  async open(name) {
    const database = await createTestDatabase(name)
    return migrated(database.url, () => database.drop())
  },
}

export const dbTargets: readonly DbTarget[] = [sqliteTarget, postgresTarget]

/** A fresh database with nothing migrated, for tests of the migrations themselves. */
export interface EmptyDbTarget {
  readonly dialect: 'sqlite' | 'postgres'
  open(name: string): Promise<{ readonly url: string; drop(): Promise<void> }>
}

export const emptyDbTargets: readonly EmptyDbTarget[] = [
  {
    dialect: 'sqlite',
    async open(name) {
      const file = createTestSqlite(name)
      return { url: file.url, drop: async () => file.cleanup() }
    },
  },
  {
    dialect: 'postgres',
    async open(name) {
      const database = await createTestDatabase(name)
      return { url: database.url, drop: () => database.drop() }
    },
  },
]

/** Real-time wait for integration tests (a few ms; never used for backoff or cooldowns). */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

export { until } from '../support/until.js'

/** Counts rows of a table (optionally with a WHERE clause). */
export async function count(db: SqlDriver, table: string, where = ''): Promise<number> {
  const rows = await db.query<{ n: number | string }>(`SELECT COUNT(*) AS n FROM ${table} ${where}`)
  return Number(rows[0]?.n ?? 0)
}

/** Events not yet published and not dead. */
export function pendingCount(db: SqlDriver): Promise<number> {
  return count(db, 'breakwater_outbox', 'WHERE published_at IS NULL AND dead_at IS NULL')
}

/** A message as a consumer saw it. */
export interface Received {
  readonly id: string
  readonly key: string
  readonly type: string | undefined
  readonly payload: unknown
  readonly deliveryCount: number
}

/** A subscription that records everything it receives, in order. */
export interface Collector {
  readonly received: Received[]
  /** Distinct ids received. */
  ids(): Set<string>
  /** Received ids per key, in arrival order. */
  byKey(): Map<string, string[]>
  close(): Promise<void>
}

/** Subscribes to `topic` as `group` and records every delivery. */
export async function collect(
  queue: SqlQueue,
  topic: string,
  group = 'test',
  handler?: (message: IncomingMessage) => Promise<void>,
): Promise<Collector> {
  const received: Received[] = []
  const subscription = await queue.subscriber.subscribe(topic, group, async (message) => {
    if (handler !== undefined) await handler(message)
    received.push({
      id: message.id,
      key: message.key,
      type: message.headers['event-type'],
      payload: JSON.parse(Buffer.from(message.payload).toString('utf8')),
      deliveryCount: message.deliveryCount,
    })
  })
  return {
    received,
    ids: () => new Set(received.map((r) => r.id)),
    byKey() {
      const map = new Map<string, string[]>()
      for (const r of received) {
        const list = map.get(r.key) ?? []
        list.push(r.id)
        map.set(r.key, list)
      }
      return map
    },
    close: () => subscription.close(),
  }
}

/** A SQL queue with fast polling for tests. */
export function testQueue(db: SqlDriver, options: SqlQueueOptions = {}): SqlQueue {
  return createSqlQueue(db, { pollIntervalMs: 2, maxPollIntervalMs: 20, ...options })
}

/** A publisher decorator for fault injection and recording around a real broker's publisher. */
export interface TestPublisher extends Publisher {
  /** Ids of every message the real publisher confirmed, in confirmation order (with repeats). */
  readonly confirmed: string[]
  /** Calls made (including failed ones). */
  calls: number
  /** The message keys of each confirmed call, in order. */
  readonly batches: Array<Array<{ readonly id: string; readonly key: string }>>
  /** Runs before each call is forwarded; may throw (the call fails) or wait (a slow broker). */
  before: ((messages: readonly OutgoingMessage[]) => void | Promise<void>) | undefined
}

/** Wraps `inner`: `before` can fail or delay calls; confirmed ids are recorded. */
export function testPublisher(inner: Publisher): TestPublisher {
  const publisher: TestPublisher = {
    confirmed: [],
    calls: 0,
    batches: [],
    before: undefined,
    async publish(messages, signal) {
      publisher.calls++
      await publisher.before?.(messages)
      await inner.publish(messages, signal)
      for (const m of messages) publisher.confirmed.push(m.id)
      publisher.batches.push(messages.map((m) => ({ id: m.id, key: m.key })))
    },
    close: () => inner.close(),
  }
  return publisher
}

/**
 * A relay that does not listen, prune or keep the process alive, publishing to a broker that
 * takes everything and records the ids in `published`, in order.
 */
export function recordingRelay(
  options: Omit<RelayOptions, 'publisher'>,
  published: string[],
): Relay {
  return createRelay({
    publisher: {
      publish: async (messages: readonly OutgoingMessage[]) => {
        for (const m of messages) published.push(m.id)
      },
      close: async () => {},
    },
    listen: false,
    retention: false,
    keepAlive: false,
    ...options,
  })
}

/** An error like the one a broker client raises when the broker is down (transient). */
export function brokerDown(): Error {
  return Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:4222'), { code: 'ECONNREFUSED' })
}

/** Ids confirmed more than once. */
export function repeated(ids: readonly string[]): string[] {
  const seen = new Set<string>()
  const twice = new Set<string>()
  for (const id of ids) {
    if (seen.has(id)) twice.add(id)
    seen.add(id)
  }
  return [...twice]
}

/**
 * `db`, handing `seen` the rows each query returns (with its SQL), after `before(sql, params)`
 * if given (a test holds a statement there). What statements hand the relay, without a mock
 * database.
 */
export function observingQueries<D extends SqlDriver>(
  db: D,
  seen: (sql: string, rows: ReadonlyArray<Record<string, unknown>>) => void,
  before?: (sql: string, params: readonly unknown[] | undefined) => Promise<void>,
): D {
  return new Proxy(db, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target)
      if (typeof value !== 'function') return value
      if (prop !== 'query') return value.bind(target)
      return async (sql: string, params?: readonly unknown[]) => {
        await before?.(sql, params)
        const rows = (await target.query(sql, params)) as Array<Record<string, unknown>>
        seen(sql, rows)
        return rows
      }
    },
  })
}
