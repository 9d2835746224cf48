// Read-your-writes across a rebuild of an async projection whose projector keeps running: once
// `waitFor(p)` has resolved, the read model reflects every event up to p, also after the
// rebuild's swap has replaced the tables. The swap must therefore never store a checkpoint
// below the one it replaces.
//
// On PostgreSQL the log is read below a watermark (see src/cqrs/sql.ts), and the watermark is
// not monotonic: an appender that read the sequence's last value L before a reader, but took
// its appender lock on L + 1 only after that reader's scan of pg_locks (the two calls of one
// expression, a backend preempted between them), holds the watermark at L + 1 from then on,
// below what the reader saw. The proof in sql.ts allows it (every position it takes is above
// what the reader read); a swap that read only below that watermark stored a checkpoint behind
// the live projector's. The test builds that interleaving step by step: the rebuild's fill is
// held in `apply`, the live projector catches up with `catchUp()`, and a transaction takes the
// appender lock with the value read before. On SQLite a held fill would hold the one writer (the
// appends and the projector would wait for it), so there the appends and the projector's
// catch-up run between the rebuild's transactions, in whatever order its driver queues them;
// with no watermark, the swap must reflect them all the same.
import { afterEach, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
} from '../../src/cqrs/index.js'
import { appenderLockBase } from '../../src/cqrs/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { type Gate, gate } from '../support/gate.js'
import { type HeldTransaction, holdOpenTransaction } from '../support/held-transaction.js'
import { postgresDb, sqliteDb, useTestDb } from './databases.js'

type Event = { type: 'seen'; data: Record<string, never> }

/** Holds a rebuild's fill at its first event while set (and says it got there). */
let fillGate: { reached: () => void; go: Promise<void> } | undefined

const seen = defineProjection<Event>({
  name: 'rebuild-wait-for',
  tables: { rwf_seen: (table) => [`CREATE TABLE ${table} (position INTEGER PRIMARY KEY)`] },
  async apply(event, { tx, table }) {
    const name = table('rwf_seen')
    if (name !== 'rwf_seen' && fillGate !== undefined) {
      const held = fillGate
      fillGate = undefined
      held.reached()
      await held.go
    }
    await tx.execute(`INSERT INTO ${name} VALUES ($1)`, [event.position])
  },
})

/** The positions the read model (its live table) holds. */
async function positions(db: SqlDriver): Promise<number[]> {
  const rows = await db.query<{ position: number | string }>(
    'SELECT position FROM rwf_seen ORDER BY position',
  )
  return rows.map((row) => Number(row.position))
}

describe('waitFor beside a rebuild on postgres', () => {
  const t = useTestDb(postgresDb, 'cqrs_rebuild_wait_for')
  let appender: HeldTransaction | undefined

  afterEach(async () => {
    await appender?.commit()
    appender = undefined
  })

  it('never resolves for a position the swapped-in read model lacks', async () => {
    const store: EventStore = createEventStore(t.db)
    const projector = createProjector(store, seen, { batchSize: 100 })
    const first = await store.append('s-1', [{ type: 'seen', data: {} }])
    await projector.catchUp()

    // 1. The rebuild's fill has read the log up to the first event and is held applying it.
    const go: Gate = gate()
    const reached = new Promise<void>((resolve) => {
      fillGate = { reached: resolve, go: go.promise }
    })
    const rebuilt = projector.rebuild()
    await reached

    // 2. An appender reads the sequence's last value now (the first step of taking its lock).
    const rows = await t.db.query<{ last: number | string | null }>(
      "SELECT pg_sequence_last_value('breakwater_events_position') AS last",
    )
    const lastTaken = Number(rows[0]!.last ?? 0)

    // 3. More events commit, and the live projector applies them.
    await store.append('s-2', [{ type: 'seen', data: {} }])
    const { lastPosition } = await store.append('s-3', [{ type: 'seen', data: {} }])
    expect(await projector.catchUp()).toBe(lastPosition)

    // 4. The appender of step 2 takes its lock only now, and holds it (its transaction goes on).
    appender = await holdOpenTransaction(t.db, async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock_shared($1::bigint)', [
        (BigInt(appenderLockBase) + 1n + BigInt(lastTaken)).toString(),
      ])
    })

    // 5. The fill goes on, and the swap replaces the live tables.
    go.open()
    const result = await rebuilt

    // waitFor resolves at once (the projector had applied lastPosition), so the read model, now
    // the rebuilt one, must hold it; and no checkpoint goes back.
    await projector.waitFor(lastPosition, { timeoutMs: 0 })
    expect(await positions(t.db)).toEqual([first.lastPosition, lastPosition - 1, lastPosition])
    expect(result.position).toBeGreaterThanOrEqual(lastPosition)
    expect(await projector.position()).toBeGreaterThanOrEqual(lastPosition)
  })
})

describe('waitFor beside a rebuild on sqlite', () => {
  const t = useTestDb(sqliteDb, 'cqrs_rebuild_wait_for')

  it('never resolves for a position the swapped-in read model lacks', async () => {
    const store: EventStore = createEventStore(t.db)
    const projector = createProjector(store, seen, { batchSize: 1 })
    for (let i = 0; i < 3; i++) await store.append(`s-${i}`, [{ type: 'seen', data: {} }])
    await projector.catchUp()

    // Batches of one: the fill takes several transactions, the appends and catch-up go between.
    const rebuilt = projector.rebuild()
    let lastPosition = 0
    for (let i = 3; i < 6; i++) {
      ;({ lastPosition } = await store.append(`s-${i}`, [{ type: 'seen', data: {} }]))
    }
    expect(await projector.catchUp()).toBe(lastPosition)
    const result = await rebuilt

    await projector.waitFor(lastPosition, { timeoutMs: 0 })
    expect(await positions(t.db)).toEqual([1, 2, 3, 4, 5, 6])
    expect(result.position).toBeGreaterThanOrEqual(lastPosition)
    expect(await projector.position()).toBeGreaterThanOrEqual(lastPosition)
  })
})
