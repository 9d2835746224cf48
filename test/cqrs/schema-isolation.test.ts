// Two event stores in two schemas of one PostgreSQL database (two tenants, or two apps, each
// with its own search_path) must not interfere. The read watermark counts the appending
// transactions of its own store only: an append left open in one schema holds back that
// schema's followers (that is the gap safety), never the other's, and the other's head never
// goes back. Followers listen on their store's own channel, so one store's appends do not wake
// the other's; the database's shared channel keeps its plain-number payload for followers of
// earlier releases (a rolling upgrade left them polling when it carried the store too).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { EventStoreImpl } from '../../src/cqrs/event-store.js'
import { LogWaker } from '../../src/cqrs/follower.js'
import { createEventStore, type EventStore, migrateCqrs } from '../../src/cqrs/index.js'
import { appenderLockBase, eventsChannel, postgresAppendAlone } from '../../src/cqrs/sql.js'
import { openDatabase, type SqlDriver, type SqlNotification } from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { type HeldTransaction, holdOpenTransaction } from '../support/held-transaction.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

/** The database's URL with the connections' search_path set to `schema`. */
function schemaUrl(url: string, schema: string): string {
  const u = new URL(url)
  u.searchParams.set('options', `-c search_path=${schema}`)
  return u.toString()
}

describe('event stores in two schemas of one PostgreSQL database', () => {
  let database: TestDatabase
  let db1: SqlDriver
  let db2: SqlDriver
  // The transactions a test holds open (ended after it, also when it failed).
  const held: HeldTransaction[] = []
  let store1: EventStore
  let store2: EventStore

  beforeAll(async () => {
    database = await createTestDatabase('schema_isolation')
    const setup = await openDatabase(database.url)
    await setup.execute('CREATE SCHEMA t1')
    await setup.execute('CREATE SCHEMA t2')
    await setup.close()
    db1 = await openDatabase(schemaUrl(database.url, 't1'))
    db2 = await openDatabase(schemaUrl(database.url, 't2'))
    await migrateCqrs(db1)
    await migrateCqrs(db2)
    store1 = createEventStore(db1)
    store2 = createEventStore(db2)
  })

  // A failed test leaves its transactions open: end them, not to hold the next tests back.
  afterEach(async () => {
    for (const h of held.splice(0)) await h.commit()
  })

  afterAll(async () => {
    await db1?.close()
    await db2?.close()
    await database?.drop()
  })

  /** Holds `work` open in a transaction of `db` until the end of the test. */
  async function hold(db: SqlDriver, work: Parameters<typeof holdOpenTransaction>[1]) {
    const h = await holdOpenTransaction(db, work)
    held.push(h)
    return h
  }

  async function release(h: HeldTransaction): Promise<void> {
    held.splice(held.indexOf(h), 1)
    await h.commit()
  }

  it('keeps each store in its own schema', async () => {
    const rows = await db1.query<{ s: string }>('SELECT current_schema() AS s')
    expect(rows[0]!.s).toBe('t1')
    expect((await db2.query<{ s: string }>('SELECT current_schema() AS s'))[0]!.s).toBe('t2')
  })

  it("does not hold one schema's followers back for an append left open in the other", async () => {
    for (let i = 0; i < 5; i++) await store1.append(`a-${i}`, [{ type: 't', data: i }])
    const head = await store1.headPosition()
    expect(head).toBeGreaterThanOrEqual(5)

    // An append in t2, in a transaction left open (breakwater_append).
    const open = await hold(db2, (tx) => store2.append('b', [{ type: 't', data: 1 }], { tx }))
    expect(await store1.headPosition()).toBe(head)
    const next = await store1.append('a-next', [{ type: 't', data: 'next' }])
    expect(await store1.headPosition()).toBe(next.lastPosition)
    const read = await store1.readAll({ fromPosition: 1 })
    expect(read.at(-1)?.position).toBe(next.lastPosition)
    // t2's own followers still wait for it: the watermark still works there.
    expect(await store2.headPosition()).toBe(0)
    await release(open)
    expect(await store2.headPosition()).toBeGreaterThan(0)
  })

  it("does not hold one schema's followers back for the other's standalone append statement", async () => {
    const before = await store1.append('c', [{ type: 't', data: 0 }])
    // The standalone append statement, run in a transaction left open.
    const open = await hold(db2, (tx) =>
      tx.query(postgresAppendAlone('any', false), ['d', 1, 'd-1', 't', 1, '0', null]),
    )
    expect(await store1.headPosition()).toBe(before.lastPosition)
    const after = await store1.append('c', [{ type: 't', data: 1 }])
    expect(await store1.headPosition()).toBe(after.lastPosition)
    await release(open)
  })

  it('still holds a schema back for its own open append while the other schema has one open', async () => {
    const other = await hold(db2, (tx) => store2.append('e', [{ type: 't', data: 1 }], { tx }))
    const head = await store1.headPosition()
    const own = await hold(db1, (tx) => store1.append('f', [{ type: 't', data: 1 }], { tx }))
    const later = await store1.append('g', [{ type: 't', data: 1 }])
    // The open append in t1 took a position before `later`: nothing after it is readable yet.
    expect(await store1.headPosition()).toBe(head)
    await release(own)
    expect(await store1.headPosition()).toBe(later.lastPosition)
    await release(other)
  })

  it('holds every schema back for an appender lock taken without its store (an older release)', async () => {
    const head = await store1.headPosition()
    // Before this fix an appender took only the position lock; which store it appends to is
    // unknown, so every store's watermark counts it, as it did then.
    const legacy = await hold(db1, (tx) =>
      tx.query('SELECT pg_advisory_xact_lock_shared($1::bigint)', [
        (BigInt(appenderLockBase) + 1n + BigInt(head)).toString(),
      ]),
    )
    const later = await store1.append('h', [{ type: 't', data: 1 }])
    expect(await store1.headPosition()).toBe(head)
    await release(legacy)
    expect(await store1.headPosition()).toBe(later.lastPosition)
  })

  it("does not wake one schema's followers for the other's appends", async () => {
    // Every notification on t1's database, as its position (the payload up to a ':', if any).
    const positions: string[] = []
    const waiters: Array<() => void> = []
    const unlisten = await db1.listen!(eventsChannel, (n: SqlNotification) => {
      positions.push(n.payload?.split(':')[0] ?? '')
      for (const w of waiters.splice(0)) w()
    })
    const notified = async (position: number): Promise<void> => {
      while (!positions.includes(String(position))) {
        await new Promise<void>((resolve) => waiters.push(resolve))
      }
    }
    // The clock never moves: only a notification ends a wait.
    const waker = new LogWaker(store1 as unknown as EventStoreImpl, new ManualClock(0), 60_000)
    await waker.start()
    const signal = new AbortController().signal

    // t1 appends and its notification arrives; a wait left over from it returns at once.
    const own = await store1.append('i', [{ type: 't', data: 1 }])
    await notified(own.lastPosition)
    let woke = false
    const waitFrom = (position: number) =>
      waker.wait(position, signal).then(() => {
        woke = true
      })
    let waiting = waitFrom(own.lastPosition)
    await flushJobs()
    if (woke) {
      woke = false
      waiting = waitFrom(own.lastPosition)
      await flushJobs()
    }
    expect(woke).toBe(false)

    // t2's append notifies on the same channel: t1's listener sees it, its waker keeps waiting.
    const { lastPosition } = await store2.append('j', [{ type: 't', data: 1 }])
    await notified(lastPosition)
    await flushJobs()
    expect(woke).toBe(false)

    // t1's next append wakes it.
    await store1.append('k', [{ type: 't', data: 1 }])
    await waiting
    expect(woke).toBe(true)
    await unlisten()
    await waker.close()
  })

  // A follower of a release before migration 6 reads `Number(payload)` on the shared channel:
  // `<position>:<store>` there gave NaN, so it lost its quick re-checks and waited a whole poll
  // interval for events behind a rolled-back append.
  it('keeps a plain position as the payload on the shared channel, for earlier followers', async () => {
    const payloads: string[] = []
    const waiters: Array<() => void> = []
    const unlisten = await db1.listen!(eventsChannel, (n: SqlNotification) => {
      payloads.push(n.payload ?? '')
      for (const w of waiters.splice(0)) w()
    })
    try {
      const { lastPosition } = await store2.append('m', [{ type: 't', data: 1 }])
      while (!payloads.includes(String(lastPosition))) {
        await new Promise<void>((resolve) => waiters.push(resolve))
      }
      expect(payloads.every((p) => Number.isFinite(Number(p)))).toBe(true)
    } finally {
      await unlisten()
    }
  })
})
