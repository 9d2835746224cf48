// The connection state a projection rebuild's swap changes on SQLite, on a real SQLite file: the
// swap renames in legacy_alter_table mode (so that views keep reading the table by its name),
// a mode that belongs to the connection and outlives the transaction. Whatever becomes of the
// swap, the connection is left in the mode it was in: after a swap that SQLite itself rolled back
// (a trigger's RAISE(ROLLBACK), here fired by the ON DELETE CASCADE of the drop of the old
// tables), when the transaction refuses every further statement; and on a connection whose
// owner had turned legacy mode on.
import { describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type Projector,
} from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { outcomeOf, sqliteDb, tableRows, tablesLike, useTestDb } from './databases.js'

type Event = { type: string; data: { n: number } }

/**
 * A projection `name` of `<name>_orders` and `<name>_lines` (a line per order, deleted with it),
 * whose lines refuse to be deleted when `guarded`: a trigger rolls the whole transaction back.
 */
function orders(name: string, guarded: boolean) {
  const o = `${name}_orders`
  const l = `${name}_lines`
  return defineProjection<Event>({
    name,
    eventTypes: [name],
    tables: {
      [o]: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`],
      [l]: (t, _dialect, tables) => [
        `CREATE TABLE ${t} (id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES ${tables(o)} (id) ON DELETE CASCADE)`,
        ...(guarded
          ? [
              `CREATE TRIGGER ${t}_guard BEFORE DELETE ON ${t} BEGIN SELECT RAISE(ROLLBACK, 'lines are kept'); END`,
            ]
          : []),
      ],
    },
    async apply(event, { tx, table }) {
      await tx.execute(`INSERT INTO ${table(o)} VALUES ($1, $2)`, [event.id, event.data.n])
      await tx.execute(`INSERT INTO ${table(l)} VALUES ($1, $2)`, [`l-${event.id}`, event.id])
    },
  })
}

async function projected(db: SqlDriver, name: string, guarded: boolean): Promise<Projector> {
  const store = createEventStore(db)
  const projector = createProjector(store, orders(name, guarded))
  await store.append(
    name,
    [0, 1, 2].map((n) => ({ type: name, data: { n } })),
  )
  await projector.catchUp()
  await db.execute(`UPDATE ${name}_orders SET n = n + 100`)
  return projector
}

async function legacyAlterTable(db: SqlDriver): Promise<number> {
  const rows = await db.query<{ legacy_alter_table: number | bigint }>('PRAGMA legacy_alter_table')
  return Number(rows[0]?.legacy_alter_table)
}

describe('legacy_alter_table and a rebuild (sqlite)', () => {
  const t = useTestDb(sqliteDb, 'cqrs_rebuild_pragmas_sqlite')

  it('is off again after a swap that SQLite rolled back itself, nothing swapped in', async () => {
    const db = await t.connect()
    const projector = await projected(db, 'rp_guard', true)
    const error = await outcomeOf(projector.rebuild())
    expect((error as { message?: string }).message).toContain('lines are kept')
    expect(await legacyAlterTable(db)).toBe(0)
    // Nothing swapped in: the live tables (tampered with) and their keys as they were.
    expect((await tableRows(db, 'rp_guard_orders', 'n')).map((row) => row.n)).toEqual([
      100, 101, 102,
    ])
    expect(await tablesLike(db, 'rp_guard_orders__old')).toEqual([])
    // And a rename on this connection rewrites the views that read the table, as by default.
    await db.execute('CREATE TABLE rp_guard_x (n INTEGER)')
    await db.execute('CREATE VIEW rp_guard_v AS SELECT n FROM rp_guard_x')
    await db.execute('ALTER TABLE rp_guard_x RENAME TO rp_guard_y')
    const view = await db.query<{ sql: string }>(
      "SELECT sql FROM sqlite_master WHERE name = 'rp_guard_v'",
    )
    expect(view[0]?.sql).toContain('rp_guard_y')
  })

  it('stays on after a swap on a connection that had it on', async () => {
    const db = await t.connect()
    await db.execute('PRAGMA legacy_alter_table = ON')
    const projector = await projected(db, 'rp_legacy', false)
    await projector.rebuild()
    expect((await tableRows(db, 'rp_legacy_orders', 'n')).map((row) => row.n)).toEqual([0, 1, 2])
    expect(await legacyAlterTable(db)).toBe(1)
  })
})
