// A message larger than the NATS server's max_payload (1 MiB by default) is refused by nats.js
// as "MAX_PAYLOAD_EXCEEDED", which the adapter passed on as 'publish failed: ...' naming
// neither the message nor the sizes: in a relay's log or an event's last error, nothing said
// which event it was or how far over the limit. The refusal now names the message's id and
// subject, its size (payload and headers, as the server counts them) and the server's
// max_payload, and nothing of the batch is sent.
import { afterAll, describe, expect, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

// nats-server's default max_payload, which the test server keeps.
const maxPayload = 1024 * 1024

describe('NATS message over max_payload', () => {
  it('fails publish with BROKER_REJECTED naming the message, its size and max_payload; sends none of the batch', async () => {
    const broker = createNatsBroker({ ...testTuning, url: await brokerUrl('nats') })
    const topic = unique('nats-max-payload')
    try {
      const small = { id: unique('small'), topic, key: 'k', payload: '{}', headers: {} }
      const big = {
        id: unique('big'),
        topic,
        key: 'k',
        payload: 'x'.repeat(maxPayload),
        headers: { h: 'v' },
      }
      const error = await rejectionOf(broker.publisher.publish([small, big]))
      expectBrokerError(error, 'BROKER_REJECTED', false)
      expect(error.message).toContain(JSON.stringify(big.id))
      expect(error.message).toContain(JSON.stringify(topic))
      expect(error.message).toContain(`max_payload of ${maxPayload} bytes`)
      // The payload alone is max_payload bytes; with its headers it is over.
      const size = Number(/is (\d+) bytes/.exec(error.message)?.[1])
      expect(size).toBeGreaterThan(maxPayload)
      expect(error.message).toContain(`payload ${maxPayload}`)

      // Nothing of the batch was sent: the small message, first in it, was not stored.
      const received: string[] = []
      const subscription = await broker.subscriber.subscribe(topic, 'g', async (m) => {
        received.push(m.id)
      })
      try {
        await broker.publisher.publish([{ ...small, id: unique('after') }])
        await expect.poll(() => received.length, { timeout: 10_000 }).toBe(1)
        expect(received).not.toContain(small.id)
      } finally {
        await subscription.close()
      }
    } finally {
      await broker.close()
    }
  })
})
