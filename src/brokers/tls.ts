// Which broker connection failures are TLS misconfigurations, shared by the NATS, RabbitMQ and
// Redis adapters. A certificate the client does not trust, one that has expired or names
// another host, a server that does not speak TLS on the port, a handshake the two sides cannot
// agree on: every attempt fails alike, so read as an outage (BROKER_UNAVAILABLE) a relay would
// retry it for ever and a caller's retry policy would hide it.
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createConnection, isIP, type Socket } from 'node:net'
import { connect as connectTls } from 'node:tls'
import type { Clock } from '../core/clock.js'
import { AbortedError, InvalidOptionError } from '../core/errors.js'
import { checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { BrokerError, type BrokerKind, reasonOf } from './errors.js'
import { hideText } from './option-keys.js'

/** PEM text, as a string or its bytes. */
export type Pem = string | Buffer

/**
 * TLS settings of a broker adapter's connections (`tls` in its options). Whether TLS is used
 * at all is the URL's: `rediss://`, `amqps://`, NATS `tls://` (or a NATS server that requires
 * TLS). Give `ca` or `caFile`, not both; likewise `cert` or `certFile`, `key` or `keyFile`. A
 * client certificate (for a server that requires one: NATS `verify: true`, RabbitMQ
 * `fail_if_no_peer_cert`, Redis `tls-auth-clients yes`) takes both a certificate and its key.
 *
 * @example
 * ```ts
 * import { createRedisBroker } from 'breakwater/brokers'
 * const broker = createRedisBroker({
 *   url: 'rediss://redis.internal:6380',
 *   tls: { caFile: '/etc/ssl/private-ca.pem', certFile: '/etc/ssl/app.pem', keyFile: '/etc/ssl/app-key.pem' },
 * })
 * ```
 */
export interface BrokerTlsOptions {
  /**
   * The CA certificates (PEM; a string, bytes, or several) that may sign the server's
   * certificate. They replace Node's bundled roots for these connections (and
   * NODE_EXTRA_CA_CERTS, which only adds to those roots). @default Node's roots
   */
  readonly ca?: Pem | readonly Pem[] | undefined
  /**
   * Path of a PEM file of CA certificates, used as `ca`. It is read once, when the adapter is
   * created: a missing or unreadable file, or one without a certificate, fails there with
   * `INVALID_OPTION` naming the option and the path.
   */
  readonly caFile?: string | undefined
  /**
   * The client certificate (PEM: the certificate first, then any intermediates) presented to a
   * server that asks for one. Needs `key` or `keyFile`; checked at construction to be a PEM
   * certificate whose public key matches the key. @default no client certificate
   */
  readonly cert?: Pem | undefined
  /**
   * Path of a PEM file holding the client certificate, used as `cert`; read once, when the
   * adapter is created (a missing or unreadable file, or one without a certificate, fails
   * there with `INVALID_OPTION` naming the option and the path).
   */
  readonly certFile?: string | undefined
  /**
   * The private key of the client certificate (PEM; encrypted keys need `passphrase`). Needs
   * `cert` or `certFile`. Never shown in an error. @default no client certificate
   */
  readonly key?: Pem | undefined
  /** Path of a PEM file holding the private key, used as `key`; read once, at construction. */
  readonly keyFile?: string | undefined
  /** The passphrase of an encrypted `key` or `keyFile`. Never shown in an error. */
  readonly passphrase?: string | undefined
}

/** The keys BrokerTlsOptions takes (internal: not exported from the package root). */
export const tlsOptions = optionKeys<BrokerTlsOptions>({
  ca: true,
  caFile: true,
  cert: true,
  certFile: true,
  key: true,
  keyFile: true,
  passphrase: true,
})

/** {@link BrokerTlsOptions} checked and loaded: what the drivers' TLS options take. */
export interface ResolvedTlsOptions {
  /** The CAs to trust instead of Node's roots, or undefined for Node's roots. */
  readonly ca: readonly Pem[] | undefined
  /** The client certificate and its key (with its passphrase), or undefined for none. */
  readonly client?: ClientCertificate
}

/** A client certificate checked against its key: what tls.connect's cert, key, passphrase take. */
export interface ClientCertificate {
  readonly cert: Pem
  readonly key: Pem
  readonly passphrase?: string
}

/**
 * The `tls.connect` options of resolved settings (`ca`, `cert`, `key`, `passphrase`; none for
 * Node's defaults), as amqplib's socket options and ioredis's `tls` take them.
 */
export function connectTlsOptions(tls: ResolvedTlsOptions | undefined): {
  ca?: Pem[]
  cert?: Pem
  key?: Pem
  passphrase?: string
} {
  return {
    ...(tls?.ca === undefined ? {} : { ca: [...tls.ca] }),
    ...tls?.client,
  }
}

/**
 * Checks `options.tls` of the adapter `prefix` once, at construction, and reads its files.
 * `tlsSchemes` are the URL protocols the settings apply to: given with another URL (redis://,
 * amqp://) they would be ignored or switch TLS on behind the URL's back, so that is refused.
 * A CA that holds no PEM certificate is refused too: Node skips what it cannot parse in `ca`,
 * so it would only show as every connection failing verification. A client certificate is
 * refused without its key (and the other way round), and when the key does not match it or
 * cannot be decrypted: each would otherwise surface only as every handshake failing.
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
        'no such option (tls takes ca, caFile, cert, certFile, key, keyFile, passphrase)',
        hideText(tls[key]),
      )
    }
  }
  // Only undefined means none: a null CA or key is refused, naming it.
  checkOptionKeys(option, tls, tlsOptions)
  if (!tlsSchemes.includes(url.protocol)) {
    const schemes = tlsSchemes.map((s) => `${s}//`).join(' or ')
    throw new InvalidOptionError(
      option,
      `TLS settings only with a ${schemes} URL (${prefix}.url is ${url.protocol}//, which does not use TLS)`,
      hideSecrets(tls),
    )
  }
  for (const name of ['ca', 'cert', 'key'] as const) {
    if (tls[name] !== undefined && tls[`${name}File`] !== undefined) {
      throw new InvalidOptionError(option, `${name} or ${name}File, not both`, hideSecrets(tls))
    }
  }
  const ca = resolveCa(option, tls)
  const client = resolveClientCertificate(option, tls)
  return client === undefined ? { ca } : { ca, client }
}

/** The TLS settings as an error may show them: text, bytes, arrays and objects hidden. */
function hideSecrets(tls: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(tls).map(([k, v]) => [k, hideText(v)]))
}

/** A PEM setting as given: as text (`ca`, `cert`, `key`) or as a file (`caFile`, ...). */
interface GivenPem {
  /** Its name in `tls` (`certFile`). */
  readonly name: string
  /** The option's full name (`redis.tls.certFile`). */
  readonly option: string
  readonly value: unknown
  readonly isFile: boolean
  /** The value as an error may show it: a file's path; text, bytes and anything else hidden. */
  readonly shown: unknown
}

/**
 * The setting `name` of `tls` as given, as `${name}File` or as `name` (both together are
 * refused before); undefined when neither is.
 */
function givenPem(
  option: string,
  tls: Record<string, unknown>,
  name: string,
): GivenPem | undefined {
  const isFile = tls[`${name}File`] !== undefined
  const given = isFile ? `${name}File` : name
  const value = tls[given]
  if (value === undefined) return undefined
  // PEM text where a path goes (a secret mounted as an environment variable): read as a path,
  // Node's ENOENT message would quote it, the whole key, and so would `shown`.
  if (
    isFile &&
    typeof value === 'string' &&
    (value.includes('-----BEGIN') || /[\r\n]/.test(value))
  ) {
    throw new InvalidOptionError(
      `${option}.${given}`,
      `the path of a PEM file, not PEM text (give the text as ${option}.${name})`,
      '[hidden]',
    )
  }
  const shown = isFile && typeof value === 'string' ? value : hideText(value)
  return { name: given, option: `${option}.${given}`, value, isFile, shown }
}

/**
 * The PEM of `given` (holding `what`): its text, or its file read. Refuses text that is
 * neither a string nor a Buffer, and a file path that is not a non-empty string or cannot be
 * read (the path is shown, never what is not a path: it may be a key given in another form).
 */
function readPem(given: GivenPem, what: string): Pem {
  const { option, value } = given
  if (!given.isFile) {
    if (typeof value === 'string' || Buffer.isBuffer(value)) return value
    throw new InvalidOptionError(option, `a PEM ${what}: a string or Buffer`, given.shown)
  }
  if (typeof value !== 'string' || value === '') {
    throw new InvalidOptionError(option, `the path of a PEM file of ${what}`, hideText(value))
  }
  try {
    return readFileSync(value)
  } catch (error) {
    throw new InvalidOptionError(
      option,
      `a readable PEM file of ${what} (${reasonOf(error)})`,
      value,
    )
  }
}

/** The checked `ca` or `caFile` of `tls`, read; undefined for Node's roots. */
function resolveCa(option: string, tls: Record<string, unknown>): Pem[] | undefined {
  const given = givenPem(option, tls, 'ca')
  if (given === undefined) return undefined
  if (given.isFile) {
    const pem = readPem(given, 'CA certificates')
    const problem = certificatesProblem(pem)
    if (problem !== undefined) {
      throw new InvalidOptionError(
        given.option,
        `a PEM file of CA certificates (${problem})`,
        given.shown,
      )
    }
    return [pem]
  }
  const list: unknown[] = Array.isArray(tls.ca) ? tls.ca : [tls.ca]
  const expected = 'PEM CA certificates: a string or Buffer, or a non-empty array of them'
  if (list.length === 0) throw new InvalidOptionError(`${option}.ca`, expected, tls.ca)
  list.forEach((pem, i) => {
    const where = Array.isArray(tls.ca) ? `${option}.ca[${i}]` : `${option}.ca`
    if (typeof pem !== 'string' && !Buffer.isBuffer(pem)) {
      throw new InvalidOptionError(where, expected, hideText(pem))
    }
    const problem = certificatesProblem(pem)
    if (problem !== undefined)
      throw new InvalidOptionError(where, `${expected} (${problem})`, hideText(pem))
  })
  return list as Pem[]
}

/**
 * The checked client certificate and key of `tls`, read, or undefined when neither is given.
 * Errors name the option given (`cert` or `certFile`, `key` or `keyFile`) and show a file's
 * path, never the key or passphrase.
 */
function resolveClientCertificate(
  option: string,
  tls: Record<string, unknown>,
): ClientCertificate | undefined {
  const givenCert = givenPem(option, tls, 'cert')
  const givenKey = givenPem(option, tls, 'key')
  if (givenCert !== undefined && givenKey === undefined) {
    throw new InvalidOptionError(
      givenCert.option,
      'a client certificate with its key: it needs its key (tls.key or tls.keyFile) too',
      hideText(givenCert.value),
    )
  }
  if (givenKey !== undefined && givenCert === undefined) {
    throw new InvalidOptionError(
      givenKey.option,
      'a private key with its client certificate: it needs its certificate (tls.cert or tls.certFile) too',
      givenKey.shown,
    )
  }
  const passphrase = tls.passphrase
  if (passphrase !== undefined) {
    if (givenKey === undefined) {
      throw new InvalidOptionError(
        `${option}.passphrase`,
        'a passphrase only with a key (tls.key or tls.keyFile) it decrypts',
        hideText(passphrase),
      )
    }
    if (typeof passphrase !== 'string') {
      throw new InvalidOptionError(`${option}.passphrase`, 'a string', hideText(passphrase))
    }
  }
  if (givenCert === undefined || givenKey === undefined) return undefined
  const cert = readPem(givenCert, 'client certificate')
  const certProblem = certificatesProblem(cert)
  if (certProblem !== undefined) {
    throw new InvalidOptionError(
      givenCert.option,
      `a PEM client certificate (${certProblem})`,
      givenCert.shown,
    )
  }
  const key = readPem(givenKey, 'private key')
  if (!pemPrivateKey.test(String(key))) {
    throw new InvalidOptionError(
      givenKey.option,
      'a PEM private key (it holds no PEM private key)',
      givenKey.shown,
    )
  }
  checkKeyPair(option, cert, key, givenKey, passphrase)
  return passphrase === undefined ? { cert, key } : { cert, key, passphrase }
}

/**
 * Refuses a key that cannot be decrypted (no passphrase, a wrong one) or read, or whose public
 * half is not the certificate's (the first certificate in `cert`, the one presented).
 * `tls.createSecureContext` would catch a mismatch only between keys of one type (an RSA key
 * beside an EC certificate passes), so the certificate checks the key itself.
 */
function checkKeyPair(
  option: string,
  cert: Pem,
  key: Pem,
  givenKey: GivenPem,
  passphrase: string | undefined,
): void {
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(passphrase === undefined ? { key } : { key, passphrase })
  } catch (error) {
    // OpenSSL's reasons (bad decrypt, unsupported) name no key material. Node 20 reports a
    // missing passphrase only as an interrupted read, so the key's PEM header says encrypted.
    const encrypted = /ENCRYPTED/.test(String(key))
    if (passphrase === undefined && encrypted) {
      throw new InvalidOptionError(
        `${option}.passphrase`,
        `the passphrase of the encrypted key (${givenKey.name})`,
        undefined,
      )
    }
    // A wrong passphrase fails the cipher's padding check only most of the time: about once in
    // 256 it decrypts to bytes that are no key, and OpenSSL reports an ASN.1 error instead. An
    // encrypted key that will not open with the passphrase given is the passphrase's fault.
    if (
      passphrase !== undefined &&
      ((error as { code?: unknown }).code === 'ERR_OSSL_BAD_DECRYPT' || encrypted)
    ) {
      throw new InvalidOptionError(
        `${option}.passphrase`,
        `a passphrase that decrypts the key: this one does not decrypt it (${reasonOf(error)})`,
        hideText(passphrase),
      )
    }
    throw new InvalidOptionError(
      givenKey.option,
      `a PEM private key that can be read (${reasonOf(error)})`,
      givenKey.shown,
    )
  }
  const leaf = String(cert).match(pemCertificate)?.[0] ?? ''
  if (!new X509Certificate(leaf).checkPrivateKey(privateKey)) {
    throw new InvalidOptionError(
      givenKey.option,
      "the client certificate's private key: this key does not match the certificate",
      givenKey.shown,
    )
  }
}

const pemPrivateKey = /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/

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
export type TlsProblem =
  | 'untrusted'
  | 'expired'
  | 'hostname'
  | 'not-tls'
  | 'certificate-required'
  | 'client-certificate'
  | 'handshake'
  | 'setup'

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

/**
 * The alert a TLS 1.3 server sends when it requires a client certificate and got none (alert
 * 116; Node's ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED): RabbitMQ's `fail_if_no_peer_cert`.
 */
const certificateRequiredReason = /alert certificate required/i

/**
 * Alerts a server sends about the client's certificate: none where one is required (TLS 1.2
 * servers say bad certificate, as nats-server does with `verify: true`), or one it does not
 * accept (signed by a CA it does not trust, expired, revoked, not for client authentication).
 * A client that distrusts the server's certificate fails with a verification code instead, so
 * an alert received is always about the client's side.
 */
const clientCertificateReason =
  /alert (bad certificate|unsupported certificate|certificate revoked|certificate expired|certificate unknown|unknown ca)/i

const hints: Readonly<Record<TlsProblem, string>> = {
  untrusted:
    "the server's certificate is not trusted; give the adapter the CA that signed it (its tls.caFile or tls.ca option; or NODE_EXTRA_CA_CERTS=<ca.pem> for the whole process), or check the CA it was given",
  expired:
    "the server's certificate has expired or is not valid yet; renew it on the server, or check this machine's clock",
  hostname:
    "the server's certificate does not name the host in the URL; connect with a host name the certificate lists, or reissue it for this one",
  'not-tls':
    "the server does not speak TLS on this port; use the server's TLS port, or a URL without TLS where the server has none",
  'certificate-required':
    'the server requires a client certificate and none was sent; give the adapter one signed by a CA the server trusts, with its key (its tls.certFile and tls.keyFile options, or tls.cert and tls.key)',
  'client-certificate':
    "the server requires a client certificate signed by a CA it trusts (valid, made for client authentication) and refused this connection's, or its absence; give the adapter one with its key (its tls.certFile and tls.keyFile options, or tls.cert and tls.key), or check the one it was given",
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
    if (notTlsReason.test(reason)) return 'not-tls'
    if (certificateRequiredReason.test(reason)) return 'certificate-required'
    if (clientCertificateReason.test(reason)) return 'client-certificate'
    return 'handshake'
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
 * a server that does not speak TLS on the port, a server that requires a client certificate and
 * got none or refused it (its certificate-required, bad-certificate or unknown-CA alert), a
 * failed handshake (EPROTO, ERR_SSL_*), TLS
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

/** Where {@link tlsRefusal} connects, and how its connection turns to TLS. */
export interface TlsProbeTarget {
  readonly host: string
  readonly port: number
  /**
   * For a server that greets in plain text and has the client upgrade the same connection to
   * TLS (NATS: an `INFO {...}` line, then TLS when it says `tls_required`): given the
   * greeting's first line, whether the client upgrades. Without it, TLS starts at once.
   */
  readonly startTls?: (greeting: string) => boolean
}

/**
 * How much of a plain-text greeting {@link tlsRefusal} reads for its first line. A NATS INFO
 * line lists the cluster's URLs, a few KiB for a large cluster.
 */
const MAX_GREETING_BYTES = 64 * 1024

/**
 * Why a TLS server refused this client, asked on a TLS connection of its own that sends
 * nothing: resolves to the error the server's alert raised (a certificate-required or
 * bad-certificate alert, anything {@link findTlsProblem} names), or undefined when the handshake
 * is followed by data, a close without an alert, or nothing within `timeoutMs` on `clock`, or
 * when `signal` aborts. With `target.startTls` the connection first reads the server's
 * plain-text greeting line and turns to TLS only when `startTls` accepts it (undefined
 * otherwise, nothing written). The connection is closed in every case.
 *
 * A TLS 1.3 server checks the client's certificate after the client has finished its side of
 * the handshake, so a client that writes at once (ioredis sends its first commands, nats.js its
 * CONNECT) meets the server's close as a reset on that write, and the alert saying why is
 * lost; a connection that writes nothing reads the alert.
 *
 * @example
 * ```ts
 * import { systemClock } from '../core/clock.js'
 * import { tlsRefusal } from './tls.js'
 * const why = await tlsRefusal({ host: '127.0.0.1', port: 6380 }, { ca: undefined }, systemClock, 1_000, new AbortController().signal)
 * ```
 */
export function tlsRefusal(
  target: TlsProbeTarget,
  tls: ResolvedTlsOptions | undefined,
  clock: Clock,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(undefined)
  return new Promise((resolve) => {
    let done = false
    let socket: Socket | undefined
    const finish = (result: unknown): void => {
      if (done) return
      done = true
      clock.clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket?.destroy()
      resolve(result)
    }
    const onAbort = (): void => finish(undefined)
    const timer = clock.setTimeout(() => finish(undefined), timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    // A URL's IPv6 host keeps its brackets; net and tls want the bare address, and no SNI for
    // an IP (nats.js and ioredis send none either).
    const host = target.host.replace(/^\[|\]$/g, '')
    const secureOptions = {
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...connectTlsOptions(tls),
    }
    const secure = (tcp?: Socket): void => {
      const secured = connectTls(
        tcp === undefined
          ? { host, port: target.port, ...secureOptions }
          : { socket: tcp, ...secureOptions },
      )
      socket = secured
      secured.on('error', (error) =>
        finish(findTlsProblem(error) === undefined ? undefined : error),
      )
      secured.on('data', () => finish(undefined))
      secured.on('close', () => finish(undefined))
    }
    const startTls = target.startTls
    if (startTls === undefined) {
      secure()
      return
    }
    const tcp = createConnection({ host, port: target.port })
    socket = tcp
    let greeting = Buffer.alloc(0)
    const onClose = (): void => finish(undefined)
    const onData = (chunk: Buffer): void => {
      greeting = Buffer.concat([greeting, chunk])
      const end = greeting.indexOf(0x0a)
      if (end === -1) {
        if (greeting.length > MAX_GREETING_BYTES) finish(undefined)
        return
      }
      tcp.off('data', onData)
      tcp.off('error', onClose)
      tcp.off('close', onClose)
      // Bytes after the line are the server speaking out of turn: not a greeting to answer.
      if (end + 1 === greeting.length && startTls(greeting.toString('utf8'))) secure(tcp)
      else finish(undefined)
    }
    tcp.on('data', onData)
    tcp.on('error', onClose)
    tcp.on('close', onClose)
  })
}
