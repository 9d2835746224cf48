// The adapters under test, tuned so redeliveries and reconnects happen in test time: failed
// messages return after 50 ms, a crashed subscriber's after about a second. Shared by the test
// files and by the child-process fixture, which must use the same settings.

import type { BrokerName } from '../../scripts/lib/brokers.mjs'
import {
  type Broker,
  type BrokerCommonOptions,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
} from '../../src/brokers/index.js'

/** Subscriber settings a test may change. */
export interface TestOverrides {
  readonly concurrency?: number
  readonly prefetch?: number
  readonly onError?: BrokerCommonOptions['onError']
  readonly closeTimeoutMs?: number
}

/** The reconnect, retry and timeout tuning every test adapter uses. */
export const testTuning = {
  retryDelayMs: 50,
  reconnectDelayMs: 50,
  maxReconnectDelayMs: 500,
  connectTimeoutMs: 2_000,
  publishTimeoutMs: 5_000,
} as const

/** Makes the `name` adapter for `url` with test tuning. */
export function testBroker(name: BrokerName, url: string, overrides: TestOverrides = {}): Broker {
  if (name === 'nats')
    return createNatsBroker({ ...testTuning, ...overrides, url, ackWaitMs: 1_000 })
  if (name === 'rabbitmq') return createRabbitMqBroker({ ...testTuning, ...overrides, url })
  return createRedisBroker({
    ...testTuning,
    ...overrides,
    url,
    visibilityTimeoutMs: 1_000,
    claimIntervalMs: 100,
    blockMs: 1_000,
  })
}
