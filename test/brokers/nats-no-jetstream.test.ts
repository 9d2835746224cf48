// A nats-server started without JetStream (no `-js`, no jetstream block in its config) answers
// every JetStream API request with "no responders", which reads like an unroutable topic or an
// outage: a relay would retry it forever. It is a misconfiguration no retry fixes. This file
// starts its own core-NATS-only server.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type StartedBroker, startNats } from '../../scripts/lib/brokers.mjs'
import { createNatsBroker } from '../../src/brokers/index.js'
import { unique } from './conformance.js'
import { expectBrokerError, publishAndSubscribeFailures } from './support.js'

describe('nats without JetStream', () => {
  let nats: StartedBroker
  beforeAll(async () => {
    nats = await startNats({ jetstream: false, stopOnExit: true })
  })
  afterAll(async () => {
    await nats?.stop()
  })

  it('fails publish and subscribe with a non-retryable BROKER_MISCONFIGURED naming the problem', async () => {
    for (const createStreams of [true, false]) {
      const broker = createNatsBroker({ url: nats.url, connectTimeoutMs: 5_000, createStreams })
      try {
        const failures = await publishAndSubscribeFailures(broker, unique('nojs'))
        for (const error of failures) {
          expectBrokerError(error, 'BROKER_MISCONFIGURED', false, String(error))
          expect(error.message).toMatch(/JetStream is not enabled on the server/)
        }
      } finally {
        await broker.close()
      }
    }
  })
})
