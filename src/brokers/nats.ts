// NATS JetStream adapter. The `nats` driver is imported lazily, here only.
import type {
  ConnectionOptions,
  ConsumerMessages,
  JetStreamManager,
  JsMsg,
  Msg,
  MsgHdrs,
  NatsConnection,
  NatsError,
  TlsOptions,
} from 'nats'
import { within } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkObject, optionKeys } from '../core/validate.js'
import {
  type BrokerCommonOptions,
  checkOutgoing,
  checkSubscribeArgs,
  closeAll,
  closedError,
  closedWhileSubscribing,
  commonOptionKeys,
  hasEdgeWhitespace,
  KEY_HEADER,
  lazyDriver,
  ms,
  NATS_MSG_ID_HEADER,
  pairBroker,
  payloadBytes,
  type ResolvedCommonOptions,
  redactUrl,
  resolveCommonOptions,
  safeName,
  subscriptionDispatcher,
  throwIfAborted,
  trackedSubscription,
  untilAborted,
} from './common.js'
import type { Delivery, KeyedDispatcher, Outcome } from './dispatcher.js'
import { BrokerError, reasonOf, SubscriptionCloseTimeoutError } from './errors.js'
import { gateLostDeliveries, type LostDeliveryGate } from './lost-delivery-gate.js'
import { checkKnownBrokerOptions } from './option-keys.js'
import { type Session, type SupervisedSubscription, superviseSessions } from './sessions.js'
import { tlsFailure, tlsRefusal } from './tls.js'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'

/** A JetStream stream shared by every topic, for {@link NatsBrokerOptions.stream}. */
export interface NatsStreamSpec {
  /** Stream name (`[A-Za-z0-9_-]`). */
  readonly name: string
  /** Subjects it stores; every topic published must match one. */
  readonly subjects: readonly string[]
}

/**
 * Options of {@link createNatsBroker}.
 *
 * Topics are NATS subjects. By default each topic gets its own file-backed stream (named after
 * the topic, see `safeName`), created on first use; `stream` puts every topic in one stream.
 * Each consumer group is a durable pull consumer on that stream.
 *
 * TLS: a `nats://` URL uses TLS when the server requires it; a `tls://` URL, or any `tls`
 * option (such as the CA to trust), requires it, so a server without TLS fails with
 * `BROKER_MISCONFIGURED` instead of carrying the connection in plain text. A server that
 * requires a client certificate (`tls { verify: true }`) and got none, or one it does not
 * trust, fails with `BROKER_MISCONFIGURED` too, saying so. nats-server checks the certificate
 * after the client has written CONNECT, so its refusal mostly arrives as a reset connection: a
 * connection reset as it opens is asked again on one that reads the INFO line, completes the
 * TLS handshake and writes nothing (bounded by `connectTimeoutMs`), which reads the server's
 * alert; a reset no alert explains stays `BROKER_UNAVAILABLE`.
 */
export interface NatsBrokerOptions extends BrokerCommonOptions {
  /**
   * One stream for every topic instead of one stream per topic. Its subjects must cover every
   * topic; a topic it does not cover fails with `BROKER_UNROUTABLE`. Needed to subscribe to a
   * wildcard topic (`orders.*`), which is refused without it: a stream per topic made for the
   * wildcard would store the subjects of every topic it matches.
   * @default one stream per topic
   */
  readonly stream?: NatsStreamSpec | undefined
  /**
   * Create a missing stream (file storage, one replica, limits retention). When false, streams
   * must exist already (managed elsewhere): `publish()` and `subscribe()` on a topic without
   * one fail with `BROKER_UNROUTABLE` (retryable). A stream that cannot be created because another
   * stream already stores its subjects fails `publish()` and `subscribe()` with
   * `BROKER_MISCONFIGURED` (not retryable): name that stream in `stream` instead.
   * @default true
   */
  readonly createStreams?: boolean | undefined
  /**
   * The duplicate window of streams this adapter creates: a message id published again within
   * it is acknowledged but not stored again. At most `maxAgeMs` when that is set.
   * @default 120000, or maxAgeMs when that is shorter
   */
  readonly duplicateWindowMs?: number | undefined
  /** Age after which streams this adapter creates drop messages; 0 keeps them. @default 0 */
  readonly maxAgeMs?: number | undefined
  /**
   * How long a delivered message may stay unacknowledged before JetStream redelivers it (a
   * crashed subscriber's messages come back after this). Extended while its handler runs.
   * After a lost connection, a subscription whose deliveries went down with it holds its
   * handlers up to this long (and a second) until JetStream has sent them again, so that a
   * key's later messages do not overtake them; so does a new subscription whose crashed
   * predecessor left deliveries unacknowledged (see {@link createNatsBroker}).
   * @default 30000
   */
  readonly ackWaitMs?: number | undefined
  /** Connection name the server shows. @default 'breakwater' */
  readonly name?: string | undefined
}

interface ResolvedNatsOptions extends ResolvedCommonOptions {
  readonly stream: NatsStreamSpec | undefined
  readonly createStreams: boolean
  readonly duplicateWindowMs: number
  readonly maxAgeMs: number
  readonly ackWaitMs: number
  readonly name: string
}

/** The keys NatsBrokerOptions takes (internal: not exported from the package root). */
export const natsOptions = optionKeys<NatsBrokerOptions>({
  ...commonOptionKeys,
  stream: true,
  createStreams: true,
  duplicateWindowMs: true,
  maxAgeMs: true,
  ackWaitMs: true,
  name: true,
})

/** The keys NatsStreamSpec takes (internal: not exported from the package root). */
export const streamSpecKeys = optionKeys<NatsStreamSpec>({ name: true, subjects: true })

const loadNats = lazyDriver('nats', async () => {
  const nats = await import('nats')
  await closeUnconnectedTransports()
  return nats
})

const patched = Symbol.for('breakwater.nats.closeUnconnected')

/**
 * Makes nats.js's Node transport close its socket when it is closed before it connected. A
 * connect that times out while the server has accepted the TCP connection but not sent its
 * INFO line (a hung server, another program on the port) closes the transport, and the
 * transport's close() returns at once when it never connected, so the socket stayed open for
 * good: one per attempt of a publisher or subscription retrying against such a peer. The
 * socket is not reachable otherwise (the driver drops the transport with the failed connect),
 * and diagnostics_channel could only tell which socket is whose with an AsyncLocalStorage,
 * which turns on promise hooks for the whole process. Patched once per process, only in that
 * case (a connected transport's close is unchanged), so any other user of nats.js in the
 * process gets the same fix; skipped if a future nats.js has no such transport.
 */
async function closeUnconnectedTransports(): Promise<void> {
  let transport: typeof import('nats/lib/src/node_transport.js').NodeTransport
  try {
    transport = (await import('nats/lib/src/node_transport.js')).NodeTransport
  } catch {
    return
  }
  const proto = transport?.prototype as (NodeTransportShape & { [patched]?: true }) | undefined
  if (proto === undefined || typeof proto.close !== 'function' || proto[patched]) return
  const close = proto.close
  proto.close = function (this: NodeTransportShape, error?: Error): Promise<void> {
    if (!this.connected) this.socket?.destroy()
    return close.call(this, error)
  }
  proto[patched] = true
}

/** What {@link closeUnconnectedTransports} uses of nats.js's NodeTransport. */
interface NodeTransportShape {
  connected: boolean
  socket?: { destroy(): void }
  close(error?: Error): Promise<void>
}

/**
 * A NATS JetStream publisher and subscriber.
 *
 * `publish()` sends every message of a batch at once (pipelined) with `Nats-Msg-Id` set to the
 * message id and resolves when JetStream has acknowledged each one; a duplicate id inside the
 * stream's duplicate window is acknowledged without being stored twice. nats-server 2.9
 * acknowledges once the message is in its file store, before fsync: it survives a broker
 * crash, not a power loss.
 *
 * The connection uses `noAsyncTraces: true`: the driver otherwise captures a stack trace for
 * every request, which about halves publish throughput. Connections do not reconnect by
 * themselves: a publisher reconnects on its next `publish()` (so failures surface at once as
 * `BROKER_UNAVAILABLE` and the caller's retry policy decides), a subscription reconnects with
 * backoff. `close()` drains each connection for at most `connectTimeoutMs`, then closes it: a
 * server that keeps the connection open but stopped answering cannot hold it. A connect that
 * times out closes its socket, also one the peer accepted and never answered.
 *
 * Per-key order survives a lost connection: when JetStream counts more deliveries as
 * unacknowledged than the reconnected subscription knows of (they were in flight when the
 * connection died, and JetStream resends them only after `ackWaitMs`), no handler starts until
 * they are back or `ackWaitMs` and a second have passed; what arrives meanwhile is queued in
 * order. In a group of several subscribers the others' deliveries count too, so a reconnect may
 * pause that long. A new subscription (a restarted process) waits alike when its group has
 * unacknowledged deliveries and no other subscriber is pulling: they were left by a predecessor
 * that crashed, and JetStream sends them again only after `ackWaitMs`, behind which the key's
 * later messages would otherwise run first. It does not wait when it joins live subscribers of
 * its group (their deliveries never come back to it), nor while the server still counts a dead
 * predecessor (whose host vanished without closing its connection) as pulling.
 *
 * A delivered message's id is its `Nats-Msg-Id` header. A message another producer sent without
 * one, with an empty one, or with one that is not UTF-8 (the client decodes such bytes as
 * U+FFFD, so two of them would look alike) gets `<stream>:<sequence>`, stable across
 * redeliveries; an id holding U+FFFD is read the same way. A header another producer repeated
 * is delivered as its values joined with `", "`, as HTTP combines a repeated field; a repeated
 * id or key header gives its first value. A header named `__proto__` is delivered as an
 * ordinary one (the headers object has no prototype), as on Redis.
 *
 * An unknown (misspelt) option, top-level or in `stream` or `tls`, is refused with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it (`nats.ackWait`), its value hidden when it
 * is text or bytes.
 *
 * @example
 * ```ts
 * import { createNatsBroker } from 'breakwater/brokers'
 * const broker = createNatsBroker({ url: 'nats://127.0.0.1:4222' })
 * await broker.subscriber.subscribe('orders', 'billing', async (m) => bill(m.payload))
 * await broker.publisher.publish([{ id: 'e1', topic: 'orders', key: 'order-7', payload: '{}', headers: {} }])
 * await broker.close()
 * ```
 */
export function createNatsBroker(options: NatsBrokerOptions): Broker {
  const resolved = resolveNatsOptions(options)
  return pairBroker(new NatsPublisher(resolved), new NatsSubscriber(resolved))
}

function resolveNatsOptions(options: NatsBrokerOptions): ResolvedNatsOptions {
  const common = resolveCommonOptions(
    'nats',
    options,
    ['nats:', 'tls:'],
    ['nats:', 'tls:'],
    natsOptions,
  )
  checkNatsUrlRest(common.url)
  // connectNats sends user:password, or a lone user name as a token; a password without a
  // user name fits neither and would be dropped, failing later as an authorization error.
  if (common.url.password !== '' && common.url.username === '') {
    throw new InvalidOptionError(
      'nats.url',
      'a nats:// or tls:// URL with user:password@ or token@ credentials (a password needs a user name)',
      redactUrl(options.url),
    )
  }
  let stream: NatsStreamSpec | undefined
  if (options.stream !== undefined) {
    const spec = checkObject('nats.stream', options.stream)
    checkKnownBrokerOptions('nats.stream', spec, streamSpecKeys)
    const name = spec.name
    if (typeof name !== 'string' || safeName(name) !== name || name === '') {
      throw new InvalidOptionError('nats.stream.name', 'a name of [A-Za-z0-9_-]', name)
    }
    const subjects = spec.subjects
    if (
      !Array.isArray(subjects) ||
      subjects.length === 0 ||
      !subjects.every((s) => typeof s === 'string' && s !== '')
    ) {
      throw new InvalidOptionError(
        'nats.stream.subjects',
        'a non-empty array of subjects',
        subjects,
      )
    }
    stream = { name, subjects: [...(subjects as string[])] }
  }
  const createStreams = options.createStreams ?? true
  if (typeof createStreams !== 'boolean') {
    throw new InvalidOptionError('nats.createStreams', 'a boolean', createStreams)
  }
  const name = options.name ?? 'breakwater'
  if (typeof name !== 'string') throw new InvalidOptionError('nats.name', 'a string', name)
  const maxAgeMs = ms('nats.maxAgeMs', options.maxAgeMs, 0, 0)
  // JetStream refuses a stream whose duplicate window is longer than its max age, which would
  // fail every publish: the default window shrinks to the max age, a given one is refused here.
  const duplicateWindowMs = ms(
    'nats.duplicateWindowMs',
    options.duplicateWindowMs,
    maxAgeMs > 0 ? Math.min(120_000, maxAgeMs) : 120_000,
    0,
  )
  if (maxAgeMs > 0 && duplicateWindowMs > maxAgeMs) {
    throw new InvalidOptionError(
      'nats.duplicateWindowMs',
      `at most maxAgeMs (${maxAgeMs})`,
      duplicateWindowMs,
    )
  }
  return {
    ...common,
    stream,
    createStreams,
    duplicateWindowMs,
    maxAgeMs,
    ackWaitMs: ms('nats.ackWaitMs', options.ackWaitMs, 30_000, 1_000),
    name,
  }
}

/**
 * Refuses what a NATS URL may hold but connectNats never reads: a query (`?tls=true` would
 * still connect in plain text, `?token=` would log in without it), a path or a fragment. Each
 * would be dropped without a word. The error names the first query parameter, never its value.
 */
function checkNatsUrlRest(url: URL): void {
  const [parameter] = url.searchParams.keys()
  const problem =
    parameter !== undefined || url.search !== ''
      ? `no query (NATS URLs take no parameters: use tls:// or the tls option for TLS, user:password@ or token@ for credentials), not "${parameter ?? ''}"`
      : url.pathname !== '' && url.pathname !== '/'
        ? 'no path (NATS has no databases or virtual hosts)'
        : url.hash !== ''
          ? 'no fragment'
          : undefined
  if (problem === undefined) return
  const shown = new URL(url.toString())
  shown.search = ''
  shown.hash = ''
  throw new InvalidOptionError(
    'nats.url',
    `a nats:// or tls:// URL with ${problem}`,
    redactUrl(shown.toString()),
  )
}

/** The stream a topic is stored in. */
function streamFor(options: ResolvedNatsOptions, topic: string): NatsStreamSpec {
  return options.stream ?? { name: safeName(topic), subjects: [topic] }
}

/** The durable consumer name of a group (scoped to its topic when streams are shared). */
function durableFor(options: ResolvedNatsOptions, topic: string, group: string): string {
  return safeName(options.stream === undefined ? group : `${group}-${topic}`)
}

async function connectNats(options: ResolvedNatsOptions): Promise<NatsConnection> {
  const nats = await loadNats()
  const url = options.url
  const connectOptions: ConnectionOptions = {
    servers: `${url.hostname}:${url.port === '' ? '4222' : url.port}`,
    name: options.name,
    // Our callers' retry policies decide when to try again; the driver must not buffer
    // publishes through an outage nor reconnect behind our back.
    reconnect: false,
    timeout: options.connectTimeoutMs,
    noAsyncTraces: true,
  }
  // Any tls setting makes the driver require TLS (SERVER_OPT_NA "tls" from a server without
  // it); without one it still upgrades when the server requires TLS, as on nats://.
  if (url.protocol === 'tls:' || options.tls !== undefined) {
    // The driver's type takes PEM strings; a bundle of several certificates is one. It hands
    // every field to tls.connect, passphrase included, though its type does not list it.
    const ca = options.tls?.ca
    const client = options.tls?.client
    const tls: TlsOptions & { passphrase?: string } = {}
    if (ca !== undefined) tls.ca = ca.map(String).join('\n')
    if (client !== undefined) {
      tls.cert = String(client.cert)
      tls.key = String(client.key)
      if (client.passphrase !== undefined) tls.passphrase = client.passphrase
    }
    connectOptions.tls = tls
  }
  if (url.username !== '' && url.password !== '') {
    connectOptions.user = decodeURIComponent(url.username)
    connectOptions.pass = decodeURIComponent(url.password)
  } else if (url.username !== '') {
    connectOptions.token = decodeURIComponent(url.username)
  }
  const where = redactUrl(url.toString())
  try {
    return await nats.connect(connectOptions)
  } catch (error) {
    const code = (error as { code?: unknown } | undefined)?.code
    // The server refused the login (unknown user, wrong password or token, none given where
    // one is required, expired credentials): every attempt fails alike, so it is not an
    // outage to retry. Names the user, never the password or token.
    if (code === 'AUTHORIZATION_VIOLATION' || code === 'AUTHENTICATION_EXPIRED') {
      const who =
        connectOptions.user !== undefined
          ? `for user "${connectOptions.user}"`
          : connectOptions.token !== undefined
            ? 'for a token'
            : 'without credentials'
      throw new BrokerError(
        'BROKER_MISCONFIGURED',
        'nats',
        `login refused ${who} at ${where}: ${reasonOf(error)}; check the user name and password (or token) in the URL`,
        { cause: error },
      )
    }
    throw (
      (await refusedClient(options, error, `cannot connect to ${where}`)) ??
      natsError(error, `cannot connect to ${where}`)
    )
  }
}

/**
 * For a connection reset as it opened (ECONNRESET, EPIPE), a `BROKER_MISCONFIGURED` when the
 * server refused the client's certificate or its absence (`tls { verify: true }`), else
 * undefined. nats-server checks a TLS 1.3 client's certificate after the client's side of the
 * handshake is done, when nats.js has already written CONNECT: the server's close then reaches
 * nats.js as a reset, and its alert is lost, so the connection would read as an outage retried
 * for ever. The port is asked again (bounded by `connectTimeoutMs`): its INFO line is read and,
 * when it has the client turn to TLS, the handshake is made with the adapter's TLS settings and
 * nothing written, which reads the alert. A reset for another reason costs that one connection.
 */
async function refusedClient(
  options: ResolvedNatsOptions,
  error: unknown,
  context: string,
): Promise<BrokerError | undefined> {
  const code = (error as { code?: unknown } | undefined)?.code
  if (code !== 'ECONNRESET' && code !== 'EPIPE') return undefined
  const { hostname, port } = options.url
  const why = await tlsRefusal(
    { host: hostname, port: port === '' ? 4222 : Number(port), startTls: natsInfoStartsTls },
    options.tls,
    options.clock,
    options.connectTimeoutMs,
    new AbortController().signal,
  )
  return tlsFailure('nats', why, context)
}

const natsInfo = /^INFO\s+(\{.*\})\s*$/i

/**
 * Whether a NATS server's greeting (its first line, `INFO {...}`) has nats.js turn the
 * connection to TLS, as the driver decides it: when the server requires TLS (`tls_required`)
 * or offers it (`tls_available`). False for a line that is not an INFO line.
 *
 * @example
 * ```ts
 * import { natsInfoStartsTls } from './nats.js'
 * natsInfoStartsTls('INFO {"tls_required":true}\r\n') // true
 * ```
 */
export function natsInfoStartsTls(greeting: string): boolean {
  const json = natsInfo.exec(greeting)?.[1]
  if (json === undefined) return false
  try {
    const info = JSON.parse(json) as { tls_required?: unknown; tls_available?: unknown }
    return info.tls_required === true || info.tls_available === true
  } catch {
    return false
  }
}

/**
 * JetStream API errors that refuse the message itself, so every attempt of it fails alike: its
 * size, its headers' size (over 64 KiB), or a `Nats-*` header JetStream acts on (an expectation the stream does not meet, a
 * rollup the stream does not allow). Read as an outage they would be retried for ever.
 */
const messageRefusals = new Set([
  10054, // message size exceeds the stream's maximum
  10060, // Nats-Expected-Stream: expected stream does not match
  10070, // Nats-Expected-Last-Msg-Id: wrong last msg ID
  10071, // Nats-Expected-Last-(Subject-)Sequence: wrong last sequence
  10097, // header size exceeds maximum allowed of 64k
  10111, // Nats-Rollup: rollup not permitted
])

/**
 * Refuses the batch, before any of it is sent, when a message is larger than the server's
 * `max_payload` (payload and headers, as nats.js and the server count it; 1 MiB by default),
 * naming the message, its size and the limit. nats.js refuses it too, but as a bare
 * "MAX_PAYLOAD_EXCEEDED" naming neither the message nor the sizes, after the batch's earlier
 * messages were sent. Without the server's INFO yet (nothing to compare) nats.js judges.
 */
function checkMaxPayload(
  nc: NatsConnection,
  messages: readonly OutgoingMessage[],
  bodies: readonly Uint8Array[],
  headers: readonly MsgHdrs[],
): void {
  const max = nc.info?.max_payload
  if (typeof max !== 'number') return
  for (let i = 0; i < messages.length; i++) {
    const payload = bodies[i]!.length
    const header = encodedHeaderBytes(headers[i]!)
    if (payload + header <= max) continue
    const message = messages[i]!
    throw new BrokerError(
      'BROKER_REJECTED',
      'nats',
      `message ${JSON.stringify(message.id)} to ${JSON.stringify(message.topic)} is ${payload + header} bytes (payload ${payload}, headers ${header}), more than the server's max_payload of ${max} bytes; nothing of the batch was sent`,
    )
  }
}

/**
 * The bytes of `headers` on the wire, which count toward max_payload. nats.js's headers
 * encode themselves when sent (`encode`, left out of the MsgHdrs type); this encodes them once
 * more (a few hundred bytes). 0 if a driver's headers did not: nats.js then judges alone.
 */
function encodedHeaderBytes(headers: MsgHdrs): number {
  const encode = (headers as { encode?: unknown }).encode
  return typeof encode === 'function' ? (encode.call(headers) as Uint8Array).length : 0
}

/** Maps a driver error to a {@link BrokerError}. */
function natsError(error: unknown, context: string): BrokerError {
  if (error instanceof BrokerError) return error
  const tls = tlsFailure('nats', error, context)
  if (tls !== undefined) return tls
  const code = (error as { code?: unknown } | undefined)?.code
  const apiCode = (error as { api_error?: { err_code?: number } } | undefined)?.api_error?.err_code
  const message = `${context}: ${reasonOf(error)}`
  // 503 "no responders": no stream listens on the subject (or JetStream is off).
  if (code === '503') return new BrokerError('BROKER_UNROUTABLE', 'nats', message, { cause: error })
  // The user may not publish to the subject or the JetStream API (or subscribe to an inbox):
  // no retry grants it, and it is not the message's fault.
  if (code === 'PERMISSIONS_VIOLATION') {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'nats',
      `${message}; grant the user publish permission on the topic's subject and on $JS.API.> and subscribe permission on _INBOX.> (or its inbox prefix)`,
      { cause: error },
    )
  }
  if (
    code === 'BAD_HEADER' ||
    code === 'BAD_SUBJECT' ||
    code === 'BAD_PAYLOAD' ||
    code === 'INVALID_PAYLOAD' ||
    code === 'MAX_PAYLOAD_EXCEEDED' ||
    (apiCode !== undefined && messageRefusals.has(apiCode))
  ) {
    return new BrokerError('BROKER_REJECTED', 'nats', message, { cause: error })
  }
  return new BrokerError('BROKER_UNAVAILABLE', 'nats', message, { cause: error })
}

/**
 * Drains `nc` (pending publishes flushed, subscriptions ended) for at most `connectTimeoutMs`
 * on the adapter's clock, then closes it. nats.js's drain waits for the server's answer to a
 * flush, so a server that keeps the connection open but stops answering (frozen, a partition
 * the kernel does not see) held close() for minutes, as long as the driver's own pings allow.
 * Closing does not wait for the server: it ends the socket.
 */
async function drainAndClose(nc: NatsConnection, options: ResolvedNatsOptions): Promise<void> {
  if (!nc.isClosed()) {
    await within(
      nc.drain(),
      options.clock,
      options.connectTimeoutMs,
      () => new Error('drain timed out'),
    ).catch(
      // Whatever the drain did not finish, the close below ends.
      () => {},
    )
  }
  await nc.close().catch(() => {})
}

/**
 * The connection's JetStream API. The driver asks the server for the account's JetStream
 * info first; a server without JetStream (started without `-js` or a `jetstream` block, or an
 * account without it) has no responder there, and its 503 "no responders" would read as an
 * unroutable topic, which a relay retries for good. No retry enables JetStream: it is refused
 * as BROKER_MISCONFIGURED, saying so.
 */
async function jetStreamManager(nc: NatsConnection): Promise<JetStreamManager> {
  try {
    return await nc.jetstreamManager()
  } catch (error) {
    if ((error as { code?: unknown } | undefined)?.code !== '503') throw error
    throw new BrokerError(
      'BROKER_MISCONFIGURED',
      'nats',
      'JetStream is not enabled on the server (or for this account): the JetStream API has no responders; start nats-server with -js (or a jetstream block in its config) and give the account JetStream',
      { cause: error },
    )
  }
}

function isNotFound(error: unknown, errCode: number): boolean {
  return (
    (error as { api_error?: { err_code?: number } } | undefined)?.api_error?.err_code === errCode
  )
}

const STREAM_NOT_FOUND = 10059
const STREAM_NAME_IN_USE = 10058
const STREAM_SUBJECT_OVERLAP = 10065
const CONSUMER_NOT_FOUND = 10014

/** Creates the stream when it is missing (racing creators are fine: the loser finds it). */
async function ensureStream(
  jsm: JetStreamManager,
  spec: NatsStreamSpec,
  options: ResolvedNatsOptions,
): Promise<void> {
  try {
    await jsm.streams.info(spec.name)
    return
  } catch (error) {
    if (!isNotFound(error, STREAM_NOT_FOUND) || !options.createStreams) throw error
  }
  const nats = await loadNats()
  try {
    await jsm.streams.add({
      name: spec.name,
      subjects: [...spec.subjects],
      storage: nats.StorageType.File,
      retention: nats.RetentionPolicy.Limits,
      discard: nats.DiscardPolicy.Old,
      num_replicas: 1,
      duplicate_window: nats.nanos(options.duplicateWindowMs),
      max_age: nats.nanos(options.maxAgeMs),
    })
  } catch (error) {
    // Another stream already stores these subjects: a configuration error no retry clears
    // (read as an outage, a retry policy would hide it), and not the message's fault (a relay
    // would dead-letter every event for it), so it is refused as misconfigured.
    if (isNotFound(error, STREAM_SUBJECT_OVERLAP)) {
      throw new BrokerError(
        'BROKER_MISCONFIGURED',
        'nats',
        `cannot create stream ${spec.name} for ${spec.subjects.join(', ')}: ${reasonOf(error)}; another stream already stores these subjects: name that stream in the nats.stream option (or remove it)`,
        { cause: error },
      )
    }
    if (!isNotFound(error, STREAM_NAME_IN_USE)) throw error
  }
}

/** A batch's acks awaited on one connection's reply inbox. */
interface PendingAck {
  /** The subject the message was published to. */
  readonly subject: string
  readonly resolve: () => void
  readonly reject: (error: unknown) => void
}

/**
 * One connection's publish path: every publish carries a reply subject under one inbox
 * wildcard subscription, and the acks are matched back by token. No request object, promise
 * or timer per message (the driver's `js.publish` makes all three), one timer per batch.
 */
interface AckInbox {
  readonly nc: NatsConnection
  readonly prefix: string
  readonly pending: Map<string, PendingAck>
  next: number
}

const decoder = new TextDecoder()

/** Reads a JetStream publish reply: undefined when stored (or a duplicate), else the error. */
function pubAckError(message: Msg): unknown {
  // A status message: 503 means no stream listens on the subject.
  const status = message.headers?.code ?? 0
  if (status >= 300) {
    return Object.assign(new Error(`status ${status} ${message.headers?.description ?? ''}`), {
      code: String(status),
    })
  }
  let reply: { error?: { code?: number; err_code?: number; description?: string } }
  try {
    reply = JSON.parse(decoder.decode(message.data)) as typeof reply
  } catch (error) {
    return error
  }
  if (reply.error === undefined) return undefined
  return Object.assign(new Error(reply.error.description ?? 'publish refused'), {
    api_error: reply.error,
  })
}

class NatsPublisher implements Publisher {
  readonly #options: ResolvedNatsOptions
  #connection: Promise<AckInbox> | undefined
  // Streams known to exist, per name; forgotten when a publish finds no stream.
  readonly #streams = new Map<string, Promise<void>>()
  #closed = false

  constructor(options: ResolvedNatsOptions) {
    this.#options = options
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal)
    if (this.#closed) throw closedError('nats', 'publisher')
    checkOutgoing('nats', messages, reservedNatsHeader)
    if (messages.length === 0) return
    const nats = await loadNats()
    // Every message's headers are built (and checked) before the first one is sent, so a
    // message NATS cannot carry refuses the batch with nothing of it delivered.
    const headers = messages.map((message, i) => toNatsHeaders(nats.headers(), message, i))
    const inbox = await untilAborted(this.#connect(), signal)
    const { nc } = inbox
    const options = this.#options
    const bodies = messages.map((message) => payloadBytes(message.payload))
    checkMaxPayload(nc, messages, bodies, headers)
    let topic: string | undefined
    for (const message of messages) {
      if (message.topic === topic) continue
      topic = message.topic
      // Refused here: the server would refuse the stream (or the message) for it at every
      // attempt, as an API error that reads like an outage (BROKER_UNAVAILABLE, retryable).
      if (!isSubject(topic)) {
        throw new BrokerError(
          'BROKER_REJECTED',
          'nats',
          `topic ${JSON.stringify(topic)} is not a NATS subject (dot-separated non-empty tokens without whitespace)`,
        )
      }
      // The server stores it under the literal subject, and a stream per topic made for it
      // covers every concrete topic it matches, whose own streams then cannot be created: their
      // publishes failed for good (BROKER_MISCONFIGURED), and a relay dead-lettered them.
      if (hasWildcard(topic)) {
        throw new BrokerError(
          'BROKER_REJECTED',
          'nats',
          `topic ${JSON.stringify(topic)} holds a wildcard token (* or >); a message is published to one concrete subject`,
        )
      }
      await untilAborted(this.#ensureStream(nc, streamFor(options, topic)), signal)
    }
    // Every message goes out before the first ack is awaited (the driver writes them in one
    // flush): one round trip per batch.
    const acks: Array<Promise<void>> = []
    const tokens: string[] = []
    for (let i = 0; i < messages.length; i++) {
      const message = messages[i]!
      const token = `${inbox.prefix}.${(inbox.next++).toString(36)}`
      tokens.push(token)
      acks.push(
        new Promise<void>((resolve, reject) =>
          inbox.pending.set(token, { subject: message.topic, resolve, reject }),
        ),
      )
      try {
        nc.publish(message.topic, bodies[i]!, {
          reply: token,
          headers: headers[i]!,
        })
      } catch (error) {
        inbox.pending.get(token)?.reject(error)
        inbox.pending.delete(token)
      }
    }
    // Wait for every ack before failing, so no message of this batch is still in flight when
    // the caller retries it.
    let results: Array<PromiseSettledResult<void>>
    try {
      results = await within(
        Promise.allSettled(acks),
        options.clock,
        options.publishTimeoutMs,
        () => new BrokerError('BROKER_UNAVAILABLE', 'nats', 'publish acks timed out'),
        signal,
      )
    } finally {
      for (const token of tokens) inbox.pending.delete(token)
    }
    for (const result of results) {
      if (result.status === 'rejected') {
        const error = natsError(result.reason, 'publish failed')
        if (error.code === 'BROKER_UNROUTABLE') this.#streams.clear()
        throw error
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    const connection = this.#connection
    this.#connection = undefined
    if (connection === undefined) return
    const inbox = await connection.catch(() => undefined)
    const nc = inbox?.nc
    if (nc !== undefined) await drainAndClose(nc, this.#options)
  }

  #connect(): Promise<AckInbox> {
    let connection = this.#connection
    if (connection === undefined) {
      // publish() awaits the driver's import before it gets here: a close() in that gap found
      // no connection to close, so one opened now would stay open for good.
      if (this.#closed) return Promise.reject(closedError('nats', 'publisher'))
      // Opened in breakwater's own context, not the first publisher's: the connection outlives
      // that call, and its socket, pings, reconnects and watchers would otherwise run in (and
      // keep alive) that caller's request store or deadline for every later publish.
      connection = detached(() => this.#open())
      this.#connection = connection
      this.#forgetWhenClosed(connection)
    }
    return connection
  }

  #forgetWhenClosed(connection: Promise<AckInbox>): void {
    // Registered detached too: these callbacks run when the connection ends, long after the
    // first publish's caller is gone.
    detached(() =>
      connection.then(
        (inbox) => {
          // Forget a connection once it is gone: the next publish opens a new one. Acks still
          // awaited on it fail now instead of at the timeout.
          void inbox.nc.closed().then((error) => {
            if (this.#connection === connection) this.#connection = undefined
            const reason = error ?? new Error('connection closed')
            for (const ack of inbox.pending.values()) ack.reject(reason)
            inbox.pending.clear()
          })
        },
        () => {
          if (this.#connection === connection) this.#connection = undefined
        },
      ),
    )
  }

  async #open(): Promise<AckInbox> {
    const nats = await loadNats()
    const nc = await connectNats(this.#options)
    const inbox: AckInbox = { nc, prefix: nats.createInbox(), pending: new Map(), next: 0 }
    nc.subscribe(`${inbox.prefix}.*`, {
      callback: (error: NatsError | null, message: Msg) => {
        if (error !== null) return
        const ack = inbox.pending.get(message.subject)
        if (ack === undefined) return // late: its batch timed out
        inbox.pending.delete(message.subject)
        const failure = pubAckError(message)
        if (failure === undefined) ack.resolve()
        else ack.reject(failure)
      },
    })
    this.#watchPublishRefusals(inbox)
    return inbox
  }

  /**
   * The server refuses a publish the user may not make, and never sends an ack: the batch's
   * acks on that subject fail with the refusal now, as misconfigured, instead of timing out as
   * a retryable outage (every retry would meet the same refusal).
   */
  #watchPublishRefusals(inbox: AckInbox): void {
    void onPublishRefused(inbox.nc, (subject) => {
      const refusal = Object.assign(
        new Error(`'Permissions Violation for Publish to "${subject}"'`),
        { code: 'PERMISSIONS_VIOLATION' },
      )
      for (const [token, ack] of inbox.pending) {
        if (ack.subject !== subject) continue
        inbox.pending.delete(token)
        ack.reject(refusal)
      }
    })
  }

  async #ensureStream(nc: NatsConnection, spec: NatsStreamSpec): Promise<void> {
    let ensured = this.#streams.get(spec.name)
    if (ensured === undefined) {
      ensured = jetStreamManager(nc)
        .then((jsm) => ensureStream(jsm, spec, this.#options))
        .catch((error: unknown) => {
          this.#streams.delete(spec.name)
          throw isNotFound(error, STREAM_NOT_FOUND)
            ? new BrokerError('BROKER_UNROUTABLE', 'nats', `stream ${spec.name} does not exist`, {
                cause: error,
              })
            : natsError(error, `cannot create stream ${spec.name}`)
        })
      this.#streams.set(spec.name, ensured)
    }
    await ensured
  }
}

/**
 * Calls `refused` with the subject of each publish the server refuses this connection (its -ERR
 * 'Permissions Violation for Publish', which the driver reports only as a connection status,
 * not to the publish). Ends when the connection closes.
 */
async function onPublishRefused(
  nc: NatsConnection,
  refused: (subject: string) => void,
): Promise<void> {
  try {
    for await (const status of nc.status()) {
      const context = status.permissionContext
      if (status.type === 'error' && context?.operation === 'publish') refused(context.subject)
    }
  } catch {
    // The status stream only ends with the connection, whose close fails what is pending.
  }
}

/**
 * An ack, nak or progress report the user may not publish (`$JS.ACK.>`) is refused by the
 * server; without a report the message would be redelivered after every ack wait, its handler
 * run again and again, and nothing would say why. Each refusal goes to `report`.
 */
function watchSettleRefusals(nc: NatsConnection, report: (error: BrokerError) => void): void {
  void onPublishRefused(nc, (subject) => {
    if (!subject.startsWith('$JS.ACK.')) return
    report(
      new BrokerError(
        'BROKER_MISCONFIGURED',
        'nats',
        `ack refused: 'Permissions Violation for Publish to "${subject}"'; grant the user publish permission on $JS.ACK.> (or $JS.ACK.<stream>.>), or JetStream redelivers every message after ackWaitMs`,
      ),
    )
  })
}

/**
 * Whether a subject holds a wildcard: a token that is `*` or `>` (inside a token they are
 * literal characters).
 */
function hasWildcard(topic: string): boolean {
  return topic.split('.').some((token) => token === '*' || token === '>')
}

/** Whether a topic is a subject NATS takes: non-empty dot-separated tokens, no whitespace. */
function isSubject(topic: string): boolean {
  return topic.split('.').every((token) => token !== '' && !/\s/.test(token))
}

/**
 * A header named `Nats-Msg-Id` would be replaced by the message id (which JetStream dedupes
 * on) without a word: refused like the key header, naming the field that sets it.
 */
function reservedNatsHeader(message: OutgoingMessage): string | undefined {
  if (Object.hasOwn(message.headers, NATS_MSG_ID_HEADER)) {
    return `.headers has a header named ${NATS_MSG_ID_HEADER}, which is reserved for the message id (set the id field instead)`
  }
  return undefined
}

/**
 * The NATS headers of `messages[index]`. A value or name the driver refuses (CR, LF, a
 * character a header name cannot hold) fails with `BROKER_REJECTED` naming the message and the
 * header (or its key or id).
 */
function toNatsHeaders(headers: MsgHdrs, message: OutgoingMessage, index: number): MsgHdrs {
  const at = `messages[${index}]`
  // What is being set: the driver's refusal ("invalid header value - \r and \n are not
  // allowed") names no header, and the relay records the message as the event's failure.
  let what = at
  try {
    for (const name in message.headers) {
      what = `${at}.headers.${name}`
      headers.set(name, headerValue(what, message.headers[name]!))
    }
    what = `${at}.key`
    headers.set(KEY_HEADER, headerValue(what, message.key))
    // JetStream drops a second message with this id inside the stream's duplicate window.
    what = `${at}.id`
    headers.set(NATS_MSG_ID_HEADER, headerValue(what, message.id))
  } catch (error) {
    if (error instanceof BrokerError) throw error
    throw new BrokerError('BROKER_REJECTED', 'nats', `${what} refused: ${reasonOf(error)}`, {
      cause: error,
    })
  }
  return headers
}

/**
 * A header value NATS carries unchanged. The driver trims a value's leading and trailing
 * whitespace when it encodes it and again when it parses it, so a key ' a' would arrive as
 * 'a' (and an id, a header value, likewise changed): refuse it instead, as the driver refuses
 * CR and LF.
 */
function headerValue(what: string, value: string): string {
  if (hasEdgeWhitespace(value)) {
    throw new BrokerError(
      'BROKER_REJECTED',
      'nats',
      `${what} has leading or trailing whitespace, which NATS headers cannot carry`,
    )
  }
  return value
}

function toIncoming(message: JsMsg): IncomingMessage {
  // No prototype: a header named __proto__ (the outbox keeps those) is then an ordinary key
  // instead of setting the prototype and being lost, as on the Redis adapter.
  const headers: Record<string, string> = Object.create(null)
  let id = ''
  let key = ''
  if (message.headers !== undefined) {
    for (const [name, values] of message.headers) {
      // Another producer may repeat a header (NATS headers are HTTP-style): the values are
      // joined with ", " as HTTP combines a repeated field, rather than all but the first
      // dropped without a word. The id and the key are single values: the first is taken.
      if (name === NATS_MSG_ID_HEADER) id = values[0] ?? ''
      else if (name === KEY_HEADER) key = values[0] ?? ''
      else headers[name] = values.length === 1 ? values[0]! : values.join(', ')
    }
  }
  return {
    // Another producer's message without an id (or with an empty one) gets one of its stream
    // place, stable across redeliveries. So does one whose id was not UTF-8: the client decodes
    // every byte sequence that is not UTF-8 as U+FFFD and keeps no bytes, so two such ids would
    // arrive as one and an inbox would drop the second as a duplicate. An id holding U+FFFD
    // itself is read alike: a redelivery still gets the same id, only a republish of it outside
    // JetStream's duplicate window runs again (the outcome of the two that loses nothing).
    id: id === '' || id.includes('\uFFFD') ? `${message.info.stream}:${message.seq}` : id,
    topic: message.subject,
    key,
    payload: message.data,
    headers,
    deliveryCount: message.info.deliveryCount,
  }
}

interface NatsDelivery extends Delivery {
  readonly raw: JsMsg
  /** The session (connection) it arrived on. */
  readonly session: number
}

/** What a subscription's sessions share: the dispatcher and settles a lost connection owed. */
interface NatsSubscriptionState {
  readonly dispatcher: KeyedDispatcher<NatsDelivery>
  /**
   * Acks and naks that could not be sent because their connection was gone, as (reply
   * subject, body): the next session sends them, so JetStream learns of a handled message
   * before its ack wait (no duplicate) and redelivers an unhandled one at once.
   */
  readonly owed: Array<readonly [string, string]>
  /** The live session's connection, once it consumes: owed settles go out on it at once. */
  current: NatsConnection | undefined
  sessions: number
}

/**
 * How long past the ack wait a reconnected subscription waits for deliveries lost in flight:
 * JetStream resends them when their ack wait runs out, and the resend takes a moment to arrive.
 */
const LOST_DELIVERY_MARGIN_MS = 1_000

const ACK_BODY = '+ACK'
const NAK_BODY = '-NAK'

class NatsSubscriber implements Subscriber {
  readonly #options: ResolvedNatsOptions
  readonly #subscriptions = new Set<Subscription>()
  #closed = false

  constructor(options: ResolvedNatsOptions) {
    this.#options = options
  }

  async subscribe(
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
  ): Promise<Subscription> {
    checkSubscribeArgs(topic, group, handler)
    // Refused here: the server refuses the stream or consumer for it at every attempt, which
    // would read like an outage (BROKER_UNAVAILABLE, retryable).
    if (!isSubject(topic)) {
      throw new InvalidOptionError(
        'topic',
        'a NATS subject (dot-separated non-empty tokens without whitespace)',
        topic,
      )
    }
    // A stream per topic made for orders.* would store every orders.<x> subject, so the
    // concrete topics' own streams could not be created and their publishes failed for good.
    // In one shared stream a wildcard is only the consumer's filter.
    if (this.#options.stream === undefined && hasWildcard(topic)) {
      throw new InvalidOptionError(
        'topic',
        'a NATS subject without wildcard tokens (* or >) unless nats.stream is set: a stream per topic made for a wildcard would take the subjects of the topics it matches',
        topic,
      )
    }
    if (this.#closed) throw closedError('nats', 'subscriber')
    const options = this.#options
    const report = (error: unknown): void =>
      options.onError({ error, phase: 'connection', topic, group })
    // One dispatcher for the subscription's lifetime: which deliveries of a key are still
    // unacknowledged must survive a reconnect, or the new session would overtake them.
    const state: NatsSubscriptionState = {
      dispatcher: subscriptionDispatcher<NatsDelivery>('nats', options, topic, group, handler),
      owed: [],
      current: undefined,
      sessions: 0,
    }
    let inner: SupervisedSubscription
    try {
      inner = await superviseSessions({
        open: () => this.#open(topic, group, state),
        clock: options.clock,
        reconnectDelayMs: options.reconnectDelayMs,
        maxReconnectDelayMs: options.maxReconnectDelayMs,
        onError: report,
      })
    } catch (error) {
      await state.dispatcher.close()
      throw error
    }
    if (this.#closed) {
      // close() ran while this subscription connected and could not see it: without this, it
      // would keep consuming (and competing in its group) after its subscriber was closed.
      await inner.stopReceiving()
      // Bounded as close() is: a handler that started meanwhile and never settles is left
      // unacknowledged (see closedWhileSubscribing).
      const unfinished = await state.dispatcher.close(options.closeTimeoutMs)
      await inner.close()
      throw closedWhileSubscribing('nats', topic, group, options.closeTimeoutMs, unfinished)
    }
    return trackedSubscription(this.#subscriptions, async () => {
      // The consumer stops first, or JetStream would hand every released delivery straight
      // back while handlers finish. Running handlers then finish and ack, queued deliveries
      // are released, while the current session's connection is still open; then the
      // session closes.
      await inner.stopReceiving()
      // Bounded: a handler still running after closeTimeoutMs is left unacknowledged, and
      // JetStream redelivers it after ackWaitMs once this connection is gone.
      const unfinished = await state.dispatcher.close(options.closeTimeoutMs)
      await inner.close()
      if (unfinished > 0) {
        throw new SubscriptionCloseTimeoutError(
          'nats',
          topic,
          group,
          options.closeTimeoutMs,
          unfinished,
        )
      }
    })
  }

  async close(): Promise<void> {
    this.#closed = true
    await closeAll(this.#subscriptions)
  }

  async #open(topic: string, group: string, state: NatsSubscriptionState): Promise<Session> {
    const options = this.#options
    const { dispatcher } = state
    const nats = await loadNats()
    const nc = await connectNats(options)
    const spec = streamFor(options, topic)
    const durable = durableFor(options, topic, group)
    const session = ++state.sessions
    let stopping = false
    let messages: ConsumerMessages
    let gate: LostDeliveryGate | undefined
    // The driver buffers a publish on a closed connection without a word: check first.
    const owe = (raw: JsMsg, body: string): boolean => {
      if (!nc.isClosed()) return false
      // The live session sends it, or the next one (a delayed nak becomes a plain one: the
      // reconnect was delay enough).
      // The driver's messages carry their ack subject, which its JsMsg type does not declare.
      const reply = (raw as JsMsg & { readonly reply?: string }).reply ?? ''
      if (reply === '') return true
      const live = state.current
      if (live !== undefined && !live.isClosed()) live.publish(reply, body)
      else state.owed.push([reply, body])
      return true
    }
    const settle = (raw: JsMsg, outcome: Outcome): void => {
      if (owe(raw, outcome === 'ack' ? ACK_BODY : NAK_BODY)) return
      if (outcome === 'ack') raw.ack()
      else if (outcome === 'retry') raw.nak(options.retryDelayMs)
      else raw.nak()
    }
    try {
      const jsm = await jetStreamManager(nc)
      await ensureStream(jsm, spec, options)
      const config = {
        durable_name: durable,
        ack_policy: nats.AckPolicy.Explicit,
        deliver_policy: nats.DeliverPolicy.All,
        replay_policy: nats.ReplayPolicy.Instant,
        filter_subject: topic,
        ack_wait: nats.nanos(options.ackWaitMs),
        max_deliver: -1,
        // JetStream never has more unacknowledged deliveries out than the dispatcher holds
        // (redeliveries are not limited by it, so a held key's awaited message still comes).
        max_ack_pending: options.prefetch,
      }
      // What JetStream counted as delivered to the group and unacknowledged, for the gate below.
      let reported: { pending: number; deliveredUpTo: number } | undefined
      try {
        const info = await jsm.consumers.info(spec.name, durable)
        // A new subscription waits only when no other subscriber of the group is pulling (no
        // waiting pull request): then what is pending was left by a predecessor that is gone
        // (a crashed or killed process). A live one's deliveries never come back here, so
        // waiting for them would idle a subscriber joining a busy group for the whole ack wait,
        // and a group of several keeps no order across its subscribers anyway.
        if (session > 1 || info.num_waiting === 0) {
          reported = { pending: info.num_ack_pending, deliveredUpTo: info.delivered.stream_seq }
        }
        if (
          info.config.ack_wait !== config.ack_wait ||
          info.config.max_ack_pending !== config.max_ack_pending
        ) {
          await jsm.consumers.update(spec.name, durable, {
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
          })
        }
      } catch (error) {
        if (!isNotFound(error, CONSUMER_NOT_FOUND)) throw error
        await jsm.consumers.add(spec.name, config)
      }
      const consumer = await nc.jetstream().consumers.get(spec.name, durable)
      // Deliveries JetStream counts as pending but unknown here (sent into a lost connection,
      // or held by a predecessor that crashed: a restarted process) come back only after their
      // ack wait, after the key's later messages: hold every handler until they are back (see
      // gateLostDeliveries). A consumer created just now has nothing pending.
      if (reported !== undefined) {
        const owedAcks = state.owed.filter(([, body]) => body === ACK_BODY).length
        gate = gateLostDeliveries(
          dispatcher,
          { ...reported, known: dispatcher.size + dispatcher.awaited + owedAcks },
          options.clock,
          options.ackWaitMs + LOST_DELIVERY_MARGIN_MS,
        )
      }
      // A callback, not the iterator: every message the client receives reaches the
      // dispatcher at once. Messages buffered in an iterator when the connection drops would
      // be invisible to the dispatcher, which could then not hold their keys' later ones.
      messages = await consumer.consume({
        max_messages: options.prefetch,
        // A deleted consumer or stream ends the session, so the next one creates them again.
        // The driver's default waits for someone else to restore them: the subscription would
        // receive nothing, silently, for good.
        abort_on_missing_resource: true,
        callback: (raw) => {
          if (stopping) {
            if (!owe(raw, NAK_BODY)) raw.nak()
            return
          }
          const message = toIncoming(raw)
          const delivery = {
            raw,
            session,
            message,
            order: raw.seq,
            settle: (o: Outcome) => settle(raw, o),
          }
          // The usual case pushes at once; only a gated session (after a lost connection) wraps it.
          if (gate === undefined) dispatcher.push(delivery)
          else gate.admit(message.key, message.id, raw.seq, () => dispatcher.push(delivery))
        },
      })
      // What the previous connection owed: acks of messages handled while it was down, and
      // naks of messages it held unstarted, which the dispatcher awaits.
      for (const [subject, body] of state.owed.splice(0)) nc.publish(subject, body)
      watchSettleRefusals(nc, (error) => options.onError({ error, phase: 'settle', topic, group }))
      state.current = nc
    } catch (error) {
      gate?.release()
      await nc.close().catch(() => {})
      // A missing stream (createStreams off) is the broker up with nothing storing the topic
      // yet: the same BROKER_UNROUTABLE a publish to it gets, not an outage.
      if (isNotFound(error, STREAM_NOT_FOUND)) {
        throw new BrokerError(
          'BROKER_UNROUTABLE',
          'nats',
          `cannot subscribe ${durable} to ${topic}: stream ${spec.name} does not exist (createStreams is off)`,
          { cause: error },
        )
      }
      throw natsError(error, `cannot subscribe ${durable} to ${topic}`)
    }

    // While a handler runs (or waits its turn), tell JetStream the message is still being
    // worked on, so it is not redelivered to another subscriber after ackWaitMs.
    let heartbeat: unknown
    const beat = (): void => {
      for (const delivery of dispatcher.held()) {
        if (delivery.session !== session) continue
        try {
          delivery.raw.working()
        } catch {
          // The connection is gone; the session is ending.
        }
      }
      heartbeat = options.clock.setTimeout(beat, Math.floor(options.ackWaitMs / 3))
    }
    heartbeat = options.clock.setTimeout(beat, Math.floor(options.ackWaitMs / 3))

    const ended = Promise.race([
      nc.closed().then((error) => error ?? new Error('connection closed')),
      // A consumer we stopped ourselves (stopReceiving) has not ended the session: its
      // connection stays up for the acks of running handlers until close().
      messages
        .closed()
        .then((error) =>
          stopping ? new Promise<never>(() => {}) : (error ?? new Error('consumer stopped')),
        ),
    ]).then((reason) =>
      stopping ? undefined : natsError(reason, `subscription ${durable} on ${topic} lost`),
    )

    let stoppingReceipt: Promise<void> | undefined
    const stopReceiving = (): Promise<void> => {
      stoppingReceipt ??= (async () => {
        stopping = true
        if (nc.isClosed()) messages.stop()
        else await messages.close().catch(() => messages.stop())
      })()
      return stoppingReceipt
    }
    let closing: Promise<void> | undefined
    return {
      ended,
      stopReceiving,
      close: () => {
        closing ??= (async () => {
          await stopReceiving()
          gate?.release()
          if (state.current === nc) state.current = undefined
          options.clock.clearTimeout(heartbeat)
          // Deliveries of this connection that never started: JetStream redelivers them (at
          // once: the next session naks them). The dispatcher holds their keys' later
          // deliveries until they are back, so the next session cannot overtake them.
          for (const delivery of dispatcher.abandon((d) => d.session === session)) {
            if (!owe(delivery.raw, NAK_BODY)) delivery.raw.nak()
          }
          await drainAndClose(nc, options)
        })()
        return closing
      },
    }
  }
}
