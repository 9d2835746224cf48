// An outbox row changed behind breakwater's back (a manual edit, another writer's bug, a restored
// backup) so that its headers are not JSON or not an object. The relay charged the bare
// SyntaxError/TypeError as an unclear failure: once, then never again while nothing else flowed,
// so the row was retried for ever, never dead-lettered, in errors that named no row. It is now
// the event's own fault, named (STORED_DATA_INVALID): retried, dead-lettered at maxAttempts while
// other aggregates flow, listed by listDead, and published once the row is fixed and redriven.
// Real SQLite; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listDead, redrive } from '../../src/outbox/index.js'
import { malformedRig } from './malformed.js'
import { type OutboxDb, sqliteTarget } from './support.js'

describe('outbox rows with malformed headers, on SQLite', () => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await sqliteTarget.open('outbox_malformed_rows')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([
    ['not JSON', '{not json', 'is not JSON'],
    ['JSON null', 'null', 'null'],
    ['a JSON string', '"text"', '"text"'],
    ['an object with a number', '{"tenant":1}', 'tenant'],
  ])(
    'headers %s: dead-lettered by name, the others published, redrive after a fix',
    async (_, bad, said) => {
      const { publisher, relay, events, advanceUntil, stop } = await malformedRig(
        t.db,
        'malformed',
        ['a-1', 'b-1', 'c-1'],
        {
          maxAttempts: 3,
          retryBackoff: { baseDelayMs: 100, maxDelayMs: 1_000, jitter: 'none' },
        },
      )
      await t.db.execute(`UPDATE breakwater_outbox SET headers = $1 WHERE event_id = 'b-1'`, [bad])
      const [row] = await t.db.query<{ id: number }>(
        `SELECT id FROM breakwater_outbox WHERE event_id = 'b-1'`,
      )
      const rowId = Number(row!.id)
      await relay.start()
      try {
        await advanceUntil(async () => (await listDead(t.db)).length > 0, 'b-1 dead-lettered')
        expect(publisher.confirmed.sort()).toEqual(['a-1', 'c-1'])
        const [dead] = await listDead(t.db)
        expect(dead).toMatchObject({ eventId: 'b-1', attempts: 3 })
        expect(dead!.lastError).toContain(`breakwater_outbox row ${rowId} (event "b-1")`)
        expect(dead!.lastError).toContain('headers')
        expect(dead!.lastError).toContain(said)
        const deadLettered = events.find((e) => e.type === 'deadLettered')
        expect(deadLettered).toMatchObject({
          eventId: 'b-1',
          error: { code: 'STORED_DATA_INVALID' },
        })
        // Nothing else of the row was touched: its payload is as enqueued.
        expect(dead!.payload).toBe('{"aggregateId":"b"}')

        await t.db.execute(`UPDATE breakwater_outbox SET headers = '{}' WHERE event_id = 'b-1'`)
        expect(await redrive(t.db, ['b-1'])).toBe(1)
        await advanceUntil(() => publisher.confirmed.includes('b-1'), 'b-1 published after the fix')
      } finally {
        await stop()
      }
    },
  )
})
