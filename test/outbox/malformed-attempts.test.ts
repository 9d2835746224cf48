// An outbox row whose attempts column was changed behind breakwater's back: on SQLite text set
// by hand into the INTEGER column stays text and 1.5 stays a real; either database keeps a
// negative number. When publishing it failed, text made the backoff throw (the event was never
// charged and was published again every round), a negative count retried it a million times.
// The relay now dead-letters it at its first failure, naming the column; the other aggregate
// flows, and redrive (which sets attempts to 0) repairs it. Its deadLettered event (and the
// diagnostics channel's message) carried Number(attempts): NaN for text, 1.5 or -1000000, never
// a count; it now carries undefined. Real SQLite and PostgreSQL; time on a ManualClock.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import { listDead, redrive } from '../../src/outbox/index.js'
import { malformedRig } from './malformed.js'
import { dbTargets, type OutboxDb } from './support.js'

describe.each(dbTargets)('outbox attempts changed outside breakwater, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_malformed_attempts')
  })
  afterAll(async () => {
    await t?.close()
  })

  const cases: Array<[string, string, unknown]> = [['a negative number', '-1000000', -1000000]]
  if (target.dialect === 'sqlite') cases.push(['text', `'abc'`, 'abc'], ['a fraction', '1.5', 1.5])
  it.each(cases)(
    'attempts %s: dead-lettered at its first failure, by name',
    async (_, bad, shown) => {
      const { publisher, relay, events, advanceUntil, stop } = await malformedRig(
        t.db,
        'attempts',
        ['a-1', 'b-1'],
        {
          maxAttempts: 3,
          retryBackoff: { baseDelayMs: 100, maxDelayMs: 1_000, jitter: 'none' },
        },
      )
      await t.db.execute(`UPDATE breakwater_outbox SET attempts = ${bad} WHERE event_id = 'b-1'`)
      publisher.before = (messages) => {
        if (messages.some((m) => m.id === 'b-1'))
          throw new BreakwaterError('BROKER_REJECTED', 'message too large')
      }
      const published: unknown[] = []
      const listener = (message: unknown) => published.push(message)
      subscribe('breakwater:outbox:dead-lettered', listener)
      await relay.start()
      try {
        await advanceUntil(async () => (await listDead(t.db)).length > 0, 'b-1 dead-lettered')
        expect(publisher.confirmed).toEqual(['a-1'])
        const [row] = await t.db.query<{ id: number; attempts: unknown }>(
          `SELECT id, attempts FROM breakwater_outbox WHERE event_id = 'b-1'`,
        )
        // Dead-lettered at its first failure, the count left as it was.
        expect(events.filter((e) => e.type === 'retryScheduled')).toEqual([])
        expect(String(row!.attempts)).toBe(String(shown))
        const [dead] = await listDead(t.db)
        expect(dead!.lastError).toContain(
          `breakwater_outbox row ${Number(row!.id)} (event "b-1"): attempts is not a count of attempts`,
        )
        expect(dead!.lastError).toContain('message too large')
        const deadLettered = events.filter((e) => e.type === 'deadLettered')
        expect(deadLettered).toHaveLength(1)
        expect(deadLettered[0]).toMatchObject({
          eventId: 'b-1',
          error: { code: 'STORED_DATA_INVALID', column: 'attempts' },
        })
        // No count can be read: undefined, not NaN or the stored value; still counted.
        expect(deadLettered[0]).toHaveProperty('attempts', undefined)
        expect(relay.metrics().deadLettered).toBe(1)
        expect(published).toHaveLength(1)
        expect(published[0]).toMatchObject({ relayId: relay.id, eventId: 'b-1' })
        expect(published[0]).toHaveProperty('attempts', undefined)
        expect(events.filter((e) => e.type === 'error')).toEqual([])

        publisher.before = undefined
        expect(await redrive(t.db, ['b-1'])).toBe(1)
        await advanceUntil(() => publisher.confirmed.includes('b-1'), 'b-1 published after redrive')
      } finally {
        unsubscribe('breakwater:outbox:dead-lettered', listener)
        await stop()
      }
    },
  )
})
