// A message row another writer put in the queue's table (another service, a hand-made INSERT, a
// restore). Real SQLite and PostgreSQL.
//
// The schema already refuses a NULL in every column, and PostgreSQL its types: a NUL or bytes
// that are not UTF-8 in its text columns, text in payload or created_at. SQLite keeps what it
// is given in a BLOB column and a blob in a TEXT one:
// - an id that is not UTF-8 (text or a blob) was decoded with every such byte sequence as
//   U+FFFD, so two different ids arrived as one and an inbox dropped the second as a duplicate
//   without a word (a blob one came as a Buffer); like an empty id (either database), it is now
//   delivered as `<topic>:<seq>`, as the Redis adapter gives `<topic>:<entry id>`;
// - a key held as a blob reached the handler as a Buffer (and, a new object each time, did not
//   keep its messages in order); it is now its text;
// - a payload held as text reached the handler as a string; it is now its bytes, as a string
//   published is stored; one held as a number is refused (phase refused, BROKER_REJECTED).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/index.js'
import {
  createSqlQueue,
  queueTable,
  type SqlQueue,
  type SqlQueueErrorEvent,
} from '../../src/brokers/sql-queue.js'
import { dbTargets, type OutboxDb, until } from '../outbox/support.js'

describe.each(dbTargets)(
  'SQL queue message rows written outside breakwater on $dialect',
  (target) => {
    let t: OutboxDb
    const queues: SqlQueue[] = []
    beforeAll(async () => {
      t = await target.open('sql_queue_malformed_messages')
    })
    afterAll(async () => {
      for (const q of queues) await q.close()
      await t?.close()
    })

    // Inserts the given rows (SQL values for message_id, msg_key, payload) into a fresh topic
    // whose group 'g' exists, then publishes 'after' (key 'z'); subscribes and waits for every
    // message to be handled or refused. Returns the topic, the seqs inserted, what the handler
    // was given and what onError was given.
    async function delivered(
      name: string,
      rows: string[],
    ): Promise<[string, number[], IncomingMessage[], SqlQueueErrorEvent[]]> {
      const errors: SqlQueueErrorEvent[] = []
      const q = createSqlQueue(t.db, {
        pollIntervalMs: 2,
        maxPollIntervalMs: 20,
        onError: (e) => errors.push(e),
      })
      queues.push(q)
      const topic = `t-${name}`
      await (await q.subscriber.subscribe(topic, 'g', async () => {})).close()
      const seqs: number[] = []
      for (const values of rows) {
        const inserted = await t.db.query<{ seq: number | string }>(
          `INSERT INTO ${queueTable} (topic, message_id, msg_key, payload, headers, created_at)
         VALUES ($1, ${values}, '{}', 1) RETURNING seq`,
          [topic],
        )
        seqs.push(Number(inserted[0]!.seq))
        // Fanned out by hand too: a writer that knows the table. (A new group gets it anyway.)
        await t.db.execute(
          `INSERT INTO breakwater_queue_deliveries (topic, group_name, seq, msg_key)
         SELECT topic, 'g', seq, msg_key FROM ${queueTable} WHERE seq = $1`,
          [seqs.at(-1)],
        )
      }
      await q.publisher.publish([{ id: 'after', topic, key: 'z', payload: 'x', headers: {} }])
      const seen: IncomingMessage[] = []
      const subscription = await q.subscriber.subscribe(topic, 'g', async (m) => {
        seen.push(m)
      })
      try {
        await until(
          () => seen.length + errors.length === rows.length + 1,
          'every message handled or refused',
        )
      } finally {
        await subscription.close()
      }
      return [topic, seqs, seen, errors]
    }

    it('an empty id is delivered as <topic>:<seq>', async () => {
      const [topic, [seq], seen, errors] = await delivered('empty-id', [`'', 'k', 'x'`])
      expect(errors).toEqual([])
      expect(seen.map((m) => m.id)).toEqual([`${topic}:${seq}`, 'after'])
    })

    if (target.dialect !== 'sqlite') return

    it('an id that is not UTF-8 (text or a blob) is delivered as <topic>:<seq>, each its own', async () => {
      const [topic, seqs, seen, errors] = await delivered('not-utf8-id', [
        `CAST(X'80' AS TEXT), 'k', X'00'`,
        `CAST(X'81' AS TEXT), 'k', X'00'`,
        `X'82', 'k', X'00'`,
        `X'6869', 'k', X'00'`,
      ])
      expect(errors).toEqual([])
      expect(seen.map((m) => m.id)).toEqual([
        ...seqs.slice(0, 3).map((seq) => `${topic}:${seq}`),
        'hi',
        'after',
      ])
    })

    it('a key held as a blob is delivered as text, its messages in order', async () => {
      const [, , seen, errors] = await delivered('blob-key', [
        `'a', X'6b', X'00'`,
        `'b', X'6b', X'00'`,
      ])
      expect(errors).toEqual([])
      expect(seen.map((m) => [m.id, m.key])).toEqual([
        ['a', 'k'],
        ['b', 'k'],
        ['after', 'z'],
      ])
    })

    it('a payload held as text is delivered as its bytes; one held as a number is refused', async () => {
      const [topic, seqs, seen, errors] = await delivered('text-payload', [
        `'text', 'k', 'héllo'`,
        `'int', 'j', 42`,
        `'real', 'j', 1.5`,
      ])
      expect(seen.map((m) => m.id)).toEqual(['text', 'after'])
      expect(seen[0]!.payload).toBeInstanceOf(Uint8Array)
      expect(Buffer.from(seen[0]!.payload).toString('utf8')).toBe('héllo')
      expect(errors.map((e) => [e.phase, e.message?.id])).toEqual([
        ['refused', 'int'],
        ['refused', 'real'],
      ])
      for (const [i, e] of errors.entries()) {
        expect(e).toMatchObject({ topic, group: 'g', error: { code: 'BROKER_REJECTED' } })
        expect(String(e.error)).toContain(`(seq ${seqs[i + 1]})`)
        expect(String(e.error)).toMatch(/payload/)
      }
    })
  },
)
