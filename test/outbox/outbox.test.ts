// enqueue(tx, event) on real SQLite and PostgreSQL: the event commits and rolls back with the
// business write, in breakwater transactions and in the application's own wrapped ones.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  CAUSATION_ID_HEADER,
  CORRELATION_ID_HEADER,
  createOutbox,
  OUTBOX_CHANNEL,
  OUTBOX_PARTITIONS,
  partitionOf,
} from '../../src/outbox/index.js'
import {
  fromBetterSqlite,
  fromPgClient,
  type SqlDriver,
  type SqlNotification,
  type SqlTransaction,
} from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, delay, type OutboxDb, until } from './support.js'

interface StoredRow {
  id: number
  event_id: string
  aggregate_type: string
  aggregate_id: string
  event_type: string
  topic: string
  payload: string
  headers: string
  partition_no: number
  created_at: number
  published_at: number | null
  attempts: number
}

describe('partitionOf', () => {
  it('is FNV-1a of the UTF-8 bytes modulo the partition count, stable across calls', () => {
    // Reference values computed independently: FNV-1a 32 of "a" is 0xe40c292c.
    expect(partitionOf('a')).toBe(0xe40c292c % OUTBOX_PARTITIONS)
    expect(partitionOf('')).toBe(0x811c9dc5 % OUTBOX_PARTITIONS)
    // Non-ASCII goes through UTF-8: "é" is the bytes c3 a9.
    let h = 0x811c9dc5
    for (const byte of [0xc3, 0xa9]) h = Math.imul(h ^ byte, 0x01000193)
    expect(partitionOf('é')).toBe((h >>> 0) % OUTBOX_PARTITIONS)
    const spread = new Set(Array.from({ length: 1000 }, (_, i) => partitionOf(`order-${i}`)))
    expect(spread.size).toBe(OUTBOX_PARTITIONS)
  })
})

describe.each(dbTargets)('outbox.enqueue on $dialect', (target) => {
  let t: OutboxDb
  const clock = new ManualClock(1_700_000_000_000)
  const outbox = createOutbox({ clock, topic: 'orders' })

  beforeAll(async () => {
    t = await target.open('outbox_enqueue')
    await t.db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)')
  })
  afterAll(async () => {
    await t?.close()
  })

  async function row(eventId: string): Promise<StoredRow | undefined> {
    const rows = await t.db.query<StoredRow>(
      'SELECT * FROM breakwater_outbox WHERE event_id = $1',
      [eventId],
    )
    return rows[0]
  }

  it('commits the event with the business write, with every column filled', async () => {
    const eventId = await t.db.transaction(async (tx) => {
      await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o1', 42])
      return outbox.enqueue(tx, {
        aggregateType: 'order',
        aggregateId: 'o1',
        type: 'order-placed',
        payload: { total: 42, lines: [{ sku: 'a', n: 2 }] },
        headers: { tenant: 't1' },
        correlationId: 'flow-1',
        causationId: 'cmd-1',
      })
    })
    expect(eventId).toMatch(/^[0-9a-f-]{36}$/)
    const stored = await row(eventId)
    expect(stored).toMatchObject({
      aggregate_type: 'order',
      aggregate_id: 'o1',
      event_type: 'order-placed',
      topic: 'orders',
      partition_no: partitionOf('o1'),
      created_at: 1_700_000_000_000,
      published_at: null,
      attempts: 0,
    })
    expect(JSON.parse(stored!.payload)).toEqual({ total: 42, lines: [{ sku: 'a', n: 2 }] })
    expect(JSON.parse(stored!.headers)).toEqual({
      tenant: 't1',
      [CORRELATION_ID_HEADER]: 'flow-1',
      [CAUSATION_ID_HEADER]: 'cmd-1',
    })
  })

  // __proto__ is refused (RabbitMQ's driver drops it on receipt): broker-refused-headers.test.ts.
  it('keeps a header named like an Object.prototype member', async () => {
    const headers = JSON.parse('{"toString":"p","constructor":"c"}') as Record<string, string>
    const eventId = await t.db.transaction((tx) =>
      outbox.enqueue(tx, {
        aggregateType: 'order',
        aggregateId: 'o9',
        type: 't',
        payload: 1,
        headers,
      }),
    )
    const stored = JSON.parse((await row(eventId))!.headers) as Record<string, string>
    expect(Object.entries(stored)).toEqual([
      ['toString', 'p'],
      ['constructor', 'c'],
    ])
  })

  it('rolls back with the business write', async () => {
    let eventId = ''
    await expect(
      t.db.transaction(async (tx) => {
        await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o2', 1])
        eventId = await outbox.enqueue(tx, {
          aggregateType: 'order',
          aggregateId: 'o2',
          type: 'order-placed',
          payload: null,
        })
        throw new Error('business rule failed')
      }),
    ).rejects.toThrow('business rule failed')
    expect(eventId).not.toBe('')
    expect(await row(eventId)).toBeUndefined()
    expect(await count(t.db, 'orders', "WHERE id = 'o2'")).toBe(0)
  })

  // db passed for tx by mistake inside db.transaction: on PostgreSQL the driver ran the insert
  // on another pooled connection, committed at once, so the event outlived the rolled-back
  // business write (SQLite's driver refused the nested call, TRANSACTION_MISUSE, by luck).
  it('refuses the driver itself, writing nothing, in or out of a transaction', async () => {
    const event = { aggregateType: 'order', aggregateId: 'o-drv', type: 'order-placed', payload: 1 }
    const before = await count(t.db, 'breakwater_outbox')
    const outside = await outbox.enqueue(t.db, event).catch((e: unknown) => e)
    expect(outside).toBeInstanceOf(InvalidOptionError)
    expect((outside as InvalidOptionError).option).toBe('tx')
    const inside = await t.db
      .transaction(async (tx) => {
        await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o-drv', 1])
        await outbox.enqueue(t.db, [event])
      })
      .catch((e: unknown) => e)
    expect(inside).toBeInstanceOf(InvalidOptionError)
    expect((inside as InvalidOptionError).option).toBe('tx')
    expect(await count(t.db, 'breakwater_outbox')).toBe(before)
    expect(await count(t.db, 'orders', "WHERE id = 'o-drv'")).toBe(0)
  })

  it('enqueues many events in order with one call, ids in insertion order', async () => {
    const events = Array.from({ length: 2_500 }, (_, i) => ({
      id: `bulk-${i}`,
      aggregateType: 'order',
      aggregateId: `bulk-${i % 7}`,
      type: 'line-added',
      payload: { i },
      topic: i % 2 === 0 ? 'even' : 'odd',
    }))
    const ids = await t.db.transaction((tx) => outbox.enqueue(tx, events))
    expect(ids).toEqual(events.map((e) => e.id))
    const rows = await t.db.query<StoredRow>(
      "SELECT * FROM breakwater_outbox WHERE event_id LIKE 'bulk-%' ORDER BY id",
    )
    expect(rows.map((r) => r.event_id)).toEqual(ids)
    expect(rows.map((r) => JSON.parse(r.payload).i)).toEqual(events.map((_, i) => i))
    expect(rows.every((r, i) => r.topic === (i % 2 === 0 ? 'even' : 'odd'))).toBe(true)
    expect(rows.every((r) => r.partition_no === partitionOf(r.aggregate_id))).toBe(true)
    expect(await t.db.transaction((tx) => outbox.enqueue(tx, []))).toEqual([])
  })

  it('fails the transaction when an event id is enqueued twice', async () => {
    const event = { id: 'dup-1', aggregateType: 'order', aggregateId: 'd', type: 'x', payload: 1 }
    await t.db.transaction((tx) => outbox.enqueue(tx, event))
    await expect(t.db.transaction((tx) => outbox.enqueue(tx, event))).rejects.toThrow()
    expect(await count(t.db, 'breakwater_outbox', "WHERE event_id = 'dup-1'")).toBe(1)
  })

  it('rejects invalid events before writing, naming the field', async () => {
    const bad = [
      [{ aggregateType: 'order', aggregateId: '', type: 't', payload: 1 }, 'event.aggregateId'],
      [
        { aggregateType: 'order', aggregateId: 'a', type: 't', payload: undefined },
        'event.payload',
      ],
      [{ aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1n }, 'event.payload'],
      [{ aggregateType: 'order', aggregateId: 'a', type: '', payload: 1 }, 'event.type'],
      [
        { aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1, headers: { x: 1 } },
        'event.headers.x',
      ],
      // Refused by the brokers at publish (a webhook's HTTP headers, nats.js), after the commit.
      [
        { aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1, headers: { '': 'v' } },
        'event.headers',
      ],
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          headers: { 'a b': 'v' },
        },
        'event.headers',
      ],
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          headers: { 'a:b': 'v' },
        },
        'event.headers',
      ],
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          headers: { a: 'x\r\ny' },
        },
        'event.headers.a',
      ],
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          headers: { a: 'x\u0000' },
        },
        'event.headers.a',
      ],
      // Object.entries skips symbol keys: the header was dropped without a word (the payload
      // refuses one, as JSON would leave it out).
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          headers: { [Symbol('tenant')]: 'acme', a: 'b' },
        },
        'event.headers',
      ],
      // PostgreSQL text cannot hold NUL (a bare driver error there, stored on SQLite), and a
      // lone surrogate has no UTF-8 form (stored as U+FFFD, so two ids would become one).
      [
        { aggregateType: 'order', aggregateId: 'a\u0000b', type: 't', payload: 1 },
        'event.aggregateId',
      ],
      [
        { aggregateType: 'order', aggregateId: 'a\ud800', type: 't', payload: 1 },
        'event.aggregateId',
      ],
      [
        { id: 'e\udc00', aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1 },
        'event.id',
      ],
      [
        { id: 'e\u0000', aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1 },
        'event.id',
      ],
      [
        { aggregateType: 'ord\u0000er', aggregateId: 'a', type: 't', payload: 1 },
        'event.aggregateType',
      ],
      [{ aggregateType: 'order', aggregateId: 'a', type: 't\ud800', payload: 1 }, 'event.type'],
      [
        { aggregateType: 'order', aggregateId: 'a', type: 't', payload: 1, topic: 'x\u0000' },
        'event.topic',
      ],
      [
        {
          aggregateType: 'order',
          aggregateId: 'a',
          type: 't',
          payload: 1,
          correlationId: '\ud800',
        },
        'event.correlationId',
      ],
    ] as const
    for (const [event, option] of bad) {
      const error = await t.db
        .transaction((tx) => outbox.enqueue(tx, event as never))
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
    expect(() => createOutbox({ topic: '' })).toThrow(InvalidOptionError)
  })

  // Read by Object.entries outside any check: the getter's error escaped bare, naming no field
  // (a payload getter that throws is refused naming its path, with the error as cause).
  it('refuses a header whose getter throws, naming it, with the error as cause', async () => {
    const boom = new Error('tenant not loaded')
    const headers = {
      ok: 'v',
      get tenant(): string {
        throw boom
      },
    }
    const error = await t.db
      .transaction((tx) =>
        outbox.enqueue(tx, {
          aggregateType: 'order',
          aggregateId: 'g',
          type: 't',
          payload: 1,
          headers,
        }),
      )
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('event.headers.tenant')
    expect((error as Error).message).toContain('tenant not loaded')
    expect((error as Error).cause).toBe(boom)
  })

  it('outbox.transaction() commits and rolls back the events with the business write', async () => {
    const event = { aggregateType: 'order', aggregateId: 'tx-1', type: 'x', payload: 1 }
    const id = await outbox.transaction(t.db, async (tx) => {
      await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['tx-1', 1])
      return outbox.enqueue(tx, event)
    })
    expect(await row(id)).toMatchObject({ aggregate_id: 'tx-1' })
    let dropped = ''
    const error = await outbox
      .transaction(t.db, async (tx) => {
        dropped = await outbox.enqueue(tx, { ...event, aggregateId: 'tx-2' })
        throw new Error('rollback')
      })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(Error)
    expect(await row(dropped)).toBeUndefined()
    await expect(outbox.transaction({} as SqlDriver, async () => 1)).rejects.toThrow(
      InvalidOptionError,
    )
  })

  if (target.dialect === 'postgres') {
    it('works in the application own pg transaction (fromPgClient), commit and rollback', async () => {
      const pg = (await import('pg')).default
      const pool = new pg.Pool({ connectionString: t.url, max: 1 })
      try {
        const client = await pool.connect()
        try {
          await client.query('BEGIN')
          await client.query('INSERT INTO orders (id, total) VALUES ($1, $2)', ['pg-1', 5])
          const kept = await outbox.enqueue(fromPgClient(client), {
            aggregateType: 'order',
            aggregateId: 'pg-1',
            type: 'order-placed',
            payload: {},
          })
          await client.query('COMMIT')
          expect(await row(kept)).toBeDefined()
          await client.query('BEGIN')
          const dropped = await outbox.enqueue(fromPgClient(client), {
            aggregateType: 'order',
            aggregateId: 'pg-2',
            type: 'order-placed',
            payload: {},
          })
          await client.query('ROLLBACK')
          expect(await row(dropped)).toBeUndefined()
        } finally {
          client.release()
        }
      } finally {
        await pool.end()
      }
    })

    it('notifies relays at commit, never before and never on rollback', async () => {
      const listener = await t.another()
      const seen: SqlNotification[] = []
      const unlisten = await listener.listen!(OUTBOX_CHANNEL, (n) => seen.push(n))
      try {
        const event = { aggregateType: 'order', aggregateId: 'n1', type: 'x', payload: 1 }
        await t.db
          .transaction(async (tx) => {
            await outbox.enqueue(tx, event)
            throw new Error('rollback')
          })
          .catch(() => {})
        let committed = false
        await t.db.transaction(async (tx) => {
          await outbox.enqueue(tx, [event, { ...event, aggregateId: 'n2' }])
          await outbox.enqueue(tx, event)
          await delay(50)
          expect(seen).toHaveLength(0)
          committed = true
        })
        expect(committed).toBe(true)
        await until(() => seen.length > 0, 'the notification')
        await delay(50)
        // Identical notifications of one transaction are folded into one.
        expect(seen).toHaveLength(1)
        const quiet = createOutbox({ notify: false })
        await t.db.transaction((tx) => quiet.enqueue(tx, event))
        await delay(50)
        expect(seen).toHaveLength(1)
      } finally {
        await unlisten()
      }
    })

    it('outbox.transaction() notifies right after its commit, not inside it, and only if it enqueued', async () => {
      // Records every statement, in the transaction and on the driver.
      const inside: string[] = []
      const outside: string[] = []
      const recordingTx = (tx: SqlTransaction): SqlTransaction => ({
        dialect: tx.dialect,
        query: (sql, params) => {
          inside.push(sql)
          return tx.query(sql, params)
        },
        execute: (sql, params) => {
          inside.push(sql)
          return tx.execute(sql, params)
        },
        transaction: (fn) => tx.transaction(fn),
      })
      const db = t.db
      const recording: SqlDriver = {
        dialect: db.dialect,
        query: (sql, params) => {
          outside.push(sql)
          return db.query(sql, params)
        },
        execute: (sql, params) => {
          outside.push(sql)
          return db.execute(sql, params)
        },
        transaction: (fn) => db.transaction((tx) => fn(recordingTx(tx))),
        close: async () => {},
      }
      const listener = await t.another()
      const seen: SqlNotification[] = []
      const unlisten = await listener.listen!(OUTBOX_CHANNEL, (n) => seen.push(n))
      try {
        const event = { aggregateType: 'order', aggregateId: 'ac1', type: 'x', payload: 1 }
        const id = await outbox.transaction(recording, async (tx) => {
          await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['ac-1', 3])
          const [first] = await outbox.enqueue(tx, [event])
          await outbox.enqueue(tx, { ...event, aggregateId: 'ac2' })
          return first
        })
        expect(await row(id!)).toBeDefined()
        expect(inside.some((sql) => /pg_notify|NOTIFY/i.test(sql))).toBe(false)
        await until(() => seen.length > 0, 'the notification after commit')
        expect(outside.filter((sql) => /pg_notify/.test(sql))).toHaveLength(1)
        // Nothing enqueued, or rolled back: no notification is sent.
        await outbox.transaction(recording, async (tx) => {
          await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['ac-2', 3])
        })
        const failed = await outbox
          .transaction(recording, async (tx) => {
            await outbox.enqueue(tx, { ...event, aggregateId: 'ac3' })
            throw new Error('rollback')
          })
          .catch((error: unknown) => error)
        expect(failed).toBeInstanceOf(Error)
        expect(outside.filter((sql) => /pg_notify/.test(sql))).toHaveLength(1)
        // Concurrent writers: each commit is followed by a notification in flight or a later
        // one that covers it; never more statements than commits.
        await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            outbox.transaction(recording, (tx) =>
              outbox.enqueue(tx, { ...event, aggregateId: `acc-${i}` }),
            ),
          ),
        )
        const sent = outside.filter((sql) => /pg_notify/.test(sql)).length
        expect(sent).toBeGreaterThan(1)
        expect(sent).toBeLessThanOrEqual(21)
      } finally {
        await unlisten()
      }
    })
  } else {
    it('works inside a synchronous better-sqlite3 transaction (fromBetterSqlite)', async () => {
      const Database = (await import('better-sqlite3')).default
      const raw = new Database(t.url.slice('sqlite:'.length))
      raw.pragma('busy_timeout = 5000')
      try {
        const ids: Array<Promise<string>> = []
        raw.transaction(() => {
          raw.prepare('INSERT INTO orders (id, total) VALUES (?, ?)').run('sq-1', 3)
          ids.push(
            outbox.enqueue(fromBetterSqlite(raw), {
              aggregateType: 'order',
              aggregateId: 'sq-1',
              type: 'order-placed',
              payload: {},
            }),
          )
        })()
        expect(await row(await ids[0]!)).toBeDefined()
        const dropped: Array<Promise<string>> = []
        expect(() =>
          raw.transaction(() => {
            dropped.push(
              outbox.enqueue(fromBetterSqlite(raw), {
                aggregateType: 'order',
                aggregateId: 'sq-2',
                type: 'order-placed',
                payload: {},
              }),
            )
            throw new Error('rollback')
          })(),
        ).toThrow('rollback')
        expect(await row(await dropped[0]!)).toBeUndefined()
      } finally {
        raw.close()
      }
    })

    it('writes a list of more than 1000 events synchronously inside a better-sqlite3 transaction', async () => {
      const Database = (await import('better-sqlite3')).default
      const raw = new Database(t.url.slice('sqlite:'.length))
      raw.pragma('busy_timeout = 5000')
      const events = (prefix: string) =>
        Array.from({ length: 1_001 }, (_, i) => ({
          id: `${prefix}-${i}`,
          aggregateType: 'order',
          aggregateId: `${prefix}-${i % 3}`,
          type: 'line-added',
          payload: { i },
        }))
      try {
        const rolledBack: Array<Promise<string[]>> = []
        expect(() =>
          raw.transaction(() => {
            rolledBack.push(outbox.enqueue(fromBetterSqlite(raw), events('sync-rb')))
            throw new Error('rollback')
          })(),
        ).toThrow('rollback')
        await rolledBack[0]
        // Every row rolled back with the transaction, none written after it ended.
        expect(await count(t.db, 'breakwater_outbox', "WHERE event_id LIKE 'sync-rb-%'")).toBe(0)
        const committed: Array<Promise<string[]>> = []
        raw.transaction(() => {
          committed.push(outbox.enqueue(fromBetterSqlite(raw), events('sync-ok')))
        })()
        expect(await committed[0]).toHaveLength(1_001)
        expect(await count(t.db, 'breakwater_outbox', "WHERE event_id LIKE 'sync-ok-%'")).toBe(
          1_001,
        )
      } finally {
        raw.close()
      }
    })
  }
})
