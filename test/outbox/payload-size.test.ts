// The payload size cap (maxPayloadBytes, 1 MiB by default, as NATS's max_payload). A 140 MB
// event was accepted by enqueue and refused only at publish, after the commit: RabbitMQ's
// client spent seconds writing it (missing heartbeats), the relay charged it attempt after
// attempt, and it held back its aggregate. Now enqueue refuses it (PAYLOAD_TOO_LARGE, naming
// the size and the limit, nothing written), and a row stored above the relay's limit (by an
// outbox with a higher one, or before this release) is dead-lettered at once, without being
// handed to the broker, naming its size and the limit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import {
  createOutbox,
  createRelay,
  listDead,
  PayloadTooLargeError,
  type RelayEvent,
  type RelayOptions,
  redrive,
} from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, dbTargets, delay, type OutboxDb, observingQueries } from './support.js'

const MiB = 1024 * 1024

/** An event whose payload's JSON text is exactly `bytes` bytes (a string: its quotes are 2). */
function sized(id: string, aggregateId: string, bytes: number) {
  return {
    id,
    aggregateType: 'file',
    aggregateId,
    type: 'uploaded',
    payload: 'x'.repeat(bytes - 2),
  }
}

describe.each(dbTargets)('payload size cap on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('payload_size')
  })
  afterAll(async () => {
    await t?.close()
  })

  /**
   * Runs a relay on `clock` until `done`, then stops it: it hands every message's id to
   * `handed` (the broker takes all) and its events to `events`.
   */
  async function runRelayUntil(
    options: Partial<RelayOptions> & {
      clock: ManualClock
      handed: string[]
      events: RelayEvent[]
      db: OutboxDb['db']
    },
    done: () => Promise<boolean>,
  ): Promise<void> {
    const { clock, handed, events, ...rest } = options
    const publisher = {
      publish: async (messages: readonly OutgoingMessage[]) => {
        for (const m of messages) handed.push(m.id)
      },
      close: async () => {},
    }
    const relay = createRelay({
      publisher,
      clock,
      listen: false,
      retention: false,
      keepAlive: false,
      pollIntervalMs: 10,
      maxPollIntervalMs: 10,
      ...rest,
    })
    relay.events.on((e) => events.push(e))
    try {
      await relay.start()
      const deadline = Date.now() + 20_000
      while (!(await done())) {
        if (Date.now() > deadline) throw new Error('timed out waiting for the relay')
        await clock.advance(10)
        await delay(2)
      }
    } finally {
      await relay.stop()
    }
  }

  it('takes a positive whole number of bytes as maxPayloadBytes, on the outbox and the relay', () => {
    const publisher = { publish: async () => {}, close: async () => {} }
    for (const bad of [0, -1, 1.5, '1MiB', null, Number.NaN]) {
      const outbox = () => createOutbox({ maxPayloadBytes: bad as number })
      expect(outbox).toThrow(InvalidOptionError)
      expect(outbox).toThrow(/outbox\.maxPayloadBytes/)
      const relay = () => createRelay({ db: t.db, publisher, maxPayloadBytes: bad as number })
      expect(relay).toThrow(InvalidOptionError)
      expect(relay).toThrow(/relay\.maxPayloadBytes/)
    }
    expect(() => createOutbox({ maxPayloadBytes: 1 })).not.toThrow()
  })

  it('refuses at enqueue a payload over 1 MiB by default, naming the size and the limit; takes 1 MiB', async () => {
    const outbox = createOutbox({ topic: 'files' })
    const before = await count(t.db, 'breakwater_outbox')
    const error = await t.db
      .transaction((tx) => outbox.enqueue(tx, sized('too-big', 'f1', MiB + 1)))
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(PayloadTooLargeError)
    expect(BreakwaterError.is(error) && error.code).toBe('PAYLOAD_TOO_LARGE')
    const refused = error as PayloadTooLargeError
    expect(refused.bytes).toBe(MiB + 1)
    expect(refused.limit).toBe(MiB)
    expect(refused.retryable).toBe(false)
    expect(refused.message).toContain('event.payload')
    expect(refused.message).toContain(String(MiB + 1))
    expect(refused.message).toContain('maxPayloadBytes')
    expect(refused.message).toContain(String(MiB))
    expect(await count(t.db, 'breakwater_outbox')).toBe(before)
    // The limit itself is taken.
    await t.db.transaction((tx) => outbox.enqueue(tx, sized('at-limit', 'f1', MiB)))
    expect(await count(t.db, 'breakwater_outbox')).toBe(before + 1)
    await t.db.execute('DELETE FROM breakwater_outbox')
  })

  it('counts UTF-8 bytes, names the event of a list, and writes none of the list', async () => {
    const outbox = createOutbox({ topic: 'files', maxPayloadBytes: 100 })
    // 40 characters of three bytes each: 120 bytes (plus quotes), though 42 UTF-16 units.
    const wide = { ...sized('wide', 'f2', 10), payload: '€'.repeat(40) }
    const error = await t.db
      .transaction((tx) => outbox.enqueue(tx, [sized('ok', 'f2', 100), wide]))
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(PayloadTooLargeError)
    expect((error as PayloadTooLargeError).bytes).toBe(122)
    expect((error as PayloadTooLargeError).message).toContain('events[1].payload')
    expect(await count(t.db, 'breakwater_outbox')).toBe(0)
  })

  it('dead-letters at once, unpublished, a stored row over the relay limit; others flow; redrive with a higher limit publishes it', async () => {
    const clock = new ManualClock(1_700_000_000_000)
    // Written by an outbox with a higher limit (or before the limit existed).
    const roomy = createOutbox({ clock, topic: 'files', maxPayloadBytes: 2 * MiB })
    await t.db.transaction((tx) =>
      roomy.enqueue(tx, [
        sized('big-0', 'big', MiB + 10),
        sized('big-1', 'big', 10),
        sized('small-0', 'small', 10),
      ]),
    )
    const handed: string[] = []
    const events: RelayEvent[] = []
    const runRelay = (options: Partial<RelayOptions>, done: () => Promise<boolean>) =>
      runRelayUntil({ ...options, db: t.db, clock, handed, events }, done)
    await runRelay(
      { maxAttempts: 10 },
      async () => handed.includes('small-0') && (await listDead(t.db)).length > 0,
    )
    // Never handed to the broker, dead at its first read (no attempts charged), and its
    // aggregate's later event held back behind it.
    expect(handed).not.toContain('big-0')
    expect(handed).not.toContain('big-1')
    const dead = await listDead(t.db)
    expect(dead.map((d) => d.eventId)).toEqual(['big-0'])
    expect(dead[0]!.attempts).toBe(0)
    expect(dead[0]!.lastError).toMatch(/^PayloadTooLargeError: /)
    expect(dead[0]!.lastError).toContain(String(MiB + 10))
    expect(dead[0]!.lastError).toContain(String(MiB))
    const deadLettered = events.filter((e) => e.type === 'deadLettered')
    expect(deadLettered).toHaveLength(1)
    expect((deadLettered[0] as { error: unknown }).error).toBeInstanceOf(PayloadTooLargeError)
    expect(events.filter((e) => e.type === 'retryScheduled')).toEqual([])

    // A relay whose limit takes it publishes it once redriven, then the event behind it.
    expect(await redrive(t.db, ['big-0'])).toBe(1)
    await runRelay({ maxPayloadBytes: 2 * MiB }, async () => handed.includes('big-1'))
    expect(handed.filter((id) => id.startsWith('big'))).toEqual(['big-0', 'big-1'])
    await t.db.execute('DELETE FROM breakwater_outbox')
  })

  it('leaves out of its read a payload of more characters than the limit, and dead-letters the row naming what it measured', async () => {
    // A buggy producer's row of hundreds of MB was read whole (by every relay that read it)
    // only to be dead-lettered. More characters than maxPayloadBytes is certainly more UTF-8
    // bytes: the read now returns no payload for such a row. A row of fewer characters but
    // more bytes ('€' is three) is read and measured exactly, as before.
    const clock = new ManualClock(1_700_000_000_000)
    const limit = 1000
    const roomy = createOutbox({ clock, topic: 'files', maxPayloadBytes: MiB })
    await t.db.transaction((tx) =>
      roomy.enqueue(tx, [
        sized('huge-0', 'huge', 50 * limit),
        sized('huge-1', 'huge', 10),
        { ...sized('wide-0', 'wide', 10), payload: '€'.repeat(400) },
        sized('small-0', 'small', 10),
      ]),
    )
    const [huge] = await t.db.query<{ id: number | string }>(
      `SELECT id FROM breakwater_outbox WHERE event_id = 'huge-0'`,
    )
    // Every payload the relay's statements returned for the huge row (by id: the payloads
    // statement returns id and payload only).
    const hugePayloads: unknown[] = []
    const db = observingQueries(t.db, (_, rows) => {
      for (const row of rows)
        if ('payload' in row && String(row.id) === String(huge!.id)) hugePayloads.push(row.payload)
    })
    const handed: string[] = []
    const events: RelayEvent[] = []
    await runRelayUntil(
      { db, clock, handed, events, maxPayloadBytes: limit },
      async () =>
        handed.includes('small-0') &&
        (await listDead(t.db)).length === 2 &&
        (await count(t.db, 'breakwater_outbox', 'WHERE parked_behind IS NOT NULL')) === 1,
    )
    // Read (held back behind nothing, so published it would have been), never with its payload.
    expect(hugePayloads.length).toBeGreaterThan(0)
    expect(hugePayloads.filter((p) => p !== null)).toEqual([])
    expect(handed).toEqual(['small-0'])
    const dead = await listDead(t.db)
    expect(dead.map((d) => d.eventId).sort()).toEqual(['huge-0', 'wide-0'])
    const hugeDead = dead.find((d) => d.eventId === 'huge-0')!
    expect(hugeDead.attempts).toBe(0)
    expect(hugeDead.lastError).toMatch(/^PayloadTooLargeError: /)
    expect(hugeDead.lastError).toContain(`${50 * limit} characters`)
    expect(hugeDead.lastError).toContain(`at least ${50 * limit} bytes`)
    expect(hugeDead.lastError).toContain(`maxPayloadBytes of ${limit}`)
    const error = events.find((e) => e.type === 'deadLettered' && e.eventId === 'huge-0') as {
      error: PayloadTooLargeError
    }
    expect(error.error).toBeInstanceOf(PayloadTooLargeError)
    expect(error.error.limit).toBe(limit)
    expect(error.error.measured).toBe('characters')
    // Between the character count and the limit in bytes: measured exactly, as before.
    const wideDead = dead.find((d) => d.eventId === 'wide-0')!
    expect(wideDead.lastError).toContain('the payload is 1202 bytes of JSON')
    // The aggregate behind the dead event waits (parked behind it), as for any dead event.
    const [parked] = await t.db.query<{ parked_behind: number | string }>(
      `SELECT parked_behind FROM breakwater_outbox WHERE event_id = 'huge-1'`,
    )
    expect(String(parked!.parked_behind)).toBe(String(huge!.id))
    // Redriven, a relay whose limit takes it publishes it, then the event behind it.
    expect(await redrive(t.db, ['huge-0'])).toBe(1)
    await runRelayUntil({ db: t.db, clock, handed, events }, async () => handed.includes('huge-1'))
    expect(handed).toEqual(['small-0', 'huge-0', 'huge-1'])
    await t.db.execute('DELETE FROM breakwater_outbox')
  })
})
