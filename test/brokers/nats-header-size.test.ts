// JetStream refuses a message whose headers exceed 64 KiB (API error 10097). Read as an outage
// (BROKER_UNAVAILABLE, retryable), a relay retried that event for ever and stalled behind it;
// the same message can never be stored, so it is BROKER_REJECTED and charged to the event.
import { afterAll, describe, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

describe('NATS headers over 64 KiB', () => {
  it('fail publish with BROKER_REJECTED (not retryable)', async () => {
    const broker = createNatsBroker({ ...testTuning, url: await brokerUrl('nats') })
    try {
      const message = {
        id: unique('big-header'),
        topic: unique('nats-header-size'),
        key: 'k',
        payload: '{}',
        headers: { big: 'y'.repeat(70_000) },
      }
      const error = await rejectionOf(broker.publisher.publish([message]))
      expectBrokerError(error, 'BROKER_REJECTED', false)
    } finally {
      await broker.close()
    }
  })
})
