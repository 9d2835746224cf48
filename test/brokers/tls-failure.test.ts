// The shared TLS classifier of the NATS, RabbitMQ and Redis adapters: which driver errors are
// TLS misconfigurations (not retryable) and which stay outages. tls.test.ts meets the same
// errors from real TLS endpoints.
import { checkServerIdentity, type PeerCertificate } from 'node:tls'
import { describe, expect, it } from 'vitest'
import { BrokerError } from '../../src/brokers/errors.js'
import { findTlsProblem, type TlsProblem, tlsFailure } from '../../src/brokers/tls.js'

/** An error as Node raises it: a message and a string code (and OpenSSL's reason, if given). */
function nodeError(code: string, message: string, reason?: string): Error {
  return Object.assign(new Error(message), { code }, reason === undefined ? {} : { reason })
}

/** The nats driver's NatsError shape: its own code, the socket's error in chainedError. */
function natsError(code: string, message: string, chainedError?: unknown): Error {
  return Object.assign(new Error(message), { code, chainedError })
}

const cases: readonly [string, unknown, TlsProblem][] = [
  ['self-signed', nodeError('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate'), 'untrusted'],
  [
    'self-signed in chain',
    nodeError('SELF_SIGNED_CERT_IN_CHAIN', 'self-signed certificate in certificate chain'),
    'untrusted',
  ],
  [
    'unknown issuer',
    nodeError('UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'unable to verify the first certificate'),
    'untrusted',
  ],
  [
    'wrong CA file',
    nodeError('UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'unable to get local issuer certificate'),
    'untrusted',
  ],
  ['expired', nodeError('CERT_HAS_EXPIRED', 'certificate has expired'), 'expired'],
  ['not yet valid', nodeError('CERT_NOT_YET_VALID', 'certificate is not yet valid'), 'expired'],
  [
    'host name mismatch (Node)',
    checkServerIdentity('broker.example', {
      subject: { CN: 'localhost' },
      subjectaltname: 'DNS:localhost',
    } as PeerCertificate),
    'hostname',
  ],
  [
    'plain server on the port',
    nodeError(
      'ERR_SSL_WRONG_VERSION_NUMBER',
      '80:error:0A00010B:SSL routines:ssl3_get_record:wrong version number',
      'wrong version number',
    ),
    'not-tls',
  ],
  [
    'plain server on the port (EPROTO)',
    nodeError('EPROTO', 'error:1408F10B:SSL routines:ssl3_get_record:wrong version number'),
    'not-tls',
  ],
  [
    'handshake alert',
    nodeError(
      'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
      'ssl3_read_bytes:sslv3 alert handshake failure',
      'sslv3 alert handshake failure',
    ),
    'handshake',
  ],
  ['EPROTO handshake', nodeError('EPROTO', 'tlsv1 alert protocol version'), 'handshake'],
  [
    'client certificate required (TLS 1.3, RabbitMQ)',
    nodeError(
      'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
      'ssl3_read_bytes:tlsv13 alert certificate required:SSL alert number 116',
      'tlsv13 alert certificate required',
    ),
    'certificate-required',
  ],
  [
    'client certificate missing or refused (TLS 1.2, NATS)',
    nodeError(
      'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
      'ssl3_read_bytes:sslv3 alert bad certificate:SSL alert number 42',
      'sslv3 alert bad certificate',
    ),
    'client-certificate',
  ],
  [
    'client certificate of a CA the server does not trust',
    nodeError('ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'tlsv1 alert unknown ca', 'tlsv1 alert unknown ca'),
    'client-certificate',
  ],
  [
    'EPROTO certificate required',
    nodeError('EPROTO', 'tlsv13 alert certificate required'),
    'certificate-required',
  ],
  [
    'unreadable CA',
    nodeError('ERR_OSSL_PEM_NO_START_LINE', 'PEM routines::no start line'),
    'setup',
  ],
  [
    'nats wrapping a certificate error',
    natsError('TLS', 'certificate has expired', nodeError('CERT_HAS_EXPIRED', 'expired')),
    'expired',
  ],
  [
    'nats: CA file missing',
    natsError('TLS', "ENOENT: no such file or directory, open '/etc/ca.pem'"),
    'setup',
  ],
  ['nats: server without TLS', natsError('SERVER_OPT_NA', 'tls'), 'not-tls'],
  [
    'wrapped in a cause',
    new Error('connect failed', {
      cause: nodeError('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate'),
    }),
    'untrusted',
  ],
]

describe('tlsFailure', () => {
  it.each(cases)('%s is a non-retryable BROKER_MISCONFIGURED', (_, error, problem) => {
    expect(findTlsProblem(error)?.problem).toBe(problem)
    for (const broker of ['nats', 'rabbitmq', 'redis'] as const) {
      const failure = tlsFailure(broker, error, 'cannot connect to tls://127.0.0.1:1')
      expect(failure).toBeInstanceOf(BrokerError)
      expect(failure?.code).toBe('BROKER_MISCONFIGURED')
      expect(failure?.retryable).toBe(false)
      expect(failure?.broker).toBe(broker)
      expect(failure?.cause).toBe(error)
      expect(failure?.message).toMatch(
        new RegExp(`^${broker}: cannot connect to tls://127\\.0\\.0\\.1:1: TLS failed \\(`),
      )
    }
  })

  it('names the innermost code and OpenSSL reason, and says what to check', () => {
    const failure = tlsFailure(
      'nats',
      natsError('TLS', 'wrapped', nodeError('CERT_HAS_EXPIRED', 'certificate has expired')),
      'cannot connect to nats://h:4222',
    )
    expect(failure?.message).toBe(
      "nats: cannot connect to nats://h:4222: TLS failed (CERT_HAS_EXPIRED: certificate has expired): the server's certificate has expired or is not valid yet; renew it on the server, or check this machine's clock",
    )
    const plain = tlsFailure('rabbitmq', cases[7]?.[1], 'cannot connect to amqps://h:5672')
    expect(plain?.message).toMatch(
      /\(ERR_SSL_WRONG_VERSION_NUMBER: wrong version number\): the server does not speak TLS on this port/,
    )
  })

  it.each([
    ['connection refused', nodeError('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:1')],
    ['connection reset', nodeError('ECONNRESET', 'read ECONNRESET')],
    ['handshake timeout', nodeError('ERR_TLS_HANDSHAKE_TIMEOUT', 'TLS handshake timeout')],
    ['timeout', nodeError('ETIMEDOUT', 'connect ETIMEDOUT')],
    ['nats connection refused', natsError('CONNECTION_REFUSED', 'connection refused')],
    ['a login refusal', nodeError('AUTHORIZATION_VIOLATION', 'Authorization Violation')],
    ['an error without a code', new Error('Connection is closed.')],
    ['a numeric code', Object.assign(new Error('x'), { code: 406 })],
    ['undefined', undefined],
    ['a string', 'DEPTH_ZERO_SELF_SIGNED_CERT'],
  ])('%s is not a TLS failure (it stays what the adapter made of it)', (_, error) => {
    expect(findTlsProblem(error)).toBeUndefined()
    expect(tlsFailure('redis', error, 'cannot connect')).toBeUndefined()
  })

  it('ends on a cause chain that loops', () => {
    const a: { code: string; cause?: unknown } = { code: 'ECONNRESET' }
    a.cause = { code: 'EPIPE', cause: a }
    expect(findTlsProblem(a)).toBeUndefined()
  })
})
