// Without an onError option, every subscriber error (a handler that failed, a message refused
// for good with nowhere to dead-letter it, a failed ack, a lost connection) went to a no-op:
// it left no trace at all. The default now writes it to stderr with console.error, as the
// idempotency adapters' onError default does, and every error is also published on the
// diagnostics channel `breakwater:broker:error`. An onError the application passes replaces
// the stderr line, and one that throws does not break the subscription. Real servers.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import {
  type Broker,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  type SubscriberErrorEvent,
} from '../../src/brokers/index.js'
import { createSqlQueue } from '../../src/brokers/sql-queue.js'
import { sqliteTarget } from '../outbox/support.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

const published: unknown[] = []
const onChannel = (message: unknown): void => {
  published.push(message)
}
subscribe('breakwater:broker:error', onChannel)
afterAll(() => unsubscribe('breakwater:broker:error', onChannel))
afterEach(() => {
  published.length = 0
  vi.restoreAllMocks()
})

type Options = { onError?: (event: SubscriberErrorEvent) => void }

async function serverBroker(name: BrokerName, options: Options): Promise<Broker> {
  const url = await brokerUrl(name)
  const common = { ...testTuning, url, ...options }
  if (name === 'nats') return createNatsBroker({ ...common, ackWaitMs: 1_000 })
  if (name === 'rabbitmq') return createRabbitMqBroker(common)
  return createRedisBroker({ ...common, visibilityTimeoutMs: 1_000, blockMs: 1_000 })
}

const sqlite = sqliteTarget
const makers: Array<
  [string, (options: Options) => Promise<{ broker: Broker; done(): Promise<void> }>]
> = [
  ...(['nats', 'rabbitmq', 'redis'] as const).map(
    (name) =>
      [
        name,
        async (options: Options) => {
          const broker = await serverBroker(name, options)
          return { broker, done: () => broker.close() }
        },
      ] as [string, (options: Options) => Promise<{ broker: Broker; done(): Promise<void> }>],
  ),
  [
    'sql-queue',
    async (options: Options) => {
      const db = await sqlite.open(unique('default-on-error'))
      const broker = createSqlQueue(db.db, {
        pollIntervalMs: 2,
        maxPollIntervalMs: 20,
        retryDelayMs: 50,
        ...options,
      })
      return {
        broker,
        async done() {
          await broker.close()
          await db.close()
        },
      }
    },
  ],
]

/** Publishes one message whose handler fails on its first delivery, and waits for the second. */
async function failOnce(broker: Broker): Promise<string> {
  const topic = unique('on-error')
  const received = new Received()
  let calls = 0
  await broker.subscriber.subscribe(topic, unique('g'), async (m) => {
    if (++calls === 1) throw new Error('handler failed on purpose')
    received.record(m)
  })
  await broker.publisher.publish([{ id: 'one', topic, key: 'k', payload: 'p', headers: {} }])
  await received.until(() => received.messages.length >= 1, 'the redelivered message')
  return topic
}

describe.each(makers)('%s subscriber errors', (_name, make) => {
  it('are written to stderr and published on breakwater:broker:error without onError', async () => {
    const lines: unknown[][] = []
    vi.spyOn(console, 'error').mockImplementation((...args: unknown[]) => {
      lines.push(args)
    })
    const { broker, done } = await make({})
    try {
      const topic = await failOnce(broker)
      const line = lines.find((args) => String(args[0]).includes('handler'))
      expect(line, JSON.stringify(lines.map((args) => String(args[0])))).toBeDefined()
      expect(String(line?.[0])).toContain(JSON.stringify(topic))
      expect(String(line?.[0])).not.toContain('\n')
      expect((line?.[1] as Error | undefined)?.message).toBe('handler failed on purpose')
      const event = published.find(
        (m) => (m as SubscriberErrorEvent).topic === topic,
      ) as SubscriberErrorEvent & { broker: string }
      expect(event.phase).toBe('handler')
      expect(event.message?.id).toBe('one')
      expect((event.error as Error).message).toBe('handler failed on purpose')
    } finally {
      await done()
    }
  })

  it('go to onError instead, and one that throws does not stop the subscription', async () => {
    const error = vi.spyOn(console, 'error').mockImplementation(() => {})
    const seen: SubscriberErrorEvent[] = []
    const { broker, done } = await make({
      onError: (event) => {
        seen.push(event)
        throw new Error('listener failed')
      },
    })
    try {
      const topic = await failOnce(broker)
      expect(seen.filter((e) => e.topic === topic).map((e) => e.phase)).toContain('handler')
      // Still published for tracers, not written to stderr.
      expect(published.some((m) => (m as SubscriberErrorEvent).topic === topic)).toBe(true)
      expect(error).not.toHaveBeenCalled()
    } finally {
      await done()
    }
  })
})
