// A query parameter given twice: the driver keeps one value and drops the other without a word
// (ioredis the last: redis://h?db=3&db=4 wrote to database 4). Refused at construction on every
// adapter that takes a query; NATS takes none at all (url-parameters.test.ts).
import { describe, expect, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
} from '../../src/brokers/index.js'
import { refusal } from './support.js'

describe('a URL query parameter given twice', () => {
  it('is refused on Redis, naming it and never quoting a password', () => {
    for (const query of [
      'db=3&db=4',
      'family=4&family=6',
      'password=a1&password=b2',
      'tls=x&tls=x',
    ]) {
      const error = refusal(() => createRedisBroker({ url: `redis://127.0.0.1?${query}` }))
      expect(error.option, query).toBe('redis.url')
      expect(error.message, query).toContain(`"${query.split('=')[0]}"`)
      expect(error.message, query).not.toMatch(/a1|b2/)
    }
  })

  it('is refused on RabbitMQ and NATS too', () => {
    expect(
      refusal(() => createRabbitMqBroker({ url: 'amqp://127.0.0.1?locale=en_US&locale=en_US' }))
        .option,
    ).toBe('rabbitmq.url')
    expect(refusal(() => createNatsBroker({ url: 'nats://127.0.0.1?a=1&a=1' })).option).toBe(
      'nats.url',
    )
  })
})
