// close() while subscribe() connects, with a handler that never settles, on RabbitMQ and Redis
// against their real servers: the subscribe()'s own clean-up must give up on the handler after
// closeTimeoutMs, as close() does, instead of holding subscribe() for ever. A handler can start
// there because the clean-up stops receiving only after connecting: RabbitMQ delivers what the
// queue holds between consume-ok and cancel-ok, and Redis reads the consumer's own pending
// entries before its read loop looks at the stop. (NATS stops its consumer before any delivery
// can reach the dispatcher, so no handler runs there.) No clock is driven: closeTimeoutMs is tiny.
import { afterAll, describe, expect, it } from 'vitest'
import {
  type Broker,
  createRedisBroker,
  type OutgoingMessage,
  SubscriptionCloseTimeoutError,
} from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker, testTuning } from './targets.js'

afterAll(stopOwnBrokers)

/**
 * Opens the adapter with `closeTimeoutMs`. Redis subscribers share one fixed consumer name, so
 * the message a closed one left pending is read back first by the next (its own pending entry).
 */
function opener(name: BrokerName, url: string, consumer: string) {
  return (closeTimeoutMs: number): Broker =>
    name === 'redis'
      ? createRedisBroker({
          ...testTuning,
          url,
          closeTimeoutMs,
          consumerName: consumer,
          visibilityTimeoutMs: 60_000,
          onError: () => {},
        })
      : testBroker(name, url, { closeTimeoutMs, onError: () => {} })
}

describe.each(['rabbitmq', 'redis'] as const)(
  '%s: close() while subscribe() connects, with a handler that never settles',
  (name) => {
    const brokers: Broker[] = []
    afterAll(async () => {
      for (const broker of brokers) await broker.close().catch(() => {})
    })

    it('rejects the subscribe as closed after closeTimeoutMs and leaves the message unacknowledged', async () => {
      const open = opener(name, await brokerUrl(name), unique('consumer'))
      const topic = unique('connecting')
      const group = unique('g')
      let release!: () => void
      const stuck = new Promise<void>((resolve) => {
        release = resolve
      })
      const stuckHandler = (started: Received) => async (m: Parameters<Received['record']>[0]) => {
        started.record(m)
        await stuck
      }

      // A first subscription takes the message and gives it up unfinished (closeTimeoutMs 0):
      // it stays in the queue, or pending for the consumer name.
      const first = open(0)
      brokers.push(first)
      const firstStarted = new Received()
      await first.subscriber.subscribe(topic, group, stuckHandler(firstStarted))
      const message: OutgoingMessage = {
        id: `${topic}-m`,
        topic,
        key: 'k',
        payload: '',
        headers: {},
      }
      await first.publisher.publish([message])
      await firstStarted.until(() => firstStarted.messages.length >= 1, 'the first handler')
      await expect(first.close()).rejects.toBeInstanceOf(SubscriptionCloseTimeoutError)

      // close() runs while subscribe() is still connecting; connecting hands the message to a
      // handler that never settles.
      const racing = open(20)
      brokers.push(racing)
      const started = new Received()
      const subscribing = racing.subscriber.subscribe(topic, group, stuckHandler(started))
      await racing.subscriber.close()
      let outcome: unknown = 'still waiting'
      let settled = false
      void subscribing.then(
        () => {
          settled = true
          outcome = 'resolved'
        },
        (error: unknown) => {
          settled = true
          outcome = error
        },
      )
      // Without the bound this waits for the handler, i.e. for ever.
      await started.until(() => settled, 'subscribe() to give up on its handler', 5_000)
      expect(started.ids()).toEqual([message.id])
      expect(BreakwaterError.is(outcome) && outcome.code, String(outcome)).toBe(
        'BROKER_UNAVAILABLE',
      )
      const cause = (outcome as Error).cause
      expect(cause).toBeInstanceOf(SubscriptionCloseTimeoutError)
      expect(cause).toMatchObject({ topic, group, timeoutMs: 20, unfinished: 1 })

      // It finishes late: nothing may acknowledge it now, so the next subscriber gets it.
      release()
      const next = open(1_000)
      brokers.push(next)
      const received = new Received()
      await next.subscriber.subscribe(topic, group, async (m) => received.record(m))
      await received.until(() => received.messages.length >= 1, 'the message again')
      expect(received.ids()).toEqual([message.id])
    })
  },
)
