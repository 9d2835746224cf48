// rediss:// to a plain Redis port: the adapter asks the port ioredis connects to a plain-text
// PING once half of connectTimeoutMs has passed, and a Redis answer makes it BROKER_MISCONFIGURED
// (tls.test.ts). That port must be the one ioredis actually connects to, which a URL query can
// set (`?port=`, taken when the URL names none): the check asked the URL's port or 6379, so it
// missed the plain Redis there (an outage retried for ever), or asked another server on 6379.
// The Redis is real; time is a ManualClock.
import { afterAll, describe, expect, it } from 'vitest'
import { createRedisBroker } from '../../src/brokers/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { makeBatch, unique } from './conformance.js'
import { expectBrokerError } from './support.js'

afterAll(async () => {
  await stopOwnBrokers()
})

describe('redis rediss:// with the port in the URL query', () => {
  it('asks the port ioredis connects to, and fails as BROKER_MISCONFIGURED on a plain Redis', async () => {
    const plain = new URL(await brokerUrl('redis'))
    const url = `rediss://${plain.hostname}/?port=${plain.port}`
    const clock = new ManualClock(0)
    const broker = createRedisBroker({ url, clock, connectTimeoutMs: 4_000 })
    try {
      let outcome: { error: unknown } | undefined
      void broker.publisher.publish(makeBatch(unique('tls'), 1, 1)).then(
        () => {
          outcome = { error: undefined }
        },
        (error: unknown) => {
          outcome = { error }
        },
      )
      // The connect's timers are armed: the check's wait (half) and the connect bound.
      await until(() => clock.nextTimerAt() !== undefined, 'the connect to start')
      await clock.advance(2_000)
      // Not past connectTimeoutMs: only the plain-text answer can settle it now.
      await until(() => outcome !== undefined, 'the plain-text check to answer', 5_000)
      const error = outcome?.error
      expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
      expect(error.message).toMatch(/answers plain Redis on this port/)
    } finally {
      await broker.close()
    }
  })
})
