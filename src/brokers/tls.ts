// Which broker connection failures are TLS misconfigurations, shared by the NATS, RabbitMQ and
// Redis adapters. A certificate the client does not trust, one that has expired or names
// another host, a server that does not speak TLS on the port, a handshake the two sides cannot
// agree on: every attempt fails alike, so read as an outage (BROKER_UNAVAILABLE) a relay would
// retry it for ever and a caller's retry policy would hide it.
import { BrokerError, type BrokerKind, reasonOf } from './errors.js'

/** What went wrong with TLS, for the message and its hint. */
export type TlsProblem = 'untrusted' | 'expired' | 'hostname' | 'not-tls' | 'handshake' | 'setup'

/**
 * Node's certificate verification codes (OpenSSL's X509_V_ERR_* names without the prefix) that
 * mean the client cannot trust the server's certificate chain.
 */
const untrustedCodes = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
])

/** Verification codes of a certificate outside its validity period. */
const expiredCodes = new Set([
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
])

/** Verification codes of a certificate that does not name the host connected to. */
const hostnameCodes = new Set(['ERR_TLS_CERT_ALTNAME_INVALID', 'HOSTNAME_MISMATCH'])

/**
 * OpenSSL's reasons for a handshake whose peer answered with something other than TLS (a
 * plain-text protocol greeting, an HTTP answer): the port does not speak TLS.
 */
const notTlsReason = /wrong version number|packet length too long|http request|unknown protocol/i

const hints: Readonly<Record<TlsProblem, string>> = {
  untrusted:
    "the server's certificate is not trusted; give this process the CA that signed it (NODE_EXTRA_CA_CERTS=<ca.pem>) or check the CA file it was given",
  expired:
    "the server's certificate has expired or is not valid yet; renew it on the server, or check this machine's clock",
  hostname:
    "the server's certificate does not name the host in the URL; connect with a host name the certificate lists, or reissue it for this one",
  'not-tls':
    "the server does not speak TLS on this port; use the server's TLS port, or a URL without TLS where the server has none",
  handshake:
    'the TLS handshake failed; check the TLS versions, ciphers and client certificate the server requires',
  setup:
    'the TLS settings could not be used; check the CA, certificate and key files (present, readable, PEM)',
}

/** Codes a driver error may carry (Node's own or the driver's wrapping) and its reason. */
interface CodedError {
  readonly code?: unknown
  readonly reason?: unknown
  readonly message?: unknown
  readonly cause?: unknown
  /** The nats driver wraps the socket's error here. */
  readonly chainedError?: unknown
}

/** The TLS problem `error` itself (not its causes) stands for, if any. */
function problemOf(error: CodedError): TlsProblem | undefined {
  const code = typeof error.code === 'string' ? error.code : undefined
  if (code === undefined) return undefined
  if (untrustedCodes.has(code)) return 'untrusted'
  if (expiredCodes.has(code)) return 'expired'
  if (hostnameCodes.has(code)) return 'hostname'
  // EPROTO and ERR_SSL_*: OpenSSL gave up on the handshake (Node 20 reports most as
  // ERR_SSL_<REASON>, older ones and some paths as EPROTO with the reason in the message).
  if (code === 'EPROTO' || code.startsWith('ERR_SSL_')) {
    const reason = `${String(error.reason ?? '')} ${String(error.message ?? '')}`
    return notTlsReason.test(reason) ? 'not-tls' : 'handshake'
  }
  // A CA, certificate or key OpenSSL could not read (not PEM, wrong key).
  if (code.startsWith('ERR_OSSL_')) return 'setup'
  // The nats driver: its own TLS error (a CA or certificate file it could not load, a TLS
  // option tls.connect refused), and a server without TLS where the client asked for it.
  if (code === 'TLS') return 'setup'
  if (code === 'SERVER_OPT_NA' && error.message === 'tls') return 'not-tls'
  return undefined
}

/**
 * The error of `error` or one of its causes (`cause`, the nats driver's `chainedError`) that
 * names a TLS problem, with that problem; the innermost one Node raised is preferred to a
 * driver's wrapping of it, whose own code says less.
 */
export function findTlsProblem(
  error: unknown,
): { readonly problem: TlsProblem; readonly error: unknown } | undefined {
  let found: { problem: TlsProblem; error: unknown } | undefined
  const seen = new Set<unknown>()
  let current: unknown = error
  // Bounded and cycle-safe: a cause chain is a few links long, but nothing guarantees it ends.
  for (let depth = 0; depth < 8 && typeof current === 'object' && current !== null; depth++) {
    if (seen.has(current)) break
    seen.add(current)
    const coded = current as CodedError
    const problem = problemOf(coded)
    if (problem !== undefined && (found === undefined || found.problem === 'setup')) {
      found = { problem, error: current }
    }
    current = coded.chainedError ?? coded.cause
  }
  return found
}

/**
 * A non-retryable `BROKER_MISCONFIGURED` error when `error` (or an error it wraps) is a TLS
 * failure of connecting to `broker`: a certificate the client does not trust
 * (DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...),
 * one that has expired (CERT_HAS_EXPIRED) or names another host (ERR_TLS_CERT_ALTNAME_INVALID),
 * a server that does not speak TLS on the port, a failed handshake (EPROTO, ERR_SSL_*), TLS
 * settings that could not be loaded (ERR_OSSL_*, the nats driver's TLS error); else undefined.
 * `context` says what was being done (`cannot connect to <redacted URL>`); the message adds
 * the problem, Node's code and reason, and what to check. A handshake that times out is not
 * one of them: it stays an outage.
 *
 * @example
 * ```ts
 * import { tlsFailure } from './tls.js'
 * const error = Object.assign(new Error('self-signed certificate'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' })
 * tlsFailure('redis', error, 'cannot connect to rediss://127.0.0.1:6380')?.code // 'BROKER_MISCONFIGURED'
 * ```
 */
export function tlsFailure(
  broker: BrokerKind,
  error: unknown,
  context: string,
): BrokerError | undefined {
  const found = findTlsProblem(error)
  if (found === undefined) return undefined
  const coded = found.error as CodedError
  // OpenSSL's own reason reads better than its full message (library, function, source file).
  const reason = typeof coded.reason === 'string' ? coded.reason : reasonOf(found.error)
  return new BrokerError(
    'BROKER_MISCONFIGURED',
    broker,
    `${context}: TLS failed (${String(coded.code)}: ${reason.trim()}): ${hints[found.problem]}`,
    { cause: error },
  )
}
