// A broker connection that fails because of TLS (a certificate the client does not trust, a
// server that does not speak TLS where TLS is asked) fails every attempt alike: read as an
// outage, a relay would retry it for ever. Each adapter must report it as a non-retryable
// BROKER_MISCONFIGURED naming the broker and the TLS problem. The endpoints are real: a
// nats-server with a TLS block, node:tls servers presenting a self-signed certificate made for
// this file, and the real servers' plain ports reached with amqps://, rediss:// and tls://.
// Redis does not answer a TLS greeting at all (it waits for the end of an inline command), so
// the adapter asks the port in plain text whether it is a Redis; a port that answers neither
// (a frozen server, redis.test.ts) stays an outage.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer, type Server } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type StartedBroker, startNats } from '../../scripts/lib/brokers.mjs'
import {
  type Broker,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
} from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { listenOnLoopback } from '../support/loopback.js'
import { makeBatch, unique } from './conformance.js'
import { expectBrokerError, publishAndSubscribeFailures, rejectionOf } from './support.js'

interface SelfSigned {
  readonly certFile: string
  readonly keyFile: string
}

let dir: string
let selfSigned: SelfSigned
const servers: Server[] = []

/** A self-signed certificate for `localhost` (and 127.0.0.1), made with the openssl CLI. */
function makeSelfSigned(): SelfSigned {
  const certFile = join(dir, 'cert.pem')
  const keyFile = join(dir, 'key.pem')
  const result = spawnSync(
    'openssl',
    [
      ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'],
      ...['-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost'],
      ...['-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
    ],
    { encoding: 'utf8' },
  )
  if (result.status !== 0) throw new Error(`openssl failed: ${result.stderr}`)
  return { certFile, keyFile }
}

/** A TLS server on loopback presenting the self-signed certificate; resolves to its port. */
async function selfSignedTlsServer(): Promise<number> {
  const server = createServer({
    cert: readFileSync(selfSigned.certFile),
    key: readFileSync(selfSigned.keyFile),
  })
  // A client that refuses the certificate aborts the handshake: expected here.
  server.on('tlsClientError', () => {})
  servers.push(server)
  return listenOnLoopback(server)
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'breakwater-tls-'))
  selfSigned = makeSelfSigned()
})

afterAll(async () => {
  for (const server of servers) server.close()
  await stopOwnBrokers()
  rmSync(dir, { recursive: true, force: true })
})

/** Publishes and subscribes on `broker`; both must fail with a TLS BROKER_MISCONFIGURED. */
async function expectTlsMisconfigured(broker: Broker, problem: RegExp): Promise<void> {
  try {
    const failures = await publishAndSubscribeFailures(broker, unique('tls'))
    for (const error of failures) {
      expectBrokerError(error, 'BROKER_MISCONFIGURED', false, String(error))
      expect(error.message).toMatch(/TLS/)
      expect(error.message).toMatch(problem)
    }
  } finally {
    await broker.close()
  }
}

const untrusted = /certificate is not trusted/
const notTls = /does not speak TLS|handshake failed/

describe('nats over TLS', () => {
  let nats: StartedBroker
  beforeAll(async () => {
    nats = await startNats({
      stopOnExit: true,
      config: `tls { cert_file: "${selfSigned.certFile}", key_file: "${selfSigned.keyFile}" }\n`,
    })
  })
  afterAll(async () => {
    await nats?.stop()
  })

  it('fails with a non-retryable BROKER_MISCONFIGURED when the server certificate is not trusted', async () => {
    await expectTlsMisconfigured(
      createNatsBroker({ url: nats.url, connectTimeoutMs: 5_000 }),
      untrusted,
    )
  })
})

describe('a self-signed node:tls endpoint', () => {
  it.each([
    ['rabbitmq', (port: number) => createRabbitMqBroker({ url: `amqps://127.0.0.1:${port}` })],
    ['redis', (port: number) => createRedisBroker({ url: `rediss://127.0.0.1:${port}` })],
  ] as const)(
    'fails %s with a non-retryable BROKER_MISCONFIGURED: the certificate is not trusted',
    async (_, create) => {
      await expectTlsMisconfigured(create(await selfSignedTlsServer()), untrusted)
    },
  )
})

describe('rabbitmq over TLS', () => {
  it('fails with a non-retryable BROKER_MISCONFIGURED when amqps:// reaches a server without TLS', async () => {
    const plain = new URL(await brokerUrl('rabbitmq'))
    plain.protocol = 'amqps:'
    await expectTlsMisconfigured(
      createRabbitMqBroker({ url: plain.toString(), connectTimeoutMs: 5_000 }),
      notTls,
    )
  })
})

describe('nats tls:// on a server without TLS', () => {
  it('fails with a non-retryable BROKER_MISCONFIGURED', async () => {
    const plain = new URL(await brokerUrl('nats'))
    plain.protocol = 'tls:'
    await expectTlsMisconfigured(
      createNatsBroker({ url: plain.toString(), connectTimeoutMs: 5_000 }),
      /does not speak TLS/,
    )
  })
})

describe('redis rediss:// on a server without TLS', () => {
  it('fails before connectTimeoutMs with a non-retryable BROKER_MISCONFIGURED suggesting redis://', async () => {
    const plain = new URL(await brokerUrl('redis'))
    plain.protocol = 'rediss:'
    const connectTimeoutMs = 4_000
    const broker = createRedisBroker({ url: plain.toString(), connectTimeoutMs })
    try {
      for (const attempt of [
        (): Promise<unknown> => broker.publisher.publish(makeBatch(unique('tls'), 1, 1)),
        () => broker.subscriber.subscribe(unique('tls'), unique('g'), async () => {}),
      ]) {
        const started = Date.now()
        const error = await rejectionOf(attempt())
        // Without the plain-text check the handshake waits the whole connectTimeoutMs.
        expect(Date.now() - started).toBeLessThan(connectTimeoutMs)
        expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
        expect(error.message).toMatch(/did not answer the TLS handshake/)
        expect(error.message).toMatch(/probably not a TLS port.*redis:\/\//)
        expect(error.message).not.toMatch(/PONG|NOAUTH/)
      }
    } finally {
      await broker.close()
    }
  })
})
