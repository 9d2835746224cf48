// The Redis server SIGKILLed mid-stream and started again on its port with its data (AOF,
// appendfsync always, as scripts/lib/brokers.mjs starts it), while a relay publishes from a
// SQLite outbox and a subscriber applies each event through an inbox. Neither is restarted:
// both must reconnect on their own, every committed event must be applied exactly once, and
// the errors they report on the way must name Redis. (NATS has the same under the outbox
// crash harness; the conformance suite restarts each server with SIGTERM, without a relay.)
// An ack lost with the killed server reached onError (phase settle) as ioredis's bare
// "Connection is closed.", naming neither Redis nor the entry.
import { afterAll, expect, it } from 'vitest'
import type { IncomingMessage } from '../../src/brokers/index.js'
import { BrokerError } from '../../src/brokers/index.js'
import { createOutbox, createRelay, inboxHandler } from '../../src/outbox/index.js'
import { sqliteTarget } from '../outbox/support.js'
import { startPrivateBroker, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

it('a relay and an inbox subscriber ride out a SIGKILL of the Redis server without a restart of their own', async () => {
  const server = await startPrivateBroker('redis')
  const producer = await sqliteTarget.open('redis_restart_producer')
  const consumer = await sqliteTarget.open('redis_restart_consumer')
  await consumer.db.execute('CREATE TABLE applied (id TEXT NOT NULL)')
  const topic = unique('restart')
  const subscriberErrors: unknown[] = []
  const publisher = testBroker('redis', server.url)
  const subscriber = testBroker('redis', server.url, {
    concurrency: 4,
    prefetch: 16,
    onError: ({ error }) => subscriberErrors.push(error),
  })
  const delivered: IncomingMessage[] = []
  const apply = inboxHandler(consumer.db, 'restart-test', async (tx, message) => {
    await tx.execute('INSERT INTO applied (id) VALUES ($1)', [message.id])
  })
  const outbox = createOutbox({ topic })
  const relay = createRelay({
    db: producer.db,
    publisher: publisher.publisher,
    leaseMs: 2_000,
    retryBackoff: { baseDelayMs: 20, maxDelayMs: 200 },
    circuitBreaker: { cooldownMs: 200 },
    retention: false,
  })
  const publishErrors: unknown[] = []
  relay.events.on((e) => {
    if (e.type === 'publishFailed') publishErrors.push(e.error)
  })
  const committed: string[] = []
  const enqueue = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      const id = `e-${committed.length}`
      await producer.db.transaction((tx) =>
        outbox.enqueue(tx, {
          id,
          aggregateType: 'order',
          aggregateId: `order-${committed.length % 5}`,
          type: 'changed',
          payload: { id },
        }),
      )
      committed.push(id)
    }
  }
  const appliedIds = async (): Promise<string[]> =>
    (await consumer.db.query<{ id: string }>('SELECT id FROM applied')).map((row) => row.id)
  try {
    await subscriber.subscriber.subscribe(topic, unique('g'), async (message) => {
      delivered.push(message)
      await apply(message)
    })
    await relay.start()
    await enqueue(30)
    // Killed once deliveries flow, with the rest in the relay's and subscriber's hands.
    await until(() => delivered.length >= 10, 'the first deliveries')
    await server.kill('SIGKILL')
    await enqueue(30)
    await until(
      () => publishErrors.length > 0 && subscriberErrors.length > 0,
      'the relay and the subscriber to see the server gone',
    )
    await server.restart()
    await enqueue(30)
    await until(async () => (await appliedIds()).length >= committed.length, 'every event applied')

    const applied = await appliedIds()
    expect(applied.sort()).toEqual([...committed].sort())
    // What they reported named the broker (the relay's breaker aside, which wraps none).
    for (const error of [...publishErrors, ...subscriberErrors]) {
      if (error instanceof BrokerError) expect(error.message).toMatch(/^redis: /)
    }
    expect(publishErrors.some((error) => error instanceof BrokerError)).toBe(true)
    expect(subscriberErrors.filter((error) => !(error instanceof BrokerError)).map(String)).toEqual(
      [],
    )
  } finally {
    await relay.stop()
    await subscriber.close()
    await publisher.close()
    await producer.close()
    await consumer.close()
    await server.stop()
  }
})
