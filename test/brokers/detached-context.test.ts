// A subscription outlives the code that made it: an application that subscribes inside
// withDeadline (a bounded startup, a request handler that set one) or inside its own
// AsyncLocalStorage scope (a request's store) must not have every later delivery's handler run
// under that context, or a handler using breakwater's HTTP client or a retry/timeout policy
// would fail with the long-expired deadline forever after. The deadline runs on a manual
// clock (expired by advancing it, no real time); each broker is the real one the test setup
// starts.
import { AsyncLocalStorage } from 'node:async_hooks'
import { afterAll, describe, expect, it } from 'vitest'
import type { BrokerName } from '../../scripts/lib/brokers.mjs'
import { createSqlQueue } from '../../src/brokers/sql-queue.js'
import type { Broker, IncomingMessage } from '../../src/brokers/types.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets } from '../outbox/support.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

/** An application's own per-request store, as a web framework would keep it. */
const request = new AsyncLocalStorage<string>()

interface Seen {
  readonly id: string
  readonly deadline: unknown
  readonly request: string | undefined
}

/**
 * Subscribes inside a request scope and a 1 s deadline, lets the deadline pass, then publishes
 * and returns what the handler saw of its context for that message.
 */
async function contextOfLaterDelivery(broker: Broker, topic: string): Promise<Seen> {
  const clock = new ManualClock(1_000)
  const seen: Seen[] = []
  const handler = async (m: IncomingMessage): Promise<void> => {
    seen.push({ id: m.id, deadline: currentDeadline(), request: request.getStore() })
  }
  const subscription = await request.run('request-1', () =>
    withDeadline(1_000, () => broker.subscriber.subscribe(topic, unique('g'), handler), {
      clock,
    }),
  )
  try {
    await clock.advance(2_000)
    await broker.publisher.publish([
      { id: 'after-deadline', topic, key: 'k', payload: 'x', headers: {} },
    ])
    await until(() => seen.length > 0, 'the delivery')
    return seen[0]!
  } finally {
    await subscription.close()
  }
}

describe.each<BrokerName>(['nats', 'rabbitmq', 'redis'])('%s subscriber context', (name) => {
  it("runs handlers in its own context, not the subscriber's caller's", async () => {
    const broker = testBroker(name, await brokerUrl(name))
    try {
      const seen = await contextOfLaterDelivery(broker, unique('detached'))
      expect(seen).toEqual({ id: 'after-deadline', deadline: undefined, request: undefined })
    } finally {
      await broker.close()
    }
  })
})

describe.each(dbTargets)('SQL queue subscriber context on $dialect', (target) => {
  it("runs handlers in its own context, not the subscriber's caller's", async () => {
    const t = await target.open('detached_context')
    const queue = createSqlQueue(t.db, { pollIntervalMs: 2, maxPollIntervalMs: 20 })
    try {
      const seen = await contextOfLaterDelivery(queue, 'detached')
      expect(seen).toEqual({ id: 'after-deadline', deadline: undefined, request: undefined })
    } finally {
      await queue.close()
      await t.close()
    }
  })
})
