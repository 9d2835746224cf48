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
import { count, dbTargets, delay, type OutboxDb } from './support.js'

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
    const publisher = {
      publish: async (messages: readonly OutgoingMessage[]) => {
        for (const m of messages) handed.push(m.id)
      },
      close: async () => {},
    }
    const events: RelayEvent[] = []
    /** Runs a relay (with `options`) on the clock until `done`, then stops it. */
    async function runRelay(options: Partial<RelayOptions>, done: () => Promise<boolean>) {
      const relay = createRelay({
        db: t.db,
        publisher,
        clock,
        listen: false,
        retention: false,
        keepAlive: false,
        pollIntervalMs: 10,
        maxPollIntervalMs: 10,
        ...options,
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
})
