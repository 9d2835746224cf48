// Outbox migration 5 ('retry-due-index') on a database the previous release wrote (migrations 1
// to 4, rows in every state: waiting for a retry, due, parked, dead, published, new), run by two
// processes at once (on PostgreSQL after one of its indexes was built beforehand): it is applied
// once, the rows are kept as they were, and a relay of this release then publishes each
// aggregate in order, the waiting one once its retry time has come.
// Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, migrateOutbox, outboxMigrations, redrive } from '../../src/outbox/index.js'
import { openDatabase, runMigrations, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, emptyDbTargets, recordingRelay, until } from './support.js'

const T0 = 1_700_000_000_000
const outboxTable = 'breakwater_outbox'

describe.each(emptyDbTargets)('outbox migration 5 on $dialect', (target) => {
  let db: SqlDriver
  let other: SqlDriver
  let drop: () => Promise<void>

  beforeAll(async () => {
    const opened = await target.open('outbox_retry_due_migration')
    drop = opened.drop
    db = await openDatabase(opened.url)
    other = await openDatabase(opened.url)
  })
  afterAll(async () => {
    await other?.close()
    await db?.close()
    await drop?.()
  })

  it('keeps the rows of migration 4 and a relay then publishes them in order', async () => {
    const previous = outboxMigrations.filter((m) => m.version <= 4)
    expect(previous.map((m) => m.version)).toEqual([1, 2, 3, 4])
    await runMigrations(db, 'outbox', previous)
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'orders' })
    const ids = ['a-0', 'a-1', 'a-2', 'b-0', 'b-1', 'c-0', 'c-1', 'd-0', 'd-1', 'e-0']
    await db.transaction((tx) =>
      outbox.enqueue(
        tx,
        ids.map((id) => ({
          id,
          aggregateId: id.slice(0, 1),
          aggregateType: 'order',
          type: 'changed',
          payload: {},
        })),
      ),
    )
    const rowId = `(SELECT id FROM ${outboxTable} WHERE event_id = $1)`
    const set = (eventId: string, assignments: string, params: unknown[] = []) =>
      db.execute(
        `UPDATE ${outboxTable} SET ${assignments} WHERE event_id = $${params.length + 1}`,
        [...params, eventId],
      )
    // The previous release's state. a-0 waits for its retry, a-1 and a-2 are parked behind it
    // (a chain); b-0's retry is due and b-1 not yet read; c-0 is dead, c-1 parked behind it;
    // d-0 is published; e-0 is new.
    await set('a-0', `attempts = 1, last_error = 'refused', retry_at = $1`, [T0 + 5_000])
    await db.execute(`UPDATE ${outboxTable} SET parked_behind = ${rowId} WHERE event_id = 'a-1'`, [
      'a-0',
    ])
    await db.execute(`UPDATE ${outboxTable} SET parked_behind = ${rowId} WHERE event_id = 'a-2'`, [
      'a-1',
    ])
    await set('b-0', `attempts = 2, last_error = 'refused', retry_at = $1`, [T0 - 1])
    await set('c-0', `attempts = 10, last_error = 'boom', dead_at = $1`, [T0])
    await db.execute(`UPDATE ${outboxTable} SET parked_behind = ${rowId} WHERE event_id = 'c-1'`, [
      'c-0',
    ])
    await set('d-0', 'published_at = $1', [T0])

    // On PostgreSQL an operator built one of its indexes beforehand, without holding writes up
    // (docs/outbox.md): the migration finds it.
    if (target.dialect === 'postgres') {
      await db.execute(`CREATE INDEX CONCURRENTLY ${outboxTable}_ready ON ${outboxTable} (id)
        WHERE published_at IS NULL AND dead_at IS NULL AND parked_behind IS NULL AND retry_at IS NULL`)
    }
    // Two processes migrate at once: one applies it, the other finds it applied.
    const applied = await Promise.all([migrateOutbox(db), migrateOutbox(other)])
    expect(applied.flat().map((m) => [m.version, m.name])).toEqual([[5, 'retry-due-index']])
    expect(await count(db, outboxTable)).toBe(ids.length)
    expect(await count(db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(3)
    expect(await count(db, outboxTable, 'WHERE retry_at IS NOT NULL')).toBe(2)

    const published: string[] = []
    const relay = recordingRelay({ db, clock }, published)
    await relay.start()
    try {
      await until(async () => {
        await clock.advance(50)
        return published.length === 4
      }, 'b-0, b-1, d-1 and e-0')
      expect([...published].sort()).toEqual(['b-0', 'b-1', 'd-1', 'e-0'])
      expect(published.indexOf('b-0')).toBeLessThan(published.indexOf('b-1'))

      // a-0's retry time comes (the relay's clock is past T0 + 5 s), and its chain follows.
      await until(async () => {
        await clock.advance(500)
        return published.length === 7
      }, 'the aggregate waiting for its retry')
      expect(published.slice(4)).toEqual(['a-0', 'a-1', 'a-2'])

      expect(await redrive(db, ['c-0'])).toBe(1)
      await until(async () => {
        await clock.advance(50)
        return published.length === 9
      }, 'the redriven aggregate')
      expect(published.slice(7)).toEqual(['c-0', 'c-1'])
      // Published means confirmed by the broker; the marks follow.
      await until(
        async () => (await count(db, outboxTable, 'WHERE published_at IS NULL')) === 0,
        'every event marked published',
      )
      expect(await count(db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(0)
    } finally {
      await relay.stop()
    }
  })
})
