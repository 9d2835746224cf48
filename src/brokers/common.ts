import { createHash } from 'node:crypto'
import { type Clock, maxTimerDelayMs } from '../core/clock.js'
import { AbortedError, InvalidOptionError } from '../core/errors.js'
import { maskQueryValues } from '../core/query-keys.js'
import { hasLoneSurrogate } from '../core/text.js'
import { hideBeforeAt, userinfoSpan } from '../core/userinfo.js'
import {
  checkClock,
  checkFunction,
  checkInteger,
  checkObject,
  checkSignal,
  isPortNumber,
} from '../core/validate.js'
import { diagnosticsChannel } from '../policies/events.js'
import { type Delivery, KeyedDispatcher } from './dispatcher.js'
import {
  BrokerDriverMissingError,
  BrokerError,
  type BrokerKind,
  SubscriptionCloseTimeoutError,
} from './errors.js'
import { checkKnownBrokerOptions } from './option-keys.js'
import { type BrokerTlsOptions, type ResolvedTlsOptions, resolveTlsOptions } from './tls.js'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'

/**
 * The header that carries {@link OutgoingMessage.key} on brokers without a key field (NATS,
 * RabbitMQ). Subscribers remove it from `IncomingMessage.headers` again. The name is reserved:
 * `publish()` on the NATS, RabbitMQ and Redis adapters refuses an application header of exactly
 * this name with `BROKER_REJECTED` rather than overwrite it with the key.
 */
export const KEY_HEADER = 'breakwater-key'

/**
 * The header JetStream drops duplicates on; the NATS adapter sets it from
 * {@link OutgoingMessage.id} and refuses an application header of exactly this name.
 */
export const NATS_MSG_ID_HEADER = 'Nats-Msg-Id'

/**
 * The headers RabbitMQ adds on its own (quorum queue delivery count, dead-lettering history):
 * the RabbitMQ adapter refuses them at publish and leaves them out of a delivery. Whole names
 * only: an application's header that merely starts like one (x-death-note) is the application's.
 */
export const rabbitmqOwnHeader =
  /^x-(delivery-count|death|(first|last)-death-(exchange|queue|reason))$/

/**
 * Whether a header value starts or ends with whitespace: nats.js trims it when it encodes the
 * value and again when it parses it, so the value would arrive changed (the NATS adapter refuses it).
 */
export function hasEdgeWhitespace(value: string): boolean {
  return value.trim() !== value
}

/**
 * Why one of the adapters (NATS, RabbitMQ, Redis, the SQL queue, the webhook) would refuse, on
 * every message, a header of this name and value; undefined when each carries it as it is. For
 * a producer that does not know which broker its messages will go to: the outbox checks its
 * events' headers with it at enqueue, since a refusal at publish comes after the commit and
 * dead-letters the event. Stricter than any one adapter: every `Nats-` name is refused, not
 * only `Nats-Msg-Id`, as the others are expectations and rollups JetStream acts on (refusing
 * the message, or purging the subject). Names are compared as the adapters compare them (the
 * Nats- prefix in any case, the others exactly).
 */
export function portableHeaderProblem(name: string, value: string): string | undefined {
  if (name === KEY_HEADER) {
    return `${KEY_HEADER} is reserved for the message key on every broker`
  }
  if (/^nats-/i.test(name)) {
    return `NATS: Nats- headers are JetStream's own (${NATS_MSG_ID_HEADER} is set from the message id; the others are expectations and rollups JetStream acts on)`
  }
  if (name === '__proto__')
    return 'RabbitMQ: the amqplib driver drops a header named __proto__ on receipt'
  if (rabbitmqOwnHeader.test(name)) {
    return `RabbitMQ: ${name} is RabbitMQ's own header, which the subscriber does not deliver`
  }
  // AMQP carries a header table's field names as short strings.
  if (Buffer.byteLength(name) > 255) return 'RabbitMQ: a header name is at most 255 bytes'
  if (hasLoneSurrogate(name) || hasLoneSurrogate(value)) return loneSurrogate
  if (hasEdgeWhitespace(value)) {
    return 'NATS: a value with leading or trailing whitespace, which NATS headers cannot carry (nats.js trims it)'
  }
  return undefined
}

/** Where a subscriber's error came from, for {@link SubscriberErrorEvent}. */
export type SubscriberErrorPhase = 'handler' | 'refused' | 'settle' | 'connection'

/** Handed to the `onError` option of every adapter. */
export interface SubscriberErrorEvent {
  /** What was thrown. */
  readonly error: unknown
  /**
   * `handler`: a handler rejected (the message will be redelivered); `refused`: the adapter
   * refused a message before any handler saw it, for good (not redelivered: dead-lettered where
   * the broker has somewhere to put it, else dropped; the error says why, e.g. a RabbitMQ
   * message without `messageId`); `settle`: an ack or nack could not be sent; `connection`: the
   * subscription lost its connection and is reconnecting.
   */
  readonly phase: SubscriberErrorPhase
  readonly topic: string
  readonly group: string
  /** The message being handled, refused or settled, for `handler`, `refused` and `settle`. */
  readonly message?: IncomingMessage
}

/**
 * Options every broker adapter shares (connection, publish and subscriber tuning). Each
 * adapter's options interface extends this one.
 */
export interface BrokerCommonOptions {
  /** The broker's URL, credentials included (they are never logged). */
  readonly url: string
  /** Source of time for publish timeouts, retry delays and reconnect backoff. @default systemClock */
  readonly clock?: Clock | undefined
  /** How long connecting may take before it fails with `BROKER_UNAVAILABLE`. @default 5000 */
  readonly connectTimeoutMs?: number | undefined
  /**
   * How long `publish()` waits for the broker to confirm a batch before it rejects with
   * `BROKER_UNAVAILABLE` (the batch may still be stored: publish again). @default 10000
   */
  readonly publishTimeoutMs?: number | undefined
  /**
   * Handlers run at once per subscription. Messages with the same key never run concurrently
   * and keep their order, whatever this is. @default 1
   */
  readonly concurrency?: number | undefined
  /**
   * Messages fetched ahead of the handlers per subscription (the broker's prefetch / max
   * in-flight; on NATS also the consumer's max_ack_pending). Must be at least `concurrency`.
   * @default 64
   *
   * Per-key order holds with any prefetch, across handler failures, reconnects and broker
   * restarts: while a message of a key is unacknowledged (its handler failed, or its connection
   * was lost before it ran), later messages of that key are held until it is back and handled.
   */
  readonly prefetch?: number | undefined
  /**
   * Messages of one key held while the key waits for an earlier message to be redelivered;
   * newer ones of that key are handed back (redelivered after `retryDelayMs`). @default
   * max(1, prefetch / 4)
   */
  readonly maxHeldPerKey?: number | undefined
  /**
   * How long a key's later messages wait for an earlier message that went back to the broker
   * before they run without it (it may have gone to another subscriber of the group, or been
   * removed from the broker); each give-up is reported to `onError` (phase `settle`).
   * @default 60000
   */
  readonly holdTimeoutMs?: number | undefined
  /** Wait before a message whose handler failed is delivered again. @default 1000 */
  readonly retryDelayMs?: number | undefined
  /**
   * How long a subscription's `close()` (and the subscriber's and broker's) waits for running
   * handlers. A handler still running then is given up: `close()` closes the connection and
   * rejects with `SubscriptionCloseTimeoutError` (`SUBSCRIPTION_CLOSE_TIMEOUT`), and the message
   * is left unacknowledged, also when the handler finishes later, so the broker redelivers it.
   * Without a bound, one handler that never settled held `close()`, and a SIGTERM shutdown
   * waiting on it, for ever. 0 gives up on any handler still running at once. @default 30000
   */
  readonly closeTimeoutMs?: number | undefined
  /** First wait before a lost subscription reconnects; doubles per failed attempt. @default 100 */
  readonly reconnectDelayMs?: number | undefined
  /** Longest wait between reconnect attempts. @default 5000 */
  readonly maxReconnectDelayMs?: number | undefined
  /**
   * Receives subscriber errors: handler failures (the message is redelivered), refused
   * messages, failed acks, lost connections. One that throws is ignored. Every error is also
   * published on the diagnostics channel `breakwater:broker:error`, with or without it.
   * @default console.error: one line naming the broker, phase, topic, group and message id,
   * then the error
   */
  readonly onError?: ((event: SubscriberErrorEvent) => void) | undefined
  /**
   * TLS settings (the CA to trust, a client certificate and its key) for a URL that uses TLS
   * (`rediss://`, `amqps://`, NATS `tls://` or `nats://`); refused with a URL that does not.
   * @default Node's TLS defaults
   */
  readonly tls?: BrokerTlsOptions | undefined
}

/**
 * The keys of {@link BrokerCommonOptions}, for each adapter's known-option set
 * (`optionKeys<NatsBrokerOptions>({ ...commonOptionKeys, stream: true, ... })`): typed so that
 * an option added to the shared interface must be added here too.
 */
export const commonOptionKeys: { readonly [K in keyof BrokerCommonOptions]-?: true } = {
  url: true,
  clock: true,
  connectTimeoutMs: true,
  publishTimeoutMs: true,
  concurrency: true,
  prefetch: true,
  maxHeldPerKey: true,
  holdTimeoutMs: true,
  retryDelayMs: true,
  closeTimeoutMs: true,
  reconnectDelayMs: true,
  maxReconnectDelayMs: true,
  onError: true,
  tls: true,
}

/** {@link BrokerCommonOptions} with defaults applied and values checked. */
export interface ResolvedCommonOptions {
  readonly url: URL
  readonly clock: Clock
  readonly connectTimeoutMs: number
  readonly publishTimeoutMs: number
  readonly concurrency: number
  readonly prefetch: number
  readonly maxHeldPerKey: number
  readonly holdTimeoutMs: number
  readonly retryDelayMs: number
  readonly closeTimeoutMs: number
  readonly reconnectDelayMs: number
  readonly maxReconnectDelayMs: number
  readonly onError: (event: SubscriberErrorEvent) => void
  readonly tls: ResolvedTlsOptions | undefined
}

/**
 * Checks the shared options once, at construction; `schemes` are the accepted URL protocols,
 * `tlsSchemes` those of them `tls` settings apply to, `known` every option of the adapter
 * (shared and its own): any other is refused, its value hidden.
 */
export function resolveCommonOptions(
  prefix: string,
  options: BrokerCommonOptions,
  schemes: readonly string[],
  tlsSchemes: readonly string[],
  known: ReadonlySet<string>,
): ResolvedCommonOptions {
  checkObject(prefix, options)
  // A misspelt ackWaitMs or visibilityTimeoutMs was dropped without a word and its default
  // used; a credential given as an option (`password`) must not be quoted in the refusal.
  checkKnownBrokerOptions(prefix, options, known)
  const url = parseBrokerUrl(`${prefix}.url`, options.url, schemes)
  const concurrency = checkInteger(`${prefix}.concurrency`, options.concurrency ?? 1, 1, 10_000)
  const prefetch = checkInteger(`${prefix}.prefetch`, options.prefetch ?? 64, 1, 65_535)
  if (prefetch < concurrency) {
    throw new InvalidOptionError(
      `${prefix}.prefetch`,
      `an integer >= concurrency (${concurrency})`,
      prefetch,
    )
  }
  const reconnectDelayMs = ms(`${prefix}.reconnectDelayMs`, options.reconnectDelayMs, 100, 1)
  return {
    url,
    clock: checkClock(`${prefix}.clock`, options.clock),
    connectTimeoutMs: ms(`${prefix}.connectTimeoutMs`, options.connectTimeoutMs, 5_000, 1),
    publishTimeoutMs: ms(`${prefix}.publishTimeoutMs`, options.publishTimeoutMs, 10_000, 1),
    concurrency,
    prefetch,
    maxHeldPerKey: checkInteger(
      `${prefix}.maxHeldPerKey`,
      options.maxHeldPerKey ?? Math.max(1, Math.floor(prefetch / 4)),
      1,
      65_535,
    ),
    holdTimeoutMs: ms(`${prefix}.holdTimeoutMs`, options.holdTimeoutMs, 60_000, 1),
    retryDelayMs: ms(`${prefix}.retryDelayMs`, options.retryDelayMs, 1_000, 0),
    closeTimeoutMs: ms(`${prefix}.closeTimeoutMs`, options.closeTimeoutMs, 30_000, 0),
    reconnectDelayMs,
    maxReconnectDelayMs: ms(
      `${prefix}.maxReconnectDelayMs`,
      options.maxReconnectDelayMs,
      Math.max(5_000, reconnectDelayMs),
      reconnectDelayMs,
    ),
    onError: subscriberErrorReporter(
      prefix,
      options.onError === undefined
        ? undefined
        : checkFunction<(event: SubscriberErrorEvent) => void>(
            `${prefix}.onError`,
            options.onError,
          ),
    ),
    tls: resolveTlsOptions(prefix, options.tls, url, tlsSchemes),
  }
}

const errorChannel = diagnosticsChannel('broker', 'error')

/**
 * How a subscription reports its errors (`broker`: the adapter, `nats`, `sqlQueue`...). Each
 * event is published on `breakwater:broker:error` (as `{ broker, ...event }`), for tracers and
 * APM agents, then handed to the application's `onError`, made unable to throw; without one,
 * written to stderr with `console.error`, as the idempotency adapters' `onError` does by
 * default: a handler failure, a message refused for good with nowhere to dead-letter it, a
 * failed ack or a lost connection left no trace at all when nobody passed `onError`. The line
 * quotes topic, group and message id as JSON, so none can start a line of its own.
 */
export function subscriberErrorReporter<E extends SubscriberErrorReport>(
  broker: string,
  listener: ((event: E) => void) | undefined,
): (event: E) => void {
  const report =
    listener === undefined ? (event: E) => writeSubscriberError(broker, event) : shielded(listener)
  return (event) => {
    if (errorChannel.hasSubscribers) errorChannel.publish({ broker, ...event })
    report(event)
  }
}

/** What every adapter's error event holds ({@link SubscriberErrorEvent}, the SQL queue's). */
interface SubscriberErrorReport {
  readonly error: unknown
  readonly phase: string
  readonly topic: string
  readonly group: string
  readonly message?: { readonly id: string } | undefined
}

function writeSubscriberError(broker: string, event: SubscriberErrorReport): void {
  const id = event.message === undefined ? '' : `, message ${JSON.stringify(event.message.id)}`
  try {
    console.error(
      `breakwater ${broker} subscriber error (phase ${event.phase}, topic ${JSON.stringify(event.topic)}, group ${JSON.stringify(event.group)}${id}):`,
      event.error,
    )
  } catch {
    // A broken stderr must not break the subscription either.
  }
}

/**
 * The application's error listener, made unable to throw into the adapter: it is called from
 * driver callbacks (a RabbitMQ delivery, whose exception drops the connection), promise
 * handlers (an unhandled rejection) and read loops (the SQL queue's, where a throw would leave
 * a failed message leased until its visibility timeout, its key's later messages behind it),
 * none of which may fail because of it.
 */
export function shielded<E>(listener: (event: E) => void): (event: E) => void {
  return (event) => {
    try {
      listener(event)
    } catch {
      // Nothing left to report it to.
    }
  }
}

/**
 * The per-key dispatcher of one subscription, from the adapter's resolved options. It lives as
 * long as the subscription (not one connection), so deliveries of a key still unacknowledged
 * when a connection drops stay awaited and the next session cannot overtake them.
 */
export function subscriptionDispatcher<D extends Delivery>(
  broker: BrokerKind,
  options: ResolvedCommonOptions,
  topic: string,
  group: string,
  handler: (message: IncomingMessage) => Promise<void>,
): KeyedDispatcher<D> {
  return new KeyedDispatcher<D>({
    handler,
    concurrency: options.concurrency,
    capacity: options.prefetch,
    maxHeldPerKey: options.maxHeldPerKey,
    holdTimeoutMs: options.holdTimeoutMs,
    clock: options.clock,
    broker,
    onError: (error, phase, message) => options.onError({ error, phase, topic, group, message }),
  })
}

/** Checks an optional millisecond option: an integer in [min, 2^31-1], or `fallback`. */
export function ms(option: string, value: unknown, fallback: number, min: number): number {
  return checkInteger(option, value ?? fallback, min, maxTimerDelayMs)
}

/**
 * Parses a broker URL and checks its scheme, host, port and percent-encoding; the error names
 * the option, never the password nor any query value (see {@link redactUrlValues}).
 */
export function parseBrokerUrl(option: string, value: unknown, schemes: readonly string[]): URL {
  const article = /^[aeiou]/.test(schemes[0] ?? '') ? 'an' : 'a'
  const expected = `${article} ${schemes.map((s) => `${s}//`).join(' or ')} URL`
  if (typeof value !== 'string') throw new InvalidOptionError(option, expected, value)
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new InvalidOptionError(option, expected, redactUrlValues(value))
  }
  if (!schemes.includes(url.protocol) || url.hostname === '') {
    throw new InvalidOptionError(option, expected, redactUrlValues(value))
  }
  // The URL parser refuses a port past 65535 but keeps 0, which no server listens on: amqplib
  // reads it as its default (5672, a port never written), ioredis and nats.js try port 0.
  if (url.port !== '' && !isPortNumber(url.port)) {
    throw new InvalidOptionError(
      option,
      `${expected} whose port is from 1 to 65535`,
      redactUrlValues(value),
    )
  }
  // The drivers decode the user name, password and path (RabbitMQ's vhost) on first connect: a
  // bare % there would throw a URIError from publish() or subscribe() instead of failing here.
  for (const part of [url.username, url.password, url.pathname]) {
    try {
      decodeURIComponent(part)
    } catch {
      throw new InvalidOptionError(
        option,
        `${expected} whose user name, password and path are percent-encoded (a % must start a %XX escape; write % itself as %25)`,
        redactUrlValues(value),
      )
    }
  }
  return url
}

/**
 * The first query parameter `url` names more than once, if any. The drivers keep one of the
 * values (amqplib the first, ioredis the last) and drop the other without a word.
 */
export function repeatedQueryParameter(url: URL): string | undefined {
  const seen = new Set<string>()
  for (const name of url.searchParams.keys()) {
    if (seen.has(name)) return name
    seen.add(name)
  }
  return undefined
}

/**
 * The URL with any user name and password replaced by `***`, for messages and logs; so is a
 * `password` in its query (ioredis reads it).
 */
export function redactUrl(value: string): string {
  try {
    const url = new URL(value)
    // Written without // (nats:user:pw@host, or user:pw@host with no scheme at all), it parses
    // with no host and the credentials in its path, where username and password see nothing.
    if (url.host === '' && value.includes('@')) return hideQueryPassword(hideBeforeAt(value))
    if (url.username !== '' || url.password !== '') {
      url.username = '***'
      url.password = ''
    }
    // ioredis takes `?password=` as the password when the URL has no userinfo.
    if (url.searchParams.has('password')) {
      const query = [...url.searchParams].map(([name, v]): [string, string] => [
        name,
        name === 'password' ? '***' : v,
      ])
      url.search = new URLSearchParams(query).toString()
    }
    return url.toString()
  } catch {
    // Not a URL (an unencoded / ? # or @ in the password is one way to get here): still hide
    // the whole userinfo, found as the database URLs' is, or anything between "//" and "@".
    const span = userinfoSpan(value)
    const shown =
      span !== undefined
        ? `${value.slice(0, span.start)}***${value.slice(span.at)}`
        : hideBeforeAt(value)
    return hideQueryPassword(shown)
  }
}

/**
 * {@link redactUrl}, with the value of every query parameter the adapter does not take
 * (`known` is false for its name) hidden too: for the refusal of a URL whose query is checked.
 * An unknown parameter may be a misspelt credential (`?pasword=`), and its value is of no use
 * in the message; a known one's value stays, as it may be what to fix (`?db=x`).
 */
export function redactUrlQuery(value: string, known: (name: string) => boolean): string {
  return maskQueryValues(redactUrl(value), (name) => !known(name), /[&#]/g)
}

/**
 * {@link redactUrl}, with the value of every query parameter hidden: for a URL refused before
 * its query is checked (a bad port, host, scheme or escape), which is then not what is wrong.
 * Only a `password` was hidden, so `amqp://h:0/?pass=...` (a misspelt or other credential:
 * `?token=`, `?secret=`) was quoted whole in the refusal of its port; the names stay.
 */
export function redactUrlValues(value: string): string {
  return redactUrlQuery(value, () => false)
}

/** `text` with the value of every `password` query parameter replaced by `***`. */
function hideQueryPassword(text: string): string {
  // Its key read as URLSearchParams reads it (`pass%77ord` too), in any case.
  return maskQueryValues(text, (name) => name.toLowerCase() === 'password', /[&#]/g)
}

/** Checks the arguments of `Subscriber.subscribe()`. */
export function checkSubscribeArgs(topic: unknown, group: unknown, handler: unknown): void {
  if (typeof topic !== 'string' || topic === '') {
    throw new InvalidOptionError('topic', 'a non-empty string', topic)
  }
  if (typeof group !== 'string' || group === '') {
    throw new InvalidOptionError('group', 'a non-empty string', group)
  }
  checkFunction('handler', handler)
}

/**
 * Checks a batch before anything of it is sent, so a message no attempt can carry fails the
 * whole batch at once with `BROKER_REJECTED` (not retryable) naming `messages[i]` and the field,
 * instead of a driver's TypeError read as an outage (retried for ever) or text arriving
 * changed: id, topic and key are strings, headers a record of strings, the payload a string or
 * bytes, the id is not empty, and no text holds half of a surrogate pair (it has no UTF-8 form and would be sent as
 * U+FFFD, so two different ids would arrive as one, and NATS would drop the second as a
 * duplicate), and no header is named {@link KEY_HEADER} (it would be overwritten with the key).
 * `extra` adds the adapter's own limits, returning what is wrong.
 */
export function checkOutgoing(
  broker: BrokerKind,
  messages: readonly OutgoingMessage[],
  extra?: (message: OutgoingMessage) => string | undefined,
): void {
  if (!Array.isArray(messages)) throw new InvalidOptionError('messages', 'an array', messages)
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i] as OutgoingMessage | undefined
    const problem =
      typeof message !== 'object' || message === null
        ? 'is not a message object'
        : (outgoingProblem(message) ?? extra?.(message))
    if (problem !== undefined) {
      throw new BrokerError('BROKER_REJECTED', broker, `messages[${i}]${problem}`)
    }
  }
}

function outgoingProblem(message: OutgoingMessage): string | undefined {
  for (const field of ['id', 'topic', 'key'] as const) {
    const value: unknown = message[field]
    if (typeof value !== 'string') return `.${field} is not a string`
    if (hasLoneSurrogate(value)) return `.${field} ${loneSurrogate}`
  }
  // The id is what a consumer's inbox dedupes on: RabbitMQ's subscriber would refuse a message
  // without one, NATS and Redis deliver a substitute; the SQL queue refuses it as well.
  if (message.id === '') return '.id is empty (an id is what consumers dedupe on)'

  const headers: unknown = message.headers
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) {
    return '.headers is not a record of strings'
  }
  for (const [name, value] of Object.entries(headers)) {
    if (hasLoneSurrogate(name)) return `.headers has a name that ${loneSurrogate}`
    // NATS and RabbitMQ carry the key in this header: an application's value would be replaced
    // by the key on the way, without a word. Reserved on every adapter alike, so a batch that
    // one broker takes is never refused (or altered) by another.
    if (name === KEY_HEADER) {
      return `.headers has a header named ${KEY_HEADER}, which is reserved for the message key (set the key field instead, or rename the header)`
    }
    if (typeof value !== 'string') return `.headers.${name} is not a string`
    if (hasLoneSurrogate(value)) return `.headers.${name} ${loneSurrogate}`
  }
  const payload: unknown = message.payload
  if (typeof payload === 'string') {
    if (hasLoneSurrogate(payload)) return `.payload ${loneSurrogate}`
  } else if (!(payload instanceof Uint8Array)) {
    return '.payload is neither a string nor bytes'
  }
  return undefined
}

const loneSurrogate = 'holds half of a surrogate pair, which has no UTF-8 form'

const encoder = new TextEncoder()

/** The payload as bytes (strings as UTF-8), without copying a Buffer or Uint8Array. */
export function payloadBytes(payload: Uint8Array | string): Uint8Array {
  return typeof payload === 'string' ? encoder.encode(payload) : payload
}

/** The payload as a Buffer sharing its memory (drivers that want Buffers). */
export function payloadBuffer(payload: Uint8Array | string): Buffer {
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8')
  return Buffer.isBuffer(payload)
    ? payload
    : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)
}

/**
 * A broker-safe name made of `[A-Za-z0-9_-]` (NATS stream and consumer names allow no dots,
 * wildcards or spaces). Names that had to change get a short hash of the original, so two
 * topics such as `a.b` and `a_b` never share a name.
 */
export function safeName(value: string): string {
  const safe = value.replace(/[^A-Za-z0-9_-]/g, '_')
  if (safe === value) return value
  const hash = createHash('sha256').update(value).digest('hex').slice(0, 8)
  return `${safe.slice(0, 200)}_${hash}`
}

/**
 * Waits for `work` (opening a publisher's connection) until `signal` aborts, then rejects with
 * {@link AbortedError}; `work` keeps running, and its connection serves the next publish. The
 * connect is bounded by `connectTimeoutMs`, but a caller that aborts (a relay shutting down)
 * must not wait that long, or for ever on a server that accepts and never answers.
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return work
  if (signal.aborted) return Promise.reject(new AbortedError(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new AbortedError(signal.reason))
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(error)
      },
    )
  })
}

/**
 * Rejects when `signal` already aborted, before any work starts, and when it is not an
 * AbortSignal at all (`publish(messages, signal)`'s `signal`): such a value would be read only
 * in a publish that has to wait for its connection, and fail there with a bare TypeError.
 */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  const checked = checkSignal('signal', signal)
  if (checked?.aborted) throw new AbortedError(checked.reason)
}

/** The error for a call on a publisher or subscriber after its `close()`. */
export function closedError(broker: BrokerKind, what: 'publisher' | 'subscriber'): BrokerError {
  return new BrokerError('BROKER_UNAVAILABLE', broker, `the ${what} is closed`)
}

/**
 * The error for a `subscribe()` whose subscriber was closed while it connected. Its clean-up
 * waited for handlers that had started meanwhile (RabbitMQ delivers between consume-ok and the
 * cancel, Redis reads the consumer's own pending entries) at most `timeoutMs` (closeTimeoutMs),
 * as `close()` does: unbounded, a handler that never settled held `subscribe()` for ever. With
 * handlers still running then, their messages are left unacknowledged, and the
 * {@link SubscriptionCloseTimeoutError} saying so is the error's `cause`.
 */
export function closedWhileSubscribing(
  broker: BrokerKind,
  topic: string,
  group: string,
  timeoutMs: number,
  unfinished: number,
): BrokerError {
  if (unfinished === 0) return closedError(broker, 'subscriber')
  return new BrokerError('BROKER_UNAVAILABLE', broker, 'the subscriber is closed', {
    cause: new SubscriptionCloseTimeoutError(broker, topic, group, timeoutMs, unfinished),
  })
}

/**
 * Loads a broker driver on first use, so importing breakwater never loads it. A missing package
 * fails with `DRIVER_MISSING` naming it.
 */
export function lazyDriver<T>(name: string, load: () => Promise<T>): () => Promise<T> {
  let loading: Promise<T> | undefined
  return () => {
    loading ??= load().catch((error: unknown) => {
      loading = undefined
      throw new BrokerDriverMissingError(name, error)
    })
    return loading
  }
}

/**
 * A subscription of `live` (its subscriber's set) whose `close()` runs `close` once, every call
 * waiting for that one run, and leaves `live` only when it is done. It left the set as its close
 * began, so the subscriber's `close()` (the broker's), called meanwhile, resolved at once while
 * the subscription's handlers still ran and their acks were still to be sent.
 */
export function trackedSubscription(
  live: Set<Subscription>,
  close: () => Promise<void>,
): Subscription {
  let closing: Promise<void> | undefined
  const subscription: Subscription = {
    close: () => {
      closing ??= close().finally(() => live.delete(subscription))
      return closing
    },
  }
  live.add(subscription)
  return subscription
}

/**
 * Closes each of `things` at once and waits for every close to end, then rejects with the first
 * failure (a `SubscriptionCloseTimeoutError`), if any: with `Promise.all` a subscriber's close
 * rejected as soon as one subscription gave up, while the others were still closing.
 */
export async function closeAll(things: Iterable<{ close(): Promise<void> }>): Promise<void> {
  const results = await Promise.allSettled([...things].map((thing) => thing.close()))
  for (const result of results) if (result.status === 'rejected') throw result.reason
}

/** Pairs an adapter's publisher and subscriber as a {@link Broker} whose `close()` closes both. */
export function pairBroker(publisher: Publisher, subscriber: Subscriber): Broker {
  return {
    publisher,
    subscriber,
    close: () => closeAll([publisher, subscriber]),
  }
}
