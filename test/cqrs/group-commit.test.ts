// Group commit of standalone appends on real PostgreSQL: appends made while one is being written
// share one statement and one transaction, each with its own expectation. Property (fast-check
// scheduler over the order in which appends are issued, from two "processes" racing at the
// database): contenders at one expected version give exactly one winner per stream, every
// loser learns the exact actual version, and no event is lost or written by a loser.
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  type EventStore,
  type ExpectedVersion,
  WrongExpectedVersionError,
} from '../../src/cqrs/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { postgresDb, useTestDb } from './databases.js'

/** The transaction ids that wrote the given events (one per transaction). */
async function writers(db: SqlDriver, ids: readonly string[]): Promise<Set<string>> {
  const rows = await db.query<{ x: string }>(
    'SELECT xmin::text AS x FROM breakwater_events WHERE event_id = ANY($1)',
    [ids],
  )
  expect(rows).toHaveLength(ids.length)
  return new Set(rows.map((r) => r.x))
}

describe('group commit on PostgreSQL', () => {
  const t = useTestDb(postgresDb, 'cqrs_group_commit')
  let other: SqlDriver
  let run = 0

  beforeAll(async () => {
    other = await t.connect()
  })

  it('appends made while one is in flight share one transaction; without it each has its own', async () => {
    for (const groupCommit of [true, false]) {
      const store = createEventStore(t.db, { groupCommit })
      const tag = `share-${groupCommit}`
      const first = store.append(`${tag}-0`, [{ type: 'a', data: 0, id: `${tag}-0` }])
      const rest = Array.from({ length: 15 }, (_, i) =>
        store.append(`${tag}-${i + 1}`, [{ type: 'a', data: i + 1, id: `${tag}-${i + 1}` }], {
          expectedVersion: 'noStream',
        }),
      )
      const results = await Promise.all([first, ...rest])
      expect(results.map((r) => r.version)).toEqual(new Array(16).fill(1))
      const restIds = Array.from({ length: 15 }, (_, i) => `${tag}-${i + 1}`)
      expect((await writers(t.db, restIds)).size).toBe(groupCommit ? 1 : 15)
      // Every append got the positions the log has for its events.
      const log = await t.db.query<{ event_id: string; position: number }>(
        'SELECT event_id, position FROM breakwater_events WHERE event_id LIKE $1',
        [`${tag}-%`],
      )
      const byId = new Map(log.map((r) => [r.event_id, Number(r.position)]))
      for (const [i, r] of results.entries()) {
        expect(r.firstPosition).toBe(byId.get(`${tag}-${i}`))
      }
    }
  })

  it('a batch with a conflicting append and a several-event append: each settles on its own', async () => {
    const store = createEventStore(t.db)
    await store.append('mix-a', [{ type: 'a', data: 1 }])
    const busy = store.append('mix-busy', [{ type: 'a', data: 0 }])
    const wrong = store.append('mix-a', [{ type: 'a', data: 2, id: 'mix-lost' }], {
      expectedVersion: 5,
    })
    const many = store.append(
      'mix-b',
      Array.from({ length: 7 }, (_, i) => ({ type: 'b', data: i, id: `mix-b-${i}` })),
      { expectedVersion: 'noStream' },
    )
    const right = store.append('mix-a', [{ type: 'a', data: 3, id: 'mix-a-2' }], {
      expectedVersion: 1,
    })
    const [, wrongError, manyResult, rightResult] = await Promise.all([
      busy,
      wrong.then(
        () => undefined,
        (e: unknown) => e,
      ),
      many,
      right,
    ])
    expect(wrongError).toBeInstanceOf(WrongExpectedVersionError)
    expect(wrongError).toMatchObject({ expected: 5, actual: 1, deleted: false })
    expect(manyResult.version).toBe(7)
    expect(manyResult.events.map((e) => e.version)).toEqual([1, 2, 3, 4, 5, 6, 7])
    expect(rightResult.version).toBe(2)
    expect(await writers(t.db, ['mix-a-2', 'mix-b-0'])).toHaveProperty('size', 1)
    const b = await store.readStream('mix-b')
    expect(b.events.map((e) => [e.id, e.position])).toEqual(
      manyResult.events.map((e) => [e.id, e.position]),
    )
    const lost = await t.db.query("SELECT 1 FROM breakwater_events WHERE event_id = 'mix-lost'")
    expect(lost).toEqual([])
  })

  it('a batch the database rejects is retried append by append: only the bad one fails', async () => {
    const store = createEventStore(t.db)
    // A constraint of the database's own refuses one event type, so the whole batch statement
    // fails with an error from the server (the store's own checks pass it).
    await t.db.execute(
      "ALTER TABLE breakwater_events ADD CONSTRAINT test_refused_type CHECK (type <> 'refused')",
    )
    const busy = store.append('bad-busy', [{ type: 'a', data: 0 }])
    const appends = Array.from({ length: 6 }, (_, i) =>
      store.append(`bad-${i}`, [{ type: i === 3 ? 'refused' : 'a', data: i, id: `bad-${i}` }], {
        expectedVersion: 'noStream',
      }),
    )
    const settled = await Promise.allSettled([busy, ...appends])
    await t.db.execute('ALTER TABLE breakwater_events DROP CONSTRAINT test_refused_type')
    const failed = settled.flatMap((s, i) => (s.status === 'rejected' ? [i - 1] : []))
    expect(failed).toEqual([3])
    const reason = (settled[4] as PromiseRejectedResult).reason as { code?: string }
    expect(reason.code).toBe('23514')
    const written = await t.db.query<{ event_id: string }>(
      "SELECT event_id FROM breakwater_events WHERE event_id LIKE 'bad-%' ORDER BY event_id",
    )
    expect(written.map((r) => r.event_id)).toEqual(['bad-0', 'bad-1', 'bad-2', 'bad-4', 'bad-5'])
    expect((await store.streamInfo('bad-3')).version).toBe(0)
  })

  it('a batch whose connection is lost fails every append of it, none retried (the outcome is unknown)', async () => {
    const store = createEventStore(t.db)
    await store.append('term-0', [{ type: 'a', data: 0 }])
    // Another connection holds the stream row, so the batch below waits inside its statement.
    const holder = await holdOpenTransaction(other, (tx) =>
      tx.query("SELECT 1 FROM breakwater_streams WHERE stream_id = 'term-0' FOR UPDATE"),
    )
    const busy = store.append('term-busy', [{ type: 'a', data: 0 }])
    const batch = [
      store.append('term-0', [{ type: 'a', data: 1, id: 'term-lost-0' }]),
      store.append('term-1', [{ type: 'a', data: 1, id: 'term-lost-1' }]),
    ]
    // Settled from the start: they reject while the test is still waiting on other statements.
    const settledBatch = Promise.allSettled(batch)
    await busy
    let pid: number | undefined
    for (let i = 0; i < 500 && pid === undefined; i++) {
      const rows = await other.query<{ pid: number }>(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%breakwater_append_batch%' AND wait_event_type = 'Lock'",
      )
      pid = rows[0]?.pid
    }
    expect(pid).toBeDefined()
    await other.query('SELECT pg_terminate_backend($1)', [pid])
    const settled = await settledBatch
    await holder.commit()
    expect(settled.map((s) => s.status)).toEqual(['rejected', 'rejected'])
    const written = await t.db.query(
      "SELECT event_id FROM breakwater_events WHERE event_id LIKE 'term-lost-%'",
    )
    expect(written).toEqual([])
    // The batcher goes on with a fresh connection.
    expect((await store.append('term-1', [{ type: 'a', data: 2 }])).version).toBe(1)
  })

  it('property: contenders at one expected version, any interleaving, two processes: one winner per stream, exact conflicts, no event lost', async () => {
    const stores: EventStore[] = [createEventStore(t.db), createEventStore(other)]
    const contenderArb = fc.record({
      store: fc.integer({ min: 0, max: 1 }),
      count: fc.integer({ min: 1, max: 3 }),
      alias: fc.boolean(),
    })
    const streamArb = fc.record({
      seeded: fc.integer({ min: 0, max: 2 }),
      contenders: fc.array(contenderArb, { minLength: 1, maxLength: 4 }),
    })
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.array(streamArb, { minLength: 1, maxLength: 3 }),
        async (s, streams) => {
          const r = ++run
          const setup = streams.map(async (spec, k) => {
            const stream = `prop-${r}-${k}`
            if (spec.seeded > 0) {
              const seed = Array.from({ length: spec.seeded }, (_, i) => ({ type: 's', data: i }))
              await stores[0]!.append(stream, seed, { expectedVersion: 'noStream' })
            }
            return stream
          })
          const names = await Promise.all(setup)
          const attempts = streams.flatMap((spec, k) =>
            spec.contenders.map((c, j) => {
              const expected: ExpectedVersion =
                c.alias && spec.seeded === 0 ? 'noStream' : spec.seeded
              const ids = Array.from({ length: c.count }, (_, e) => `p${r}-${k}-${j}-${e}`)
              const events = ids.map((id, e) => ({ type: 'c', data: { j, e }, id }))
              const outcome = s
                .schedule(Promise.resolve(), `stream ${k} contender ${j}`)
                .then(() =>
                  stores[c.store]!.append(names[k]!, events, { expectedVersion: expected }),
                )
                .then(
                  (result) => ({ ok: true as const, result }),
                  (error: unknown) => ({ ok: false as const, error }),
                )
              return { k, j, ids, expected, outcome }
            }),
          )
          await s.waitAll()
          const outcomes = await Promise.all(attempts.map((a) => a.outcome))
          for (const [k, spec] of streams.entries()) {
            const mine = attempts
              .map((a, i) => ({ ...a, settled: outcomes[i]! }))
              .filter((a) => a.k === k)
            const winners = mine.filter((a) => a.settled.ok)
            expect(winners).toHaveLength(1)
            const winner = winners[0]!
            if (!winner.settled.ok) throw new Error('unreachable')
            const final = spec.seeded + winner.ids.length
            expect(winner.settled.result.version).toBe(final)
            for (const loser of mine.filter((a) => !a.settled.ok)) {
              if (loser.settled.ok) throw new Error('unreachable')
              expect(loser.settled.error).toBeInstanceOf(WrongExpectedVersionError)
              expect(loser.settled.error).toMatchObject({
                expected: loser.expected,
                actual: final,
                deleted: false,
              })
            }
            const read = await stores[0]!.readStream(names[k]!)
            expect(read.version).toBe(final)
            expect(read.events.map((e) => e.version)).toEqual(
              Array.from({ length: final }, (_, i) => i + 1),
            )
            const appended = read.events.slice(spec.seeded)
            expect(appended.map((e) => [e.id, e.position])).toEqual(
              winner.settled.result.events.map((e) => [e.id, e.position]),
            )
            const positions = read.events.map((e) => e.position)
            expect(positions).toEqual([...positions].sort((a, b) => a - b))
          }
          // No event of a losing contender anywhere in the log.
          const loserIds = attempts.flatMap((a, i) => (outcomes[i]!.ok ? [] : a.ids))
          const stray = await t.db.query(
            'SELECT event_id FROM breakwater_events WHERE event_id = ANY($1)',
            [loserIds],
          )
          expect(stray).toEqual([])
        },
      ),
      { numRuns: 40 },
    )
  })
})
