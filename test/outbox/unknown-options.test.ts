// A misspelt option of an outbox factory was dropped without a word and its default used:
// createRelay({ maxAttemps: 3 }) dead-lettered after ten attempts, pruneOutbox({ olderThan })
// pruned with the one-day window, createSqlQueue({ visibilityTimeout }) leased for 30 s. Each
// is now refused with INVALID_OPTION naming it (`relay.maxAttemps`), and correct options still
// work. On a real SQLite database; each call is refused before any statement runs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createOutbox,
  createRelay,
  createSqlQueue,
  listDead,
  outboxStats,
  pruneOutbox,
  pruneSqlQueue,
} from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { count, type OutboxDb, sqliteTarget } from './support.js'

const publisher = { publish: async () => {}, close: async () => {} }

describe('outbox factories refuse an unknown option', () => {
  let t: OutboxDb
  let db: SqlDriver

  beforeAll(async () => {
    t = await sqliteTarget.open('unknown_options')
    db = t.db
  })
  afterAll(async () => {
    await t?.close()
  })

  // [the option the error names, a call with that misspelt option, the same call spelt right]
  const cases: Array<[string, (o: Record<string, unknown>) => unknown, Record<string, unknown>]> = [
    ['outbox.notfiy', (o) => createOutbox(o), { notify: false, topic: 'orders' }],
    ['relay.maxAttemps', (o) => createRelay({ db, publisher, ...o }), { maxAttempts: 3 }],
    // Nested option bags: the relay's own, and those it hands to the backoff and the breaker.
    [
      'relay.retryBackoff.maxDelay',
      (o) => createRelay({ db, publisher, retryBackoff: o }),
      { maxDelayMs: 1_000, baseDelayMs: 10 },
    ],
    [
      'relay.circuitBreaker.cooldown',
      (o) => createRelay({ db, publisher, circuitBreaker: o }),
      { cooldownMs: 1_000 },
    ],
    [
      'relay.retention.olderThan',
      (o) => createRelay({ db, publisher, retention: o }),
      { olderThanMs: 1_000, everyMs: 500, batchSize: 10, archive: true },
    ],
    ['pruneOutbox.olderThan', (o) => pruneOutbox(db, o), { olderThanMs: 1_000, archive: true }],
    ['listDead.after', (o) => listDead(db, o), { afterId: 0, limit: 10 }],
    ['outboxStats.clok', (o) => outboxStats(db, o), { clock: new ManualClock(0) }],
    [
      'sqlQueue.visibilityTimeout',
      (o) => createSqlQueue(db, o),
      { visibilityTimeoutMs: 3_000, retryDelayMs: 200 },
    ],
    ['pruneSqlQueue.olderThan', (o) => pruneSqlQueue(db, o), { olderThanMs: 1_000 }],
  ]

  // An event's fields are checked as options are: `correlationID` was dropped, so the event went
  // out with no correlation-id header. Data belongs in the payload and headers, which are not.
  it('refuses an event field it does not know, naming the event, and writes nothing', async () => {
    const outbox = createOutbox({ topic: 'orders' })
    const event = { aggregateType: 'order', aggregateId: 'o1', type: 'placed', payload: { x: 1 } }
    const single = await optionRefusal(() =>
      db.transaction((tx) => outbox.enqueue(tx, { ...event, correlationID: 'c1' } as never)),
    )
    expect(single.option).toBe('event.correlationID')
    expect(single.message).toContain('correlationId')
    const listed = await optionRefusal(() =>
      db.transaction((tx) =>
        outbox.enqueue(tx, [event, { ...event, aggregateId: 'o2', occuredAt: 1 }] as never),
      ),
    )
    expect(listed.option).toBe('events[1].occuredAt')
    expect(await count(db, 'breakwater_outbox')).toBe(0)
    // Spelt right, and with an undefined stray field (a spread of optional fields), it writes.
    await db.transaction((tx) =>
      outbox.enqueue(tx, { ...event, correlationId: 'c1', stray: undefined } as never),
    )
    expect(await count(db, 'breakwater_outbox')).toBe(1)
  })

  it.each(cases)('refuses %s', async (option, call, good) => {
    const key = option.slice(option.lastIndexOf('.') + 1)
    const error = await optionRefusal(() => call({ ...good, [key]: 1 }))
    expect(error.option).toBe(option)
    // The message lists what it takes, so the right spelling is at hand.
    expect(error.message).toContain(Object.keys(good)[0])
    // Spelt right (and an unknown key left undefined, as a spread of defaults leaves it) it works.
    const made = await call({ ...good, [key]: undefined })
    await (made as { close?: () => Promise<void> } | undefined)?.close?.()
  })
})
