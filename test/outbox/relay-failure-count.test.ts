// relay.metrics().publishFailures (breakwater_relay_publish_failures_total in `breakwater relay`'s
// /metrics) counts failed publish calls. A send the open circuit breaker refused never reached
// the broker, yet it was counted: each cooldown of an outage counted the failed probe and the
// refusal of the send after it, twice the calls the broker failed. Real PostgreSQL outbox and
// in-database queue as the broker, whose publish calls fail while the "broker is down".
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  brokerDown,
  count,
  delay,
  type OutboxDb,
  postgresTarget,
  testPublisher,
  testQueue,
  until,
} from './support.js'

const T0 = 1_700_000_000_000
let t: OutboxDb

beforeAll(async () => {
  t = await postgresTarget.open('relay_failure_count')
})
afterAll(async () => {
  await t?.close()
})

it('counts the publish calls that failed, not the open circuit refusals', async () => {
  const clock = new ManualClock(T0)
  const queue = testQueue(t.db)
  const publisher = testPublisher(queue.publisher)
  publisher.before = () => {
    throw brokerDown()
  }
  const relay = createRelay({
    db: t.db,
    publisher,
    clock,
    pollIntervalMs: 10,
    maxPollIntervalMs: 20,
    retryBackoff: { baseDelayMs: 10, maxDelayMs: 10, jitter: 'none' },
    circuitBreaker: { window: { kind: 'consecutive', failures: 2 }, cooldownMs: 1_000 },
    retention: false,
    listen: false,
  })
  const events: RelayEvent[] = []
  relay.events.on((e) => events.push(e))
  const refusals = (): number =>
    events.filter(
      (e) => e.type === 'publishFailed' && (e.error as { code?: string }).code === 'BROKEN_CIRCUIT',
    ).length
  try {
    const outbox = createOutbox({ clock, topic: 'failure-count' })
    // Several aggregates: a failed call of several events is retried one event at a time.
    for (const aggregateId of ['a', 'b', 'c'])
      await t.db.transaction((tx) =>
        outbox.enqueue(tx, { aggregateType: 'thing', aggregateId, type: 't', payload: {} }),
      )
    await relay.start()
    // Several cooldowns of the outage, each ending with a probe that fails.
    const deadline = Date.now() + 20_000
    while (refusals() < 3) {
      if (Date.now() > deadline) throw new Error('no refusals by the open circuit')
      await clock.advance(50)
      await delay(2)
    }
    // Every call the broker got failed; the refusals reached no broker.
    expect(relay.metrics().publishFailures).toBe(publisher.calls)

    publisher.before = undefined
    await until(async () => {
      await clock.advance(200)
      return (await count(t.db, 'breakwater_outbox', 'WHERE published_at IS NOT NULL')) === 3
    }, 'the events published once the broker is back')
    await until(() => relay.metrics().published === 3, 'the marks counted')
    expect(relay.metrics().publishFailures).toBe(publisher.calls - publisher.batches.length)
  } finally {
    await relay.stop()
    await queue.close()
  }
})
