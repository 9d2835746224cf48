// An inline projection's rebuild swaps its tables in while appends go on (real PostgreSQL): an
// append whose inline apply writes the projection's tables in the other order than the swap
// locks them must not deadlock with it (PostgreSQL would abort one side with 40P01, usually
// the rebuild). The interleaving is forced with a gate in `apply`, no sleeps: the append has
// written table b and waits; the rebuild's swap starts and waits for a table lock; then the
// append goes on to write table a.
import { beforeAll, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
} from '../../src/cqrs/index.js'
import { type Gate, gate } from '../support/gate.js'
import { postgresDb, rowCount, useTestDb } from './databases.js'

const t = useTestDb(postgresDb, 'cqrs_rebuild_deadlock')
let store: EventStore
// Set while an append is to be held between its two writes: `wrote` opens once it has written
// table b, and it goes on once `go` is opened.
let held: { wrote: Gate; go: Gate } | undefined

const twoTables = defineProjection<{ type: 'hit'; data: { gated: boolean } }>({
  name: 'deadlock-two-tables',
  tables: {
    dl_a: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`],
    dl_b: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`],
  },
  async apply(event, { tx, table }) {
    // b first, then a: the other order than the swap's lock list (a, b).
    await tx.execute(`INSERT INTO ${table('dl_b')} VALUES ($1)`, [event.id])
    const current = event.data.gated ? held : undefined
    if (current !== undefined) {
      current.wrote.open()
      await current.go.promise
    }
    await tx.execute(`INSERT INTO ${table('dl_a')} VALUES ($1)`, [event.id])
  },
})

beforeAll(() => {
  store = createEventStore(t.db, { inlineProjections: [twoTables] })
})

it('an inline rebuild does not deadlock with an append writing its tables in another order', async () => {
  await store.append('s', [{ type: 'hit', data: { gated: false } }])
  const projector = createProjector(store, twoTables)

  const hold = { wrote: gate(), go: gate() }
  held = hold
  const append = store.append('s', [{ type: 'hit', data: { gated: true } }])
  await hold.wrote.promise
  held = undefined

  const rebuild = projector.rebuild()
  // Wait (on the database's state, not on time) until the swap waits for a table lock.
  const watcher = await t.connect({ postgres: { maxConnections: 1 } })
  await expect
    .poll(
      async () =>
        (
          await watcher.query<{ n: string }>(
            `SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'`,
          )
        )[0]!.n.toString(),
      { timeout: 10_000, interval: 5 },
    )
    .toBe('1')
  hold.go.open()

  const [appended, rebuilt] = await Promise.allSettled([append, rebuild])
  expect(appended.status === 'rejected' ? appended.reason : undefined).toBeUndefined()
  expect(rebuilt.status === 'rejected' ? rebuilt.reason : undefined).toBeUndefined()
  // Both events are in both tables once, whichever side went first.
  for (const table of ['dl_a', 'dl_b']) expect(await rowCount(t.db, table)).toBe(2)
})
