// Per-key order across competing consumers of one SQL queue group, on real PostgreSQL. Each
// consumer leased with FOR UPDATE SKIP LOCKED and judged "is an earlier message of this key
// held?" on its own statement's snapshot: while one consumer's lease of a key's message n was
// not yet committed, another skipped that locked row and, not seeing it held, leased message
// n + 1 of the same key. The two then ran at once, n + 1 often first. (SQLite has one writer,
// so its leases never overlapped.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlQueue, type SqlQueue } from '../../src/brokers/sql-queue.js'
import type { OutgoingMessage } from '../../src/brokers/types.js'
import { delay, type OutboxDb, postgresTarget, until } from '../outbox/support.js'
import { scaled } from '../support/scale.js'

describe('SQL queue on PostgreSQL: competing consumers of one group', () => {
  let t: OutboxDb
  const queues: SqlQueue[] = []

  beforeAll(async () => {
    t = await postgresTarget.open('sql_queue_competing_order')
  })
  afterAll(async () => {
    for (const q of queues) await q.close()
    await t?.close()
  })

  it("never run two messages of one key at once, and run each key's messages in order", async () => {
    const total = scaled(2_000, 400)
    const keys = 5
    const topic = 'competing-order'
    const running = new Set<string>()
    const handled = new Map<string, number[]>()
    let overlaps = 0
    let done = 0
    for (let i = 0; i < 4; i++) {
      // Each consumer on its own connection pool, as separate processes would be.
      const q = createSqlQueue(await t.another(), {
        prefetch: 4,
        pollIntervalMs: 1,
        maxPollIntervalMs: 5,
        onError: () => {},
      })
      queues.push(q)
      await q.subscriber.subscribe(topic, 'g', async (m) => {
        if (running.has(m.key)) overlaps++
        running.add(m.key)
        await delay(Math.random() * 5)
        running.delete(m.key)
        const list = handled.get(m.key) ?? []
        list.push(Number(m.id))
        handled.set(m.key, list)
        done++
      })
    }
    const sent: OutgoingMessage[] = Array.from({ length: total }, (_, i) => ({
      id: String(i),
      topic,
      key: `k${i % keys}`,
      payload: '{}',
      headers: {},
    }))
    const producer = createSqlQueue(t.db)
    queues.push(producer)
    await producer.publisher.publish(sent)
    await until(() => done >= total, 'every message handled', 60_000)
    expect(overlaps).toBe(0)
    for (const [key, ids] of handled) {
      const expected = sent.filter((m) => m.key === key).map((m) => Number(m.id))
      expect(ids, `order of ${key}`).toEqual(expected)
    }
    expect(done).toBe(total)
  })
})
