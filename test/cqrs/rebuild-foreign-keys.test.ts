// Foreign keys and a projection rebuild, on real PostgreSQL and SQLite. The swap renames each live
// table to `<table>__old`, the fresh one into its place, and drops the old ones: a foreign key
// bound to the old table (PostgreSQL binds it to the table; SQLite with foreign_keys on rewrites
// it on the rename) would fail that DROP after all the fill's work (PostgreSQL), or lose rows
// through ON DELETE CASCADE and be left naming a dropped table (SQLite). Such a key from a table
// outside the projection is refused before any work with REBUILD_BLOCKED (and again by the swap
// for one added during the fill); a key between two tables of the projection, written with the
// definition's `tables` argument, is rebuilt to reference the rebuilt table.
import { describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  type Projector,
  RebuildBlockedError,
} from '../../src/cqrs/index.js'
import type { SqlDriver, SqlExecutor } from '../../src/stores/index.js'
import {
  dbTargets,
  outcomeOf,
  rebuildGenerationOf,
  sqliteDb,
  tableRows,
  tablesLike,
  useTestDb,
} from './databases.js'

type Event = { type: string; data: { n: number } }

/**
 * A projection `name` of two tables: `<name>_a` (id, n) and `<name>_b` (id, a_id referencing
 * `<name>_a`), one row in each per event. `reference` says how `<name>_b`'s definition names
 * `<name>_a`: through the definition's `tables` argument, or by the logical name written out.
 */
function pair(name: string, reference: 'tables' | 'written', onFill?: () => Promise<void>) {
  const a = `${name}_a`
  const b = `${name}_b`
  return defineProjection<Event>({
    name,
    eventTypes: [name],
    tables: {
      [a]: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`],
      [b]: (t, _dialect, tables) => [
        `CREATE TABLE ${t} (id TEXT PRIMARY KEY, a_id TEXT NOT NULL REFERENCES ${reference === 'tables' ? tables(a) : a} (id))`,
      ],
    },
    async apply(event, { tx, table }) {
      if (table(a) !== a) await onFill?.()
      await tx.execute(`INSERT INTO ${table(a)} VALUES ($1, $2)`, [event.id, event.data.n])
      await tx.execute(`INSERT INTO ${table(b)} VALUES ($1, $2)`, [`b-${event.id}`, event.id])
    },
  })
}

/** A one-table projection `name` (id, n), like the pair's first table. */
function single(name: string, onFill?: (tx: SqlExecutor) => Promise<void>) {
  return defineProjection<Event>({
    name,
    eventTypes: [name],
    tables: { [name]: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`] },
    async apply(event, { tx, table }) {
      if (table(name) !== name) await onFill?.(tx)
      await tx.execute(`INSERT INTO ${table(name)} VALUES ($1, $2)`, [event.id, event.data.n])
    },
  })
}

/**
 * A store and projector of `projection` on `db` with 3 events applied; the live `table` is then
 * tampered with (n + 100), so that a rebuild that swapped would show.
 */
async function projected(
  db: SqlDriver,
  projection: ReturnType<typeof single>,
  table: string,
): Promise<{ store: EventStore; projector: Projector }> {
  const store = createEventStore(db)
  const projector = createProjector(store, projection)
  await store.append(
    projection.name,
    [0, 1, 2].map((n) => ({ type: projection.name, data: { n } })),
  )
  await projector.catchUp()
  await db.execute(`UPDATE ${table} SET n = n + 100`)
  return { store, projector }
}

/** The table `table`'s foreign keys reference (as the database names it now). */
async function referenced(db: SqlDriver, table: string): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    db.dialect === 'postgres'
      ? "SELECT confrelid::regclass::text AS name FROM pg_constraint WHERE contype = 'f' AND conrelid = to_regclass($1)"
      : 'SELECT "table" AS name FROM pragma_foreign_key_list($1)',
    [table],
  )
  return rows.map((row) => row.name)
}

const ns = (rows: Record<string, unknown>[]): unknown[] => rows.map((row) => row.n)

for (const target of dbTargets) {
  describe(`a foreign key from another table to a projection table (${target.dialect})`, () => {
    const t = useTestDb(target, `cqrs_rebuild_fk_ext_${target.dialect}`)

    it('is refused before any work with REBUILD_BLOCKED naming the table, the referencing table and the constraint', async () => {
      let filled = 0
      const { projector } = await projected(
        t.db,
        single('fk_ext', async () => {
          filled++
        }),
        'fk_ext',
      )
      // ON DELETE CASCADE: on SQLite the old table's DROP would delete these rows.
      await t.db.execute(
        'CREATE TABLE fk_ext_notes (id TEXT PRIMARY KEY, tick TEXT, CONSTRAINT fk_ext_notes_tick FOREIGN KEY (tick) REFERENCES fk_ext (id) ON DELETE CASCADE)',
      )
      const ids = await t.db.query<{ id: string }>('SELECT id FROM fk_ext ORDER BY id')
      for (const { id } of ids) {
        await t.db.execute('INSERT INTO fk_ext_notes VALUES ($1, $2)', [`note-${id}`, id])
      }
      const before = await tableRows(t.db, 'fk_ext', 'n')
      const position = await projector.position()

      const error = await outcomeOf(projector.rebuild())
      expect(error).toBeInstanceOf(RebuildBlockedError)
      const blocked = error as RebuildBlockedError
      expect(blocked.code).toBe('REBUILD_BLOCKED')
      expect(blocked.projection).toBe('fk_ext')
      expect(blocked.table).toBe('fk_ext')
      expect(blocked.views).toEqual([])
      expect(blocked.foreignKeys).toEqual([
        {
          table: 'fk_ext_notes',
          constraint: target.dialect === 'postgres' ? 'fk_ext_notes_tick' : 'FOREIGN KEY (tick)',
          ownTable: false,
        },
      ])
      expect(blocked.message).toMatch(/"fk_ext".*fk_ext_notes.*drop/)
      expect(filled).toBe(0)
      expect(await tablesLike(t.db, 'fk_ext__')).toEqual([])
      expect(await tableRows(t.db, 'fk_ext', 'n')).toEqual(before)
      expect(await projector.position()).toBe(position)
      expect(await tableRows(t.db, 'fk_ext_notes', 'id')).toHaveLength(3)
      expect(await referenced(t.db, 'fk_ext_notes')).toEqual(['fk_ext'])
    })

    it('added during the fill: the swap fails with REBUILD_BLOCKED, nothing swapped in, nothing lost', async () => {
      let add: ((tx: SqlExecutor) => Promise<void>) | undefined = async (tx) => {
        add = undefined
        // While the rebuild fills its fresh table: another session on PostgreSQL; on SQLite,
        // whose writers take turns, the fill's own transaction (committed with the batch).
        const other = target.dialect === 'postgres' ? t.db : tx
        await other.execute(
          'CREATE TABLE fk_late_notes (id TEXT PRIMARY KEY, tick TEXT REFERENCES fk_late (id) ON DELETE CASCADE)',
        )
        const [row] = await other.query<{ id: string }>('SELECT id FROM fk_late LIMIT 1')
        await other.execute("INSERT INTO fk_late_notes VALUES ('note', $1)", [row!.id])
      }
      const { projector } = await projected(
        t.db,
        single('fk_late', (tx) => add?.(tx) ?? Promise.resolve()),
        'fk_late',
      )
      const before = await tableRows(t.db, 'fk_late', 'n')
      const position = await projector.position()

      const error = await outcomeOf(projector.rebuild())
      expect(error).toBeInstanceOf(RebuildBlockedError)
      expect((error as RebuildBlockedError).table).toBe('fk_late')
      expect((error as RebuildBlockedError).foreignKeys.map((key) => key.table)).toEqual([
        'fk_late_notes',
      ])
      // The failed swap's fresh table is dropped and its generation cleared.
      expect(await tablesLike(t.db, 'fk_late__r')).toEqual([])
      expect(await rebuildGenerationOf(t.db, 'fk_late')).toBeNull()
      expect(await tableRows(t.db, 'fk_late', 'n')).toEqual(before)
      expect(await projector.position()).toBe(position)
      expect(await tableRows(t.db, 'fk_late_notes', 'id')).toHaveLength(1)
      expect(await referenced(t.db, 'fk_late_notes')).toEqual(['fk_late'])
      // Without the key, the rebuild goes through and leaves no table behind.
      await t.db.execute('DROP TABLE fk_late_notes')
      await projector.rebuild()
      expect(ns(await tableRows(t.db, 'fk_late', 'n'))).toEqual([0, 1, 2])
      expect(await tablesLike(t.db, 'fk_late_')).toEqual([])
    })
  })

  describe(`a foreign key between two tables of a projection (${target.dialect})`, () => {
    const t = useTestDb(target, `cqrs_rebuild_fk_pair_${target.dialect}`)

    it('written with the tables argument: the rebuilt table references the rebuilt one', async () => {
      const { projector } = await projected(t.db, pair('fk_pair', 'tables'), 'fk_pair_a')
      await projector.rebuild()
      expect(ns(await tableRows(t.db, 'fk_pair_a', 'n'))).toEqual([0, 1, 2])
      expect(await tableRows(t.db, 'fk_pair_b', 'id')).toHaveLength(3)
      expect(await referenced(t.db, 'fk_pair_b')).toEqual(['fk_pair_a'])
      expect(await tablesLike(t.db, 'fk_pair_a_')).toEqual([])
      expect(await tablesLike(t.db, 'fk_pair_b_')).toEqual([])
      // The key is in force against the rebuilt table.
      const orphan = await outcomeOf(t.db.execute("INSERT INTO fk_pair_b VALUES ('x', 'nothing')"))
      expect(orphan).toBeInstanceOf(Error)
      // And the next rebuild goes through too.
      await projector.rebuild()
      expect(await referenced(t.db, 'fk_pair_b')).toEqual(['fk_pair_a'])
    })

    it('written with the logical name: refused before any work, saying to use the tables argument', async () => {
      let filled = 0
      const projection = pair('fk_named', 'written', async () => {
        filled++
      })
      const { projector } = await projected(t.db, projection, 'fk_named_a')
      const before = await tableRows(t.db, 'fk_named_a', 'n')
      const error = await outcomeOf(projector.rebuild())
      expect(error).toBeInstanceOf(RebuildBlockedError)
      const blocked = error as RebuildBlockedError
      expect(blocked.table).toBe('fk_named_a')
      expect(blocked.foreignKeys.map((key) => [key.table, key.ownTable])).toEqual([
        ['fk_named_b', true],
      ])
      expect(blocked.message).toMatch(/tables\('fk_named_a'\)/)
      expect(filled).toBe(0)
      expect(await tablesLike(t.db, 'fk_named_a_')).toEqual([])
      expect(await tablesLike(t.db, 'fk_named_b_')).toEqual([])
      expect(await tableRows(t.db, 'fk_named_a', 'n')).toEqual(before)
      expect(await referenced(t.db, 'fk_named_b')).toEqual(['fk_named_a'])
    })
  })
}

describe('foreign keys and a rebuild with PRAGMA foreign_keys off (sqlite)', () => {
  const t = useTestDb(sqliteDb, 'cqrs_rebuild_fk_off_sqlite')

  async function unenforced(): Promise<SqlDriver> {
    const db = await t.connect()
    await db.execute('PRAGMA foreign_keys = OFF')
    return db
  }

  it('keeps a key from another table naming the rebuilt table', async () => {
    const db = await unenforced()
    const { projector } = await projected(db, single('fk_off_ext'), 'fk_off_ext')
    await db.execute('CREATE TABLE fk_off_notes (tick TEXT REFERENCES fk_off_ext (id))')
    await projector.rebuild()
    expect(ns(await tableRows(db, 'fk_off_ext', 'n'))).toEqual([0, 1, 2])
    expect(await referenced(db, 'fk_off_notes')).toEqual(['fk_off_ext'])
  })

  it('rebuilds a key between two tables of the projection to name the rebuilt table', async () => {
    const db = await unenforced()
    const { projector } = await projected(db, pair('fk_off_pair', 'tables'), 'fk_off_pair_a')
    await projector.rebuild()
    expect(ns(await tableRows(db, 'fk_off_pair_a', 'n'))).toEqual([0, 1, 2])
    expect(await referenced(db, 'fk_off_pair_b')).toEqual(['fk_off_pair_a'])
    // Enforced again, the key holds.
    await db.execute('PRAGMA foreign_keys = ON')
    expect(await db.query('PRAGMA foreign_key_check')).toEqual([])
  })
})
