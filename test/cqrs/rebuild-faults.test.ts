// A projection rebuild under faults, on real SQLite and PostgreSQL: a rebuild that fails while the
// database fails too still reports its own failure (the follow-up check's error attached, not
// put in its place), the faults being a real SQLite driver closed and a real PostgreSQL session
// terminated on a database that refuses new connections; a view on a projection's table
// (PostgreSQL: refused before any work with REBUILD_BLOCKED; SQLite: still reads the table
// after the swap); and a rebuild cancelled through its AbortSignal or failed (its apply throws,
// its swap is blocked), which drops its fresh tables and clears its generation, leaving the
// live read model as it was, but not the tables of a newer rebuild that took over from it.
import pg from 'pg'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { detached } from '../../src/core/detached.js'
import { AbortedError, InvalidOptionError } from '../../src/core/errors.js'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  ProjectionFailedError,
  type Projector,
  RebuildBlockedError,
  RebuildSupersededError,
} from '../../src/cqrs/index.js'
import { type SqlDriver, type SqlExecutor, StoreClosedError } from '../../src/stores/index.js'
import { gate } from '../support/gate.js'
import { postgresAdminUrl } from '../support/postgres.js'
import {
  dbTargets,
  outcomeOf,
  postgresDb,
  rebuildGenerationOf,
  sqliteDb,
  tableRows,
  tablesLike,
  useTestDb,
} from './databases.js'

// Each projection reads its own event type (its table's name): the tests of a file share one log.
type Event = { type: string; data: { n: number } }

// Run by a projection's apply for each event a rebuild applies to its fresh table, while set.
let duringRebuild: ((event: { id: string }, tx: SqlExecutor) => Promise<void>) | undefined

afterEach(() => {
  duringRebuild = undefined
})

/** An async projection of one table `table` (id, n), named after it and its event type. */
function ticks(table: string) {
  return defineProjection<Event>({
    name: table,
    eventTypes: [table],
    tables: {
      [table]: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`],
    },
    async apply(event, { tx, table: physical }) {
      const name = physical(table)
      if (name !== table) await duringRebuild?.(event, tx)
      await tx.execute(`INSERT INTO ${name} VALUES ($1, $2)`, [event.id, event.data.n])
    },
  })
}

/** The tables a rebuild of `table` filled and left behind (`<table>__r<n>`). */
function freshTables(db: SqlDriver, table: string): Promise<string[]> {
  return tablesLike(db, `${table}__r`)
}

/**
 * A store and the projector of `ticks(table)` on `db`, with `events` ticks applied; the live
 * table is then tampered with (n + 100), so that a rebuild that swapped would show.
 */
async function projected(
  db: SqlDriver,
  table: string,
  events = 3,
): Promise<{ store: EventStore; projector: Projector }> {
  const store = createEventStore(db)
  const projector = createProjector(store, ticks(table))
  await store.append(
    table,
    Array.from({ length: events }, (_, n) => ({ type: table, data: { n } })),
  )
  await projector.catchUp()
  await db.query(`UPDATE ${table} SET n = n + 100`)
  return { store, projector }
}

/** The live read model of `ticks(table)` and its checkpoint. */
async function state(db: SqlDriver, projector: Projector, table: string) {
  return { rows: await tableRows(db, table, 'n'), position: await projector.position() }
}

/**
 * Asserts that a rebuild of `table` that ended without a swap (aborted or failed) left no trace
 * (no fresh table, no generation in the checkpoint row) and changed nothing.
 */
async function untouched(
  db: SqlDriver,
  projector: Projector,
  table: string,
  before: { rows: unknown[]; position: number },
) {
  expect(await freshTables(db, table)).toEqual([])
  expect(await rebuildGenerationOf(db, table)).toBeNull()
  expect(await tableRows(db, table, 'n')).toEqual(before.rows)
  expect(await projector.position()).toBe(before.position)
  // Nothing of the rebuild is left in the way of the next one.
  await projector.rebuild()
  expect((await tableRows(db, table, 'n')).map((row) => row.n)).toEqual([0, 1, 2])
}

for (const target of dbTargets) {
  describe(`rebuild signal (${target.dialect})`, () => {
    const t = useTestDb(target, `cqrs_rebuild_abort_${target.dialect}`)

    it('refuses a signal that is not an AbortSignal with INVALID_OPTION naming signal', async () => {
      const { projector } = await projected(t.db, 'ra_invalid')
      for (const signal of ['soon', { aborted: false }, null]) {
        const error = await outcomeOf(projector.rebuild({ signal: signal as never }))
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option).toBe('signal')
      }
      expect(await freshTables(t.db, 'ra_invalid')).toEqual([])
    })

    /**
     * Rebuilds `table` with a signal aborted ('shutting down') before it starts (`at` 0) or
     * while it applies its `at`-th event; checks what it left and returns the events applied.
     */
    async function abortedRebuild(table: string, at: number, batchSize: number): Promise<number> {
      const { projector } = await projected(t.db, table)
      const before = await state(t.db, projector, table)
      const controller = new AbortController()
      if (at === 0) controller.abort('shutting down')
      let applied = 0
      duringRebuild = async () => {
        if (++applied === at) controller.abort('shutting down')
      }
      const error = await outcomeOf(projector.rebuild({ batchSize, signal: controller.signal }))
      duringRebuild = undefined
      expect(error).toBeInstanceOf(AbortedError)
      expect((error as AbortedError).cause).toBe('shutting down')
      await untouched(t.db, projector, table, before)
      return applied
    }

    it('does nothing with a signal aborted already', async () => {
      expect(await abortedRebuild('ra_early', 0, 10)).toBe(0)
    })

    it('stops between batches: fresh tables dropped, live read model and checkpoint untouched', async () => {
      // The batch in progress ends, the next one does not start.
      expect(await abortedRebuild('ra_between', 2, 1)).toBe(2)
    })

    it('stops before the swap once the fill is done', async () => {
      // One batch holds every event: the signal fires in it, and the fill then ends.
      expect(await abortedRebuild('ra_swap', 3, 10)).toBe(3)
    })
  })

  describe(`a failed rebuild (${target.dialect})`, () => {
    const t = useTestDb(target, `cqrs_rebuild_failed_${target.dialect}`)

    it('failing in its fill: rejects with the failure, its fresh tables dropped and its generation cleared', async () => {
      const { projector } = await projected(t.db, 'rx_fill')
      const before = await state(t.db, projector, 'rx_fill')
      const failure = new Error('apply failed')
      let applied = 0
      duringRebuild = async () => {
        // The second batch fails: the first one's row is in the fresh table by then.
        if (++applied === 2) throw failure
      }
      const error = await outcomeOf(projector.rebuild({ batchSize: 1 }))
      duringRebuild = undefined
      expect(error).toBeInstanceOf(ProjectionFailedError)
      expect((error as ProjectionFailedError).cause).toBe(failure)
      expect((error as { suppressed?: unknown }).suppressed).toBeUndefined()
      await untouched(t.db, projector, 'rx_fill', before)
    })

    it('failing after a newer rebuild took over: its clean-up leaves the newer one its tables', async () => {
      const { store, projector } = await projected(t.db, 'rx_fenced')
      // Another instance, registered already: its rebuild's first transaction is the rebuild's.
      const newer = createProjector(store, ticks('rx_fenced'))
      await newer.catchUp()
      const newerFilling = gate()
      const failedSettled = gate()
      let newerRebuild: Promise<unknown> | undefined
      const failure = new Error('apply failed')
      duringRebuild = async () => {
        duringRebuild = async () => {
          // The newer rebuild's fill. On PostgreSQL it holds here until the first rebuild has
          // failed and cleaned up, so that clean-up meets the newer rebuild's fresh table.
          duringRebuild = undefined
          newerFilling.open()
          if (target.dialect === 'postgres') await failedSettled.promise
        }
        // Outside this transaction's context, as another request's would be.
        newerRebuild = outcomeOf(detached(() => newer.rebuild()))
        // The newer rebuild creates its tables before the first one's failure is handled: on
        // PostgreSQL it is filling once this resolves; on SQLite its first transaction waits
        // for this one, queued ahead of the clean-up's (the driver's lock is first come, first
        // served).
        if (target.dialect === 'postgres') await newerFilling.promise
        else await new Promise((resolve) => setImmediate(resolve))
        throw failure
      }
      const error = await outcomeOf(projector.rebuild())
      failedSettled.open()
      expect(error).toBeInstanceOf(RebuildSupersededError)
      expect((error as RebuildSupersededError).cause).toBeInstanceOf(ProjectionFailedError)
      expect(((error as RebuildSupersededError).cause as ProjectionFailedError).cause).toBe(failure)
      expect(await newerRebuild).toMatchObject({ events: 3 })
      expect((await tableRows(t.db, 'rx_fenced', 'n')).map((row) => row.n)).toEqual([0, 1, 2])
      expect(await freshTables(t.db, 'rx_fenced')).toEqual([])
      expect(await rebuildGenerationOf(t.db, 'rx_fenced')).toBeNull()
    })
  })
}

describe('a failed rebuild on a failing database (sqlite)', () => {
  const t = useTestDb(sqliteDb, 'cqrs_rebuild_fault_sqlite')

  it("rejects with the rebuild's own failure, the follow-up check's attached as suppressed", async () => {
    const db = await t.connect()
    const { projector } = await projected(db, 'rf_closed')
    const failure = new Error('apply failed')
    let closing: Promise<void> | undefined
    duringRebuild = async () => {
      // The driver is closed once the fill's transaction has rolled back: the rebuild's check
      // for a newer rebuild (its next transaction) then meets a closed driver.
      closing = detached(() => db.close())
      throw failure
    }
    const error = await outcomeOf(projector.rebuild())
    await closing
    // apply's failure, named by the event it failed on.
    expect(error).toBeInstanceOf(ProjectionFailedError)
    expect((error as ProjectionFailedError).cause).toBe(failure)
    const suppressed = (error as { suppressed?: unknown[] }).suppressed
    expect(suppressed).toHaveLength(1)
    expect(suppressed?.[0]).toBeInstanceOf(StoreClosedError)
  })
})

describe('a failed rebuild on a failing database (postgres)', () => {
  const t = useTestDb(postgresDb, 'cqrs_rebuild_fault_pg')
  let name = ''
  const database = (): string => name
  let admin: pg.Client

  beforeAll(async () => {
    name = new URL(t.url).pathname.slice(1)
    admin = new pg.Client({ connectionString: postgresAdminUrl() })
    await admin.connect()
    // The database is dropped WITH (FORCE) after the tests, whether it takes connections or not.
    return () => admin.end()
  })

  it("rejects with the rebuild's own failure, the follow-up check's attached as suppressed", async () => {
    // One connection: the check after the failure needs a new one.
    const db = await t.connect({ postgres: { maxConnections: 1 } })
    const { projector } = await projected(db, 'rf_terminated')
    let failure: unknown
    duringRebuild = async (_event, tx) => {
      duringRebuild = undefined
      const [row] = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
      // The database stops taking connections, and the fill's session is terminated.
      await admin.query(`ALTER DATABASE ${database()} ALLOW_CONNECTIONS false`)
      await admin.query('SELECT pg_terminate_backend($1)', [row!.pid])
      try {
        await tx.execute('SELECT 1')
      } catch (error) {
        failure = error
        throw error
      }
    }
    let error: unknown
    try {
      error = await outcomeOf(projector.rebuild())
    } finally {
      await admin.query(`ALTER DATABASE ${database()} ALLOW_CONNECTIONS true`)
    }
    expect(failure).toBeInstanceOf(Error)
    expect(error).toBeInstanceOf(ProjectionFailedError)
    expect((error as ProjectionFailedError).cause).toBe(failure)
    const suppressed = (error as { suppressed?: unknown[] }).suppressed
    expect(suppressed).toHaveLength(1)
    expect(String(suppressed?.[0])).toMatch(/not currently accepting connections/)
    // The database is back: the same projector rebuilds.
    await projector.rebuild()
    expect(await freshTables(t.db, 'rf_terminated')).toEqual([])
  })
})

describe('a view on a projection table (postgres)', () => {
  const t = useTestDb(postgresDb, 'cqrs_rebuild_view_pg')

  it('is refused before any work with REBUILD_BLOCKED naming the table and the views', async () => {
    const { projector } = await projected(t.db, 'rv_live')
    await t.db.query('CREATE VIEW rv_live_ids AS SELECT id FROM rv_live')
    await t.db.query('CREATE MATERIALIZED VIEW rv_live_sum AS SELECT sum(n) AS total FROM rv_live')
    const before = await tableRows(t.db, 'rv_live', 'n')
    let filled = 0
    duringRebuild = async () => {
      filled++
    }
    const error = await outcomeOf(projector.rebuild())
    expect(error).toBeInstanceOf(RebuildBlockedError)
    const blocked = error as RebuildBlockedError
    expect(blocked.code).toBe('REBUILD_BLOCKED')
    expect(blocked.projection).toBe('rv_live')
    expect(blocked.table).toBe('rv_live')
    expect(blocked.views).toEqual(['rv_live_ids', 'rv_live_sum'])
    expect(blocked.message).toMatch(/"rv_live".*rv_live_ids, rv_live_sum.*drop/)
    expect(filled).toBe(0)
    expect(await freshTables(t.db, 'rv_live')).toEqual([])
    expect(await tableRows(t.db, 'rv_live', 'n')).toEqual(before)
    expect(await t.db.query('SELECT id FROM rv_live_ids')).toHaveLength(3)
  })

  it('created during the fill: the swap fails with REBUILD_BLOCKED, nothing swapped in', async () => {
    const { projector } = await projected(t.db, 'rv_late')
    const before = await tableRows(t.db, 'rv_late', 'n')
    const position = await projector.position()
    duringRebuild = async () => {
      duringRebuild = undefined
      // Another session, while the rebuild fills its fresh table.
      await t.db.query('CREATE VIEW rv_late_ids AS SELECT id FROM rv_late')
    }
    const error = await outcomeOf(projector.rebuild())
    expect(error).toBeInstanceOf(RebuildBlockedError)
    expect((error as RebuildBlockedError).views).toEqual(['rv_late_ids'])
    // Its fresh table is dropped and its generation cleared, as for an aborted rebuild.
    expect(await freshTables(t.db, 'rv_late')).toEqual([])
    expect(await rebuildGenerationOf(t.db, 'rv_late')).toBeNull()
    expect(await tableRows(t.db, 'rv_late', 'n')).toEqual(before)
    expect(await projector.position()).toBe(position)
    expect(await t.db.query('SELECT id FROM rv_late_ids')).toHaveLength(3)
    // Without the view, the rebuild goes through.
    await t.db.query('DROP VIEW rv_late_ids')
    await projector.rebuild()
    expect((await tableRows(t.db, 'rv_late', 'n')).map((row) => row.n)).toEqual([0, 1, 2])
  })
})

describe('a view on a projection table (sqlite)', () => {
  const t = useTestDb(sqliteDb, 'cqrs_rebuild_view_sqlite')

  it('reads the rebuilt table after the swap', async () => {
    const { projector } = await projected(t.db, 'rv_sqlite')
    await t.db.query('CREATE VIEW rv_sqlite_ns AS SELECT id, n FROM rv_sqlite')
    await projector.rebuild()
    const viewed = await t.db.query<{ n: number }>('SELECT n FROM rv_sqlite_ns ORDER BY n')
    expect(viewed.map((row) => Number(row.n))).toEqual([0, 1, 2])
  })
})
