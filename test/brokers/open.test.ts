import { describe, expect, it } from 'vitest'
import {
  type Broker,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  openBroker,
  redactUrl,
} from '../../src/brokers/index.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { freeLoopbackPort } from '../support/loopback.js'

/** A loopback port nothing listens on (the kernel hands it out, we release it at once). */
function unusedPort(): Promise<number> {
  return freeLoopbackPort()
}

function thrown(fn: () => unknown): unknown {
  try {
    fn()
  } catch (error) {
    return error
  }
  throw new Error('expected a throw')
}

describe('openBroker', () => {
  it('picks the adapter from the scheme and connects nothing before first use', async () => {
    for (const url of [
      'nats://127.0.0.1:1',
      'tls://127.0.0.1:1',
      'amqp://guest:guest@127.0.0.1:1',
      'amqps://127.0.0.1:1',
      'redis://127.0.0.1:1',
      'rediss://127.0.0.1:1',
    ]) {
      const broker = openBroker(url)
      expect(typeof broker.publisher.publish).toBe('function')
      expect(typeof broker.subscriber.subscribe).toBe('function')
      await broker.close()
    }
  })

  it('refuses a misspelt or unknown option (an adapter section under another name), which would be ignored without a word', () => {
    for (const options of [
      { rabbitMq: { queueType: 'classic' } },
      { Redis: { maxLength: 10 } },
      { natsOptions: {} },
      { connectTimeoutMs: 100 },
    ]) {
      const error = thrown(() => openBroker('amqp://127.0.0.1:1', options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(`openBroker.${Object.keys(options)[0]}`)
    }
  })

  it('rejects an unknown scheme with InvalidOptionError naming the URL without its credentials', () => {
    const error = thrown(() => openBroker('kafka://admin:s3cret@broker:9092/topic'))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('url')
    expect((error as Error).message).toContain('kafka://***@broker:9092/topic')
    expect((error as Error).message).not.toContain('s3cret')
    expect(thrown(() => openBroker('not a url'))).toBeInstanceOf(InvalidOptionError)
  })

  it('passes per-adapter settings and validates them', () => {
    const error = thrown(() =>
      openBroker('redis://127.0.0.1:6379', { redis: { visibilityTimeoutMs: -1 } }),
    )
    expect((error as InvalidOptionError).option).toBe('redis.visibilityTimeoutMs')
  })

  it('refuses options, and per-adapter settings, that are not objects, naming them', () => {
    const cases: Array<[() => unknown, string]> = [
      [() => openBroker('nats://127.0.0.1', null as never), 'openBroker'],
      [() => openBroker('nats://127.0.0.1', { nats: 'fast' as never }), 'openBroker.nats'],
      [() => openBroker('amqp://127.0.0.1', { rabbitmq: [] as never }), 'openBroker.rabbitmq'],
      [() => openBroker('redis://127.0.0.1', { redis: null as never }), 'openBroker.redis'],
      // Settings for another scheme are checked too: a typo there is found before it matters.
      [() => openBroker('redis://127.0.0.1', { nats: 5 as never }), 'openBroker.nats'],
    ]
    for (const [make, option] of cases) {
      const error = thrown(make)
      expect(error, option).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })
})

describe('adapter options', () => {
  it('validate once at construction and name the option', () => {
    const cases: Array<[() => unknown, string]> = [
      [() => createNatsBroker({ url: 'http://127.0.0.1:4222' }), 'nats.url'],
      [() => createNatsBroker({ url: 'nats://127.0.0.1', concurrency: 0 }), 'nats.concurrency'],
      [
        () => createNatsBroker({ url: 'nats://127.0.0.1', concurrency: 8, prefetch: 4 }),
        'nats.prefetch',
      ],
      [() => createNatsBroker({ url: 'nats://127.0.0.1', ackWaitMs: 10 }), 'nats.ackWaitMs'],
      [() => createNatsBroker({ url: 'nats://127.0.0.1', maxHeldPerKey: 0 }), 'nats.maxHeldPerKey'],
      [
        () => createRedisBroker({ url: 'redis://127.0.0.1', holdTimeoutMs: 0 }),
        'redis.holdTimeoutMs',
      ],
      [
        () =>
          createNatsBroker({ url: 'nats://127.0.0.1', stream: { name: 'a.b', subjects: ['x'] } }),
        'nats.stream.name',
      ],
      [() => createRabbitMqBroker({ url: 'redis://127.0.0.1' }), 'rabbitmq.url'],
      [
        () => createRabbitMqBroker({ url: 'amqp://127.0.0.1', exchange: 'amq.topic' }),
        'rabbitmq.exchange',
      ],
      [
        // @ts-expect-error: an unsupported queue type
        () => createRabbitMqBroker({ url: 'amqp://127.0.0.1', queueType: 'stream' }),
        'rabbitmq.queueType',
      ],
      [
        () => createRedisBroker({ url: 'redis://127.0.0.1', retryDelayMs: 1.5 }),
        'redis.retryDelayMs',
      ],
      [
        () => createNatsBroker({ url: 'nats://127.0.0.1', closeTimeoutMs: -1 }),
        'nats.closeTimeoutMs',
      ],
      [
        () => createRabbitMqBroker({ url: 'amqp://127.0.0.1', closeTimeoutMs: 1.5 }),
        'rabbitmq.closeTimeoutMs',
      ],
      [
        () => createRedisBroker({ url: 'redis://127.0.0.1', closeTimeoutMs: Number.NaN }),
        'redis.closeTimeoutMs',
      ],
      [
        () => createRedisBroker({ url: 'redis://127.0.0.1', consumerName: '' }),
        'redis.consumerName',
      ],
      [
        () => createRedisBroker({ url: 'redis://127.0.0.1', commandTimeoutMs: 0 }),
        'redis.commandTimeoutMs',
      ],
      // ioredis lets a URL's query override the options it is given: these would undo what the
      // adapter relies on (RESP2 reply shapes, failing fast instead of queueing, its timeouts).
      ...[
        'protocol=3',
        'enableOfflineQueue=true',
        'maxRetriesPerRequest=5',
        'lazyConnect=false',
        'connectTimeout=1',
        'commandTimeout=1',
        'family=6&enableAutoPipelining=true',
      ].map((query): [() => unknown, string] => [
        () => createRedisBroker({ url: `redis://127.0.0.1:6379?${query}` }),
        'redis.url',
      ]),
      [
        () =>
          createRedisBroker({
            url: 'redis://127.0.0.1',
            visibilityTimeoutMs: 900,
            claimIntervalMs: 500,
          }),
        'redis.claimIntervalMs',
      ],
    ]
    for (const [make, option] of cases) {
      const error = thrown(make)
      expect(error, option).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
    }
  })

  it('never put a password in an error message', () => {
    const error = thrown(() => createRabbitMqBroker({ url: 'amqp://user:hunter2@' }))
    expect((error as Error).message).not.toContain('hunter2')
    expect(redactUrl('amqp://user:hunter2@host:5672/vh')).toBe('amqp://***@host:5672/vh')
    expect(redactUrl('nats://host:4222')).toBe('nats://host:4222')
    expect(redactUrl('%%://user:pw@host')).toBe('%%://***@host')
  })

  it('refuse at construction a user name, password or path whose % is not an escape, naming why but not the secret', () => {
    const cases: Array<[() => unknown, string]> = [
      [() => createNatsBroker({ url: 'nats://user:hunter%zz@127.0.0.1' }), 'nats.url'],
      [() => createNatsBroker({ url: 'nats://tok%en@127.0.0.1' }), 'nats.url'],
      [() => createRedisBroker({ url: 'redis://:hunter%zz@127.0.0.1' }), 'redis.url'],
      [() => createRabbitMqBroker({ url: 'amqp://u:hunter%zz@127.0.0.1' }), 'rabbitmq.url'],
      [() => createRabbitMqBroker({ url: 'amqp://u:p@127.0.0.1/vh%zz' }), 'rabbitmq.url'],
    ]
    for (const [make, option] of cases) {
      const error = thrown(make)
      expect(error, option).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(option)
      expect((error as Error).message).toMatch(/percent-encoded/)
      expect((error as Error).message).not.toMatch(/hunter|tok%en/)
    }
  })

  it('refuse a NATS URL with a password but no user name (the credentials would be dropped)', () => {
    const error = thrown(() => createNatsBroker({ url: 'nats://:hunter2@127.0.0.1:4222' }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('nats.url')
    expect((error as Error).message).toMatch(/token@/)
    expect((error as Error).message).not.toContain('hunter2')
    // user:password and a token alone are fine.
    createNatsBroker({ url: 'nats://user:pw@127.0.0.1:4222' })
    createNatsBroker({ url: 'nats://token@127.0.0.1:4222' })
  })

  it('refuse a Redis URL whose path is not a database number (the driver would use another database)', async () => {
    for (const path of ['/abc', '/3x', '/-1', '/1/2', '/ 3']) {
      const error = thrown(() => createRedisBroker({ url: `redis://:hunter2@127.0.0.1${path}` }))
      expect(error, path).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('redis.url')
      expect((error as Error).message).toMatch(/database number/)
      expect((error as Error).message).not.toContain('hunter2')
    }
    for (const path of ['', '/', '/0', '/15'])
      await createRedisBroker({ url: `rediss://127.0.0.1${path}` }).close()
  })

  it('hide the credentials of a URL written without // (it parses with no host, so they sat in its path)', () => {
    // nats:user:pw@host is a URL of scheme nats whose path is user:pw@host: no user name or
    // password to hide was found, and the refusal quoted the password.
    for (const make of [
      () => openBroker('nats:app:hunter2@127.0.0.1:4222'),
      () => openBroker('redis:/:hunter2@127.0.0.1:6379'),
      () => openBroker('amqp:app:hunter2@127.0.0.1/vh?heartbeat=10'),
      () => openBroker('app:hunter2@127.0.0.1:4222'),
      () => createNatsBroker({ url: 'tls:app:hunter2@127.0.0.1' }),
      () => createRedisBroker({ url: 'rediss:app:hunter2@127.0.0.1' }),
      () => createRabbitMqBroker({ url: 'amqps:app:hunter2@127.0.0.1' }),
    ]) {
      const error = thrown(make)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(
        `${(error as Error).message} ${JSON.stringify((error as InvalidOptionError).value)}`,
      ).not.toContain('hunter2')
    }
    expect(redactUrl('nats:app:hunter2@host:4222')).toBe('nats:***@host:4222')
    expect(redactUrl('redis:/:hunter2@host:6379?db=1')).toBe('redis:/***@host:6379?db=1')
    expect(redactUrl('app:hunter2@host')).toBe('app:***@host')
    expect(redactUrl('app:hunter 2@host')).toBe('app:***@host')
    expect(redactUrl('redis:///tmp/redis.sock')).toBe('redis:///tmp/redis.sock')
  })

  it('hide a password that holds an unencoded / ? or # (such a URL does not parse)', () => {
    for (const url of ['redis://:pa/ss@host:6379', 'amqp://u:p?w@host/vh', 'nats://u:p#w@host'])
      expect(redactUrl(url), url).not.toMatch(/pa\/ss|p\?w|p#w/)
    expect(redactUrl('redis://:pa/ss@host:6379')).toBe('redis://***@host:6379')
    const error = thrown(() => createRedisBroker({ url: 'redis://:hunter/2@' }))
    expect((error as Error).message).not.toContain('hunter')
  })
})

describe('publish without a server', () => {
  const makers: Array<[string, (port: number) => Broker]> = [
    ['nats', (port) => createNatsBroker({ url: `nats://127.0.0.1:${port}` })],
    ['rabbitmq', (port) => createRabbitMqBroker({ url: `amqp://guest:guest@127.0.0.1:${port}` })],
    ['redis', (port) => createRedisBroker({ url: `redis://:pw@127.0.0.1:${port}` })],
  ]
  for (const [name, make] of makers) {
    it(`${name}: rejects with a retryable BROKER_UNAVAILABLE naming the URL without credentials`, async () => {
      const port = await unusedPort()
      const broker = make(port)
      const message = { id: 'a', topic: 't', key: 'k', payload: 'x', headers: {} }
      const error = await broker.publisher.publish([message]).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(BreakwaterError.is(error)).toBe(true)
      expect((error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
      expect((error as BreakwaterError).retryable).toBe(true)
      expect((error as Error).message).toContain(`127.0.0.1:${port}`)
      expect((error as Error).message).not.toContain('guest:guest')
      expect((error as Error).message).not.toContain(':pw@')
      // An empty batch needs no connection; a closed publisher refuses.
      await broker.publisher.publish([])
      await broker.close()
      const closed = await broker.publisher.publish([message]).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect((closed as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
      await expect(broker.subscriber.subscribe('t', 'g', async () => {})).rejects.toThrow(/closed/)
    })
  }
})
