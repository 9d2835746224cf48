// emitEvent starts a flow: without a correlation id, the event's id names it. The published
// event must say so in its `correlation-id` header, or a tracker subscribed on its own
// (`tracker.observe`, which needs that header) drops the flow's first event, and the flow,
// known only by its later events, never counts as declared, so it is never reported stalled.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, migrateOutbox } from '../../src/outbox/index.js'
import { createFlowTracker, defineFlow, emitEvent } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('emitEvent on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_emit_event')
    await migrateOutbox(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  it('a flow started without a correlation id is followed by a tracker that only observes', async () => {
    const clock = new ManualClock(1_000)
    const flow = defineFlow({ name: 'order', steps: ['order-placed', 'order-paid'], withinMs: 100 })
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const outbox = createOutbox({ clock })
    for (const id of ['o-1:placed', undefined]) {
      const emitted = await t.db.transaction((tx) =>
        emitEvent(
          tx,
          { outbox },
          {
            ...(id === undefined ? {} : { id }),
            aggregateType: 'order',
            aggregateId: 'o-1',
            type: 'order-placed',
            payload: {},
          },
        ),
      )
      const [row] = await t.db.query<{ headers: string }>(
        'SELECT headers FROM breakwater_outbox WHERE event_id = $1',
        [emitted],
      )
      const headers = JSON.parse(row!.headers) as Record<string, string>
      expect(headers['correlation-id']).toBe(emitted)
      // As the relay publishes it (it adds the event-type header).
      const message = {
        id: emitted,
        payload: '{}',
        headers: { ...headers, 'event-type': 'order-placed' },
      }
      expect(await tracker.observe(message)).toBe(true)
      await clock.advance(101)
      expect(await tracker.state(emitted)).toMatchObject({ flow: 'order', status: 'stalled' })
    }
  })
})
