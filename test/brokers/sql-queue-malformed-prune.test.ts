// pruneSqlQueue on message rows whose created_at was changed outside breakwater. SQLite keeps
// text or a blob as it is in an INTEGER column, and it sorts above every number: `created_at
// <= cutoff` never held, so such a message, acknowledged by every group, was never removed. Its
// age cannot be told: it now counts as old enough. A message a group still has to handle is
// never removed. PostgreSQL's BIGINT holds only numbers: a negative one was already old enough.
// Real databases.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSqlQueue,
  pruneSqlQueue,
  queueStatements,
  queueTable,
  type SqlQueue,
} from '../../src/brokers/sql-queue.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb } from '../outbox/support.js'

describe.each(dbTargets)('pruneSqlQueue on malformed created_at, on $dialect', (target) => {
  let t: OutboxDb
  let q: SqlQueue
  beforeAll(async () => {
    t = await target.open('sql_queue_malformed_prune')
  })
  afterAll(async () => {
    await q?.close()
    await t?.close()
  })

  it('removes an acknowledged message whose created_at is not a number, never an undelivered one', async () => {
    const clock = new ManualClock(1_000_000)
    q = createSqlQueue(t.db, { clock })
    const topic = 'malformed-prune'
    await (await q.subscriber.subscribe(topic, 'g', async () => {})).close()
    const insert = async (id: string, createdAt: unknown) =>
      await t.db.execute(
        `INSERT INTO ${queueTable} (topic, message_id, msg_key, payload, headers, created_at)
         VALUES ($1, $2, 'k', $3, '{}', $4)`,
        [topic, id, Buffer.from('{}'), createdAt],
      )
    const bad = target.dialect === 'sqlite' ? ['abc', '', Buffer.from([0, 1]), -5] : [-5]
    // Inserted behind the queue's back: no delivery row, so no group has to handle them.
    for (const [i, createdAt] of bad.entries()) await insert(`gone-${i}`, createdAt)
    await insert('young', clock.now())
    // Published, so group g has to handle it; then its created_at is spoilt.
    await q.publisher.publish([{ id: 'pending', topic, key: 'k', payload: '{}', headers: {} }])
    await t.db.execute(`UPDATE ${queueTable} SET created_at = $1 WHERE message_id = 'pending'`, [
      bad[0],
    ])

    expect(await pruneSqlQueue(t.db, { olderThanMs: 5_000, clock })).toBe(bad.length)
    const left = await t.db.query<{ message_id: string }>(
      `SELECT CAST(message_id AS TEXT) AS message_id FROM ${queueTable} WHERE topic = $1 ORDER BY message_id`,
      [topic],
    )
    expect(left.map((row) => row.message_id)).toEqual(['pending', 'young'])
  })

  it.runIf(target.dialect === 'sqlite')(
    'finds them by two bounded ranges of the created_at index, never scanning the messages',
    async () => {
      const plan = await t.db.query<{ detail: string }>(
        `EXPLAIN QUERY PLAN ${queueStatements.sqlite.prune.replaceAll('$1', '0').replaceAll('$2', '10')}`,
      )
      const details = plan.map((row) => row.detail)
      for (const range of ['created_at<\\?', 'created_at>\\?'])
        expect(details).toContainEqual(
          expect.stringMatching(
            new RegExp(
              `SEARCH m USING (COVERING )?INDEX breakwater_queue_created_at \\(${range}\\)`,
            ),
          ),
        )
      expect(details.filter((d) => /^SCAN (breakwater_queue|m)\b/.test(d))).toEqual([])
    },
  )
})
