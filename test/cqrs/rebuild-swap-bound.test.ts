// An inline projection's rebuild swap on real PostgreSQL: its lock rounds (one table waited
// for, the others taken NOWAIT and given back when one is busy) are bounded by maxSwapRounds,
// after which the rebuild fails with REBUILD_CONTENDED instead of going round for ever; and a
// deadlock (40P01) or serialization failure (40001) from another cause during the swap makes
// it try the swap again, within the same bound; and every lock the swap waits for is bounded by
// swapLockTimeoutMs, a lock timeout (55P03) being a round like the others, so a session that
// holds a live table open (a writer, or a reader the rename must wait for) cannot hold the
// rebuild for ever. Interleavings are forced with gates and by watching pg_locks and
// pg_stat_activity; the only time that passes is the (tiny) lock timeout itself.
import pg from 'pg'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  type Projector,
} from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { type Gate, gate } from '../support/gate.js'
import { type HeldTransaction, holdOpenTransaction } from '../support/held-transaction.js'
import { until } from '../support/until.js'
import {
  outcomeOf,
  postgresDb,
  rebuildGenerationOf,
  rowCount,
  tablesLike,
  useTestDb,
} from './databases.js'

type Event = { type: string; data: { fail?: boolean } }

/** A projection of two tables, `a` and `b`, that writes both per event of type `type`. */
function twoTables(name: string, type: string, a: string, b: string) {
  return defineProjection<Event>({
    name,
    eventTypes: [type],
    tables: {
      [a]: (table) => [`CREATE TABLE ${table} (id TEXT PRIMARY KEY)`],
      [b]: (table) => [`CREATE TABLE ${table} (id TEXT PRIMARY KEY)`],
    },
    async apply(event, { tx, table }) {
      await tx.execute(`INSERT INTO ${table(a)} VALUES ($1)`, [event.id])
      await tx.execute(`INSERT INTO ${table(b)} VALUES ($1)`, [event.id])
    },
  })
}

// Two tables: the swap's lock rounds alternate between them.
const rounds = twoTables('swap-rounds', 'r-hit', 'sr_a', 'sr_b')

// Holds a rebuild's fill at its first event (reporting the fresh table's name) while set.
let fillGate: { reached: (fresh: string) => void; go: Promise<void> } | undefined

async function holdFill(fresh: string): Promise<void> {
  const held = fillGate
  if (held === undefined) return
  fillGate = undefined
  held.reached(fresh)
  await held.go
}

const deadlocking = defineProjection<Event>({
  name: 'swap-deadlock',
  eventTypes: ['d-hit'],
  tables: { sd_a: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`] },
  async apply(event, { tx, table }) {
    await tx.execute(`INSERT INTO ${table('sd_a')} VALUES ($1)`, [event.id])
    if (table('sd_a') !== 'sd_a') await holdFill(table('sd_a'))
  },
})

/**
 * A projection whose rebuild fails with a serialization failure (40001) when its swap applies
 * an event marked `fail`, `state.failures` times; `state.swapApplies` counts the swap's applies
 * of `<prefix>-late` events.
 */
function serializing(prefix: string) {
  const state = { failures: 0, swapApplies: 0 }
  const projection = defineProjection<Event>({
    name: `swap-serialization-${prefix}`,
    eventTypes: [`${prefix}-hit`, `${prefix}-late`],
    tables: { [`${prefix}_a`]: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`] },
    async apply(event, { tx, table }) {
      const name = table(`${prefix}_a`)
      const rebuilding = name !== `${prefix}_a`
      if (rebuilding && event.type === `${prefix}-late`) {
        state.swapApplies++
        if (event.data.fail === true && state.failures > 0) {
          state.failures--
          throw Object.assign(new Error('could not serialize access (test)'), { code: '40001' })
        }
      }
      await tx.execute(`INSERT INTO ${name} VALUES ($1)`, [event.id])
      if (rebuilding && event.type === `${prefix}-hit`) await holdFill(name)
    },
  })
  return { projection, state }
}
const retried = serializing('sx')
const bounded = serializing('sb')

// An inline projection whose swap waits for st_a (the first of its sorted tables) and takes
// st_b NOWAIT.
const timed = twoTables('swap-timeout', 't-hit', 'st_a', 'st_b')

// An async projection: its swap takes no table lock before renaming, and the rename waits for
// every reader of the live table.
const timedAsync = defineProjection<Event>({
  name: 'swap-timeout-async',
  eventTypes: ['ta-hit'],
  tables: { sta_a: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`] },
  async apply(event, { tx, table }) {
    await tx.execute(`INSERT INTO ${table('sta_a')} VALUES ($1)`, [event.id])
  },
})

const t = useTestDb(postgresDb, 'cqrs_rebuild_swap_bound')
let store: EventStore
let watcher: SqlDriver

beforeAll(async () => {
  store = createEventStore(t.db, {
    inlineProjections: [rounds, deadlocking, retried.projection, bounded.projection, timed],
  })
  watcher = await t.connect({ postgres: { maxConnections: 1 } })
})

/** Whether some session waits for a lock on the relation now named `table`. */
async function waitingOn(table: string): Promise<boolean> {
  const rows = await watcher.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
     WHERE NOT l.granted AND c.relname = $1`,
    [table],
  )
  return Number(rows[0]!.n) > 0
}

function count(table: string): Promise<number> {
  return rowCount(t.db, table)
}

function fill(): { gate: Gate; fresh: Promise<string> } {
  const go = gate()
  let reached!: (fresh: string) => void
  const fresh = new Promise<string>((resolve) => {
    reached = resolve
  })
  fillGate = { reached, go: go.promise }
  return { gate: go, fresh }
}

describe('maxSwapRounds', () => {
  it('is validated at construction', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, '3']) {
      expect(() => createProjector(store, rounds, { maxSwapRounds: bad as number })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION', option: 'maxSwapRounds' }),
      )
    }
    expect(createProjector(store, rounds, { maxSwapRounds: 1 }).name).toBe('swap-rounds')
  })

  it('ends lock rounds that keep finding a table busy with REBUILD_CONTENDED', async () => {
    await store.append('r', [{ type: 'r-hit', data: {} }])
    const projector = createProjector(store, rounds, { maxSwapRounds: 2 })
    // Round 1 takes sr_a, finds sr_b busy and gives sr_a back; round 2 waits for sr_b.
    const holdB = await holdOpenTransaction(t.db, (tx) =>
      tx.execute('LOCK TABLE sr_b IN ROW EXCLUSIVE MODE'),
    )
    const rebuild = outcomeOf(projector.rebuild())
    await until(() => waitingOn('sr_b'), 'the swap to wait for sr_b')
    // sr_a is busy when round 2 gets sr_b: the bound is reached, no third round waits for sr_a.
    const holdA = await holdOpenTransaction(t.db, (tx) =>
      tx.execute('LOCK TABLE sr_a IN ROW EXCLUSIVE MODE'),
    )
    let thirdRound = false
    try {
      await holdB.commit()
      const outcome = await Promise.race([
        rebuild,
        until(() => waitingOn('sr_a'), 'a third round').then(() => {
          thirdRound = true
        }),
      ])
      expect(thirdRound).toBe(false)
      expect(outcome).toMatchObject({
        code: 'REBUILD_CONTENDED',
        retryable: true,
        projection: 'swap-rounds',
        rounds: 2,
      })
      expect((outcome as Error).message).toContain('maxSwapRounds')
    } finally {
      await holdA.commit()
    }
    if (thirdRound) await rebuild
    // Nothing was swapped in; once the tables are free, a rebuild goes through.
    expect(await count('sr_a')).toBe(1)
    await expect(projector.rebuild()).resolves.toMatchObject({ events: 1 })
    expect(await count('sr_a')).toBe(1)
  })

  it('tries the swap again after a deadlock (40P01) from another cause', async () => {
    await store.append('d', [{ type: 'd-hit', data: {} }])
    // Two events in the log (this one and the lock rounds test's); the projection applies one.
    const projector = createProjector(store, deadlocking)
    const { gate: go, fresh: freshName } = fill()
    const rebuild = outcomeOf(projector.rebuild())
    const fresh = await freshName
    // Another session reads the fresh table (its lock outlasts the fill), so the swap's rename
    // of it waits; that session then wants the live table the swap holds: a deadlock.
    const other = new pg.Client({ connectionString: t.url })
    await other.connect()
    try {
      await other.query('BEGIN')
      // The swap, waiting first, is the side PostgreSQL's deadlock check aborts: this session
      // would check much later.
      await other.query("SET LOCAL deadlock_timeout = '30s'")
      await other.query(`LOCK TABLE ${fresh} IN ACCESS SHARE MODE`)
      go.open()
      await until(() => waitingOn(fresh), 'the swap to wait for the fresh table')
      await other.query('LOCK TABLE sd_a IN ROW EXCLUSIVE MODE')
      await other.query('COMMIT')
      expect(await rebuild).toEqual({ position: await count('breakwater_events'), events: 1 })
    } finally {
      await other.end()
    }
    expect(await count('sd_a')).toBe(1)
  })

  /** Starts a rebuild held in its fill, appends three late events (the last marked), lets it go. */
  async function rebuildWithLateEvents(
    target: ReturnType<typeof serializing>,
    failures: number,
    options: { maxSwapRounds?: number } = {},
  ): Promise<unknown> {
    const prefix = target.projection.name.slice('swap-serialization-'.length)
    await store.append(prefix, [{ type: `${prefix}-hit`, data: {} }])
    const projector = createProjector(store, target.projection, options)
    const { gate: go, fresh } = fill()
    // Pages of two: the fill reads the one event there is; the swap's catch-up reads the late
    // events in two pages, and the marked one fails after the first page was applied.
    const rebuild = outcomeOf(projector.rebuild({ batchSize: 2 }))
    await fresh
    await store.append(prefix, [
      { type: `${prefix}-late`, data: {} },
      { type: `${prefix}-late`, data: {} },
      { type: `${prefix}-late`, data: { fail: true } },
    ])
    target.state.failures = failures
    go.open()
    const outcome = await rebuild
    target.state.failures = 0
    return outcome
  }

  it('tries the swap again after a serialization failure (40001), from the start of its catch-up', async () => {
    const outcome = await rebuildWithLateEvents(retried, 1)
    // Its four events counted once (the hit and the three late ones; the other projections'
    // events are read, not applied): the failed try's pages are not counted again.
    const logged = await count('breakwater_events')
    expect(outcome).toEqual({ position: logged, events: 4 })
    // The first try applied all three before failing, the second all three again.
    expect(retried.state.swapApplies).toBe(6)
    expect(await count('sx_a')).toBe(4)
  })

  it('counts each try of the swap against maxSwapRounds', async () => {
    const outcome = await rebuildWithLateEvents(bounded, 100, { maxSwapRounds: 3 })
    expect(outcome).toMatchObject({ code: 'REBUILD_CONTENDED', rounds: 3 })
    expect((outcome as Error).cause).toMatchObject({ code: '40001' })
    expect(bounded.state.swapApplies).toBe(9)
    // The live table, written by the appends, is untouched.
    expect(await count('sb_a')).toBe(4)
  })
})

/** The ids in a table, sorted. */
async function ids(table: string): Promise<string[]> {
  const rows = await t.db.query<{ id: string }>(`SELECT id FROM ${table} ORDER BY id`)
  return rows.map((row) => row.id)
}

/** When the statement that waits for a lock on `table` began (undefined: none waits). */
async function waitSince(table: string): Promise<string | undefined> {
  const rows = await watcher.query<{ since: string }>(
    `SELECT a.query_start::text AS since FROM pg_locks l
     JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE NOT l.granted AND c.relname = $1`,
    [table],
  )
  return rows[0]?.since
}

/**
 * Rebuilds while `held` holds a lock, then ends `held`; settles with what the rebuild settles
 * with, or with 'hung' when it has not within 5 s (a guard that only runs out when the swap
 * waits without a bound: the broken case).
 */
async function rebuildWhileHeld(projector: Projector, held: HeldTransaction): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve('hung'), 5000)
  })
  try {
    return await Promise.race([outcomeOf(projector.rebuild()), hung])
  } finally {
    clearTimeout(timer)
    await held.commit()
  }
}

describe('swapLockTimeoutMs', () => {
  it('is validated at construction', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, '50', 2 ** 31]) {
      expect(() => createProjector(store, timed, { swapLockTimeoutMs: bad as number })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION', option: 'swapLockTimeoutMs' }),
      )
    }
    expect(createProjector(store, timed, { swapLockTimeoutMs: 1 }).name).toBe('swap-timeout')
    expect(createProjector(store, timed, { swapLockTimeoutMs: 2 ** 31 - 1 }).name).toBe(
      'swap-timeout',
    )
  })

  it('bounds the waiting lock round of an inline swap: REBUILD_CONTENDED once the rounds are used, the old tables kept', async () => {
    await store.append('t', [{ type: 't-hit', data: {} }])
    // Rows no rebuild writes: the old read model, to be found whole after the failed swap.
    await t.db.execute("INSERT INTO st_a VALUES ('old')")
    await t.db.execute("INSERT INTO st_b VALUES ('old')")
    const before = { a: await ids('st_a'), b: await ids('st_b') }
    const projector = createProjector(store, timed, { swapLockTimeoutMs: 50, maxSwapRounds: 3 })
    // A long transaction that wrote st_a (an append that never ends, or a batch job).
    const holder = await holdOpenTransaction(t.db, (tx) =>
      tx.execute('LOCK TABLE st_a IN ROW EXCLUSIVE MODE'),
    )
    const outcome = await rebuildWhileHeld(projector, holder)
    expect(outcome).toMatchObject({
      code: 'REBUILD_CONTENDED',
      retryable: true,
      projection: 'swap-timeout',
      rounds: 3,
      cause: expect.objectContaining({ code: '55P03' }),
      waitedFor: 'table "st_a" (to lock it IN EXCLUSIVE MODE)',
    })
    const message = (outcome as Error).message
    expect(message).toContain('swapLockTimeoutMs')
    expect(message).toContain('st_a')
    // Nothing swapped in, nothing half-swapped: both live tables serve the old model.
    expect({ a: await ids('st_a'), b: await ids('st_b') }).toEqual(before)
    expect(await ids('st_a')).toContain('old')
    for (const table of ['st_a__old', 'st_b__old']) {
      const rows = await t.db.query('SELECT 1 WHERE to_regclass($1) IS NOT NULL', [table])
      expect(rows).toEqual([])
    }
    // Once the table is free, a rebuild goes through (and drops the stale rows).
    await expect(projector.rebuild()).resolves.toMatchObject({ events: expect.any(Number) })
    expect(await ids('st_a')).not.toContain('old')
    expect(await ids('st_b')).toEqual(await ids('st_a'))
  })

  it('bounds the rename a long reader holds off (async projection): REBUILD_CONTENDED naming the table, the old table kept', async () => {
    await store.append('ta', [{ type: 'ta-hit', data: {} }])
    const projector = createProjector(store, timedAsync, {
      swapLockTimeoutMs: 50,
      maxSwapRounds: 2,
    })
    await projector.catchUp()
    await t.db.execute("INSERT INTO sta_a VALUES ('old')")
    const before = await ids('sta_a')
    // A long read-only transaction on the live table (a report, a pg_dump).
    const reader = await holdOpenTransaction(t.db, (tx) => tx.query('SELECT * FROM sta_a'))
    const outcome = await rebuildWhileHeld(projector, reader)
    expect(outcome).toMatchObject({
      code: 'REBUILD_CONTENDED',
      projection: 'swap-timeout-async',
      rounds: 2,
      cause: expect.objectContaining({ code: '55P03' }),
      waitedFor: 'table "sta_a" (to rename it away)',
    })
    expect((outcome as Error).message).toContain('sta_a')
    expect(await ids('sta_a')).toEqual(before)
    // The fresh table is dropped and the generation cleared, as for an aborted rebuild.
    expect(await tablesLike(t.db, 'sta_a__r')).toEqual([])
    expect(await rebuildGenerationOf(t.db, 'swap-timeout-async')).toBeNull()
    await expect(projector.rebuild()).resolves.toMatchObject({ events: expect.any(Number) })
    expect(await ids('sta_a')).not.toContain('old')
  })

  it('tries a timed-out round again within maxSwapRounds, and swaps once the lock is free', async () => {
    await t.db.execute("INSERT INTO st_a VALUES ('stale')")
    const projector = createProjector(store, timed, { swapLockTimeoutMs: 50, maxSwapRounds: 1000 })
    const holder = await holdOpenTransaction(t.db, (tx) =>
      tx.execute('LOCK TABLE st_a IN ROW EXCLUSIVE MODE'),
    )
    const rebuild = outcomeOf(projector.rebuild())
    try {
      // One wait for st_a, then another (a later statement): the first timed out and the swap
      // went round again instead of failing or hanging.
      let first: string | undefined
      await until(
        async () => {
          first = await waitSince('st_a')
          return first !== undefined
        },
        'the swap to wait for st_a',
        5000,
      )
      await until(
        async () => {
          const since = await waitSince('st_a')
          return since !== undefined && since !== first
        },
        'a second round waiting for st_a',
        5000,
      )
    } finally {
      await holder.commit()
    }
    const logged = await count('breakwater_events')
    // The one 't-hit' event applied (the log's other events are other projections').
    expect(await rebuild).toEqual({ position: logged, events: 1 })
    expect(await ids('st_a')).not.toContain('stale')
    expect(await ids('st_b')).toEqual(await ids('st_a'))
  })
})
