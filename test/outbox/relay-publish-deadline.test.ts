// A publisher that retries by itself (the webhook publisher: attempts, backoff, Retry-After)
// must fit its retries in the relay's publish timeout: the relay runs each publish under a
// deadline at that timeout, so the publisher's retry gives up before sleeping past it and the
// relay sees the receiver's own failure (a 503 from the webhook), not a bare TIMEOUT cutting a
// retry wait short. A counting receiver and a manual clock shared by relay and publisher: no
// real time passes for any wait.
import { createServer } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createWebhookPublisher, type Publisher } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { remainingMs, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'
import { listenOnLoopback } from '../support/loopback.js'
import { dbTargets, delay, type OutboxDb, until } from './support.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('relay publish deadline on $dialect', (target) => {
  let t: OutboxDb
  let requests = 0
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      requests++
      // Down, and asking for a second before the next try.
      res.writeHead(503, { 'retry-after': '1' }).end('busy')
    })
  })
  let url = ''

  beforeAll(async () => {
    t = await target.open('relay_publish_deadline')
    url = `http://127.0.0.1:${await listenOnLoopback(server)}/hook`
  })
  afterAll(async () => {
    server.close()
    await t?.close()
  })

  /**
   * The relay both tests run: a publish timeout of 1.5 s, no retention, no LISTEN. The lease is
   * an hour: the tests move the clock ahead of real time, and on a loaded machine a lease of a
   * few seconds ran out between two renewals' database round trips (the relay then stopped as
   * taken over and never reported the publish).
   */
  function relayWith(publisher: Publisher, clock: ManualClock) {
    return createRelay({
      db: t.db,
      publisher,
      clock,
      leaseMs: 3_600_000,
      publishTimeoutMs: 1_500,
      retention: false,
      listen: false,
    })
  }

  /**
   * Waits for `check`, moving the clock 10 ms between looks. The relay's first read can find
   * its row held back by the PostgreSQL horizon, which is server-wide: a transaction of another
   * test file, in another database, still running. The relay then reads again after 10 ms (then
   * 20, 40, ...) of the relay's clock, which only the test moves: waiting in real time alone
   * never published under a loaded `npm test`.
   */
  async function untilTicking(clock: ManualClock, check: () => boolean, what: string) {
    await until(async () => {
      if (check()) return true
      await clock.advance(10)
      return check()
    }, what)
  }

  /** Enqueues one 'placed' event of order `id` on the topic orders, with the payload { n }. */
  function enqueueOrder(id: string, n: number): Promise<unknown> {
    return t.db.transaction((tx) =>
      createOutbox().enqueue(tx, {
        aggregateType: 'order',
        aggregateId: id,
        type: 'placed',
        topic: 'orders',
        payload: { n },
      }),
    )
  }

  it("a publisher's retries end within the publish timeout, with the receiver's own error", async () => {
    const clock = new ManualClock(T0)
    const webhook = createWebhookPublisher({
      url,
      secret: 'a-secret-of-at-least-16-bytes',
      clock,
      attemptTimeoutMs: 2_000,
      retry: { maxAttempts: 5, baseDelayMs: 100, maxDelayMs: 500, maxRetryAfterMs: 1_000 },
    })
    const relay = relayWith(webhook, clock)
    // The POSTs made when the failure is reported: the clock keeps moving after it, and the
    // relay's own retry of the event (its backoff) may then POST again before the loop below
    // looks (seen once in about 20 runs: 3 POSTs).
    const failures: Array<{ at: number; error: unknown; requests: number }> = []
    relay.events.on((e: RelayEvent) => {
      if (e.type === 'publishFailed') failures.push({ at: clock.now(), error: e.error, requests })
    })
    try {
      await enqueueOrder('o-1', 1)
      await relay.start()
      relay.wake()
      await untilTicking(clock, () => requests === 1, 'the first POST')
      const from = clock.now()
      // The clock moves in small steps until the relay reports the failed publish.
      const deadline = Date.now() + 20_000
      while (failures.length === 0) {
        if (Date.now() > deadline) throw new Error('the publish never failed')
        await clock.advance(100)
        await delay(5)
      }
      const [first] = failures
      // A Retry-After of 1 s fits once in the 1.5 s timeout: two POSTs, then the publisher gave
      // up before sleeping into the deadline, with the 503 as its error.
      expect(first!.requests).toBe(2)
      expect(BreakwaterError.is(first!.error) && first!.error.code, String(first!.error)).toBe(
        'BROKER_UNAVAILABLE',
      )
      expect((first!.error as { status?: number }).status).toBe(503)
      expect(first!.at - from).toBeLessThan(1_500)
    } finally {
      // A retry of the event may be under way, its publisher sleeping on the test's clock: the
      // stop waits for it, so the clock moves until it has stopped.
      // Real waits between the steps: on PostgreSQL the stop's own statements need real time,
      // which moving the clock alone (settleOnClock) does not give them.
      const stopped = relay.stop()
      let done = false
      void stopped.finally(() => (done = true))
      await untilTicking(clock, () => done, 'relay.stop()')
      await stopped
      await webhook.close()
    }
  })
  it("a relay started inside a caller's deadline publishes under its own, not the caller's", async () => {
    const clock = new ManualClock(T0)
    const seen: Array<number | undefined> = []
    const relay = relayWith(
      {
        async publish() {
          seen.push(remainingMs(clock))
        },
        async close() {},
      },
      clock,
    )
    try {
      // An application that bounds its startup: the relay's loop outlives that deadline.
      await withDeadline(100, () => relay.start(), { clock })
      await clock.advance(200)
      await enqueueOrder('o-2', 2)
      relay.wake()
      await untilTicking(clock, () => seen.length > 0, 'a publish')
      expect(seen[0]).toBe(1_500)
    } finally {
      await relay.stop()
    }
  })
})
