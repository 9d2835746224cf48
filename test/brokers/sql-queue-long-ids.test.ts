// Ids, keys and names the SQL queue stores as index keys, on real SQLite and PostgreSQL.
// PostgreSQL refuses an index entry over about 2,700 bytes (a bare "index row size" error,
// 54000), SQLite stores any length. The message id is a key of UNIQUE (topic, message_id), and
// the ordering key one of the deliveries' held index (topic, group, key, seq) that every lease
// writes: a publish of a long id failed with that driver error, and a message with a long key
// was taken by publish and then failed every lease of its batch, stalling the subscription.
// Ids and keys are now capped at 2048 UTF-8 bytes, topics and groups at 256, alike on both
// databases, refused before anything is written naming the field: by publish() with
// BROKER_REJECTED (the message's own fault, as the other adapters say it; it was
// INVALID_OPTION), by subscribe() with INVALID_OPTION.
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlQueue, type SqlQueue } from '../../src/brokers/sql-queue.js'
import type { IncomingMessage, OutgoingMessage } from '../../src/brokers/types.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { count, dbTargets, type OutboxDb, until } from '../outbox/support.js'

// Incompressible text (PostgreSQL compresses index entries that compress well), in bytes.
function noise(bytes: number): string {
  return randomBytes(Math.ceil(bytes / 2))
    .toString('hex')
    .slice(0, bytes)
}

function message(fields: Partial<OutgoingMessage> = {}): OutgoingMessage {
  return { id: noise(16), topic: 't', key: 'k', payload: '{}', headers: {}, ...fields }
}

describe.each(dbTargets)('SQL queue ids and keys on $dialect', (target) => {
  let t: OutboxDb
  const queues: SqlQueue[] = []

  function queue(): SqlQueue {
    const q = createSqlQueue(t.db, { pollIntervalMs: 2, maxPollIntervalMs: 20, onError: () => {} })
    queues.push(q)
    return q
  }

  beforeAll(async () => {
    t = await target.open('sql_queue_long_ids')
  })
  afterAll(async () => {
    for (const q of queues) await q.close()
    await t?.close()
  })

  it('delivers a message with a 2048-byte id and key on a 256-byte topic and group, retried once', async () => {
    const q = queue()
    const topic = noise(256)
    const group = noise(256)
    const seen: IncomingMessage[] = []
    let failures = 0
    const subscription = await q.subscriber.subscribe(topic, group, async (m) => {
      if (failures++ === 0) throw new Error('once')
      seen.push(m)
    })
    const sent = message({ id: noise(2048), topic, key: noise(2048) })
    await q.publisher.publish([sent])
    await until(() => seen.length === 1, 'the delivery')
    expect(seen[0]).toMatchObject({ id: sent.id, key: sent.key })
    await subscription.close()
  })

  it('refuses a longer id, key or topic (BROKER_REJECTED) or group, naming it, writing nothing', async () => {
    const q = queue()
    const overId = `${'é'.repeat(1024)}x`
    const cases: Array<[OutgoingMessage, string, RegExp]> = [
      [message({ id: overId }), 'messages[1].id', /2048 UTF-8 bytes/],
      [message({ key: noise(2049) }), 'messages[1].key', /2048 UTF-8 bytes/],
      [message({ topic: noise(257) }), 'messages[1].topic', /256 UTF-8 bytes/],
    ]
    for (const [bad, option, says] of cases) {
      const before = await count(t.db, 'breakwater_queue')
      const error = await q.publisher.publish([message(), bad]).catch((e: unknown) => e)
      expect(error).toMatchObject({ code: 'BROKER_REJECTED', retryable: false })
      expect((error as Error).message).toContain(`sql-queue: ${option}: expected`)
      expect((error as Error).message).toMatch(says)
      expect(await count(t.db, 'breakwater_queue')).toBe(before)
    }
    for (const [topic, group, option] of [
      [noise(257), 'g', 'topic'],
      ['t', noise(257), 'group'],
    ] as const) {
      const error = await q.subscriber
        .subscribe(topic, group, async () => {})
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })
})
