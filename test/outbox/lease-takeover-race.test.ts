// Races between a stalled relay and a takeover of its relay id by another process, on real
// PostgreSQL with two sessions. The old instance A renews its heartbeat (still its own) and
// then its partitions, in one transaction; meanwhile the new instance B takes the id
// (heartbeat) and fences the partitions (token + 1). B's heartbeat waits for A's transaction
// (A's heartbeat holds the id's row), so A's renewal completes with its own tokens first, and
// A finds the id lost at its next renewal: A must never come out holding B's tokens, with which
// its marks would be accepted alongside B's. Likewise A's graceful stop, whose check that it
// holds the id reads a snapshot from before B's heartbeat while its update follows the rows to
// B's new versions, must not free the partitions B claimed meanwhile. B's statements run in one
// transaction here, which opens that window on purpose (A waits for B's row locks) instead of
// hoping for a scheduler stall.
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

  it('a takeover racing a renewal waits for it, and the renewal keeps none of the new tokens', async () => {
    // A's driver runs `between` right after its heartbeat statement (inside the renewal's
    // transaction), once.
    let between: (() => Promise<void>) | undefined
    const afterHeartbeat = (tx: SqlTransaction): SqlTransaction =>
      new Proxy(tx, {
        get(target, prop) {
          if (prop === 'query') {
            return async (text: string, params?: readonly unknown[]) => {
              const rows = await target.query(text, params)
              if (text === sql.heartbeat && between !== undefined) {
                const run = between
                between = undefined
                await run()
              }
              return rows
            }
          }
          const value: unknown = Reflect.get(target, prop, target)
          return typeof value === 'function' ? value.bind(target) : value
        },
      })
    const driverA: SqlDriver = {
      dialect: t.db.dialect,
      query: (text, params) => t.db.query(text, params),
      execute: (text, params) => t.db.execute(text, params),
      transaction: (fn) => t.db.transaction((tx) => fn(afterHeartbeat(tx))),
      close: async () => {},
    }
    const clockA = new ManualClock(T0)
    const a = new PartitionLeases(driverA, 'raced-id', clockA, leaseMs)
    await a.register(async () => {})
    await a.rebalance()
    expect(a.size).toBe(64)

    // B, whose clock sees A's heartbeat long expired (A stalled), sets out to take the id over
    // and fence its partitions right after A's heartbeat: it waits for A's transaction.
    const nowB = T0 + 10 * leaseMs
    let takeover: Promise<void> | undefined
    between = async () => {
      takeover = sessionB.transaction((tx) => takeOverAndFence(tx, 'raced-id', nowB))
      await untilLockWait("B's takeover to wait for A's renewal")
    }

    // A's renewal completes first, with the tokens A held.
    const tokensOf = async (): Promise<Map<number, number>> => {
      const rows = await watcher.query<{ partition_no: number; token: string | number }>(
        `SELECT partition_no, token FROM breakwater_outbox_partitions WHERE owner = 'raced-id'`,
      )
      return new Map(rows.map((r) => [Number(r.partition_no), Number(r.token)]))
    }
    const tokensA = await tokensOf()
    expect(await a.renew()).toEqual([])
    expect(a.size).toBe(64)
    await takeover
    // B's fence moved every token on: A's next renewal finds the id lost and keeps nothing.
    const current = await tokensOf()
    expect(current.size).toBe(64)
    for (const [partition, token] of current) expect(token).toBe(tokensA.get(partition)! + 1)
    await expect(a.renew()).rejects.toMatchObject({ code: 'RELAY_ID_IN_USE' })
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
