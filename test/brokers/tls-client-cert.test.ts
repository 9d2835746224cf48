// Client certificates (mutual TLS): the adapters' `tls` option takes a certificate and its key
// (`cert`/`certFile`, `key`/`keyFile`, `passphrase` for an encrypted key), checked once at
// construction, and a server that requires one and gets none (or one it does not trust) is a
// non-retryable BROKER_MISCONFIGURED saying so, not an outage retried for ever. The servers are
// real and require a client certificate signed by the test CA: a nats-server with
// `verify: true`, a redis-server with `tls-auth-clients yes` and a RabbitMQ with
// `fail_if_no_peer_cert`, started together so their boots overlap.
import { createPrivateKey } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type StartedBroker,
  startNats,
  startRabbitMq,
  startRedis,
} from '../../scripts/lib/brokers.mjs'
import {
  type Broker,
  type BrokerTlsOptions,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  openBroker,
} from '../../src/brokers/index.js'
import {
  type CertFiles,
  createCa,
  createTestCerts,
  issueCert,
  type TestCerts,
} from '../proxy/support/certs.js'
import { unique } from './conformance.js'
import {
  createWithTls,
  expectBrokerError,
  publishAndSubscribeFailures,
  refusal,
  roundTrip,
} from './support.js'

let certs: TestCerts
/** A client certificate of another CA, which the servers do not trust. */
let stranger: CertFiles
const passphrase = 'correct-horse-battery'
/** The client key encrypted with {@link passphrase}, as a file. */
let encryptedKeyFile: string

beforeAll(() => {
  certs = createTestCerts()
  stranger = issueCert(certs.dir, createCa(certs.dir, 'other-ca'), 'stranger', 'client')
  encryptedKeyFile = join(certs.dir, 'client-key-encrypted.pem')
  const encrypted = createPrivateKey(certs.client.key).export({
    type: 'pkcs8',
    format: 'pem',
    cipher: 'aes-256-cbc',
    passphrase,
  })
  writeFileSync(encryptedKeyFile, encrypted)
})

afterAll(() => certs?.cleanup())

describe.each(Object.entries(createWithTls))(
  '%s: client certificate checks at construction',
  (name, make) => {
    const at = `${name}.tls`

    it('accepts a certificate and key as files, as PEM text or bytes, and an encrypted key with its passphrase', async () => {
      for (const tls of [
        { certFile: certs.client.certFile, keyFile: certs.client.keyFile },
        { cert: certs.client.cert, key: Buffer.from(certs.client.key), ca: certs.ca.cert },
        { certFile: certs.client.certFile, keyFile: encryptedKeyFile, passphrase },
      ]) {
        await (make(tls) as Broker).close()
      }
    })

    it('refuses a certificate without its key, and a key without its certificate, naming it', () => {
      for (const [tls, option, text] of [
        [{ cert: certs.client.cert }, `${at}.cert`, /needs its key \(tls\.key or tls\.keyFile\)/],
        [{ certFile: certs.client.certFile }, `${at}.certFile`, /needs its key/],
        [{ keyFile: certs.client.keyFile }, `${at}.keyFile`, /needs its certificate/],
      ] as const) {
        const error = refusal(() => make(tls))
        expect(error.option).toBe(option)
        expect(error.message).toMatch(text)
      }
    })

    it('refuses a setting given both as text and as a file', () => {
      const both = { cert: certs.client.cert, certFile: certs.client.certFile }
      const cert = refusal(() => make({ ...both, keyFile: certs.client.keyFile }))
      expect(cert.option).toBe(at)
      expect(cert.message).toMatch(/cert or certFile, not both/)
      const key = refusal(() =>
        make({
          certFile: certs.client.certFile,
          key: certs.client.key,
          keyFile: certs.client.keyFile,
        }),
      )
      expect(key.option).toBe(at)
      expect(key.message).toMatch(/key or keyFile, not both/)
      expect(key.message).not.toContain(certs.client.key.split('\n')[1]?.slice(0, 12))
    })

    it('refuses a missing file, or one without a certificate or a private key, naming the option and path', () => {
      const missing = join(certs.dir, 'no-such-client.pem')
      const notPem = join(certs.dir, 'not-pem.txt')
      writeFileSync(notPem, 'not PEM\n')
      for (const [tls, option, text] of [
        [
          { certFile: missing, keyFile: certs.client.keyFile },
          `${at}.certFile`,
          /ENOENT.*no-such-client\.pem/,
        ],
        [
          { certFile: certs.client.certFile, keyFile: missing },
          `${at}.keyFile`,
          /ENOENT.*no-such-client\.pem/,
        ],
        [
          { certFile: notPem, keyFile: certs.client.keyFile },
          `${at}.certFile`,
          /no PEM certificate/,
        ],
        // The key given as the certificate, the certificate as the key: both are PEM.
        [
          { certFile: certs.client.keyFile, keyFile: certs.client.keyFile },
          `${at}.certFile`,
          /no PEM certificate/,
        ],
        [
          { certFile: certs.client.certFile, keyFile: certs.client.certFile },
          `${at}.keyFile`,
          /no PEM private key/,
        ],
        [{ cert: certs.client.cert, key: certs.client.cert }, `${at}.key`, /no PEM private key/],
        [{ cert: 42, key: certs.client.key }, `${at}.cert`, /string or Buffer/],
      ] as const) {
        const error = refusal(() => make(tls))
        expect(error.option, JSON.stringify(tls)).toBe(option)
        expect(error.message).toMatch(text)
      }
    })

    it('refuses a key that does not belong to the certificate, and a wrong or missing passphrase, without quoting them', () => {
      const keyBody = certs.server.key.split('\n')[1]?.slice(0, 12) ?? ''
      for (const [tls, option, text] of [
        [
          { cert: certs.client.cert, key: certs.server.key },
          `${at}.key`,
          /does not match the certificate/,
        ],
        [
          { certFile: certs.client.certFile, keyFile: certs.server.keyFile },
          `${at}.keyFile`,
          /does not match the certificate/,
        ],
        [
          { certFile: certs.client.certFile, keyFile: encryptedKeyFile },
          `${at}.passphrase`,
          /encrypted/,
        ],
        [
          {
            certFile: certs.client.certFile,
            keyFile: encryptedKeyFile,
            passphrase: 'wrong-passphrase',
          },
          `${at}.passphrase`,
          /does not decrypt/,
        ],
        [
          { certFile: certs.client.certFile, keyFile: encryptedKeyFile, passphrase: 7 },
          `${at}.passphrase`,
          /a string/,
        ],
      ] as const) {
        const error = refusal(() => make(tls))
        expect(error.option, JSON.stringify(tls)).toBe(option)
        expect(error.message).toMatch(text)
        for (const shown of [error.message, String(JSON.stringify(error.value))]) {
          expect(shown).not.toContain(keyBody)
          expect(shown).not.toContain('wrong-passphrase')
        }
      }
    })
  },
)

it('openBroker hands the client certificate options to the adapter the URL selects', async () => {
  const tls = { certFile: certs.client.certFile, keyFile: certs.client.keyFile }
  await openBroker('rediss://127.0.0.1:6380', { redis: { tls } }).close()
  const error = refusal(() =>
    openBroker('amqps://127.0.0.1:5671', {
      rabbitmq: { tls: { certFile: certs.client.certFile, keyFile: certs.server.keyFile } },
    }),
  )
  expect(error.option).toBe('rabbitmq.tls.keyFile')
})

describe('servers that require a client certificate', () => {
  let nats: StartedBroker
  let redis: StartedBroker
  let rabbitmq: StartedBroker

  beforeAll(async () => {
    const server = {
      certFile: certs.server.certFile,
      keyFile: certs.server.keyFile,
      caFile: certs.ca.certFile,
    }
    ;[nats, redis, rabbitmq] = await Promise.all([
      startNats({
        stopOnExit: true,
        config: `tls { cert_file: "${server.certFile}", key_file: "${server.keyFile}", ca_file: "${server.caFile}", verify: true }\n`,
      }),
      startRedis({ stopOnExit: true, tls: server }),
      startRabbitMq({ stopOnExit: true, tls: server }),
    ])
  }, 120_000)

  afterAll(async () => {
    await Promise.all([nats?.stop(), redis?.stop(), rabbitmq?.stop()])
  })

  const targets = [
    ['nats', (tls: BrokerTlsOptions) => createNatsBroker({ url: nats.url, tls })],
    ['redis', (tls: BrokerTlsOptions) => createRedisBroker({ url: redis.tlsUrl ?? '', tls })],
    [
      'rabbitmq',
      (tls: BrokerTlsOptions) => createRabbitMqBroker({ url: rabbitmq.tlsUrl ?? '', tls }),
    ],
  ] as const

  /** Publish and subscribe both fail with a TLS BROKER_MISCONFIGURED matching `text`. */
  async function expectRefused(broker: Broker, text: RegExp): Promise<void> {
    try {
      for (const error of await publishAndSubscribeFailures(broker, unique('mtls'))) {
        expectBrokerError(error, 'BROKER_MISCONFIGURED', false)
        expect(error.message).toMatch(/TLS failed/)
        expect(error.message).toMatch(text)
      }
    } finally {
      await broker.close()
    }
  }

  it.each(targets)(
    '%s: without a client certificate, a BROKER_MISCONFIGURED saying the server requires one',
    async (_, make) => {
      await expectRefused(
        make({ caFile: certs.ca.certFile }),
        /server requires a client certificate.*tls\.certFile and tls\.keyFile/,
      )
    },
  )

  // nats-server resets this handshake before its alert is read (nats.js reports ECONNRESET),
  // which stays an outage: only its missing-certificate alert is classified.
  it.each(targets.filter(([name]) => name !== 'nats'))(
    '%s: with a client certificate of a CA the server does not trust, a BROKER_MISCONFIGURED',
    async (_, make) => {
      await expectRefused(
        make({ caFile: certs.ca.certFile, cert: stranger.cert, key: stranger.key }),
        /server (requires a client certificate|refused the client certificate)/,
      )
    },
  )

  it.each(targets)('%s: with certFile and keyFile, publishes and consumes', async (_, make) => {
    await roundTrip(
      make({
        caFile: certs.ca.certFile,
        certFile: certs.client.certFile,
        keyFile: encryptedKeyFile,
        passphrase,
      }),
      'mtls',
    )
  })
})
