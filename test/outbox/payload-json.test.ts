// An outbox payload JSON would not give back (a Map or Set stored as {}, a function left out,
// an object with only #private fields stored as {}) was enqueued as another value than the
// caller's, silently: consumers got {} for the order's lines. It is refused with
// INVALID_OPTION naming the payload and the path, and the business write rolls back. A class
// instance with own fields is kept, published as a plain object of them. Real SQLite and
// PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox } from '../../src/outbox/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

class OrderPlaced {
  constructor(
    readonly orderId: string,
    readonly total: number,
  ) {}
  describe(): string {
    return `${this.orderId}: ${this.total}`
  }
}

class Sealed {
  #total = 42
  get total(): number {
    return this.#total
  }
}

const refused: ReadonlyArray<readonly [string, unknown, string]> = [
  ['a Map', { lines: new Map([['a', 2]]) }, 'a Map at event.payload.lines'],
  ['a Set', { tags: [new Set(['x'])] }, 'a Set at event.payload.tags[0]'],
  ['a function field', { total: 1, notify: () => 1 }, 'a function at event.payload.notify'],
  ['only #private fields', { order: new Sealed() }, 'an instance of Sealed'],
  // Enqueued as null before (the event store refused them since fba9e58, the outbox did not).
  ['an invalid Date', { at: new Date('nope') }, 'an invalid Date at event.payload.at has no'],
  ['undefined in an array', { lines: [1, undefined] }, 'undefined at event.payload.lines[1]'],
  ['a hole', { lines: new Array(2).fill(1, 0, 1) }, 'undefined at event.payload.lines[1] has'],
]

describe.each(dbTargets)('outbox payload JSON on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox({ topic: 'orders' })

  beforeAll(async () => {
    t = await target.open('outbox_payload_json')
    await t.db.execute('CREATE TABLE orders (id TEXT PRIMARY KEY)')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each(refused)(
    'refuses %s with the path, rolling the write back',
    async (name, payload, where) => {
      const id = `o-${name}`
      const error = await t.db
        .transaction(async (tx) => {
          await tx.execute('INSERT INTO orders (id) VALUES ($1)', [id])
          return outbox.enqueue(tx, { aggregateType: 'order', aggregateId: id, type: 't', payload })
        })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'event.payload' })
      expect((error as Error).message).toContain(where)
      expect(await count(t.db, 'orders', `WHERE id = '${id}'`)).toBe(0)
      expect(await count(t.db, 'breakwater_outbox', `WHERE aggregate_id = '${id}'`)).toBe(0)
    },
  )

  // A throwing toJSON escaped as the caller's bare Error, with no code or path.
  it('wraps a throwing toJSON as INVALID_OPTION naming the path, with the cause', async () => {
    const boom = new Error('boom')
    const payload = {
      total: {
        toJSON() {
          throw boom
        },
      },
    }
    const error = await t.db
      .transaction((tx) =>
        outbox.enqueue(tx, { aggregateType: 'order', aggregateId: 'th', type: 't', payload }),
      )
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'event.payload' })
    expect((error as Error).message).toContain('event.payload.total threw: Error: boom')
    expect((error as Error).cause).toBe(boom)
    expect(await count(t.db, 'breakwater_outbox', `WHERE aggregate_id = 'th'`)).toBe(0)
  })

  it('names the event in a list', async () => {
    const error = await t.db
      .transaction((tx) =>
        outbox.enqueue(tx, [
          { aggregateType: 'order', aggregateId: 'l', type: 't', payload: 1 },
          { aggregateType: 'order', aggregateId: 'l', type: 't', payload: { s: new Set() } },
        ]),
      )
      .catch((e: unknown) => e)
    expect(error).toMatchObject({ option: 'events[1].payload' })
    expect((error as Error).message).toContain('a Set at events[1].payload.s')
  })

  it('keeps a class instance as a plain object of its own fields', async () => {
    const eventId = await t.db.transaction((tx) =>
      outbox.enqueue(tx, {
        aggregateType: 'order',
        aggregateId: 'c1',
        type: 'order-placed',
        payload: new OrderPlaced('c1', 42),
      }),
    )
    const rows = await t.db.query<{ payload: string }>(
      'SELECT payload FROM breakwater_outbox WHERE event_id = $1',
      [eventId],
    )
    expect(JSON.parse(rows[0]!.payload)).toEqual({ orderId: 'c1', total: 42 })
  })
})
