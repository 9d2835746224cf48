// Broker URL parameters an adapter would ignore without a word (or hand to its driver, which
// acts on them behind the adapter's back) are refused at construction, naming the parameter.
import { describe, expect, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  openBroker,
} from '../../src/brokers/index.js'
import { refusal } from './support.js'

describe('NATS URL', () => {
  it('refuses a query, naming the parameter (the driver takes none: ?tls=true would still connect in plain text)', () => {
    for (const [query, name] of [
      ['tls=true', 'tls'],
      ['foo=bar', 'foo'],
      ['token=s3cret', 'token'],
    ]) {
      const error = refusal(() => createNatsBroker({ url: `nats://127.0.0.1:4222?${query}` }))
      expect(error.option).toBe('nats.url')
      expect(error.message).toContain(`"${name}"`)
      expect(error.message).not.toContain('s3cret')
    }
  })

  it('refuses a path or fragment, which NATS has no use for', () => {
    for (const url of [
      'nats://127.0.0.1:4222/js',
      'tls://127.0.0.1:4222/a/b',
      'nats://127.0.0.1#x',
    ]) {
      expect(refusal(() => createNatsBroker({ url })).option, url).toBe('nats.url')
    }
  })

  it('still takes plain URLs', () => {
    for (const url of ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4222/', 'tls://u:p@127.0.0.1']) {
      createNatsBroker({ url })
    }
  })
})

describe('Redis URL', () => {
  it('refuses a query parameter the adapter does not know, naming it (ioredis would ignore a typo, or act on monitor, readOnly, path ...)', () => {
    for (const name of ['famly', 'foo', 'monitor', 'readOnly', 'path', 'host', 'name']) {
      const error = refusal(() => createRedisBroker({ url: `redis://127.0.0.1:6379?${name}=1` }))
      expect(error.option, name).toBe('redis.url')
      expect(error.message, name).toContain(`"${name}"`)
    }
  })

  it('refuses a known parameter with a value the driver would misread', () => {
    for (const query of ['db=abc', 'db=3x', 'port=63x', 'family=ipv6']) {
      const error = refusal(() => createRedisBroker({ url: `redis://127.0.0.1?${query}` }))
      expect(error.option, query).toBe('redis.url')
      expect(error.message, query).toContain(`"${query.split('=')[0]}"`)
    }
  })

  it('refuses a tls parameter that is not an ioredis TLS profile name (ioredis would turn TLS on for any text, ?tls=false included)', () => {
    // ioredis spreads an unknown name into tls.connect's options, so redis://h?tls=false
    // connected over TLS to a plain port and failed every publish as "no answer" (retryable).
    for (const value of ['false', 'true', '1', 'bogus', '', 'rediscloudfixed']) {
      const error = refusal(() => createRedisBroker({ url: `redis://127.0.0.1:6379?tls=${value}` }))
      expect(error.option, value).toBe('redis.url')
      expect(error.message, value).toContain('"tls"')
      expect(error.message, value).toContain('RedisCloudFixed')
      expect(
        refusal(() => createRedisBroker({ url: `rediss://127.0.0.1:6379?tls=${value}` })).option,
      ).toBe('redis.url')
    }
  })

  it('refuses a database, port or credentials given both in the URL and in its query (ioredis drops the query one)', () => {
    for (const url of [
      'redis://127.0.0.1/2?db=3',
      'redis://127.0.0.1:6379?port=6380',
      'redis://u:pw@127.0.0.1?username=v',
      'redis://:pw@127.0.0.1?password=other',
    ]) {
      const error = refusal(() => createRedisBroker({ url }))
      expect(error.option, url).toBe('redis.url')
      expect(error.message, url).toMatch(/sets "\w+" once/)
      expect(error.message, url).not.toMatch(/pw|other/)
    }
  })

  it('still takes the documented parameters', () => {
    for (const query of [
      'family=6',
      'db=3',
      'password=pw',
      'username=u&password=pw',
      'port=6380',
      'tls=RedisCloudFixed',
      'tls=RedisCloudFlexible',
    ]) {
      createRedisBroker({ url: `redis://127.0.0.1/?${query}` })
    }
  })

  it('refuses a fragment', () => {
    expect(refusal(() => createRedisBroker({ url: 'redis://127.0.0.1#x' })).option).toBe(
      'redis.url',
    )
  })
})

describe('a refused URL query', () => {
  it('never quotes the value of a parameter the adapter does not take (a misspelt password)', () => {
    // ?pasword=hunter2 is refused as unknown; its value was quoted with the URL, as was an
    // unknown parameter's after a known one with a bad value.
    for (const [url, named] of [
      ['redis://127.0.0.1?pasword=hunter2', 'pasword'],
      ['redis://127.0.0.1?db=1&passwd=hunter2', 'passwd'],
      ['redis://127.0.0.1?db=x&pass=hunter2', 'db'],
      ['amqp://127.0.0.1?pass=hunter2', 'pass'],
      ['amqp://127.0.0.1/?heartbeat=x&pass=hunter2', 'heartbeat'],
    ] as const) {
      const redis = url.startsWith('redis')
      const error = refusal(() =>
        redis ? createRedisBroker({ url }) : createRabbitMqBroker({ url }),
      )
      expect(error.option, url).toBe(redis ? 'redis.url' : 'rabbitmq.url')
      expect(error.message).toContain(`"${named}"`)
      expect(error.message).not.toContain('hunter2')
      expect(JSON.stringify(error.value)).not.toContain('hunter2')
    }
    // A known parameter's bad value is still shown: it is what to fix.
    expect(refusal(() => createRedisBroker({ url: 'redis://127.0.0.1?db=x' })).message).toContain(
      '?db=x',
    )
  })

  it('never quotes a query value when the URL is refused before its query is checked (port, host, scheme, encoding)', () => {
    // The port, host, scheme and percent-encoding are checked before the query, and those
    // refusals quoted the URL with only its userinfo and ?password= hidden: a misspelt or
    // other credential (?pass=, ?token=, ?secret=) went into the message and the error's value.
    const urls = [
      'amqp://127.0.0.1:0/?pass=hunter2',
      'amqps://127.0.0.1:99999/?token=hunter2',
      'amqp:///?pass=hunter2',
      'amqp://%zz@127.0.0.1/?pass=hunter2',
      'redis://127.0.0.1:0?pasword=hunter2',
      'rediss://127.0.0.1:0/?db=1&secret=hunter2',
      'redis://127.0.0.1:0?db=1?pass=hunter2',
      'nats://127.0.0.1:0?token=hunter2',
      'tls://127.0.0.1:0/?auth_token=hunter2#frag',
      'nats:///?token=hunter2',
      'kafka://127.0.0.1?pass=hunter2',
      'amqp://127.0.0.1:0/?pass%77ord=hunter2&x=hunter2',
    ]
    for (const url of urls) {
      const error = refusal(() => openBroker(url))
      expect(error.message, url).not.toContain('hunter2')
      expect(JSON.stringify(error.value), url).not.toContain('hunter2')
      // The parameter's name is still there: it may be what the reader looks for.
      expect(String(error.value), url).toMatch(/=\*\*\*/)
    }
    for (const make of [
      () => createRabbitMqBroker({ url: 'amqp://127.0.0.1:0/?pass=hunter2' }),
      () => createRedisBroker({ url: 'redis://127.0.0.1:0?pass=hunter2' }),
      () => createNatsBroker({ url: 'nats://127.0.0.1:0?pass=hunter2' }),
    ]) {
      const error = refusal(make)
      expect(error.message).toContain('port is from 1 to 65535')
      expect(error.message).not.toContain('hunter2')
    }
  })
})
