// withDeliveryLimit against every real adapter (NATS, RabbitMQ, Redis, the SQL queue on SQLite
// and PostgreSQL): a poison message runs exactly maxDeliveries times, is dead-lettered once and
// acknowledged, and its key's later message then runs; a dead-letter hook that fails leaves the
// message to be redelivered. Redeliveries come after the adapters' small test retryDelayMs.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterAll, describe, expect, it } from 'vitest'
import {
  type Broker,
  createRabbitMqBroker,
  type DeadLetteredEvent,
  DeliveryLimitError,
  type IncomingMessage,
  withDeliveryLimit,
} from '../../src/brokers/index.js'
import { createSqlQueue } from '../../src/brokers/sql-queue.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { dbTargets, type OutboxDb } from '../outbox/support.js'
import { brokerUrl } from '../support/brokers.js'
import { recordOtelCounters } from '../support/otel-counters.js'
import { Received, unique } from './conformance.js'
import { refusal } from './support.js'
import { testBroker, testTuning } from './targets.js'

interface ErrorEvent {
  readonly error: unknown
  readonly phase: string
  readonly message?: IncomingMessage | undefined
}

interface Target {
  readonly name: string
  open(onError: (event: ErrorEvent) => void): Promise<Broker>
}

const databases: OutboxDb[] = []

const targets: Target[] = [
  ...(['nats', 'rabbitmq', 'redis'] as const).map(
    (name): Target => ({
      name,
      open: async (onError) => testBroker(name, await brokerUrl(name), { onError }),
    }),
  ),
  {
    // A classic queue knows only a redelivered flag: the count comes from the subscription's
    // own retries, which is where a poison message runs.
    name: 'rabbitmq classic queue',
    open: async (onError) =>
      createRabbitMqBroker({
        ...testTuning,
        url: await brokerUrl('rabbitmq'),
        queueType: 'classic',
        onError,
      }),
  },
  ...dbTargets.map(
    (db): Target => ({
      name: `sql queue on ${db.dialect}`,
      open: async (onError) => {
        const t = await db.open('delivery_limit')
        databases.push(t)
        return createSqlQueue(t.db, {
          pollIntervalMs: 2,
          maxPollIntervalMs: 20,
          retryDelayMs: 50,
          onError,
        })
      },
    }),
  ),
]

// Before any dead letter: the counter is created on first use.
const counted = recordOtelCounters()
const deadLetters = (topic: string): number[] =>
  counted
    .filter((r) => r.name === 'breakwater.broker.dead_letters' && r.attributes?.topic === topic)
    .map((r) => r.value)

const deadLettered: DeadLetteredEvent[] = []
const onDeadLettered = (event: unknown): void => {
  deadLettered.push(event as DeadLetteredEvent)
}
subscribe('breakwater:broker:dead-lettered', onDeadLettered)

afterAll(async () => {
  unsubscribe('breakwater:broker:dead-lettered', onDeadLettered)
  for (const t of databases) await t.close()
})

describe('withDeliveryLimit options', () => {
  const handler = async (): Promise<void> => {}
  it('refuses an unknown key, a limit that is no integer from 1, and a hook that is no function', () => {
    expect(
      refusal(() =>
        withDeliveryLimit(handler, {
          maxDeliveries: 3,
          onDeadLetter: () => {},
          maxDelivery: 3,
        } as never),
      ).option,
    ).toBe('deliveryLimit.maxDelivery')
    for (const maxDeliveries of [0, 1.5, -1, Number.NaN, undefined]) {
      expect(
        refusal(() =>
          withDeliveryLimit(handler, { maxDeliveries, onDeadLetter: () => {} } as never),
        ).option,
      ).toBe('deliveryLimit.maxDeliveries')
    }
    expect(refusal(() => withDeliveryLimit(handler, { maxDeliveries: 3 } as never)).option).toBe(
      'deliveryLimit.onDeadLetter',
    )
  })
})

describe('withDeliveryLimit without a broker', () => {
  const message = (deliveryCount: number): IncomingMessage => ({
    id: 'm-1',
    topic: 't',
    key: 'k',
    payload: new Uint8Array(),
    headers: {},
    deliveryCount,
  })

  it('gives up a delivery already past the limit without running the handler', async () => {
    const runs: number[] = []
    const letters: unknown[] = []
    const handler = withDeliveryLimit(
      async (m) => {
        runs.push(m.deliveryCount)
      },
      { maxDeliveries: 3, onDeadLetter: (_m, error) => void letters.push(error) },
    )
    await handler(message(5))
    expect(runs).toEqual([])
    expect(letters).toHaveLength(1)
    expect(letters[0]).toBeInstanceOf(DeliveryLimitError)
    expect(letters[0]).toMatchObject({ messageId: 'm-1', deliveryCount: 5, maxDeliveries: 3 })
  })

  it('never gives up a message whose count is unknown (no whole number from 1)', async () => {
    const letters: unknown[] = []
    const handler = withDeliveryLimit(
      async () => {
        throw new Error('fails')
      },
      { maxDeliveries: 1, onDeadLetter: (_m, error) => void letters.push(error) },
    )
    await expect(handler(message(0))).rejects.toThrow('fails')
    await expect(handler(message(Number.NaN))).rejects.toThrow('fails')
    expect(letters).toEqual([])
    await expect(handler(message(1))).resolves.toBeUndefined()
    expect(letters).toHaveLength(1)
  })
})

describe.each(targets)('withDeliveryLimit on $name', (target) => {
  const brokers: Broker[] = []
  afterAll(async () => {
    for (const broker of brokers) await broker.close()
  })

  async function run(onDeadLetter: (message: IncomingMessage, lastError: unknown) => void) {
    const errors: ErrorEvent[] = []
    const broker = await target.open((event) => errors.push(event))
    brokers.push(broker)
    const topic = unique('poison')
    const runs: number[] = []
    const handled = new Received()
    const handler = withDeliveryLimit(
      async (m) => {
        if (m.id !== `${topic}-poison`) {
          handled.record(m)
          return
        }
        runs.push(m.deliveryCount)
        throw new Error(`poison ${runs.length}`)
      },
      { maxDeliveries: 3, onDeadLetter },
    )
    await broker.subscriber.subscribe(topic, unique('g'), handler)
    await broker.publisher.publish(
      ['poison', 'next'].map((name) => ({
        id: `${topic}-${name}`,
        topic,
        key: 'k',
        payload: name,
        headers: {},
      })),
    )
    await handled.until(() => handled.messages.length >= 1, "the key's next message")
    return { topic, runs, errors, handled }
  }

  it('runs a poison message maxDeliveries times, dead-letters it once, then runs its key', async () => {
    const letters: Array<[IncomingMessage, unknown]> = []
    const { topic, runs, handled } = await run((message, lastError) => {
      letters.push([message, lastError])
    })

    expect(runs).toEqual([1, 2, 3])
    expect(letters.map(([m]) => [m.id, m.deliveryCount])).toEqual([[`${topic}-poison`, 3]])
    expect((letters[0]![1] as Error).message).toBe('poison 3')
    expect(handled.ids()).toEqual([`${topic}-next`])
    const event = deadLettered.find((e) => e.topic === topic)
    expect(event).toMatchObject({
      messageId: `${topic}-poison`,
      key: 'k',
      deliveryCount: 3,
      maxDeliveries: 3,
    })
    expect(deadLetters(topic)).toEqual([1])
  })

  it('leaves the message unacknowledged when onDeadLetter throws, and offers it again', async () => {
    const letters: Array<[IncomingMessage, unknown]> = []
    const { topic, runs, errors, handled } = await run((message, lastError) => {
      letters.push([message, lastError])
      if (letters.length === 1) throw new Error('dead-letter store down')
    })

    // The handler ran on its three deliveries only; the fourth went to the hook straight away.
    expect(runs).toEqual([1, 2, 3])
    expect(letters.map(([m]) => m.deliveryCount)).toEqual([3, 4])
    expect(letters.map(([, e]) => (e as Error).message)).toEqual(['poison 3', 'poison 3'])
    expect(handled.ids()).toEqual([`${topic}-next`])
    const failure = errors.find((e) => e.error instanceof DeliveryLimitError)
    expect(failure?.phase).toBe('handler')
    const error = failure?.error as DeliveryLimitError
    expect(BreakwaterError.is(error) && error.code).toBe('DELIVERY_LIMIT_REACHED')
    expect((error.cause as Error).message).toBe('dead-letter store down')
    expect(deadLettered.filter((e) => e.topic === topic)).toHaveLength(1)
    expect(deadLetters(topic)).toEqual([1])
  })
})
