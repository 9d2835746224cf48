// Subscriptions on real SQLite and PostgreSQL: catch-up from a position, then live (LISTEN on
// PostgreSQL, polling on SQLite, driven by a ManualClock), named checkpoints, stop(), and a
// failing handler retried without skipping.
import { beforeAll, describe, expect, it } from 'vitest'
import { createEventStore, type EventStore, type Subscription } from '../../src/cqrs/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type DbTarget, dbTargets, postgresDb, type TestDb, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }

/**
 * For the enclosing describe: opens the database `name` on `target` before its tests, with an
 * event store over it, and closes it after them.
 */
function storeOn(target: DbTarget, name: string): { t: TestDb; store: EventStore } {
  const db = { t: useTestDb(target, name) } as { t: TestDb; store: EventStore }
  beforeAll(() => {
    db.store = createEventStore(db.t.db)
  })
  return db
}

/** The position the checkpoint `name` stores. */
async function checkpointOf(t: TestDb, name: string): Promise<number> {
  const rows = await t.db.query<{ position: number }>(
    'SELECT position FROM breakwater_checkpoints WHERE name = $1',
    [name],
  )
  return Number(rows[0]!.position)
}

/** One event of type `n` for each number, carrying it as its data. */
function numbers(...values: number[]): { type: string; data: number }[] {
  return values.map((n) => ({ type: 'n', data: n }))
}

describe.each(dbTargets)('subscriptions on $dialect', (target) => {
  const db = storeOn(target, 'cqrs_subscriptions')

  it('catches up from a position, goes live, and resumes after its checkpoint', async () => {
    const clock = new ManualClock(Date.now())
    const base = await db.store.headPosition()
    await db.store.append('s-1', numbers(1, 2, 3))
    const seen: number[] = []
    const options = { name: 'counter', fromPosition: base + 2, pollIntervalMs: 50, clock }
    const first = db.store.subscribe((event) => {
      seen.push(event.data as number)
    }, options)
    await expect.poll(() => seen, poll).toEqual([2, 3])
    expect(first.position).toBe(base + 3)
    await expect.poll(() => first.live, poll).toBe(true)

    await db.store.append('s-2', [{ type: 'n', data: 4 }])
    // SQLite polls on the clock; PostgreSQL is woken by the append's NOTIFY.
    await expect
      .poll(async () => {
        if (target.dialect === 'sqlite') await clock.advance(50)
        return seen
      }, poll)
      .toEqual([2, 3, 4])
    await first.stop()

    await db.store.append('s-2', [{ type: 'n', data: 5 }])
    const resumed: number[] = []
    const second = db.store.subscribe((event) => {
      resumed.push(event.data as number)
    }, options)
    await expect.poll(() => resumed, poll).toEqual([5])
    await second.stop()
    expect(await checkpointOf(db.t, 'counter')).toBe(base + 5)
  })

  it('can be stopped from its own handler, which then stores the checkpoint', async () => {
    const from = (await db.store.headPosition()) + 1
    await db.store.append('stop-inside', numbers(1, 2, 3))
    const seen: number[] = []
    let stopped = false
    const subscription: Subscription = db.store.subscribe(
      async (event) => {
        seen.push(event.data as number)
        if (event.data === 2) {
          // "Read until the event I was waiting for": awaiting stop() here must not wait for
          // this very handler to return.
          await subscription.stop()
          stopped = true
        }
      },
      { name: 'stop-inside', fromPosition: from },
    )
    await expect.poll(() => stopped, poll).toBe(true)
    await subscription.stop()
    expect(seen).toEqual([1, 2])
    expect(subscription.position).toBe(from + 1)
    expect(await checkpointOf(db.t, 'stop-inside')).toBe(from + 1)
  })

  it('never moves a stored checkpoint back when a slower instance of the same name saves', async () => {
    // Two instances of one named subscription (two processes, or a stale one still running):
    // the slower one stores an older position after the faster one stored a newer one.
    const clock = new ManualClock(Date.now())
    const from = (await db.store.headPosition()) + 1
    await db.store.append('two-instances', numbers(1, 2, 3))
    const options = { name: 'shared', fromPosition: from, pollIntervalMs: 60_000, clock }
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let slowAt = 0
    const other = createEventStore(await db.t.connect())
    const slow = other.subscribe(async (event) => {
      slowAt = event.data as number
      await gate
    }, options)
    await expect.poll(() => slowAt, poll).toBe(1)

    const fast = db.store.subscribe(() => {}, options)
    await expect.poll(() => fast.live, poll).toBe(true)
    await fast.stop()
    expect(await checkpointOf(db.t, 'shared')).toBe(from + 2)

    const stopping = slow.stop()
    release()
    await stopping
    expect(slow.position).toBe(from)
    expect(await checkpointOf(db.t, 'shared')).toBe(from + 2)

    const resumed: number[] = []
    const restarted = db.store.subscribe((event) => {
      resumed.push(event.data as number)
    }, options)
    await expect.poll(() => restarted.live, poll).toBe(true)
    await restarted.stop()
    expect(resumed).toEqual([])
  })

  it('refuses a checkpoint name the database cannot store as given', async () => {
    // PostgreSQL text cannot hold NUL (every checkpoint read would fail, retried forever) and
    // stores a lone surrogate as U+FFFD (two names would share one checkpoint).
    for (const name of ['a\u0000b', 'a\ud800']) {
      let subscription: { stop(): Promise<void> } | undefined
      try {
        expect(() => {
          subscription = db.store.subscribe(() => {}, { name })
        }).toThrow(/name: expected a non-empty string without NUL/)
      } finally {
        await subscription?.stop()
      }
    }
  })

  it('redelivers the event a handler failed on, after the retry delay, without skipping', async () => {
    const clock = new ManualClock(Date.now())
    const from = (await db.store.headPosition()) + 1
    await db.store.append('flaky', numbers(1, 2, 3))
    const seen: number[] = []
    const errors: unknown[] = []
    let failOnce = true
    const subscription = db.store.subscribe(
      (event) => {
        if (event.data === 2 && failOnce) {
          failOnce = false
          throw new Error('handler failed')
        }
        seen.push(event.data as number)
      },
      {
        fromPosition: from,
        retryBaseDelayMs: 1000,
        pollIntervalMs: 60_000,
        clock,
        onError: (e) => errors.push(e),
      },
    )
    await expect.poll(() => errors.length, poll).toBe(1)
    expect(seen).toEqual([1])
    await expect
      .poll(async () => {
        await clock.advance(1000)
        return seen
      }, poll)
      .toEqual([1, 2, 3])
    await subscription.stop()
  })
})

describe.each(dbTargets)('a subscription whose onError throws on $dialect', (target) => {
  const db = storeOn(target, 'cqrs_subscription_onerror')

  it('keeps retrying, delivers every event, and stops', async () => {
    const clock = new ManualClock(Date.now())
    const base = await db.store.headPosition()
    await db.store.append('flaky', numbers(1, 2, 3))
    const seen: number[] = []
    let failures = 2
    let reported = 0
    const subscription = db.store.subscribe(
      (event) => {
        if (event.data === 2 && failures > 0) {
          failures--
          throw new Error('handler failed')
        }
        seen.push(event.data as number)
      },
      {
        name: 'throwing-listener',
        fromPosition: base + 1,
        retryBaseDelayMs: 1000,
        pollIntervalMs: 60_000,
        clock,
        onError: () => {
          reported++
          // A broken error listener must not end the subscription (nor reject its loop
          // unhandled): the failed event is still redelivered.
          throw new Error('listener failed')
        },
      },
    )
    await expect
      .poll(async () => {
        await clock.advance(1000)
        return seen
      }, poll)
      .toEqual([1, 2, 3])
    expect(reported).toBe(2)
    await subscription.stop()
    expect(subscription.position).toBe(base + 3)
    expect(await checkpointOf(db.t, 'throwing-listener')).toBe(base + 3)
  })
})

describe('subscriptions on PostgreSQL are woken by NOTIFY', () => {
  const db = storeOn(postgresDb, 'cqrs_notify')

  it('delivers appends at once although its clock never advances', async () => {
    // The poll interval is on a clock that never moves: only notifications can wake it.
    const clock = new ManualClock(Date.now())
    const seen: string[] = []
    const follower = createEventStore(await db.t.connect())
    const subscription = follower.subscribe(
      (event) => {
        seen.push(event.stream)
      },
      { fromPosition: (await db.store.headPosition()) + 1, clock },
    )
    await expect.poll(() => subscription.live, poll).toBe(true)
    await db.store.append('standalone', [{ type: 'x', data: 1 }])
    await expect.poll(() => seen, poll).toEqual(['standalone'])
    // In the caller's transaction the NOTIFY goes out at its commit.
    await db.t.db.transaction(async (tx) => {
      await db.store.append('in-tx', [{ type: 'x', data: 2 }], { tx })
    })
    await expect.poll(() => seen, poll).toEqual(['standalone', 'in-tx'])
    await subscription.stop()
  })
})
