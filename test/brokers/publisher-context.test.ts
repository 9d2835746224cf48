// A publisher opens its connection on the first publish, and keeps it for every later one: its
// connection-level work (reading the socket, acks and confirms, pings, reconnects, status
// watchers) must run in breakwater's own async context, not in the context of whichever
// caller happened to publish first (a request's AsyncLocalStorage store, a withDeadline). Else
// that first request's store stays reachable for the connection's lifetime, and every later
// publish's socket work runs, as far as an application's tracing or store can tell, inside
// that long-finished request. Each broker is the real one the test setup starts.
import { AsyncLocalStorage, createHook } from 'node:async_hooks'
import { afterAll, describe, expect, it } from 'vitest'
import type { BrokerName } from '../../scripts/lib/brokers.mjs'
import type { Broker } from '../../src/brokers/types.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

/** An application's own per-request store, as a web framework would keep it. */
const request = new AsyncLocalStorage<string>()

/**
 * Publishes once inside request-1's scope (and a deadline), then once outside any scope, and
 * returns the request stores under which async work was started during the second publish.
 */
async function storesSeenByALaterPublish(broker: Broker, topic: string): Promise<string[]> {
  const send = (id: string) =>
    broker.publisher.publish([{ id, topic, key: 'k', payload: 'x', headers: {} }])
  await request.run('request-1', () =>
    withDeadline(60_000, () => send('first'), { clock: new ManualClock(0) }),
  )
  const seen = new Set<string>()
  const hook = createHook({
    init() {
      const store = request.getStore()
      if (store !== undefined) seen.add(store)
    },
  })
  hook.enable()
  try {
    await send('second')
  } finally {
    hook.disable()
  }
  return [...seen]
}

describe.each<BrokerName>(['nats', 'rabbitmq', 'redis'])('%s publisher context', (name) => {
  it("runs its connection's work in its own context, not its first caller's", async () => {
    const broker = testBroker(name, await brokerUrl(name))
    const topic = unique('pubctx')
    // Subscribed first (outside any scope), so the topic has a stream or a bound queue.
    const subscription = await broker.subscriber.subscribe(topic, unique('g'), async () => {})
    try {
      expect(await storesSeenByALaterPublish(broker, topic)).toEqual([])
    } finally {
      await subscription.close()
      await broker.close()
    }
  })
})
