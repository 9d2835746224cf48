// An empty message id: RabbitMQ published it (and its subscriber then refused the message as
// having no messageId), NATS and Redis delivered it under a substitute id, while the SQL queue
// refuses it. An id is what an inbox dedupes on, so every adapter refuses it before sending.
import { afterAll, describe, expect, it } from 'vitest'
import type { Broker, OutgoingMessage } from '../../src/brokers/index.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

describe.each(['nats', 'rabbitmq', 'redis'] as const)(
  '%s: an empty message id',
  (name: BrokerName) => {
    let broker: Broker | undefined
    afterAll(async () => {
      await broker?.close()
    })

    it('is refused with BROKER_REJECTED naming the message, and nothing of the batch is sent', async () => {
      broker = testBroker(name, await brokerUrl(name))
      const topic = unique('empty-id')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      const good: OutgoingMessage = { id: 'good', topic, key: 'k', payload: '{}', headers: {} }
      const error = await rejectionOf(broker.publisher.publish([good, { ...good, id: '' }]))
      expectBrokerError(error, 'BROKER_REJECTED', false)
      expect(error.message).toMatch(/messages\[1\]\.id/)
      // The batch after it goes through, and only that one arrives.
      await broker.publisher.publish([{ ...good, id: 'after' }])
      await received.until(() => received.messages.length >= 1, 'the next batch')
      expect(received.messages.map((m) => m.id)).toEqual(['after'])
    })
  },
)
