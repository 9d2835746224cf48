// Which broker connection failures are TLS misconfigurations, shared by the NATS, RabbitMQ and
// Redis adapters. A certificate the client does not trust, one that has expired or names
// another host, a server that does not speak TLS on the port, a handshake the two sides cannot
// agree on: every attempt fails alike, so read as an outage (BROKER_UNAVAILABLE) a relay would
// retry it for ever and a caller's retry policy would hide it.
import { X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createConnection } from 'node:net'
import type { Clock } from '../core/clock.js'
import { AbortedError, InvalidOptionError } from '../core/errors.js'
import { checkObject, optionKeys } from '../core/validate.js'
import { BrokerError, type BrokerKind, reasonOf } from './errors.js'
import { hideText } from './option-keys.js'

/** PEM text, as a string or its bytes. */
export type Pem = string | Buffer

/**
 * TLS settings of a broker adapter's connections (`tls` in its options). Whether TLS is used
 * at all is the URL's: `rediss://`, `amqps://`, NATS `tls://` (or a NATS server that requires
 * TLS). Give `ca` or `caFile`, not both.
 *
 * @example
 * ```ts
 * import { createRedisBroker } from 'breakwater/brokers'
 * const broker = createRedisBroker({ url: 'rediss://redis.internal:6380', tls: { caFile: '/etc/ssl/private-ca.pem' } })
 * ```
 */
export interface BrokerTlsOptions {
  /**
   * The CA certificates (PEM; a string, bytes, or several) that may sign the server's
   * certificate. They replace Node's bundled roots for these connections (and
   * NODE_EXTRA_CA_CERTS, which only adds to those roots). @default Node's roots
   */
  readonly ca?: Pem | readonly Pem[]
  /**
   * Path of a PEM file of CA certificates, used as `ca`. It is read once, when the adapter is
   * created: a missing or unreadable file, or one without a certificate, fails there with
   * `INVALID_OPTION` naming the option and the path.
   */
  readonly caFile?: string
}

const tlsOptions = optionKeys<BrokerTlsOptions>({ ca: true, caFile: true })

/** {@link BrokerTlsOptions} checked and loaded: what the drivers' TLS options take. */
export interface ResolvedTlsOptions {
  /** The CAs to trust instead of Node's roots, or undefined for Node's roots. */
  readonly ca: readonly Pem[] | undefined
}

/**
 * Checks `options.tls` of the adapter `prefix` once, at construction, and reads its CA file.
 * `tlsSchemes` are the URL protocols the settings apply to: given with another URL (redis://,
 * amqp://) they would be ignored or switch TLS on behind the URL's back, so that is refused.
 * A CA that holds no PEM certificate is refused too: Node skips what it cannot parse in `ca`,
 * so it would only show as every connection failing verification.
 */
export function resolveTlsOptions(
  prefix: string,
  value: unknown,
  url: URL,
  tlsSchemes: readonly string[],
): ResolvedTlsOptions | undefined {
  if (value === undefined) return undefined
  const option = `${prefix}.tls`
  const tls = checkObject(option, value)
  for (const key of Object.keys(tls)) {
    if (!tlsOptions.has(key)) {
      throw new InvalidOptionError(
        `${option}.${key}`,
        'no such option (tls takes ca or caFile)',
        hideText(tls[key]),
      )
    }
  }
  if (!tlsSchemes.includes(url.protocol)) {
    const schemes = tlsSchemes.map((s) => `${s}//`).join(' or ')
    throw new InvalidOptionError(
      option,
      `TLS settings only with a ${schemes} URL (${prefix}.url is ${url.protocol}//, which does not use TLS)`,
      value,
    )
  }
  if (tls.ca !== undefined && tls.caFile !== undefined) {
    throw new InvalidOptionError(option, 'ca or caFile, not both', value)
  }
  if (tls.caFile !== undefined) {
    const file = tls.caFile
    const fileOption = `${option}.caFile`
    if (typeof file !== 'string' || file === '') {
      throw new InvalidOptionError(fileOption, 'the path of a PEM file of CA certificates', file)
    }
    let pem: Buffer
    try {
      pem = readFileSync(file)
    } catch (error) {
      throw new InvalidOptionError(
        fileOption,
        `a readable PEM file of CA certificates (${reasonOf(error)})`,
        file,
      )
    }
    const problem = certificatesProblem(pem)
    if (problem !== undefined) {
      throw new InvalidOptionError(fileOption, `a PEM file of CA certificates (${problem})`, file)
    }
    return { ca: [pem] }
  }
  if (tls.ca === undefined) return { ca: undefined }
  const list: unknown[] = Array.isArray(tls.ca) ? tls.ca : [tls.ca]
  const expected = 'PEM CA certificates: a string or Buffer, or a non-empty array of them'
  if (list.length === 0) throw new InvalidOptionError(`${option}.ca`, expected, tls.ca)
  list.forEach((pem, i) => {
    const where = Array.isArray(tls.ca) ? `${option}.ca[${i}]` : `${option}.ca`
    if (typeof pem !== 'string' && !Buffer.isBuffer(pem)) {
      throw new InvalidOptionError(where, expected, pem)
    }
    const problem = certificatesProblem(pem)
    if (problem !== undefined)
      throw new InvalidOptionError(where, `${expected} (${problem})`, hideText(pem))
  })
  return { ca: list as Pem[] }
}

const pemCertificate = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

/** Why `pem` is not one or more PEM certificates, or undefined when it is. */
function certificatesProblem(pem: Pem): string | undefined {
  const blocks = String(pem).match(pemCertificate)
  if (blocks === null) return 'it holds no PEM certificate'
  for (const block of blocks) {
    try {
      new X509Certificate(block)
    } catch (error) {
      return `a certificate in it cannot be read: ${reasonOf(error)}`
    }
  }
  return undefined
}

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
    "the server's certificate is not trusted; give the adapter the CA that signed it (its tls.caFile or tls.ca option; or NODE_EXTRA_CA_CERTS=<ca.pem> for the whole process), or check the CA it was given",
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
 * one of them: it stays an outage (the Redis adapter first asks the port in plain text whether
 * it is a Redis, which never answers a TLS handshake: see {@link plainAnswer}).
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

/**
 * Asks `host`:`port` a question in plain text, on a TCP connection of its own: sends `hello`
 * and resolves to the start of the answer when it matches `answer` (for a server that does not
 * answer a TLS ClientHello at all, whether the port speaks its plain protocol). Resolves to
 * undefined when the connection fails or closes, the first line of the answer (or 4 KiB)
 * does not match, or nothing matched within `timeoutMs` on `clock`; rejects with
 * `AbortedError` when `signal` aborts. The connection is closed in every case.
 *
 * @example
 * ```ts
 * import { systemClock } from '../core/clock.js'
 * import { plainAnswer } from './tls.js'
 * const pong = await plainAnswer('127.0.0.1', 6379, 'PING\r\n', /^[+-][^\r\n]*\r\n/, systemClock, 1_000, new AbortController().signal)
 * ```
 */
export function plainAnswer(
  host: string,
  port: number,
  hello: string,
  answer: RegExp,
  clock: Clock,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<string | undefined> {
  if (signal.aborted) return Promise.reject(new AbortedError(signal.reason))
  return new Promise((resolve, reject) => {
    let done = false
    let received = Buffer.alloc(0)
    // A URL's IPv6 host keeps its brackets; net wants the bare address.
    const socket = createConnection({ host: host.replace(/^\[|\]$/g, ''), port })
    const finish = (result: string | undefined, error?: Error): void => {
      if (done) return
      done = true
      clock.clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      if (error === undefined) resolve(result)
      else reject(error)
    }
    const onAbort = (): void => finish(undefined, new AbortedError(signal.reason))
    const timer = clock.setTimeout(() => finish(undefined), timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('connect', () => socket.write(hello))
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      const text = received.toString('latin1')
      const matched = answer.exec(text)
      if (matched !== null) finish(matched[0])
      else if (text.includes('\n') || received.length > 4096) finish(undefined)
    })
    socket.on('error', () => finish(undefined))
    socket.on('close', () => finish(undefined))
  })
}
