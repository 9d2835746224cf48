// The adapters' `tls` option: a private CA given as `ca` or `caFile` is trusted for that
// adapter's connections (no NODE_EXTRA_CA_CERTS), checked once at construction. The servers are
// real: a nats-server and a redis-server listening with TLS on loopback, and the run's RabbitMQ
// behind a node:tls terminator (booting a second RabbitMQ with TLS would cost seconds of CPU;
// what is under test is the client's verification, and the AMQP session is the real broker's).
import { writeFileSync } from 'node:fs'
import { connect as connectTcp } from 'node:net'
import { join } from 'node:path'
import { createServer, type Server } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type StartedBroker, startNats, startRedis } from '../../scripts/lib/brokers.mjs'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
} from '../../src/brokers/index.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createTestCerts, type TestCerts } from '../proxy/support/certs.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { listenOnLoopback } from '../support/loopback.js'
import { unique } from './conformance.js'
import { expectBrokerError, publishAndSubscribeFailures, roundTrip } from './support.js'

let certs: TestCerts
let nats: StartedBroker
let redis: StartedBroker
let rabbitTlsUrl: string
const servers: Server[] = []

beforeAll(async () => {
  certs = createTestCerts()
  const server = { certFile: certs.server.certFile, keyFile: certs.server.keyFile }
  ;[nats, redis] = await Promise.all([
    startNats({
      stopOnExit: true,
      config: `tls { cert_file: "${server.certFile}", key_file: "${server.keyFile}" }\n`,
    }),
    startRedis({ stopOnExit: true, tls: server }),
  ])
  const plain = new URL(await brokerUrl('rabbitmq'))
  const terminator = createServer({ cert: certs.server.cert, key: certs.server.key }, (socket) => {
    const upstream = connectTcp(Number(plain.port), plain.hostname)
    socket.pipe(upstream).pipe(socket)
    socket.on('error', () => upstream.destroy())
    upstream.on('error', () => socket.destroy())
  })
  // A client that refuses the certificate aborts the handshake: expected in one test.
  terminator.on('tlsClientError', () => {})
  servers.push(terminator)
  const tlsUrl = new URL(plain)
  tlsUrl.protocol = 'amqps:'
  tlsUrl.port = String(await listenOnLoopback(terminator))
  rabbitTlsUrl = tlsUrl.toString()
})

afterAll(async () => {
  for (const server of servers) server.close()
  await Promise.all([nats?.stop(), redis?.stop(), stopOwnBrokers()])
  certs?.cleanup()
})

const targets = [
  ['nats', (tls?: object) => createNatsBroker({ url: nats.url, connectTimeoutMs: 5_000, ...tls })],
  [
    'nats tls://',
    (tls?: object) =>
      createNatsBroker({ url: nats.url.replace('nats:', 'tls:'), connectTimeoutMs: 5_000, ...tls }),
  ],
  [
    'redis',
    (tls?: object) =>
      createRedisBroker({ url: redis.tlsUrl ?? '', connectTimeoutMs: 5_000, ...tls }),
  ],
  [
    'rabbitmq',
    (tls?: object) => createRabbitMqBroker({ url: rabbitTlsUrl, connectTimeoutMs: 5_000, ...tls }),
  ],
] as const

describe('a server certificate signed by a private CA', () => {
  it.each(targets)('%s: trusted with tls.caFile', async (_, create) => {
    await roundTrip(create({ tls: { caFile: certs.ca.certFile } }))
  })

  it.each(targets)('%s: trusted with tls.ca (PEM text and a Buffer)', async (_, create) => {
    await roundTrip(create({ tls: { ca: [certs.ca.cert, Buffer.from(certs.ca.cert)] } }))
  })

  it.each(targets)(
    '%s: without the CA, a BROKER_MISCONFIGURED naming the tls.caFile option',
    async (_, create) => {
      const broker = create()
      try {
        for (const error of await publishAndSubscribeFailures(broker, unique('tls'))) {
          expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
          expect(error.message).toMatch(/certificate is not trusted.*tls\.caFile or tls\.ca/)
        }
      } finally {
        await broker.close()
      }
    },
  )
})

describe('tls option checks at construction', () => {
  const create = {
    nats: (tls: unknown, url = 'nats://127.0.0.1:4222') =>
      createNatsBroker({ url, tls } as Parameters<typeof createNatsBroker>[0]),
    redis: (tls: unknown, url = 'rediss://127.0.0.1:6380') =>
      createRedisBroker({ url, tls } as Parameters<typeof createRedisBroker>[0]),
    rabbitmq: (tls: unknown, url = 'amqps://127.0.0.1:5671') =>
      createRabbitMqBroker({ url, tls } as Parameters<typeof createRabbitMqBroker>[0]),
  }

  /** Expects `make()` to throw INVALID_OPTION for `option` with a message matching `text`. */
  function expectRefused(make: () => unknown, option: string, text: RegExp): void {
    let error: unknown
    try {
      make()
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
    expect((error as Error).message).toMatch(text)
  }

  it.each(Object.entries(create))(
    '%s: a missing caFile names the option and the path',
    (name, make) => {
      const missing = join(certs.dir, 'no-such-ca.pem')
      expectRefused(
        () => make({ caFile: missing }),
        `${name}.tls.caFile`,
        /ENOENT.*no-such-ca\.pem/,
      )
    },
  )

  it.each(Object.entries(create))(
    '%s: a caFile or ca without a PEM certificate is refused',
    (name, make) => {
      const notPem = join(certs.dir, 'not-a-ca.pem')
      writeFileSync(notPem, 'not a certificate\n')
      expectRefused(() => make({ caFile: notPem }), `${name}.tls.caFile`, /no PEM certificate/)
      // A private key is PEM, but no certificate.
      expectRefused(() => make({ ca: certs.ca.key }), `${name}.tls.ca`, /no PEM certificate/)
      const broken = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'
      expectRefused(
        () => make({ ca: [certs.ca.cert, broken] }),
        `${name}.tls.ca[1]`,
        /cannot be read/,
      )
      expectRefused(() => make({ ca: [] }), `${name}.tls.ca`, /non-empty array/)
      expectRefused(() => make({ ca: 42 }), `${name}.tls.ca`, /string or Buffer/)
    },
  )

  it.each(Object.entries(create))(
    '%s: ca and caFile together, or an unknown setting, are refused',
    (name, make) => {
      expectRefused(
        () => make({ ca: certs.ca.cert, caFile: certs.ca.certFile }),
        `${name}.tls`,
        /ca or caFile, not both/,
      )
      expectRefused(
        () => make({ pfxFile: certs.client.certFile }),
        `${name}.tls.pfxFile`,
        /no such option/,
      )
      expectRefused(() => make('yes'), `${name}.tls`, /object/)
    },
  )

  it.each([
    ['redis', () => create.redis({ caFile: certs.ca.certFile }, 'redis://127.0.0.1:6379')],
    ['rabbitmq', () => create.rabbitmq({ caFile: certs.ca.certFile }, 'amqp://127.0.0.1:5672')],
  ] as const)('%s: TLS settings with a URL without TLS are refused', (name, make) => {
    expectRefused(make, `${name}.tls`, /only with a .*URL \(.*does not use TLS\)/)
  })

  it('redis: a URL query tls (a TLS profile) next to the tls option is refused', () => {
    expectRefused(
      () =>
        create.redis({ caFile: certs.ca.certFile }, 'rediss://127.0.0.1:6380?tls=RedisCloudFixed'),
      'redis.url',
      /does not set tls/,
    )
  })
})
