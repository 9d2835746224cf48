// An outbox row's published_at changed outside breakwater. On SQLite, text or a blob set by hand
// into the INTEGER column stays as it is and sorts above every number: `published_at <= cutoff`
// was never true, so the row (skipped by the relay as published) was never pruned, a storage
// leak. Such a row is now pruned (deleted or archived); an unpublished row is not, and the
// prune still walks the `_published` index. A negative number (either database) or a fraction
// was already pruned: checked here too. Real SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, pruneOutbox } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb } from './support.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)(
  'outbox published_at changed outside breakwater, on $dialect',
  (target) => {
    let t: OutboxDb
    beforeAll(async () => {
      t = await target.open('outbox_malformed_published_at')
    })
    afterAll(async () => {
      await t?.close()
    })

    const cases: Array<[string, string]> = [['a negative number', '-5']]
    if (target.dialect === 'sqlite') {
      cases.push(
        ['text', `'abc'`],
        ['empty text', `''`],
        ['a fraction', '1.5'],
        ['a blob', `X'00'`],
      )
    }
    for (const archive of [false, true]) {
      it.each(cases)(
        `published_at %s: the row is pruned (archive ${archive}), unpublished and recent rows are kept`,
        async (_, bad) => {
          await t.db.execute('DELETE FROM breakwater_outbox')
          await t.db.execute('DELETE FROM breakwater_outbox_archive')
          const clock = new ManualClock(T0)
          const outbox = createOutbox({ clock, topic: 'published-at' })
          for (const id of ['edited', 'pending', 'recent'])
            await t.db.transaction((tx) =>
              outbox.enqueue(tx, {
                id,
                aggregateType: 'thing',
                aggregateId: id,
                type: 'changed',
                payload: {},
              }),
            )
          await t.db.execute(
            `UPDATE breakwater_outbox SET published_at = ${bad} WHERE event_id = 'edited'`,
          )
          await t.db.execute(
            `UPDATE breakwater_outbox SET published_at = ${T0} WHERE event_id = 'recent'`,
          )
          const removed = await pruneOutbox(t.db, { olderThanMs: 1000, archive, clock })
          expect(removed).toBe(1)
          const left = await t.db.query<{ event_id: string }>(
            'SELECT event_id FROM breakwater_outbox ORDER BY id',
          )
          expect(left.map((row) => row.event_id)).toEqual(['pending', 'recent'])
          const archived = await t.db.query<{ event_id: string }>(
            'SELECT event_id FROM breakwater_outbox_archive',
          )
          expect(archived.map((row) => row.event_id)).toEqual(archive ? ['edited'] : [])
        },
      )
    }

    if (target.dialect === 'sqlite') {
      it('the prune statements still search the _published index', async () => {
        const sql = outboxStatements.sqlite
        for (const statement of [sql.prune, sql.archive]) {
          const plan = await t.db.query<{ detail: string }>(
            `EXPLAIN QUERY PLAN ${statement.replaceAll('$1', '0').replaceAll('$2', '10').replaceAll('$3', '0')}`,
          )
          const details = plan.map((row) => row.detail)
          // The rows due by time are a bounded range of the index (an OR of the two conditions
          // walked every published row in order), and the outbox is never scanned whole.
          expect(details).toContainEqual(
            expect.stringMatching(
              /SEARCH breakwater_outbox USING .*INDEX breakwater_outbox_published \(published_at>\? AND published_at<\?\)/,
            ),
          )
          expect(details.filter((d) => /^SCAN breakwater_outbox\b/.test(d))).toEqual([])
        }
      })
    }
  },
)
