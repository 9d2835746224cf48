// A receiver that rate-limits the relay (429 with Retry-After) must not be hit again before the
// wait it asked for: the relay's pause after a failed round is raised to the retryAfterMs the
// broker's error carries, up to retryBackoff.maxDelayMs. With the default publish timeout the
// webhook publisher gives up at once on a 30 s Retry-After (it does not fit in the deadline), so
// before this the relay retried on its own 100 ms backoff, then at every breaker cooldown. A real
// receiver and a manual clock shared by relay and publisher: no real time passes for any wait.
import { createServer } from 'node:http'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { BrokerError } from '../../src/brokers/errors.js'
import { createWebhookPublisher, type Publisher } from '../../src/brokers/index.js'
import { createOutbox, createRelay, type RelayOptions } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { listenOnLoopback } from '../support/loopback.js'
import { dbTargets, delay, type OutboxDb, until } from './support.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('relay honours Retry-After on $dialect', (target) => {
  let t: OutboxDb
  let clock: ManualClock
  // When (on the test's clock) the receiver got each POST, and the Retry-After it answers.
  let posts: number[] = []
  let retryAfter = '30'
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      posts.push(clock.now())
      res.writeHead(429, { 'retry-after': retryAfter }).end('slow down')
    })
  })
  let url = ''

  beforeAll(async () => {
    t = await target.open('relay_retry_after')
    url = `http://127.0.0.1:${await listenOnLoopback(server)}/hook`
  })
  afterAll(async () => {
    server.close()
    await t?.close()
  })
  beforeEach(async () => {
    await t.db.execute('DELETE FROM breakwater_outbox')
    clock = new ManualClock(T0)
    posts = []
    retryAfter = '30'
  })

  function webhook(): Publisher {
    return createWebhookPublisher({ url, secret: 'a-secret-of-at-least-16-bytes', clock })
  }

  /** Enqueues one event for each aggregate id. */
  async function enqueue(...ids: string[]): Promise<void> {
    await t.db.transaction(async (tx) => {
      for (const id of ids) {
        await createOutbox().enqueue(tx, {
          aggregateType: 'order',
          aggregateId: id,
          type: 'placed',
          topic: 'orders',
          payload: {},
        })
      }
    })
  }

  /**
   * Runs a relay (default publish timeout; an hour's lease, as the clock runs ahead of real
   * time) until `sent()` says the receiver was hit again after its first burst, or the clock has
   * moved `forMs` past the first POST; stops it. The clock moves 100 ms at a time.
   */
  async function run(
    publisher: Publisher,
    sent: () => number,
    forMs: number,
    options: Partial<RelayOptions> = {},
  ): Promise<void> {
    const relay = createRelay({
      db: t.db,
      publisher,
      clock,
      leaseMs: 3_600_000,
      retention: false,
      listen: false,
      ...options,
    })
    try {
      await relay.start()
      relay.wake()
      await until(async () => {
        if (sent() > 0) return true
        await clock.advance(10)
        return sent() > 0
      }, 'the first publish')
      const from = clock.now()
      while (clock.now() - from < forMs) {
        await clock.advance(100)
        await delay(2)
      }
    } finally {
      const stopped = relay.stop()
      let done = false
      void stopped.finally(() => (done = true))
      await until(async () => {
        if (!done) await clock.advance(10)
        return done
      }, 'relay.stop()')
      await stopped
      await publisher.close()
    }
  }

  /** The longest pause between two POSTs (after the first burst). */
  function longestGap(times: readonly number[]): number {
    let gap = 0
    for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!)
    return gap
  }

  it('one event: after a 429 with Retry-After: 30 nothing is sent for 30 s, then it is sent again', async () => {
    await enqueue('o-1')
    await run(webhook(), () => posts.length, 33_000)
    // Before: 10 POSTs in 30 s (the relay's backoff, then every breaker cooldown).
    expect(posts.length, String(posts.map((p) => p - T0))).toBe(2)
    expect(posts[1]! - posts[0]!).toBeGreaterThanOrEqual(30_000)
  })

  it('several events, an outage: after the burst that found no culprit, nothing for 30 s', async () => {
    await enqueue('o-1', 'o-2', 'o-3')
    await run(webhook(), () => posts.length, 33_000)
    const first = posts[0]!
    const burst = posts.filter((p) => p < first + 1_000)
    const later = posts.filter((p) => p >= first + 1_000)
    expect(later.length, String(posts.map((p) => p - T0))).toBeGreaterThan(0)
    expect(later[0]! - burst.at(-1)!).toBeGreaterThanOrEqual(30_000)
  })

  it('a longer Retry-After is capped at retryBackoff.maxDelayMs', async () => {
    retryAfter = '3600'
    await enqueue('o-1')
    await run(webhook(), () => posts.length, 15_000, { retryBackoff: { maxDelayMs: 10_000 } })
    expect(posts.length, String(posts.map((p) => p - T0))).toBeGreaterThanOrEqual(2)
    expect(posts[1]! - posts[0]!).toBeGreaterThanOrEqual(10_000)
    expect(longestGap(posts)).toBeLessThan(15_000)
  })

  it("any publisher's error carrying retryAfterMs is honoured, not only the webhook's", async () => {
    const calls: number[] = []
    const publisher: Publisher = {
      async publish() {
        calls.push(clock.now())
        throw Object.assign(new BrokerError('BROKER_UNAVAILABLE', 'redis', 'busy, try later'), {
          retryAfterMs: 20_000,
        })
      },
      async close() {},
    }
    await enqueue('o-1')
    await run(publisher, () => calls.length, 23_000)
    expect(calls.length, String(calls.map((p) => p - T0))).toBe(2)
    expect(calls[1]! - calls[0]!).toBeGreaterThanOrEqual(20_000)
  })
})
