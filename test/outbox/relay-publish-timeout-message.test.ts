// A broker that stops answering mid-stream (its server frozen with SIGSTOP: a hung process, or a
// RabbitMQ quorum queue without a leader after a crash, which takes publishes and never confirms
// them). The relay's own publish timeout (`publishTimeoutMs`, 5 s by default) runs out before
// the adapter's (10 s), so its error is the one the relay reports and the CLI logs. It said only
// "The operation timed out after 5000 ms": not what timed out, for which topic, or which
// setting bounds it.
import { afterAll, expect, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { TimeoutError } from '../../src/policies/errors.js'
import { startPrivateBroker, stopOwnBrokers } from '../support/brokers.js'
import { sqliteTarget, until } from './support.js'

afterAll(stopOwnBrokers)

it('names the relay, the events, their topic and relay.publishTimeoutMs when the broker does not confirm in time', async () => {
  const server = await startPrivateBroker('nats')
  const t = await sqliteTarget.open('relay_publish_timeout_message')
  // The adapter's own limit far above the relay's, so only the relay's can run out.
  const broker = createNatsBroker({ url: server.url, publishTimeoutMs: 60_000 })
  const topic = 'orders-timeout'
  const outbox = createOutbox({ topic })
  const relay = createRelay({
    db: t.db,
    publisher: broker.publisher,
    leaseMs: 2_000,
    retention: false,
  })
  const events: RelayEvent[] = []
  relay.events.on((event) => events.push(event))
  const enqueue = (id: string) =>
    t.db.transaction((tx) =>
      outbox.enqueue(tx, {
        id,
        aggregateType: 'order',
        aggregateId: id,
        type: 'placed',
        payload: {},
      }),
    )
  let frozen = false
  try {
    await enqueue('before')
    await relay.start()
    await until(() => events.some((e) => e.type === 'published'), 'the first event published')

    process.kill(server.pid, 'SIGSTOP')
    frozen = true
    await enqueue('while-frozen')
    await until(() => events.some((e) => e.type === 'publishFailed'), 'a failed publish')
    const failure = events.find((e) => e.type === 'publishFailed') as Extract<
      RelayEvent,
      { type: 'publishFailed' }
    >
    const error = failure.error
    // Still the relay's TimeoutError (code, retryable, timeoutMs) for code that reads those.
    expect(error).toBeInstanceOf(TimeoutError)
    expect(BreakwaterError.is(error) && error.code).toBe('TIMEOUT')
    expect((error as TimeoutError).timeoutMs).toBe(1_000)
    expect((error as Error).message).toBe(
      `relay: the publisher did not confirm 1 event (topic "${topic}") within 1000 ms (relay.publishTimeoutMs); the broker is down, overloaded or not answering, and the event will be published again`,
    )
  } finally {
    if (frozen) process.kill(server.pid, 'SIGCONT')
    await relay.stop()
    await broker.close()
    await t.close()
    await server.stop()
  }
})
