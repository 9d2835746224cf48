// Lease rows changed outside breakwater. On SQLite, text set by hand into an INTEGER column
// stays text, and text sorts above every number: a partition lease end or a relay heartbeat
// end that is not a number never ran out. A partition whose owner is gone was then never
// claimed again (its events never published), a relay heartbeat of a relay that is gone counted
// that relay live for ever (the fair share left a share of the partitions to it, unowned), and
// a relay id whose heartbeat held such a value could never be taken up again (RELAY_ID_IN_USE
// at every start). Such a value is now run out, as a negative one already was (checked here
// too, on both databases). Real SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRelay, outboxRelaysTable } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb, testPublisher, testQueue } from './support.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('outbox lease rows changed outside breakwater, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_malformed_leases')
  })
  afterAll(async () => {
    await t?.close()
  })

  const values: Array<[string, string]> = [['a negative number', '-5']]
  if (target.dialect === 'sqlite') values.push(['text', `'abc'`], ['a blob', `X'00'`])
  // What is changed (with the value), and the relay id of the relay then started alone.
  const changes: Array<[string, (bad: string) => string, string | undefined]> = [
    [
      'the lease end of a partition whose owner is gone',
      (bad) =>
        `UPDATE breakwater_outbox_partitions SET owner = 'gone', lease_expires_at = ${bad} WHERE partition_no = 7`,
      undefined,
    ],
    [
      'the heartbeat end of a relay that is gone',
      (bad) =>
        `INSERT INTO ${outboxRelaysTable} (relay_id, started_at, expires_at) VALUES ('gone', 1, ${bad})`,
      undefined,
    ],
    [
      'the heartbeat end left by a crashed instance of the relay id',
      (bad) =>
        `INSERT INTO ${outboxRelaysTable} (relay_id, started_at, expires_at, instance) VALUES ('crashed', 1, ${bad}, 'old-instance')`,
      'crashed',
    ],
  ]
  const cases = changes.flatMap(([what, sql, relayId]) =>
    values.map(([kind, bad]) => [what, kind, sql(bad), relayId] as const),
  )

  it.each(cases)('%s set to %s: a relay started alone holds every partition', async (...c) => {
    const [, , sql, relayId] = c
    await t.db.execute(sql)
    const queue = testQueue(t.db)
    const relay = createRelay({
      db: t.db,
      publisher: testPublisher(queue.publisher),
      clock: new ManualClock(T0),
      leaseMs: 3_000,
      retention: false,
      ...(relayId === undefined ? {} : { relayId }),
    })
    try {
      await relay.start()
      expect(relay.partitions()).toHaveLength(64)
      // A relay that is gone is forgotten, not counted live.
      expect(await t.db.query(`SELECT relay_id FROM ${outboxRelaysTable}`)).toEqual([
        { relay_id: relay.id },
      ])
    } finally {
      await relay.stop()
      await queue.close()
      await t.db.execute(`DELETE FROM ${outboxRelaysTable}`)
      await t.db.execute(
        'UPDATE breakwater_outbox_partitions SET owner = NULL, lease_expires_at = NULL',
      )
    }
  })
})
