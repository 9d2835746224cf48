// Inputs that reached the database unchecked, on real SQLite and PostgreSQL:
// - a list of events with a hole (`new Array(2)` filled in part): Array.map skips holes, so
//   the hole was never checked and went to the database as a NULL row (a bare NOT NULL driver
//   error naming no event), and the ids resolved had a hole too;
// - a relayId the lease tables cannot store as given (NUL: a bare driver error at start() on
//   PostgreSQL; a lone surrogate: stored as U+FFFD, so two relay ids became one and fenced each
//   other; over PostgreSQL's index-key limit: a bare 'index row size' error at start()).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox, createRelay } from '../../src/outbox/index.js'
import { count, dbTargets, type OutboxDb } from './support.js'

describe.each(dbTargets)('outbox input holes on $dialect', (target) => {
  let t: OutboxDb
  const outbox = createOutbox({ topic: 'orders' })
  const event = { aggregateType: 'order', aggregateId: 'o1', type: 'placed', payload: {} }

  beforeAll(async () => {
    t = await target.open('outbox_input_holes')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('refuses a hole in a list of events, naming it, and writes nothing', async () => {
    const events: unknown[] = new Array(3)
    events[1] = event
    events[2] = { ...event, aggregateId: 'o2' }
    const error = await t.db
      .transaction((tx) => outbox.enqueue(tx, events as never))
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('events[0]')
    expect(await count(t.db, 'breakwater_outbox')).toBe(0)
  })

  it('refuses a relayId the lease tables cannot store, naming it', async () => {
    const publisher = { publish: async () => {}, close: async () => {} }
    for (const relayId of ['r\u00001', 'r\ud800', 'r'.repeat(3000)]) {
      let relay: ReturnType<typeof createRelay> | undefined
      const error = await (async () => {
        relay = createRelay({ db: t.db, publisher, relayId, retention: false })
        await relay.start()
      })().catch((e: unknown) => e)
      await relay?.stop()
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('relay.relayId')
    }
    expect(await count(t.db, 'breakwater_outbox_relays')).toBe(0)
  })
})
