// `breakwater relay --rabbitmq-exchange / --rabbitmq-exchange-type / --nats-stream(-subjects)`:
// the relay publishes where consumers that open the broker with those settings read, as a real
// process against real RabbitMQ and NATS; bad values exit 2 naming the flag.
import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  type IncomingMessage,
} from '../../src/brokers/index.js'
import { createOutbox } from '../../src/outbox/index.js'
import { until } from '../outbox/support.js'
import { spawnCli } from '../process/cli-process.js'
import { brokerUrl } from '../support/brokers.js'
import { migratedSqlite, runRelay as run } from './relay-support.js'

const outbox = createOutbox()
const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

describe('breakwater relay: broker placement flags, argument errors', () => {
  const cases: Array<[string[], string]> = [
    [
      ['--broker', 'sql:', '--rabbitmq-exchange', 'orders'],
      '--rabbitmq-exchange applies only to an amqp:// or amqps:// --broker',
    ],
    [
      ['--broker', 'nats://127.0.0.1:1', '--rabbitmq-exchange-type', 'topic'],
      '--rabbitmq-exchange-type applies only to an amqp:// or amqps:// --broker',
    ],
    [
      ['--broker', 'amqp://127.0.0.1:1', '--nats-stream', 'ORDERS'],
      '--nats-stream applies only to a nats:// or tls:// --broker',
    ],
    [
      ['--broker', 'amqp://127.0.0.1:1', '--rabbitmq-exchange-type', 'fanout'],
      '--rabbitmq-exchange-type must be "topic" or "direct", got "fanout"',
    ],
    [
      ['--broker', 'nats://127.0.0.1:1', '--nats-stream', 'ORDERS'],
      '--nats-stream needs --nats-stream-subjects',
    ],
    [
      ['--broker', 'nats://127.0.0.1:1', '--nats-stream-subjects', 'orders.>'],
      '--nats-stream-subjects needs --nats-stream',
    ],
    [
      [
        '--broker',
        'nats://127.0.0.1:1',
        '--nats-stream',
        'ORDERS',
        '--nats-stream-subjects',
        'a,,b',
      ],
      '--nats-stream-subjects must be subjects separated by commas, none empty and without spaces, got "a,,b"',
    ],
  ]
  for (const [args, message] of cases) {
    it(`${args.join(' ')} exits 2: ${message}`, async () => {
      const result = await run(args)
      expect(result.code, result.all).toBe(2)
      expect(result.stderr).toContain(`breakwater relay: ${message}`)
    })
  }

  // The adapter's own checks, worded with the flag and the whole value.
  const refused: Array<[string[], string]> = [
    [
      ['--broker', 'amqp://127.0.0.1:1', '--rabbitmq-exchange', 'amq.topic'],
      '--rabbitmq-exchange: expected a non-empty name of at most 255 bytes not starting with "amq.", got "amq.topic"',
    ],
    [
      [
        '--broker',
        'nats://127.0.0.1:1',
        '--nats-stream',
        'orders.all',
        '--nats-stream-subjects',
        'orders.>',
      ],
      '--nats-stream: expected a name of [A-Za-z0-9_-], got "orders.all"',
    ],
  ]
  for (const [args, message] of refused) {
    it(`${args.join(' ')} exits 2: ${message}`, async () => {
      const { url } = await migratedSqlite('relay-broker-settings', cleanups)
      const result = await run(['--db', url, ...args])
      expect(result.code, result.all).toBe(2)
      expect(result.all).toContain(message)
    })
  }

  it('the help lists the flags', async () => {
    const result = await run(['--help'])
    for (const flag of [
      '--rabbitmq-exchange',
      '--rabbitmq-exchange-type',
      '--nats-stream',
      '--nats-stream-subjects',
    ])
      expect(result.stdout).toContain(flag)
  })
})

/** Runs a relay with `flags` until the consumer got every event of `topic`, then stops it. */
async function relayTo(
  brokerUrlText: string,
  flags: string[],
  topic: string,
  received: IncomingMessage[],
): Promise<void> {
  const { url: dbUrl, db } = await migratedSqlite('relay-broker-settings', cleanups)
  await db.transaction((tx) =>
    outbox.enqueue(
      tx,
      [0, 1, 2].map((seq) => ({
        aggregateType: 'order',
        aggregateId: 'o1',
        type: 'order-placed',
        topic,
        payload: { seq },
      })),
    ),
  )
  const relay = spawnCli(['relay', '--db', dbUrl, '--broker', brokerUrlText, ...flags])
  cleanups.push(() => relay.kill())
  await until(() => received.length >= 3, `the consumer to receive 3 events:\n${relay.stdout()}`)
  relay.child.kill('SIGTERM')
  expect((await relay.exited).code, relay.stderr()).toBe(0)
  const seqs = received.map(
    (m) => (JSON.parse(new TextDecoder().decode(m.payload)) as { seq: number }).seq,
  )
  expect(seqs).toEqual([0, 1, 2])
}

describe('breakwater relay: publishing where the consumers read', () => {
  it('--rabbitmq-exchange and --rabbitmq-exchange-type reach a consumer of that exchange', async () => {
    const url = await brokerUrl('rabbitmq')
    const run = `x${randomUUID().slice(0, 8)}`
    const consumer = createRabbitMqBroker({
      url,
      exchange: `${run}-events`,
      exchangeType: 'direct',
    })
    cleanups.push(() => consumer.close())
    const received: IncomingMessage[] = []
    await consumer.subscriber.subscribe(`${run}.orders`, 'billing', async (m) => {
      received.push(m)
    })
    await relayTo(
      url,
      ['--rabbitmq-exchange', `${run}-events`, '--rabbitmq-exchange-type', 'direct'],
      `${run}.orders`,
      received,
    )
  })

  it('--nats-stream and --nats-stream-subjects publish into a consumer’s shared stream', async () => {
    const url = await brokerUrl('nats')
    const run = `n${randomUUID().slice(0, 8)}`
    const stream = { name: `${run}_ALL`, subjects: [`${run}.>`] }
    const consumer = createNatsBroker({ url, stream })
    cleanups.push(() => consumer.close())
    const received: IncomingMessage[] = []
    await consumer.subscriber.subscribe(`${run}.orders`, 'billing', async (m) => {
      received.push(m)
    })
    await relayTo(
      url,
      ['--nats-stream', stream.name, '--nats-stream-subjects', stream.subjects.join(',')],
      `${run}.orders`,
      received,
    )
  })
})
