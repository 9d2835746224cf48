// An inline projection's rebuild swaps its tables in while appends go on (real PostgreSQL): an
// append whose inline apply writes the projection's tables in the other order than the swap
// locks them must not deadlock with it (PostgreSQL would abort one side with 40P01, usually
// the rebuild). The interleaving is forced with a gate in `apply`, no sleeps: the append has
// written table b and waits; the rebuild's swap starts and waits for a table lock; then the
// append goes on to write table a.
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
} from '../../src/cqrs/index.js'
import { dbTargets, type TestDb } from './databases.js'

const postgres = dbTargets.find((target) => target.dialect === 'postgres')!

let t: TestDb
let store: EventStore
let gate: { wrote: () => void; go: Promise<void> } | undefined

const twoTables = defineProjection<{ type: 'hit'; data: { gated: boolean } }>({
  name: 'deadlock-two-tables',
  tables: {
    dl_a: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`],
    dl_b: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`],
  },
  async apply(event, { tx, table }) {
    // b first, then a: the other order than the swap's lock list (a, b).
    await tx.execute(`INSERT INTO ${table('dl_b')} VALUES ($1)`, [event.id])
    const current = event.data.gated ? gate : undefined
    if (current !== undefined) {
      current.wrote()
      await current.go
    }
    await tx.execute(`INSERT INTO ${table('dl_a')} VALUES ($1)`, [event.id])
  },
})

beforeAll(async () => {
  t = await postgres.open('cqrs_rebuild_deadlock')
  store = createEventStore(t.db, { inlineProjections: [twoTables] })
})
afterAll(async () => {
  await t?.close()
})

it('an inline rebuild does not deadlock with an append writing its tables in another order', async () => {
  await store.append('s', [{ type: 'hit', data: { gated: false } }])
  const projector = createProjector(store, twoTables)

  let wrote!: () => void
  const written = new Promise<void>((resolve) => {
    wrote = resolve
  })
  let open!: () => void
  const go = new Promise<void>((resolve) => {
    open = resolve
  })
  gate = { wrote, go }
  const append = store.append('s', [{ type: 'hit', data: { gated: true } }])
  await written
  gate = undefined

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
  open()

  const [appended, rebuilt] = await Promise.allSettled([append, rebuild])
  expect(appended.status === 'rejected' ? appended.reason : undefined).toBeUndefined()
  expect(rebuilt.status === 'rejected' ? rebuilt.reason : undefined).toBeUndefined()
  // Both events are in both tables once, whichever side went first.
  for (const table of ['dl_a', 'dl_b']) {
    expect(
      Number((await t.db.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`))[0]!.n),
    ).toBe(2)
  }
})
