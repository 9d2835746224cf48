// Another producer's messageId that is not UTF-8: amqplib decodes a short string as UTF-8 and
// keeps no bytes, so `62 69 6e ff fe` and `62 69 6e fe ff` both arrived as "bin\uFFFD\uFFFD" and
// an inbox acked the second as a duplicate of the first without running its handler. RabbitMQ has
// no stable id of its own to stand in (NATS and Redis give the stream position), so such a
// message is refused like one without a messageId.
import type { ChannelModel } from 'amqplib'
import { afterAll, expect, it } from 'vitest'
import { createRabbitMqBroker, type SubscriberErrorEvent } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { makeBatch, Received, unique } from './conformance.js'

afterAll(stopOwnBrokers)

const closers: Array<() => Promise<void>> = []
afterAll(async () => {
  for (const close of closers) await close()
})

// amqplib only writes strings as UTF-8: placeholders of the same length are swapped for the raw
// bytes on this connection's socket.
const swaps: ReadonlyArray<readonly [Buffer, Buffer]> = [
  [Buffer.from('@@ID1'), Buffer.from([0x62, 0x69, 0x6e, 0xff, 0xfe])],
  [Buffer.from('@@ID2'), Buffer.from([0x62, 0x69, 0x6e, 0xfe, 0xff])],
]

function rewriteIds(model: ChannelModel): void {
  const stream = (model as unknown as { connection: { stream: NodeJS.WritableStream } }).connection
    .stream
  const write = stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean
  stream.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (Buffer.isBuffer(chunk)) {
      for (const [placeholder, bytes] of swaps) {
        for (let i = chunk.indexOf(placeholder); i >= 0; i = chunk.indexOf(placeholder)) {
          bytes.copy(chunk, i)
        }
      }
    }
    return write(chunk, ...rest)
  }) as typeof stream.write
}

it('refuses messages whose messageId is not UTF-8 (or holds U+FFFD), reporting each, instead of delivering them under one id', async () => {
  const url = await brokerUrl('rabbitmq')
  const errors: SubscriberErrorEvent[] = []
  const broker = createRabbitMqBroker({ url, retryDelayMs: 50, onError: (e) => errors.push(e) })
  closers.push(() => broker.close())
  const topic = unique('binary-id')
  const group = unique('g')
  const received = new Received()
  await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))

  const amqp = await import('amqplib')
  const model = await amqp.connect(url)
  closers.push(() => model.close())
  rewriteIds(model)
  const channel = await model.createConfirmChannel()
  // Two ids that are not UTF-8, and one that is but holds U+FFFD itself: amqplib hands the
  // subscriber the same kind of text for both, so they cannot be told apart.
  for (const messageId of ['@@ID1', '@@ID2', 'bin\uFFFD']) {
    channel.publish('breakwater', topic, Buffer.from(`{"id":"${messageId}"}`), {
      persistent: true,
      messageId,
      headers: { 'breakwater-key': 'k' },
    })
  }
  await channel.waitForConfirms()
  await broker.publisher.publish(makeBatch(topic, 1, 1, 'ours'))
  await received.until(() => received.ids().includes('ours-0'), 'the message with a valid id')

  expect(received.ids()).toEqual(['ours-0'])
  const refused = errors.filter((e) => e.phase === 'refused')
  expect(refused).toHaveLength(3)
  for (const event of refused) {
    expect(BreakwaterError.is(event.error)).toBe(true)
    expect((event.error as BreakwaterError).code).toBe('BROKER_REJECTED')
    expect((event.error as Error).message).toMatch(/messageId .*UTF-8/)
    expect(event.message?.topic).toBe(topic)
  }
  // Rejected without requeueing, not handed back over and over.
  const { messageCount } = await channel.checkQueue(`${topic}.${group}`)
  expect(messageCount).toBe(0)
})

it('refuses to publish a message id holding U+FFFD, which its subscriber would refuse, before sending any of the batch', async () => {
  const broker = createRabbitMqBroker({ url: await brokerUrl('rabbitmq'), retryDelayMs: 50 })
  closers.push(() => broker.close())
  const [good] = makeBatch(unique('fffd-id'), 1, 1)
  const error = await broker.publisher.publish([good!, { ...good!, id: 'bin\uFFFD' }]).then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(BreakwaterError.is(error)).toBe(true)
  expect((error as BreakwaterError).code).toBe('BROKER_REJECTED')
  expect((error as Error).message).toMatch(/messages\[1\]\.id holds U\+FFFD/)
})
