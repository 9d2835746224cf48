// nats.js refuses a header value holding CR or LF with "invalid header value - \r and \n are
// not allowed", and the adapter's BROKER_REJECTED said only `messages[0] refused: ...`: a relay
// that dead-lettered an outbox row for it (one written before the outbox refused such event
// fields) recorded no word of which header it was. It now names the header.
import { afterAll, describe, expect, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

describe('a NATS header value with a line break', () => {
  it('is refused with BROKER_REJECTED naming the header', async () => {
    const broker = createNatsBroker({ ...testTuning, url: await brokerUrl('nats') })
    try {
      const message = {
        id: unique('line-break'),
        topic: unique('nats-line-break'),
        key: 'k',
        payload: '{}',
        headers: { 'event-type': 'order.placed', 'correlation-id': 'corr\n1' },
      }
      const error = await rejectionOf(broker.publisher.publish([message]))
      expectBrokerError(error, 'BROKER_REJECTED', false)
      expect(error.message).toContain('messages[0].headers.correlation-id')
    } finally {
      await broker.close()
    }
  })
})
