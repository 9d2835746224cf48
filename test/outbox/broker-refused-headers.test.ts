// Headers one of the supported brokers refuses on every message are refused at enqueue, naming
// the header, with nothing written: the outbox does not know which broker the relay publishes
// to, and after the commit the relay would get BROKER_REJECTED, dead-letter the event and hold
// back its aggregate. NATS refuses a Nats-Msg-Id header (JetStream's dedupe id, set from the
// event id) and a value with leading or trailing whitespace (nats.js trims it, so it would
// arrive changed); RabbitMQ refuses __proto__ (amqplib drops it on receipt), the names of its
// own headers (x-death, ...) and names longer than 255 bytes. A correlation-id (causation-id)
// header given with the correlationId (causationId) field was overwritten by the field without
// a word: refused, naming both.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox, type OutboxEvent } from '../../src/outbox/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

const base = { aggregateType: 'order', aggregateId: 'bh', type: 'placed', payload: {} }

describe.each(dbTargets)(
  'outbox headers a broker refuses on every message, on $dialect',
  (target) => {
    let t: OutboxDb
    const outbox = createOutbox({ topic: 'broker-refused-headers', propagateTraceContext: false })

    beforeAll(async () => {
      t = await target.open('broker_refused_headers')
    })
    afterAll(async () => {
      await t?.close()
    })

    async function refused(event: OutboxEvent, option: string, words: RegExp): Promise<void> {
      const before = await count(t.db, 'breakwater_outbox')
      const error = await t.db.transaction((tx) => outbox.enqueue(tx, event)).catch((e) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error.code).toBe('INVALID_OPTION')
      expect((error as InvalidOptionError).option).toBe(option)
      expect(String(error.message)).toMatch(words)
      expect(await count(t.db, 'breakwater_outbox')).toBe(before)
    }

    async function stored(event: OutboxEvent): Promise<Record<string, string>> {
      const id = await t.db.transaction((tx) => outbox.enqueue(tx, event))
      const rows = await t.db.query<{ headers: string }>(
        'SELECT headers FROM breakwater_outbox WHERE event_id = $1',
        [id],
      )
      return JSON.parse(rows[0]!.headers) as Record<string, string>
    }

    it('refuses a Nats-Msg-Id header and the other Nats- headers JetStream acts on', async () => {
      for (const name of [
        'Nats-Msg-Id',
        'nats-msg-id',
        'Nats-Expected-Last-Sequence',
        'Nats-Rollup',
      ]) {
        await refused({ ...base, headers: { [name]: 'x' } }, `event.headers.${name}`, /NATS/)
      }
      // Names that only contain the prefix elsewhere are the application's.
      expect(await stored({ ...base, headers: { 'x-nats-msg-id': 'a', natsy: 'b' } })).toEqual({
        'x-nats-msg-id': 'a',
        natsy: 'b',
      })
    })

    it('refuses a value with leading or trailing whitespace, which NATS headers cannot carry', async () => {
      for (const value of [' a', 'a ', '\ta', 'a\t', '\u00a0a', 'a\u3000', ' ']) {
        await refused({ ...base, headers: { h: value } }, 'event.headers.h', /whitespace/)
      }
      expect(await stored({ ...base, headers: { h: 'a b\tc', e: '' } })).toEqual({
        h: 'a b\tc',
        e: '',
      })
    })

    it('refuses the names RabbitMQ refuses on every message', async () => {
      const proto = JSON.parse('{"__proto__":"p"}') as Record<string, string>
      await refused({ ...base, headers: proto }, 'event.headers.__proto__', /RabbitMQ/)
      for (const name of ['x-death', 'x-delivery-count', 'x-first-death-queue']) {
        await refused({ ...base, headers: { [name]: 'v' } }, `event.headers.${name}`, /RabbitMQ/)
      }
      const long = 'h'.repeat(256)
      await refused({ ...base, headers: { [long]: 'v' } }, `event.headers.${long}`, /255 bytes/)
      const ok = 'h'.repeat(255)
      expect(await stored({ ...base, headers: { [ok]: 'v', 'x-death-note': 'n' } })).toEqual({
        [ok]: 'v',
        'x-death-note': 'n',
      })
    })

    it('refuses a correlation-id or causation-id header given with the field that sets it', async () => {
      await refused(
        { ...base, correlationId: 'field', headers: { 'correlation-id': 'header' } },
        'event.headers.correlation-id',
        /correlationId/,
      )
      await refused(
        { ...base, causationId: 'field', headers: { 'Causation-Id': 'header' } },
        'event.headers.Causation-Id',
        /causationId/,
      )
      // Either one alone is kept.
      expect(
        await stored({ ...base, headers: { 'correlation-id': 'h' }, causationId: 'c' }),
      ).toEqual({ 'correlation-id': 'h', 'causation-id': 'c' })
      expect(await stored({ ...base, correlationId: 'f' })).toEqual({ 'correlation-id': 'f' })
    })
  },
)
