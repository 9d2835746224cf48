// Races between a stalled relay and a takeover of its relay id by another process, on real
// PostgreSQL with two sessions. The old instance A renews its heartbeat (still its own), then
// its renew statement takes its snapshot; meanwhile the new instance B takes the id (heartbeat)
// and fences the partitions (token + 1), committing after A's snapshot but locking the
// partition rows before A's update reaches them. A's check that it holds the id was read from
// its snapshot (it still does, there), while its update follows the rows to B's new versions:
// A must not come out holding B's tokens, with which its marks would be accepted alongside
// B's. Likewise A's graceful stop must not free the partitions B claimed meanwhile. B's
// statements run in one transaction here, which opens that window on purpose (A waits for B's
// row locks) instead of hoping for a scheduler stall.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PartitionLeases } from '../../src/outbox/leases.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver, SqlTransaction } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type OutboxDb, postgresTarget, until } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000
const sql = outboxStatements.postgres

/** A promise and its resolve, to hold one side of the race at a chosen point. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => {}
  const promise = new Promise<void>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

/**
 * Instance B's takeover of relay id `id` at `nowB`, inside its transaction `tx`: its heartbeat
 * wins the id (A's lease long expired on B's clock), then it fences the id's partitions.
 */
async function takeOverAndFence(tx: SqlTransaction, id: string, nowB: number): Promise<void> {
  const taken = await tx.query(sql.heartbeat, [id, nowB, nowB + leaseMs, 'instance-b', nowB])
  expect(taken).toHaveLength(1)
  await tx.execute(sql.fence, [id])
}

describe('partition leases on PostgreSQL: renewal racing a takeover of the relay id', () => {
  let t: OutboxDb
  let sessionB: SqlDriver
  let watcher: SqlDriver

  beforeAll(async () => {
    t = await postgresTarget.open('lease_takeover_race')
    sessionB = await t.another()
    watcher = await t.another()
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Waits until a statement in this database waits on a lock (the other session's rows). */
  function untilLockWait(what: string): Promise<void> {
    return until(async () => {
      const rows = await watcher.query<{ n: number | string }>(
        `SELECT COUNT(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      )
      return Number(rows[0]!.n) > 0
    }, what)
  }

  it('a renewal that waited for the takeover keeps none of the new tokens', async () => {
    // A's driver runs `between` right after its heartbeat statement, once.
    let between: (() => Promise<void>) | undefined
    const driverA: SqlDriver = {
      dialect: t.db.dialect,
      async query(text, params) {
        const rows = await t.db.query(text, params)
        if (text === sql.heartbeat && between !== undefined) {
          const run = between
          between = undefined
          await run()
        }
        return rows as never
      },
      execute: (text, params) => t.db.execute(text, params),
      transaction: (fn) => t.db.transaction(fn),
      close: async () => {},
    }
    const clockA = new ManualClock(T0)
    const a = new PartitionLeases(driverA, 'raced-id', clockA, leaseMs)
    await a.register(async () => {})
    await a.rebalance()
    expect(a.size).toBe(64)

    // B, whose clock sees A's heartbeat long expired (A stalled), takes the id over and fences
    // its partitions, holding its transaction open until A's renew waits on its row locks.
    const nowB = T0 + 10 * leaseMs
    const commitB = deferred()
    let takeover: Promise<void> | undefined
    const tookOver = deferred()
    between = async () => {
      takeover = sessionB.transaction(async (tx) => {
        await takeOverAndFence(tx, 'raced-id', nowB)
        tookOver.resolve()
        await commitB.promise
      })
      await tookOver.promise
    }

    const renewed = a.renew().then(
      (lost) => ({ lost }),
      (error: unknown) => ({ error }),
    )
    // A's renew statement is blocked on B's uncommitted row locks: now B commits.
    await untilLockWait("A's renew to wait for B's row locks")
    commitB.resolve()
    await takeover
    await renewed

    const current = await watcher.query<{ partition_no: number; token: string | number }>(
      `SELECT partition_no, token FROM breakwater_outbox_partitions WHERE owner = 'raced-id'`,
    )
    expect(current).toHaveLength(64)
    // A may report its partitions lost, or fail; it must not hold any of B's tokens.
    expect(a.partitions).toEqual([])
  })
  it("a graceful stop racing the takeover releases none of the new instance's partitions", async () => {
    await watcher.execute('DELETE FROM breakwater_outbox_relays')
    await watcher.execute(
      'UPDATE breakwater_outbox_partitions SET owner = NULL, lease_expires_at = NULL',
    )
    const clockA = new ManualClock(T0)
    const a = new PartitionLeases(t.db, 'stopping-id', clockA, leaseMs)
    await a.register(async () => {})
    await a.rebalance()
    expect(a.size).toBe(64)

    // B takes the id over, fences and claims the partitions (its clock sees A long expired);
    // A's stop starts meanwhile, on a snapshot from before B's heartbeat, and waits for B's row
    // locks. B's statements are one transaction here to hold that window open.
    const nowB = T0 + 10 * leaseMs
    const commitB = deferred()
    const ready = deferred()
    const lockedB = deferred()
    const releaseB = deferred()
    const takeover = sessionB.transaction(async (tx) => {
      await tx.query('SELECT 1')
      ready.resolve()
      await commitB.promise
      await takeOverAndFence(tx, 'stopping-id', nowB)
      const claimed = await tx.query(sql.claim, [
        'stopping-id',
        nowB + leaseMs,
        nowB,
        64,
        'instance-b',
      ])
      expect(claimed).toHaveLength(64)
      lockedB.resolve()
      await releaseB.promise
    })
    await ready.promise
    commitB.resolve()
    await lockedB.promise
    // B holds its row locks, uncommitted: A's stop reads the id as still its own.
    const stopping = a.releaseAll()
    await untilLockWait("A's release to wait for B's row locks")
    releaseB.resolve()
    await takeover
    await stopping

    const held = await watcher.query<{ n: number | string }>(
      `SELECT COUNT(*) AS n FROM breakwater_outbox_partitions
       WHERE owner = 'stopping-id' AND lease_expires_at = $1`,
      [nowB + leaseMs],
    )
    expect(Number(held[0]!.n)).toBe(64)
  })
})
