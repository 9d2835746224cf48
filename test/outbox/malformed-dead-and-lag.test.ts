// An outbox row's attempts, created_at or dead_at changed outside breakwater: SQLite keeps text
// or a blob as it is in its INTEGER column, either database a negative number. listDead showed
// them as NaN or a negative (the CLI then failed the whole listing on NaN), outboxStats and the
// relay's lag metric as a NaN lag (or one of 56 years for a negative created_at). listDead now
// lists such a row with the value undefined and the column named in `unreadable`; the lags
// leave an unreadable created_at out, and `breakwater outbox dead` shows (unreadable) / null. Real SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { createOutbox, createRelay, listDead, outboxStats } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { runCaptured } from '../cli/captured.js'
import { dbTargets, type OutboxDb, testPublisher, testQueue, until } from './support.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('outbox numbers changed outside breakwater, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_malformed_dead_and_lag')
  })
  afterAll(async () => {
    await t?.close()
  })

  const cases: Array<[string, string]> = [['a negative number', '-5']]
  if (target.dialect === 'sqlite') cases.push(['text', `'abc'`], ['a blob', `X'00'`])

  // One transaction: on PostgreSQL the relay then reads both rows in the same round even when
  // another transaction started between two enqueues holds the horizon between them.
  async function enqueue(clock: ManualClock, ids: readonly string[]): Promise<void> {
    const outbox = createOutbox({ clock, topic: 'numbers' })
    await t.db.transaction((tx) =>
      outbox.enqueue(
        tx,
        ids.map((id) => ({ id, aggregateType: 'thing', aggregateId: id, type: 'x', payload: {} })),
      ),
    )
  }

  it.each(cases)('%s: listDead names the unreadable columns and lists the rest', async (_, bad) => {
    await t.db.execute('DELETE FROM breakwater_outbox')
    const clock = new ManualClock(T0)
    await enqueue(clock, ['bad', 'good'])
    await t.db.execute(
      `UPDATE breakwater_outbox SET dead_at = ${T0 + 1}, attempts = 3, last_error = 'x'`,
    )
    await t.db.execute(
      `UPDATE breakwater_outbox SET attempts = ${bad}, created_at = ${bad}, dead_at = ${bad} WHERE event_id = 'bad'`,
    )
    const dead = await listDead(t.db)
    expect(dead.map((event) => event.eventId)).toEqual(['bad', 'good'])
    expect(dead[0]).toMatchObject({
      attempts: undefined,
      createdAt: undefined,
      deadAt: undefined,
      unreadable: ['attempts', 'created_at', 'dead_at'],
    })
    expect(dead[1]).toMatchObject({
      attempts: 3,
      createdAt: T0,
      deadAt: T0 + 1,
      unreadable: undefined,
    })
    // `breakwater outbox dead` lists both (new Date(NaN).toISOString() threw on the row).
    const table = await runCaptured(outboxCommand, ['dead', '--db', t.url])
    expect(table.code).toBe(0)
    expect(table.stdout).toContain('(unreadable)')
    const json = await runCaptured(outboxCommand, ['dead', '--db', t.url, '--json'])
    expect(JSON.parse(json.stdout)).toMatchObject([
      {
        eventId: 'bad',
        attempts: null,
        createdAt: null,
        deadAt: null,
        unreadable: ['attempts', 'created_at', 'dead_at'],
      },
      { eventId: 'good', attempts: 3, deadAt: new Date(T0 + 1).toISOString() },
    ])
  })

  it.each(cases)('created_at %s: outboxStats and the relay lag leave it out', async (_, bad) => {
    await t.db.execute('DELETE FROM breakwater_outbox')
    const clock = new ManualClock(T0)
    await enqueue(clock, ['bad', 'good'])
    await t.db.execute(`UPDATE breakwater_outbox SET created_at = ${bad} WHERE event_id = 'bad'`)
    await clock.advance(5000)
    expect(await outboxStats(t.db, { clock })).toEqual({
      pending: 2,
      dead: 0,
      stranded: 0,
      lagMs: 5000,
    })
    const publisher = testPublisher(testQueue(t.db).publisher)
    const lags: number[] = []
    publisher.before = () => void lags.push(relay.metrics().lagMs)
    const relay = createRelay({ db: t.db, publisher, clock, retention: false })
    await relay.start()
    try {
      // Woken at every look, the clock kept still (the lag stays exactly 5000). On PostgreSQL a
      // transaction that began before the enqueue, in any database of the server (another test
      // file's), holds the rows behind the horizon at the first read; the relay looks again
      // after a wait on its clock, which nothing here moves, so it waited for ever.
      await until(() => {
        relay.wake()
        return publisher.confirmed.length === 2
      }, 'both events published')
      expect(lags).toEqual([5000])
    } finally {
      await relay.stop()
    }
  })
})
