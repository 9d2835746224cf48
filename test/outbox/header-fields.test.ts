// The event's fields that travel as headers (correlationId as correlation-id, causationId as
// causation-id, type as event-type, aggregateType as aggregate-type, the id as NATS's
// Nats-Msg-Id, the aggregate id as the key, breakwater-key) skipped the checks its `headers`
// get: a value with CR or LF, or with leading or trailing whitespace (nats.js trims it), was
// enqueued, then refused by the NATS adapter at every publish and dead-lettered, holding back
// its aggregate. Now refused at enqueue, naming the field and the header, with nothing written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox, type OutboxEvent } from '../../src/outbox/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

const base = { aggregateType: 'order', aggregateId: 'hf', type: 'order.placed', payload: {} }

describe.each(dbTargets)('outbox event fields sent as headers, on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox({ topic: 'header-fields', propagateTraceContext: false })

  beforeAll(async () => {
    t = await target.open('header_fields')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([
    [{ correlationId: 'corr-1 ' }, 'event.correlationId', 'correlation-id', /whitespace/],
    [{ correlationId: 'corr\r\n1' }, 'event.correlationId', 'correlation-id', /CR, LF/],
    [{ causationId: 'cause\n1' }, 'event.causationId', 'causation-id', /CR, LF/],
    [{ causationId: '\tcause' }, 'event.causationId', 'causation-id', /whitespace/],
    [{ type: 'order.placed ' }, 'event.type', 'event-type', /whitespace/],
    [{ type: 'order\rplaced' }, 'event.type', 'event-type', /CR, LF/],
    [{ aggregateType: ' order' }, 'event.aggregateType', 'aggregate-type', /whitespace/],
    [{ aggregateType: 'or\nder' }, 'event.aggregateType', 'aggregate-type', /CR, LF/],
    [{ id: 'ev-1\u00a0' }, 'event.id', 'Nats-Msg-Id', /whitespace/],
    [{ aggregateId: 'agg\n1' }, 'event.aggregateId', 'breakwater-key', /CR, LF/],
    [{ aggregateId: ' agg-1' }, 'event.aggregateId', 'breakwater-key', /whitespace/],
  ] as const)('refuses %j, naming %s', async (fields, option, header, words) => {
    const event: OutboxEvent = { ...base, ...fields }
    const before = await count(t.db, 'breakwater_outbox')
    const error = await t.db.transaction((tx) => outbox.enqueue(tx, event)).catch((e) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
    expect(String(error.message)).toContain(header)
    expect(String(error.message)).toMatch(words)
    expect(await count(t.db, 'breakwater_outbox')).toBe(before)
  })

  it('takes whitespace inside the values', async () => {
    const id = await t.db.transaction((tx) =>
      outbox.enqueue(tx, {
        ...base,
        id: `hf ${Date.now()}`,
        aggregateId: 'agg 1',
        aggregateType: 'sales order',
        type: 'order placed',
        correlationId: 'corr 1',
        causationId: 'cause\t1',
      }),
    )
    const rows = await t.db.query<{ headers: string }>(
      'SELECT headers FROM breakwater_outbox WHERE event_id = $1',
      [id],
    )
    expect(JSON.parse(rows[0]!.headers)).toEqual({
      'correlation-id': 'corr 1',
      'causation-id': 'cause\t1',
    })
  })
})
