// The SQL queue's leases and retry delays, on real SQLite and PostgreSQL, driven by a
// ManualClock: each must run from when its statement runs. The lease (on PostgreSQL), its
// extension and a failed message's retry time were computed from a time taken before the
// statement waited (for SQLite's one writer, for the one connection of the pool), so the wait
// was taken off them: after a wait longer than the visibility timeout, a lease was written
// already over and another consumer of the group could take the message at once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqlQueue, type SqlQueue } from '../../src/brokers/sql-queue.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb, until } from '../outbox/support.js'
import { gate } from '../support/gate.js'
import { whileTransactionHeld } from '../support/held-transaction.js'

const visibilityTimeoutMs = 3_000
// The lease is extended every third of the visibility timeout.
const extendEveryMs = visibilityTimeoutMs / 3
const retryDelayMs = 5_000
const pollIntervalMs = 100

// Lets queued promise jobs and I/O callbacks run: a statement reaches its wait.
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

describe.each(dbTargets)(
  'SQL queue leases measured when their statement runs, on $dialect',
  (target) => {
    let t: OutboxDb
    let db: SqlDriver
    const queues: SqlQueue[] = []

    beforeAll(async () => {
      t = await target.open('sql_queue_lease_measured')
      // One connection on PostgreSQL, so a test can make the queue's statements wait for it.
      db = await openDatabase(t.url, { postgres: { maxConnections: 1 } })
    })
    afterAll(async () => {
      for (const q of queues) await q.close()
      await db?.close()
      await t?.close()
    })

    /** A queue on `db` or `other`, polling on `clock` only (no notifications). */
    const queueOn = (on: SqlDriver, clock: ManualClock): SqlQueue => {
      const q = createSqlQueue(on, {
        clock,
        listen: false,
        pollIntervalMs,
        maxPollIntervalMs: pollIntervalMs,
        visibilityTimeoutMs,
        retryDelayMs,
      })
      queues.push(q)
      return q
    }

    /** Runs `fn` while every write of `db` is held, then lets the writes through. */
    const whileWritesHeld = (fn: () => Promise<void>): Promise<void> => whileTransactionHeld(db, fn)

    const heldUntil = async (topic: string): Promise<number | null> => {
      const rows = await t.db.query<{ held_until: number | string | null }>(
        'SELECT held_until FROM breakwater_queue_deliveries WHERE topic = $1',
        [topic],
      )
      const value = rows[0]?.held_until
      return value === null || value === undefined ? null : Number(value)
    }

    /**
     * A subscription on `db` whose handler holds each message until told how to end it, waiting
     * for its next poll with nothing leased yet; and a message published to it from another
     * connection, so that it is leased at that poll.
     */
    async function subscribed(topic: string, clock: ManualClock) {
      const reached = gate()
      const finish = gate()
      let failure: Error | undefined
      const sub = await queueOn(db, clock).subscriber.subscribe(topic, 'g', async () => {
        reached.open()
        await finish.promise
        if (failure !== undefined) throw failure
      })
      // Its first lease found nothing: it waits for its next poll on the clock.
      await until(() => clock.pendingTimers === 1, 'the subscription to wait for its next poll')
      await queueOn(t.db, clock).publisher.publish([
        { id: `${topic}-1`, topic, key: 'k', payload: 'x', headers: {} },
      ])
      return {
        sub,
        reached: () => reached.promise,
        succeed: () => finish.open(),
        fail: (error: Error) => {
          failure = error
          finish.open()
        },
      }
    }

    /** As {@link subscribed}, with the message leased and its handler running. */
    async function handling(name: string, startMs: number) {
      const clock = new ManualClock(startMs)
      const topic = `${name}-${target.dialect}`
      const s = await subscribed(topic, clock)
      await clock.advance(pollIntervalMs)
      await s.reached()
      return { clock, topic, s, leasedAt: clock.now() }
    }

    it('leases a message from when its lease statement runs, not before its wait', async () => {
      const clock = new ManualClock(1_000_000)
      const topic = `lease-${target.dialect}`
      const s = await subscribed(topic, clock)
      let polledAt = 0
      await whileWritesHeld(async () => {
        // The poll comes; its lease waits for the database longer than a visibility timeout.
        await clock.advance(pollIntervalMs)
        polledAt = clock.now()
        await turn()
        await clock.advance(4_000)
      })
      await s.reached()
      try {
        // Before (PostgreSQL): polledAt + 3000, taken before the wait: written already over.
        expect(await heldUntil(topic)).toBe(polledAt + 4_000 + visibilityTimeoutMs)
      } finally {
        s.succeed()
      }
      await until(async () => (await heldUntil(topic)) === null, 'the ack')
      await s.sub.close()
    })

    it("takes no other consumer's lease that ran out only while its lease statement waited", async () => {
      const clock = new ManualClock(4_000_000)
      const topic = `judged-${target.dialect}`
      const s = await subscribed(topic, clock)
      // Another consumer holds the message until 500 ms after the coming poll.
      const pollAt = clock.now() + pollIntervalMs
      await t.db.execute(
        `UPDATE breakwater_queue_deliveries SET held_until = $1, lease_token = 'other' WHERE topic = $2`,
        [pollAt + 500, topic],
      )
      await whileWritesHeld(async () => {
        // The poll's lease waits 700 ms for the database: the other lease runs out meanwhile
        // (its extension, say, queued behind the same writer or pool).
        await clock.advance(pollIntervalMs)
        await turn()
        await clock.advance(700)
      })
      // It was live when the lease was asked for: not taken (before: taken at once).
      await until(() => clock.pendingTimers === 1, 'the subscription to wait for its next poll')
      const token = async () =>
        (
          await t.db.query<{ lease_token: string | null }>(
            'SELECT lease_token FROM breakwater_queue_deliveries WHERE topic = $1',
            [topic],
          )
        )[0]?.lease_token
      expect(await token()).toBe('other')
      // Still not renewed at the next poll: that one takes it.
      await clock.advance(pollIntervalMs)
      await s.reached()
      expect(await token()).not.toBe('other')
      s.succeed()
      await until(async () => (await heldUntil(topic)) === null, 'the ack')
      await s.sub.close()
    })

    it("extends a running handler's lease from when the extension runs, not when its timer fired", async () => {
      const { clock, topic, s, leasedAt } = await handling('extend', 2_000_000)
      expect(await heldUntil(topic)).toBe(leasedAt + visibilityTimeoutMs)
      await whileWritesHeld(async () => {
        // The extension timer fires; its statement then waits 700 ms for the database.
        await clock.advance(extendEveryMs)
        await turn()
        await clock.advance(700)
      })
      try {
        await until(
          async () => (await heldUntil(topic)) !== leasedAt + visibilityTimeoutMs,
          'the extension to be written',
        )
        // Before: leasedAt + 1000 + 3000, measured before the wait.
        expect(await heldUntil(topic)).toBe(leasedAt + extendEveryMs + 700 + visibilityTimeoutMs)
      } finally {
        s.succeed()
      }
      await until(async () => (await heldUntil(topic)) === null, 'the ack')
      await s.sub.close()
    })

    it('holds a failed message back for retryDelayMs from when its retry statement runs', async () => {
      const { clock, topic, s, leasedAt } = await handling('retry', 3_000_000)
      let failedAt = 0
      await whileWritesHeld(async () => {
        // The handler fails; the retry's statement waits 700 ms for the database.
        failedAt = clock.now()
        s.fail(new Error('handler failed'))
        await turn()
        await clock.advance(700)
      })
      await until(
        async () => (await heldUntil(topic)) !== leasedAt + visibilityTimeoutMs,
        'the retry to be written',
      )
      // Before: failedAt + retryDelayMs, measured before the wait.
      expect(await heldUntil(topic)).toBe(failedAt + 700 + retryDelayMs)
      await s.sub.close()
    })
  },
)
