// A subscriber's close() (and the broker's) while one of its subscriptions is already closing,
// its handler still running: Subscriber.close() promises to close every subscription, and a
// subscription's close waits for its running handlers. The subscription left the subscriber's
// set as its close began, so the subscriber's close() resolved at once, before the handler
// finished and its ack was sent: a shutdown that closed one component's subscription and then
// the broker, and exited, cut the handler off mid-way.
import { afterAll, describe, expect, it } from 'vitest'
import type { Broker } from '../../src/brokers/index.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { gate } from '../support/gate.js'
import { makeBatch, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

/** Lets every pending promise job and I/O callback run once. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

describe.each(['nats', 'rabbitmq', 'redis'] as const)(
  '%s: close() while a subscription is closing',
  (name: BrokerName) => {
    let broker: Broker | undefined
    afterAll(async () => {
      await broker?.close()
    })

    it("waits for that subscription's running handler, as its own close does", async () => {
      broker = testBroker(name, await brokerUrl(name))
      const topic = unique('closing')
      const started = gate()
      const release = gate()
      const events: string[] = []
      const subscription = await broker.subscriber.subscribe(topic, unique('g'), async () => {
        started.open()
        await release.promise
        events.push('handler finished')
      })
      await broker.publisher.publish(makeBatch(topic, 1, 1))
      await started.promise

      const own = subscription.close().then(() => events.push('subscription closed'))
      const again = subscription.close().then(() => events.push('subscription closed again'))
      const all = broker.subscriber.close().then(() => events.push('subscriber closed'))
      const whole = broker.close().then(() => events.push('broker closed'))
      for (let i = 0; i < 5; i++) await turn()
      expect(events).toEqual([])

      release.open()
      await Promise.all([own, again, all, whole])
      expect(events[0]).toBe('handler finished')
      expect(events.slice(1).sort()).toEqual([
        'broker closed',
        'subscriber closed',
        'subscription closed',
        'subscription closed again',
      ])
    })
  },
)
