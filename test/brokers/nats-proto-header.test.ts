// A header named __proto__ (the outbox keeps one, from JSON): the NATS subscriber assigned it
// into a plain object, where that name sets the prototype instead, so the header was lost
// without a word. It is delivered as an ordinary header now, as the Redis adapter does.
import { afterAll, describe, expect, it } from 'vitest'
import type { OutgoingMessage } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

describe('NATS header named __proto__', () => {
  it('is delivered like any other header', async () => {
    const broker = testBroker('nats', await brokerUrl('nats'))
    try {
      const topic = unique('nats-proto')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      // Parsed, as the outbox reads stored headers: a literal would set the prototype.
      const headers = JSON.parse('{"__proto__":"p","other":"o"}') as Record<string, string>
      const message: OutgoingMessage = { id: unique('m'), topic, key: 'k', payload: '{}', headers }
      await broker.publisher.publish([message])
      await received.until(() => received.messages.length >= 1, 'the message')
      const delivered = received.messages[0]!.headers
      expect(Object.keys(delivered).sort()).toEqual(['__proto__', 'other'])
      expect(Object.getOwnPropertyDescriptor(delivered, '__proto__')?.value).toBe('p')
    } finally {
      await broker.close()
    }
  })
})
