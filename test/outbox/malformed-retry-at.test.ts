// An outbox row's retry_at changed outside breakwater. On SQLite, text set by hand into the
// INTEGER column stays text, and text sorts above every number: `retry_at <= now` was never
// true, so the event was never tried again and, waiting for a retry, silently held back every
// later event of its aggregate for ever. A retry time that is not a number is now taken as due
// (the attempts count still decides when it is dead-lettered). A negative number or a fraction
// was already due: checked here too. Real SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { malformedRig } from './malformed.js'
import { dbTargets, type OutboxDb } from './support.js'

describe.each(dbTargets)('outbox retry_at changed outside breakwater, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_malformed_retry_at')
  })
  afterAll(async () => {
    await t?.close()
  })

  const cases: Array<[string, string]> = [['a negative number', '-5']]
  if (target.dialect === 'sqlite') {
    cases.push(['text', `'abc'`], ['a fraction', '1.5'], ['a blob', `X'00'`])
  }
  it.each(cases)(
    'retry_at %s: the event is retried and its aggregate flows in order',
    async (_, bad) => {
      const { publisher, relay, advanceUntil, stop } = await malformedRig(t.db, 'retry-at', [
        'a-1',
        'a-2',
        'b-1',
      ])
      // As a failed publish leaves it (one attempt charged), with the retry time edited.
      await t.db.execute(
        `UPDATE breakwater_outbox SET attempts = 1, last_error = 'x', retry_at = ${bad} WHERE event_id = 'a-1'`,
      )
      await relay.start()
      try {
        await advanceUntil(() => publisher.confirmed.length === 3, 'every event published')
        expect(publisher.confirmed.filter((id) => id.startsWith('a-'))).toEqual(['a-1', 'a-2'])
        const [row] = await t.db.query<{ retry_at: unknown; published_at: unknown }>(
          `SELECT retry_at, published_at FROM breakwater_outbox WHERE event_id = 'a-1'`,
        )
        expect(row).toMatchObject({ retry_at: null })
        expect(row!.published_at).not.toBeNull()
      } finally {
        await stop()
      }
    },
  )
})
