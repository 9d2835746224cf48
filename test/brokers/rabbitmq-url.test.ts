// A RabbitMQ URL's query is read by amqplib when it connects: a value it cannot use threw a
// TypeError or RangeError there, which read as a refused message (BROKER_REJECTED), so a relay
// dead-lettered every event for a typo in its URL. The query is checked at construction now,
// as the NATS and Redis URLs are, and a setting amqplib still refuses while connecting is the
// adapter's setup at fault (BROKER_MISCONFIGURED), never the message's.
import { afterAll, describe, expect, it } from 'vitest'
import { createRabbitMqBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { makeBatch, unique } from './conformance.js'
import { expectBrokerError, refusal, rejectionOf, roundTrip } from './support.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

const base = 'amqp://guest:guest@127.0.0.1:5672'

/** The refusal of `base` with `query`, checked to name the URL option. */
function refusedQuery(query: string): Error {
  const error = refusal(() => createRabbitMqBroker({ url: `${base}?${query}` }))
  expect(error.option, query).toBe('rabbitmq.url')
  return error
}

describe('RabbitMQ URL query', () => {
  it('refuses a parameter amqplib does not read, naming it (a misspelt one was ignored)', () => {
    for (const name of ['foo', 'heartbeats', 'frame_max', 'timeout', 'Heartbeat']) {
      expect(refusedQuery(`${name}=10`).message, name).toContain(`"${name}"`)
    }
  })

  it('refuses a value amqplib would throw on or misread when connecting, naming the parameter', () => {
    for (const query of [
      'heartbeat=ten',
      'heartbeat=-5',
      'heartbeat=',
      'heartbeat=10s',
      'heartbeat=65536',
      'frameMax=abc',
      'frameMax=1',
      'frameMax=4095',
      'frameMax=4294967296',
      'channelMax=x',
      'channelMax=65536',
      'channelMax=1.5',
      'maxFrameSize=100',
      'maxFrameSize=x',
      'locale=',
      `locale=${'x'.repeat(256)}`,
    ]) {
      expect(refusedQuery(query).message, query).toContain(`"${query.split('=')[0]}"`)
    }
  })

  it('refuses a parameter given twice (amqplib takes the first without a word)', () => {
    expect(refusedQuery('heartbeat=5&heartbeat=10').message).toContain('"heartbeat"')
  })

  it('refuses a fragment, which amqplib drops', () => {
    expect(refusal(() => createRabbitMqBroker({ url: `${base}#x` })).option).toBe('rabbitmq.url')
  })

  it('takes the parameters amqplib reads, with values it uses', () => {
    for (const query of [
      'heartbeat=0',
      'heartbeat=10',
      'heartbeat=65535',
      'frameMax=0',
      'frameMax=4096',
      'frameMax=131072',
      'frameMax=4294967295',
      'channelMax=0',
      'channelMax=2047',
      'maxFrameSize=0',
      'maxFrameSize=4096',
      'locale=en_US',
      'heartbeat=10&frameMax=8192&channelMax=100&locale=en_US',
    ]) {
      createRabbitMqBroker({ url: `${base}/?${query}` })
    }
  })

  it('connects with a checked query (a real server)', async () => {
    const url = await brokerUrl('rabbitmq')
    await roundTrip(
      createRabbitMqBroker({ ...testTuning, url: `${url}?heartbeat=10&frameMax=8192` }),
      'rabbit-url-query',
    )
  })

  it('fails publish and subscribe with BROKER_MISCONFIGURED, not BROKER_REJECTED, when amqplib refuses a connection setting (a vhost over 255 bytes)', async () => {
    const url = await brokerUrl('rabbitmq')
    const broker = createRabbitMqBroker({ ...testTuning, url: `${url}/${'v'.repeat(300)}` })
    try {
      const topic = unique('rabbit-url-long-vhost')
      const published = await rejectionOf(broker.publisher.publish(makeBatch(topic, 1, 1)))
      expectBrokerError(published, 'BROKER_MISCONFIGURED', false)
      const subscribed = await rejectionOf(
        broker.subscriber.subscribe(topic, unique('g'), async () => {}),
      )
      expectBrokerError(subscribed, 'BROKER_MISCONFIGURED', false)
    } finally {
      await broker.close()
    }
  })
})
