// close() of a subscriber (through the broker's close()) while deliveries are in flight, on
// RabbitMQ and Redis against their real servers. What Subscription.close() promises: in-flight
// handlers finish first (close() waits for them), one that resolved is acknowledged before
// close() resolves, one that rejected and one queued but never started are left for
// redelivery, nothing is acknowledged after close() resolved, and no promise rejects unhandled.
import { afterAll, describe, expect, it } from 'vitest'
import type { Broker } from '../../src/brokers/index.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

/** How many messages of (topic, group) the broker holds unacknowledged or not yet delivered. */
async function unsettled(
  name: BrokerName,
  url: string,
  topic: string,
  group: string,
): Promise<number> {
  if (name === 'redis') {
    const { Redis } = await import('ioredis')
    const redis = new Redis(url)
    try {
      const summary = (await redis.call('XPENDING', topic, group)) as [number, ...unknown[]]
      return Number(summary[0])
    } finally {
      redis.disconnect()
    }
  }
  const amqp = await import('amqplib')
  const model = await amqp.connect(url)
  try {
    const channel = await model.createChannel()
    return (await channel.checkQueue(`${topic}.${group}`)).messageCount
  } finally {
    await model.close()
  }
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void
  const promise = new Promise<void>((resolve) => {
    open = resolve
  })
  return { promise, open }
}

describe.each<BrokerName>(['rabbitmq', 'redis'])('%s: close() while handlers run', (name) => {
  const open: Broker[] = []
  afterAll(async () => {
    for (const broker of open) await broker.close()
  })

  it('waits for the running handlers, acks the one that resolved, leaves the failed and the queued ones for redelivery, and acks nothing after', async () => {
    const url = await brokerUrl(name)
    const unhandled: unknown[] = []
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason)
    }
    process.on('unhandledRejection', onUnhandled)
    try {
      // Two handlers at once ('done' and 'fails'); 'queued' waits behind 'done' (same key).
      const broker = testBroker(name, url, { concurrency: 2, prefetch: 4 })
      open.push(broker)
      const topic = unique('closing')
      const group = unique('g')
      const done = gate()
      const fails = gate()
      const started = new Received()
      const finished: string[] = []
      await broker.subscriber.subscribe(topic, group, async (m) => {
        started.record(m)
        if (m.id === 'done') await done.promise
        if (m.id === 'fails') {
          await fails.promise
          finished.push(m.id)
          throw new Error('handler failed during close')
        }
        finished.push(m.id)
      })
      await broker.publisher.publish([
        { id: 'done', topic, key: 'a', payload: '', headers: {} },
        { id: 'fails', topic, key: 'b', payload: '', headers: {} },
        { id: 'queued', topic, key: 'a', payload: '', headers: {} },
      ])
      await started.until(() => started.messages.length >= 2, 'both handlers to start')
      expect(started.ids().sort()).toEqual(['done', 'fails'])

      let closed = false
      const closing = broker.close().then(() => {
        closed = true
      })
      // Round trips to the server while the handlers are held: close() must still be waiting.
      for (let i = 0; i < 5; i++) await unsettled(name, url, topic, group)
      expect(closed).toBe(false)
      fails.open()
      for (let i = 0; i < 5; i++) await unsettled(name, url, topic, group)
      expect(closed).toBe(false)
      done.open()
      await closing
      expect(finished.sort()).toEqual(['done', 'fails'])
      expect(started.ids().sort()).toEqual(['done', 'fails'])

      // 'done' acked before close() resolved; 'fails' and 'queued' left for redelivery.
      await expect.poll(() => unsettled(name, url, topic, group), { timeout: 5_000 }).toBe(2)
      // Nothing settles them later on the closed subscriber's behalf.
      for (let i = 0; i < 5; i++) expect(await unsettled(name, url, topic, group)).toBe(2)

      const next = testBroker(name, url)
      open.push(next)
      const received = new Received()
      await next.subscriber.subscribe(topic, group, async (m) => received.record(m))
      await received.until(() => received.messages.length >= 2, 'the two left over')
      expect(received.ids().sort()).toEqual(['fails', 'queued'])
      // A later message of key 'a' comes after them: 'done' never does.
      await next.publisher.publish([{ id: 'after', topic, key: 'a', payload: '', headers: {} }])
      await received.until(() => received.ids().includes('after'), 'the later message')
      expect(received.ids().filter((id) => id === 'done')).toEqual([])
      await expect.poll(() => unsettled(name, url, topic, group), { timeout: 5_000 }).toBe(0)
      expect(unhandled).toEqual([])
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })
})
