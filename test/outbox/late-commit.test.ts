// Sequence ids are handed out at INSERT, not at COMMIT. On PostgreSQL a transaction can take
// the id of event A-1, stay open, and commit after A-2 (a later id) is already visible. The
// relay must neither publish A-2 first nor skip A-1 when it finally commits. Real PostgreSQL,
// deliberately slow writer transactions.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, createRelay, type Relay } from '../../src/outbox/index.js'
import { fromPgClient } from '../../src/stores/index.js'
import {
  type Collector,
  collect,
  delay,
  type OutboxDb,
  postgresTarget,
  type TestPublisher,
  testPublisher,
  testQueue,
  until,
} from './support.js'

describe('relay and late commits on postgres', () => {
  let t: OutboxDb
  let relay: Relay
  let publisher: TestPublisher
  let collector: Collector
  const outbox = createOutbox({ topic: 'late' })

  beforeAll(async () => {
    t = await postgresTarget.open('late_commit')
    await t.db.execute('CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)')
    await t.db.execute("INSERT INTO accounts (id, balance) VALUES ('acc', 0)")
    const queue = testQueue(t.db)
    collector = await collect(queue, 'late', 'late')
    publisher = testPublisher(queue.publisher)
    relay = createRelay({
      db: t.db,
      publisher,
      pollIntervalMs: 2,
      maxPollIntervalMs: 10,
      leaseMs: 3_000,
    })
    await relay.start()
  })
  afterAll(async () => {
    await relay?.stop()
    await collector?.close()
    await t?.close()
  })

  /** A writer on its own connection that begins, writes, enqueues, and commits when told. */
  async function slowWriter(eventId: string, aggregateId: string) {
    const pg = (await import('pg')).default
    const client = new pg.Client({ connectionString: t.url })
    await client.connect()
    await client.query('BEGIN')
    // The business write comes first and gives the transaction its id.
    await client.query("UPDATE accounts SET balance = balance + 1 WHERE id = 'acc'")
    await outbox.enqueue(fromPgClient(client), {
      id: eventId,
      aggregateType: 'account',
      aggregateId,
      type: 'changed',
      payload: {},
    })
    return {
      async finish(outcome: 'COMMIT' | 'ROLLBACK') {
        await client.query(outcome)
        await client.end()
      },
    }
  }

  function enqueue(events: Array<[id: string, aggregateId: string]>) {
    return t.db.transaction((tx) =>
      outbox.enqueue(
        tx,
        events.map(([id, aggregateId]) => ({
          id,
          aggregateType: 'account',
          aggregateId,
          type: 'changed',
          payload: {},
        })),
      ),
    )
  }

  async function visiblePending(): Promise<string[]> {
    const rows = await t.db.query<{ event_id: string }>(
      'SELECT event_id FROM breakwater_outbox WHERE published_at IS NULL ORDER BY id',
    )
    return rows.map((r) => r.event_id)
  }

  it('holds a later event back until the earlier one commits late, then publishes both in order', async () => {
    const slow = await slowWriter('A-1', 'A')
    await enqueue([
      ['A-2', 'A'],
      ['B-1', 'B'],
    ])
    // Any reader sees A-2 and B-1 committed, and A-1 not at all: a relay that simply read
    // unpublished rows in id order would publish A-2 before A-1.
    expect(await visiblePending()).toEqual(['A-2', 'B-1'])
    await delay(300)
    expect(publisher.confirmed).toEqual([])
    await slow.finish('COMMIT')
    await until(() => collector.ids().size === 3, 'all three events')
    expect(collector.byKey().get('A')).toEqual(['A-1', 'A-2'])
    expect(collector.byKey().get('B')).toEqual(['B-1'])
    expect(publisher.confirmed.indexOf('A-1')).toBeLessThan(publisher.confirmed.indexOf('A-2'))
  })

  it('publishes what committed after it once a slow writer rolls back', async () => {
    const slow = await slowWriter('C-1', 'C')
    await enqueue([['C-2', 'C']])
    await delay(200)
    expect(publisher.confirmed).not.toContain('C-2')
    await slow.finish('ROLLBACK')
    await until(() => collector.ids().has('C-2'), 'C-2')
    expect(collector.ids().has('C-1')).toBe(false)
  })

  it('does not skip a row that commits late among many committed ones', async () => {
    const slow = await slowWriter('D-late', 'D')
    const many = Array.from({ length: 50 }, (_, i): [string, string] => [`E-${i}`, `E${i % 5}`])
    await enqueue(many)
    await delay(100)
    // Everything committed after the slow writer's transaction started waits for it.
    expect(publisher.confirmed.filter((id) => id.startsWith('E-'))).toEqual([])
    await slow.finish('COMMIT')
    await until(() => collector.ids().has('D-late') && collector.ids().has('E-49'), 'all rows')
    for (let k = 0; k < 5; k++) {
      expect(collector.byKey().get(`E${k}`)).toEqual(
        many.filter(([, key]) => key === `E${k}`).map(([id]) => id),
      )
    }
  })
})
