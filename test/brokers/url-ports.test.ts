// A broker URL's port and Redis database are checked at construction, wherever the URL writes
// them. Only the host part's port was (by the URL parser, up to 65535): port 0 was taken (amqplib
// reads it as its default 5672, connecting where nothing was written; ioredis and nats.js try
// port 0), a Redis ?port=99999 failed only at publish, as a retryable BROKER_UNAVAILABLE that a
// relay retried for ever, and a database number no server has (/99999999999999999999) failed
// connecting with ioredis's bare "Connection is closed.". No server is needed: nothing connects.
import { describe, expect, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  openBroker,
} from '../../src/brokers/index.js'
import { refusal } from './support.js'

describe('broker URL port', () => {
  it('refuses port 0 in the host part of every adapter, naming the URL option and the range', () => {
    for (const [url, option] of [
      ['redis://127.0.0.1:0', 'redis.url'],
      ['rediss://127.0.0.1:00/1', 'redis.url'],
      ['amqp://127.0.0.1:0', 'rabbitmq.url'],
      ['amqps://u:hunter2-pw@127.0.0.1:0/vh', 'rabbitmq.url'],
      ['nats://127.0.0.1:0', 'nats.url'],
      ['tls://127.0.0.1:0', 'nats.url'],
    ] as const) {
      const error = refusal(() => openBroker(url))
      expect(error.option, url).toBe(option)
      expect(error.message, url).toContain('port is from 1 to 65535')
      expect(error.message, url).not.toContain('hunter2')
    }
  })

  it("refuses a Redis ?port= outside 1 to 65535, as the host part's port is", () => {
    for (const port of ['0', '000', '65536', '99999', '99999999999999999999']) {
      const url = `redis://127.0.0.1/?port=${port}`
      const error = refusal(() => createRedisBroker({ url }))
      expect(error.option, url).toBe('redis.url')
      expect(error.message, url).toContain(
        'query parameter "port" is a port number from 1 to 65535',
      )
      expect(refusal(() => openBroker(url)).option, url).toBe('redis.url')
    }
  })

  it('still takes ports 1 to 65535 in either form', () => {
    for (const url of [
      'redis://127.0.0.1:1',
      'redis://127.0.0.1:65535',
      'redis://127.0.0.1/?port=1',
      'redis://127.0.0.1/?port=65535',
      'redis://127.0.0.1/?port=06380',
      'amqp://127.0.0.1:1',
      'amqp://127.0.0.1:65535',
      'nats://127.0.0.1:1',
      'tls://127.0.0.1:65535',
    ]) {
      openBroker(url)
    }
    createRabbitMqBroker({ url: 'amqp://127.0.0.1' })
    createNatsBroker({ url: 'nats://127.0.0.1' })
  })
})

describe('Redis URL database', () => {
  it('refuses a database number past the largest a server can have (SELECT takes a 32-bit int, and `databases` is at most 2147483647)', () => {
    for (const url of [
      'redis://127.0.0.1:1/99999999999999999999',
      'redis://127.0.0.1/9007199254740993',
      'redis://127.0.0.1/2147483647',
      'redis://127.0.0.1/?db=99999999999999999999',
      'redis://127.0.0.1/?db=2147483647',
    ]) {
      const error = refusal(() => createRedisBroker({ url }))
      expect(error.option, url).toBe('redis.url')
      expect(error.message, url).toContain('database number from 0 to 2147483646')
    }
  })

  it('still takes any database a server may be configured with (not only the default 16)', () => {
    for (const url of [
      'redis://127.0.0.1/0',
      'redis://127.0.0.1/16',
      'redis://127.0.0.1/2147483646',
      'redis://127.0.0.1/?db=16',
      'redis://127.0.0.1/?db=2147483646',
    ]) {
      createRedisBroker({ url })
    }
  })
})
