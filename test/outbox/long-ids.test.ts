// Ids that are index keys (an outbox event id, an aggregate id, an inbox message id and its
// consumer), on real SQLite and PostgreSQL. PostgreSQL refuses an index entry over about 2,700
// bytes ("index row size ... exceeds btree version 4 maximum 2704", SQLSTATE 54000), while
// SQLite stores any length. Before the cap, an inbox on PostgreSQL failed every delivery of a
// message with such an id (one a SQLite outbox had published, say) with that bare driver error,
// so the broker redelivered it forever, holding back its key; an outbox on PostgreSQL failed the
// caller's transaction with it, naming neither the event nor the field; and on SQLite it took
// the event, which then no PostgreSQL inbox could record. Ids are now capped at 2048 UTF-8
// bytes and inbox consumer names at 256, alike on both databases, with clear errors.
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createInbox,
  createOutbox,
  inboxHandler,
  type OutboxEvent,
  PoisonMessageError,
} from '../../src/outbox/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

// Incompressible text (PostgreSQL compresses index entries that compress well), in bytes.
function noise(bytes: number): string {
  return randomBytes(Math.ceil(bytes / 2))
    .toString('hex')
    .slice(0, bytes)
}

// 2049 UTF-8 bytes in 1025 UTF-16 units: the cap counts bytes, not characters.
const overCap = `${'é'.repeat(1024)}x`

function event(fields: Partial<OutboxEvent> = {}): OutboxEvent {
  return { aggregateType: 'order', aggregateId: 'o1', type: 'placed', payload: {}, ...fields }
}

function incoming(id: string): IncomingMessage {
  return { id, topic: 't', key: 'k', payload: new Uint8Array(), headers: {}, deliveryCount: 1 }
}

describe.each(dbTargets)('ids stored as index keys on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('long_ids')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('the outbox takes an id and an aggregate id of 2048 bytes', async () => {
    const outbox = createOutbox()
    const id = noise(2048)
    const aggregateId = noise(2048)
    await t.db.transaction((tx) => outbox.enqueue(tx, event({ id, aggregateId })))
    expect(await count(t.db, 'breakwater_outbox', `WHERE event_id = '${id}'`)).toBe(1)
  })

  it('the outbox refuses a longer one, naming the event and the field, writing nothing', async () => {
    const outbox = createOutbox()
    const cases: Array<[OutboxEvent | OutboxEvent[], string]> = [
      [event({ id: overCap }), 'event.id'],
      [event({ aggregateId: overCap }), 'event.aggregateId'],
      [[event(), event({ id: noise(2049) })], 'events[1].id'],
    ]
    for (const [input, option] of cases) {
      const before = await count(t.db, 'breakwater_outbox')
      const error = await t.db
        .transaction((tx) => outbox.enqueue(tx, input as OutboxEvent))
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
      expect((error as Error).message).toMatch(/2048 UTF-8 bytes/)
      expect(await count(t.db, 'breakwater_outbox')).toBe(before)
    }
  })

  it('the inbox records a 2048-byte message id under a 256-byte consumer name', async () => {
    const consumer = noise(256)
    const inbox = createInbox({ consumer })
    const id = noise(2048)
    let ran = 0
    const first = await t.db.transaction((tx) => inbox.handle(tx, { id }, async () => ++ran))
    const again = await t.db.transaction((tx) => inbox.handle(tx, { id }, async () => ++ran))
    expect(first).toEqual({ duplicate: false, value: 1 })
    expect(again).toEqual({ duplicate: true })
    expect(ran).toBe(1)
  })

  it('a longer message id is poison: refused for good and acknowledged, not redelivered forever', async () => {
    const refused: PoisonMessageError[] = []
    let ran = 0
    const handler = inboxHandler(
      t.db,
      'long-ids',
      async () => {
        ran++
      },
      { onRefused: (_message, error) => refused.push(error) },
    )
    const ids = [overCap, noise(3000)]
    for (const id of ids) await expect(handler(incoming(id))).resolves.toBeUndefined()
    expect(ran).toBe(0)
    expect(refused).toHaveLength(ids.length)
    expect(refused[0]).toBeInstanceOf(PoisonMessageError)
    expect(refused[0]?.message).toMatch(/longer than 2048 UTF-8 bytes/)
    expect(await count(t.db, 'breakwater_inbox', "WHERE consumer = 'long-ids'")).toBe(0)
  })

  it('a consumer name over 256 bytes is refused when the inbox is created', () => {
    for (const make of [
      () => createInbox({ consumer: `${'é'.repeat(128)}x` }),
      () => inboxHandler(t.db, noise(257), async () => {}),
    ]) {
      const error = (() => {
        try {
          make()
        } catch (e) {
          return e
        }
        return undefined
      })()
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('inbox.consumer')
      expect((error as Error).message).toMatch(/256 UTF-8 bytes/)
    }
  })
})
