// `null` for an outbox option was taken as its default wherever it was read with `?? default`:
// createRelay({ retention: null }) pruned with the default window (`false` turns it off),
// maxAttempts: null dead-lettered after ten attempts, pruneOutbox({ olderThanMs: null }) pruned
// a day's rows, and an event's id: null got a random id (topic: null the default topic). Only
// undefined (or leaving it out) means the default: each option given as null is refused with
// INVALID_OPTION naming it. An event's payload stays data: null is JSON null. On a real SQLite
// database; every call is refused before any statement runs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listDeadOptions, outboxStatsOptions } from '../../src/outbox/dead-letters.js'
import { inboxOptions } from '../../src/outbox/inbox.js'
import {
  createInbox,
  createOutbox,
  createRelay,
  listDead,
  outboxStats,
  pruneInbox,
  pruneOutbox,
} from '../../src/outbox/index.js'
import { outboxOptions } from '../../src/outbox/outbox.js'
import { relayOptions, retentionOptions } from '../../src/outbox/relay.js'
import { pruneInboxOptions, pruneOutboxOptions } from '../../src/outbox/retention.js'
import { backoffOptions } from '../../src/policies/backoff.js'
import type { SqlDriver } from '../../src/stores/index.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'
import { optionRefusal } from '../support/unknown-option.js'
import { count, type OutboxDb, sqliteTarget } from './support.js'

const publisher = { publish: async () => {}, close: async () => {} }

describe('outbox options given as null', () => {
  let t: OutboxDb
  let db: SqlDriver

  beforeAll(async () => {
    t = await sqliteTarget.open('null_options')
    db = t.db
  })
  afterAll(async () => {
    await t?.close()
  })

  const bags = (): Record<string, NullOptionCase> => ({
    createOutbox: {
      build: (o) => createOutbox(o),
      good: {},
      keys: outboxOptions,
      prefix: 'outbox',
    },
    createRelay: {
      build: (o) => createRelay(o as never),
      good: { db, publisher },
      keys: relayOptions,
      prefix: 'relay',
    },
    'createRelay retryBackoff': {
      build: (o) => createRelay({ db, publisher, retryBackoff: o }),
      good: {},
      keys: backoffOptions,
      prefix: 'relay.retryBackoff',
    },
    'createRelay retention': {
      build: (o) => createRelay({ db, publisher, retention: o }),
      good: {},
      keys: retentionOptions,
      prefix: 'relay.retention',
    },
    createInbox: {
      build: (o) => createInbox(o as never),
      good: { consumer: 'c' },
      keys: inboxOptions,
      prefix: 'inbox',
    },
    pruneOutbox: {
      build: (o) => pruneOutbox(db, o),
      good: {},
      keys: pruneOutboxOptions,
      prefix: 'pruneOutbox',
    },
    pruneInbox: {
      build: (o) => pruneInbox(db, o),
      good: {},
      keys: pruneInboxOptions,
      prefix: 'pruneInbox',
    },
    listDead: {
      build: (o) => listDead(db, o),
      good: {},
      keys: listDeadOptions,
      prefix: 'listDead',
    },
    outboxStats: {
      build: (o) => outboxStats(db, o),
      good: {},
      keys: outboxStatsOptions,
      prefix: 'outboxStats',
    },
  })

  it.each(Object.keys(bags()))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags()[name]!),
  )

  it.each(Object.keys(bags()))('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags()[name]!),
  )

  it('refuses an event id or topic given as null; a null payload is JSON null', async () => {
    const outbox = createOutbox({ topic: 'orders' })
    const event = { aggregateType: 'order', aggregateId: 'o1', type: 'placed', payload: { x: 1 } }
    for (const field of ['id', 'topic', 'headers', 'correlationId', 'causationId']) {
      const refused = await optionRefusal(() =>
        db.transaction((tx) => outbox.enqueue(tx, [event, { ...event, [field]: null }] as never)),
      )
      expect(refused.option, field).toBe(`events[1].${field}`)
      expect(refused.value, field).toBeNull()
    }
    expect(await count(db, 'breakwater_outbox')).toBe(0)
    await db.transaction((tx) => outbox.enqueue(tx, { ...event, payload: null }))
    expect(await count(db, 'breakwater_outbox')).toBe(1)
  })
})
