// Headers that no broker can carry as given are refused at enqueue, naming the header, before
// anything is written: after the commit the relay would get BROKER_REJECTED (NATS, Redis,
// RabbitMQ), dead-letter the event and hold back its aggregate, or (the names the relay sets
// itself) overwrite the application's value without a word.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KEY_HEADER } from '../../src/brokers/index.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  AGGREGATE_TYPE_HEADER,
  createOutbox,
  createRelay,
  EVENT_TYPE_HEADER,
  type OutboxEvent,
} from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, type OutboxDb, pendingCount, testQueue, until } from './support.js'

const base = { aggregateType: 'order', aggregateId: 'rh', type: 'placed', payload: {} }

describe.each(dbTargets)('outbox headers the brokers refuse, on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox({ topic: 'reserved-headers' })

  beforeAll(async () => {
    t = await target.open('reserved_headers')
  })
  afterAll(async () => {
    await t?.close()
  })

  async function refused(event: OutboxEvent, option: string): Promise<void> {
    const before = await count(t.db, 'breakwater_outbox')
    const error = await t.db.transaction((tx) => outbox.enqueue(tx, event)).catch((e) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error.code).toBe('INVALID_OPTION')
    expect((error as InvalidOptionError).option).toBe(option)
    expect(await count(t.db, 'breakwater_outbox')).toBe(before)
    // In a list, the event's index is named.
    const listed = await t.db
      .transaction((tx) => outbox.enqueue(tx, [{ ...base, id: 'rh-ok' }, event]))
      .catch((e) => e)
    expect(listed).toBeInstanceOf(InvalidOptionError)
    expect((listed as InvalidOptionError).option).toBe(option.replace(/^event/, 'events[1]'))
    expect(await count(t.db, 'breakwater_outbox')).toBe(before)
  }

  it('refuses a header value holding half of a surrogate pair, naming the header', async () => {
    await refused({ ...base, headers: { a: 'x\ud800' } }, 'event.headers.a')
    await refused({ ...base, headers: { a: '\udc00y' } }, 'event.headers.a')
  })

  it('refuses the header names the relay and the brokers set themselves', async () => {
    for (const name of [KEY_HEADER, EVENT_TYPE_HEADER, AGGREGATE_TYPE_HEADER]) {
      await refused({ ...base, headers: { [name]: 'z' } }, `event.headers.${name}`)
    }
    const error = await t.db
      .transaction((tx) => outbox.enqueue(tx, { ...base, headers: { 'event-type': 'spoof' } }))
      .catch((e) => e)
    expect(String(error.message)).toContain('event.headers.event-type')
    expect(String(error.message)).toContain('reserved')
  })

  it('still takes well-formed surrogate pairs and names that only resemble the reserved ones', async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const queue = testQueue(t.db)
    const received: Record<string, string>[] = []
    const sub = await queue.subscriber.subscribe('reserved-headers-ok', 'h', async (m) => {
      received.push({ ...m.headers })
    })
    const relay = createRelay({ db: t.db, publisher: queue.publisher, clock, pollIntervalMs: 10 })
    try {
      const headers = { a: '😀', 'x-event-type': 'mine', 'breakwater-key2': 'k' }
      await t.db.transaction((tx) =>
        outbox.enqueue(tx, { ...base, id: 'rh-good', topic: 'reserved-headers-ok', headers }),
      )
      await relay.start()
      await until(async () => {
        await clock.advance(20)
        return (await pendingCount(t.db)) === 0 && received.length > 0
      }, 'the event delivered')
      expect(received[0]).toMatchObject({ ...headers, 'event-type': 'placed' })
    } finally {
      await relay.stop()
      await sub.close()
      await queue.close()
    }
  })
})
