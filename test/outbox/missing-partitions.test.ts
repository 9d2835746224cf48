// Rows of breakwater_outbox_partitions (0..63) deleted by hand, and outbox rows whose
// partition_no was changed by hand to one no relay claims. Relays claim only rows that exist:
// the events of a deleted partition were never published, and nothing said so (pending and lag
// grew). A relay now recreates missing rows when its claim comes up short, with a token no relay
// can hold, so a stale holder of the deleted row stays fenced. An event outside 0..63 is left
// as it is and counted as `stranded` by outboxStats. A relay that recreates rows says how many
// (a `partitionsRecreated` event: a row deleted by hand is an operator's mistake worth seeing);
// it said nothing. Real SQLite and PostgreSQL; time on a ManualClock.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createOutbox,
  OUTBOX_PARTITIONS,
  outboxPartitionsTable,
  outboxStats,
  outboxTable,
  partitionOf,
} from '../../src/outbox/index.js'
import { PartitionLeases } from '../../src/outbox/leases.js'
import { listParam, outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { malformedRig } from './malformed.js'
import { dbTargets, type OutboxDb, pendingCount } from './support.js'

const T0 = 1_700_000_000_000
const leaseMs = 3_000
const every = Array.from({ length: OUTBOX_PARTITIONS }, (_, i) => i)

/** Partition leases of `relayId`, registered. */
async function registered(
  db: SqlDriver,
  relayId: string,
  clock: ManualClock,
): Promise<PartitionLeases> {
  const leases = new PartitionLeases(db, relayId, clock, leaseMs)
  await leases.register(async () => {})
  return leases
}

/** Partition leases of `relayId`, registered and given their first share. */
async function leasesOf(
  db: SqlDriver,
  relayId: string,
  clock: ManualClock,
): Promise<PartitionLeases> {
  const leases = await registered(db, relayId, clock)
  await leases.rebalance()
  return leases
}

/** An aggregate id whose events fall in `partition`. */
function aggregateIn(partition: number): string {
  for (let i = 0; ; i++) if (partitionOf(`agg${i}`) === partition) return `agg${i}`
}

describe.each(dbTargets)('missing and unclaimable outbox partitions, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('outbox_missing_partitions')
  })
  afterAll(async () => {
    await t?.close()
  })
  afterEach(async () => {
    // Back to what the migration made, whatever a test deleted or claimed.
    await t.db.execute(`DELETE FROM ${outboxPartitionsTable}`)
    for (const p of every)
      await t.db.execute(
        `INSERT INTO ${outboxPartitionsTable} (partition_no, token) VALUES (${p}, 0)`,
      )
    await t.db.execute('DELETE FROM breakwater_outbox_relays')
  })

  async function tokenOf(partition: number): Promise<number | undefined> {
    const rows = await t.db.query<{ token: number | string }>(
      `SELECT token FROM ${outboxPartitionsTable} WHERE partition_no = $1`,
      [partition],
    )
    return rows[0] === undefined ? undefined : Number(rows[0].token)
  }

  it('rows deleted before the start: a relay alone recreates them, holds all 64, publishes their events', async () => {
    const a = aggregateIn(5)
    const b = aggregateIn(63)
    const c = aggregateIn(20)
    await t.db.execute(`DELETE FROM ${outboxPartitionsTable} WHERE partition_no IN (5, 63)`)
    const rig = await malformedRig(t.db, 'missing.before', [`${a}-1`, `${b}-1`, `${c}-1`], {
      leaseMs,
    })
    try {
      await rig.relay.start()
      expect(rig.relay.partitions()).toEqual(every)
      await rig.advanceUntil(() => rig.publisher.confirmed.length >= 3, 'all three published')
      expect([...rig.publisher.confirmed].sort()).toEqual([`${a}-1`, `${b}-1`, `${c}-1`].sort())
      // Recreated with a token above any a relay could hold: at least the clock's reading.
      expect(await tokenOf(5)).toBeGreaterThan(T0)
      expect(await tokenOf(63)).toBeGreaterThan(T0)
      // Reported once, before the claim that took them.
      const types = rig.events.map((e) => e.type)
      expect(rig.events.filter((e) => e.type === 'partitionsRecreated')).toEqual([
        { type: 'partitionsRecreated', count: 2 },
      ])
      expect(types.indexOf('partitionsRecreated')).toBeLessThan(types.indexOf('partitionsChanged'))
    } finally {
      await rig.stop()
    }
  })

  it('a row deleted while a relay holds it: lost, recreated at the next rebalance, claimed, published', async () => {
    const other = aggregateIn(9)
    const a = aggregateIn(5)
    const rig = await malformedRig(t.db, 'missing.while', [`${other}-1`], { leaseMs })
    try {
      await rig.relay.start()
      await rig.advanceUntil(() => rig.publisher.confirmed.length >= 1, 'the first published')
      const before = await tokenOf(5)
      await t.db.execute(`DELETE FROM ${outboxPartitionsTable} WHERE partition_no = 5`)
      await t.db.transaction((tx) =>
        createOutbox({ clock: rig.clock, topic: 'missing.while' }).enqueue(tx, {
          id: `${a}-1`,
          aggregateType: 'thing',
          aggregateId: a,
          type: 'changed',
          payload: {},
        }),
      )
      // Published, maybe first by the relay that still believed it held 5 (its mark fenced: the
      // row was gone), and marked once the row was back and claimed.
      await rig.advanceUntil(
        async () => (await pendingCount(t.db)) === 0,
        'the event of the deleted partition published and marked',
      )
      expect(rig.publisher.confirmed).toContain(`${a}-1`)
      expect(rig.relay.partitions()).toEqual(every)
      const changes = rig.events.filter((e) => e.type === 'partitionsChanged')
      expect(changes.some((e) => e.lost.includes(5))).toBe(true)
      expect(changes.some((e) => e.claimed.includes(5))).toBe(true)
      expect(await tokenOf(5)).toBeGreaterThan(before ?? 0)
      expect(rig.events.filter((e) => e.type === 'partitionsRecreated')).toEqual([
        { type: 'partitionsRecreated', count: 1 },
      ])
    } finally {
      await rig.stop()
    }
  })

  it('a stale holder of a deleted row stays fenced after a new instance of its relay id recreates and claims it', async () => {
    const clock = new ManualClock(T0)
    const stale = await leasesOf(t.db, 'same-id', clock)
    expect(stale.size).toBe(OUTBOX_PARTITIONS)
    const staleTokens = stale.tokens()

    await t.db.execute(`DELETE FROM ${outboxTable}`)
    const a = aggregateIn(5)
    await t.db.transaction((tx) =>
      createOutbox({ clock }).enqueue(tx, {
        id: `${a}-stale`,
        aggregateType: 'thing',
        aggregateId: a,
        type: 'changed',
        payload: {},
      }),
    )
    // Partition 5's row is deleted; the stale instance stalls past its heartbeat and a new
    // process takes the id over (bumping the tokens of the rows it finds: not the missing one).
    await t.db.execute(`DELETE FROM ${outboxPartitionsTable} WHERE partition_no = 5`)
    await clock.advance(leaseMs + 1)
    const fresh = await leasesOf(t.db, 'same-id', clock)
    expect(fresh.partitions).toEqual(every)

    // The stale instance's mark (same owner, its old token) writes nothing. Had the row come
    // back with token 0, the claim would have made it 1: the stale instance's token.
    const [row] = await t.db.query<{ id: number | string }>(`SELECT id FROM ${outboxTable}`)
    const marked = await t.db.query(outboxStatements[t.db.dialect].markPublished, [
      clock.now(),
      listParam(t.db.dialect, [Number(row!.id)]),
      'same-id',
      staleTokens,
    ])
    expect(marked).toEqual([])
    // The new holder's mark does.
    const ok = await t.db.query(outboxStatements[t.db.dialect].markPublished, [
      clock.now(),
      listParam(t.db.dialect, [Number(row!.id)]),
      'same-id',
      fresh.tokens(),
    ])
    expect(ok).toHaveLength(1)
    await fresh.releaseAll()
  })

  it('two relays starting together with rows missing: each row comes back once, the two share all 64', async () => {
    await t.db.execute(
      `DELETE FROM ${outboxPartitionsTable} WHERE partition_no IN (0, 1, 2, 31, 32, 63)`,
    )
    const clock = new ManualClock(T0)
    // The second on its own connection, so that the two relays' statements interleave.
    const [one, other] = await Promise.all([
      registered(t.db, 'one', clock),
      registered(await t.another(), 'two', clock),
    ])
    const rounds = [await Promise.all([one.rebalance(), other.rebalance()])]
    // Whoever came first took more than the fair share of what existed; a second round evens out.
    rounds.push(await Promise.all([one.rebalance(), other.rebalance()]))
    rounds.push(await Promise.all([one.rebalance(), other.rebalance()]))
    // Each relay counts the rows its own statement created: 6 in all, never one twice.
    const recreated = rounds.flat().map((change) => change.recreated)
    expect(recreated.reduce((sum, n) => sum + n, 0)).toBe(6)
    expect([...one.partitions, ...other.partitions].sort((x, y) => x - y)).toEqual(every)
    const rows = await t.db.query<{ n: number | string }>(
      `SELECT COUNT(*) AS n FROM ${outboxPartitionsTable}`,
    )
    expect(Number(rows[0]!.n)).toBe(OUTBOX_PARTITIONS)
    await one.releaseAll()
    await other.releaseAll()
  })

  it('events whose partition_no no relay claims are counted as stranded, and left as they are', async () => {
    const ids = ['a-1', 'b-1', 'c-1', 'd-1']
    const rig = await malformedRig(t.db, 'missing.stranded', ids, { leaseMs })
    try {
      expect(await outboxStats(t.db, { clock: rig.clock })).toMatchObject({
        pending: 4,
        stranded: 0,
      })
      await t.db.execute(`UPDATE ${outboxTable} SET partition_no = 64 WHERE event_id = 'a-1'`)
      await t.db.execute(`UPDATE ${outboxTable} SET partition_no = -1 WHERE event_id = 'b-1'`)
      let stranded = 2
      if (target.dialect === 'sqlite') {
        // Text stays text in SQLite's INTEGER column: no partition list holds it either.
        await t.db.execute(`UPDATE ${outboxTable} SET partition_no = 'x' WHERE event_id = 'c-1'`)
        stranded = 3
      }
      expect(await outboxStats(t.db, { clock: rig.clock })).toMatchObject({
        pending: 4,
        stranded,
      })
      await rig.relay.start()
      // No row of the partitions table is missing: nothing recreated, nothing reported.
      expect(rig.events.filter((e) => e.type === 'partitionsRecreated')).toEqual([])
      // The others are published and marked; the stranded ones stay.
      await rig.advanceUntil(
        async () => (await pendingCount(t.db)) === stranded,
        'all but the stranded published',
      )
      expect(await outboxStats(t.db, { clock: rig.clock })).toMatchObject({
        pending: stranded,
        stranded,
      })
      const rows = await t.db.query<{ event_id: string; partition_no: unknown }>(
        `SELECT event_id, partition_no FROM ${outboxTable} WHERE event_id IN ('a-1', 'b-1') ORDER BY event_id`,
      )
      expect(rows.map((r) => [r.event_id, Number(r.partition_no)])).toEqual([
        ['a-1', 64],
        ['b-1', -1],
      ])
    } finally {
      await rig.stop()
    }
  })
})
