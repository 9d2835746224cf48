// Outbox migration 4 ('parked-events') on a database the previous release wrote (migrations 1
// to 3, rows in every state): the rows are kept as they were, none is parked, and a relay of this
// release then publishes what was pending, in order, parking the events held behind a dead one
// and unparking them once it is redriven and published. Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createOutbox, migrateOutbox, outboxMigrations, redrive } from '../../src/outbox/index.js'
import { openDatabase, runMigrations, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, emptyDbTargets, recordingRelay, until } from './support.js'

const T0 = 1_700_000_000_000
const outboxTable = 'breakwater_outbox'

describe.each(emptyDbTargets)('outbox migration 4 on $dialect', (target) => {
  let db: SqlDriver
  let drop: () => Promise<void>

  beforeAll(async () => {
    const opened = await target.open('outbox_parked_migration')
    drop = opened.drop
    db = await openDatabase(opened.url)
  })
  afterAll(async () => {
    await db?.close()
    await drop?.()
  })

  it('keeps the rows of migration 3 and a relay then publishes them in order', async () => {
    const previous = outboxMigrations.filter((m) => m.version <= 3)
    expect(previous.map((m) => m.version)).toEqual([1, 2, 3])
    await runMigrations(db, 'outbox', previous)
    const clock = new ManualClock(T0)
    const outbox = createOutbox({ clock, topic: 'orders' })
    const events = [
      ...['a-0', 'a-1', 'a-2', 'a-3'].map((id) => ({ id, aggregateId: 'a' })),
      ...['b-0', 'b-1'].map((id) => ({ id, aggregateId: 'b' })),
      { id: 'c-0', aggregateId: 'c' },
    ]
    await db.transaction((tx) =>
      outbox.enqueue(
        tx,
        events.map((e) => ({ ...e, aggregateType: 'order', type: 'changed', payload: {} })),
      ),
    )
    // The previous release's state: a-0 dead, b-0 published, the rest pending.
    await db.execute(
      `UPDATE ${outboxTable} SET dead_at = $1, attempts = 10, last_error = 'boom' WHERE event_id = 'a-0'`,
      [T0],
    )
    await db.execute(`UPDATE ${outboxTable} SET published_at = $1 WHERE event_id = 'b-0'`, [T0])

    const applied = await migrateOutbox(db)
    expect(applied.map((m) => [m.version, m.name])).toEqual([
      [4, 'parked-events'],
      [5, 'retry-due-index'],
    ])
    expect(await count(db, outboxTable)).toBe(events.length)
    expect(await count(db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(0)

    const published: string[] = []
    const relay = recordingRelay({ db, clock }, published)
    await relay.start()
    try {
      await until(async () => {
        await clock.advance(50)
        return (
          published.length === 2 &&
          (await count(db, outboxTable, 'WHERE parked_behind IS NOT NULL')) === 3
        )
      }, 'b-1 and c-0 published, a-1..a-3 parked')
      expect(published.sort()).toEqual(['b-1', 'c-0'])
      expect(await redrive(db, ['a-0'])).toBe(1)
      await until(async () => {
        await clock.advance(50)
        return published.length === 6
      }, 'the redriven aggregate')
      expect(published.slice(2)).toEqual(['a-0', 'a-1', 'a-2', 'a-3'])
      expect(await count(db, outboxTable, 'WHERE published_at IS NULL')).toBe(0)
      expect(await count(db, outboxTable, 'WHERE parked_behind IS NOT NULL')).toBe(0)
    } finally {
      await relay.stop()
    }
  })
})
