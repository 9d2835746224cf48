// Redis Streams adapter. The `ioredis` driver is imported lazily, here only.
import { isUtf8 } from 'node:buffer'
import { createHash, randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { Redis } from 'ioredis'
import { maxTimerDelayMs, sleep, within } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkInteger, isPortNumber, optionKeys } from '../core/validate.js'
import {
  type BrokerCommonOptions,
  checkOutgoing,
  checkSubscribeArgs,
  closeAll,
  closedError,
  closedWhileSubscribing,
  commonOptionKeys,
  lazyDriver,
  ms,
  pairBroker,
  payloadBuffer,
  type ResolvedCommonOptions,
  redactUrl,
  redactUrlQuery,
  repeatedQueryParameter,
  resolveCommonOptions,
  subscriptionDispatcher,
  throwIfAborted,
  trackedSubscription,
  untilAborted,
} from './common.js'
import type { Delivery, KeyedDispatcher, Outcome } from './dispatcher.js'
import { BrokerError, reasonOf, SubscriptionCloseTimeoutError } from './errors.js'
import { gateLostDeliveries, type LostDeliveryGate } from './lost-delivery-gate.js'
import { type Session, type SupervisedSubscription, superviseSessions } from './sessions.js'
import { connectTlsOptions, plainAnswer, tlsFailure, tlsRefusal } from './tls.js'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'

/**
 * Options of {@link createRedisBroker}.
 *
 * A topic is a stream key; each entry holds the fields `id`, `key`, `headers` (JSON) and
 * `payload`. An entry another producer wrote without an `id` (or with an empty one, or one
 * that is not UTF-8) is delivered with the id `<topic>:<entry id>`; one without a `headers` field is delivered with
 * no headers; one without a `payload` field (another producer's layout, such as `data` and
 * `type`), one whose `headers` field is not a JSON object of string values, or one that holds
 * one of these four fields twice, is refused (see {@link createRedisBroker}).
 *
 * The URL's query may set `db` (when the path does not; either 0 to 2147483646, any database a
 * server may be configured with), `port` (when the host part does not; 1 to 65535, as there),
 * `family` (0, 4 or 6), `username`, `password` and `tls` (an ioredis TLS profile name,
 * `RedisCloudFixed` or `RedisCloudFlexible`, not beside the `tls` option; ioredis would turn TLS
 * on for any other text, `?tls=false` too, so that is refused). Any other parameter is refused at construction with
 * `INVALID_OPTION` naming it: ioredis would take it as an option, ignoring a typo without a word
 * and letting those the adapter sets or relies on (`protocol`, `enableOfflineQueue`,
 * `maxRetriesPerRequest`, the timeouts, `keyPrefix`, ...) override its settings. A consumer group is a Redis consumer group on that stream, created at the start
 * of the stream (`0`) when missing, so a new group also receives what is already stored.
 */
export interface RedisBrokerOptions extends BrokerCommonOptions {
  /**
   * Trim each stream to about this many entries on every XADD (`MAXLEN ~`). Trimming also
   * drops entries no group has consumed yet, so size it well above the consumers' lag.
   * 0 never trims.
   * @default 0
   */
  readonly maxLength?: number | undefined
  /**
   * How long a delivered message may stay unacknowledged before another consumer of the group
   * claims it (XAUTOCLAIM): a crashed subscriber's messages come back after this (a new
   * subscription of a group with no live subscriber holds its handlers until then; see
   * {@link createRedisBroker}). Extended
   * while the handler runs. A subscription that stalls longer (a GC pause, SIGSTOP) may find
   * its messages taken by another consumer: it gives them up (a queued one is not run, a
   * running one is not acked) and reports each to `onError` (phase `settle`,
   * `BROKER_UNAVAILABLE`); the other consumer runs them again.
   * @default 30000
   */
  readonly visibilityTimeoutMs?: number | undefined
  /**
   * How often a subscription claims failed or abandoned messages and tells Redis it still works
   * on the ones it holds. At most a third of `visibilityTimeoutMs`.
   * @default min(1000, visibilityTimeoutMs / 3)
   */
  readonly claimIntervalMs?: number | undefined
  /** Longest wait of one blocking XREADGROUP (closing interrupts it at once). @default 5000 */
  readonly blockMs?: number | undefined
  /**
   * How long a Redis command of a subscription (XACK, XCLAIM, XAUTOCLAIM, XPENDING, XGROUP,
   * ...) or a closing QUIT may wait for its answer before it fails with `BROKER_UNAVAILABLE`
   * (`... got no answer within N ms (commandTimeoutMs)`) and its connection is dropped; a
   * subscription then reconnects with backoff. A server that keeps the connection open but
   * stops answering (paused, frozen, swapping) would otherwise hold acks, claims and `close()`
   * for good. A blocking XREADGROUP may take `blockMs` longer. `publish()` is bounded by
   * `publishTimeoutMs` instead.
   * @default 10000
   */
  readonly commandTimeoutMs?: number | undefined
  /**
   * The consumer name of this adapter's subscriptions within their groups. A stable name lets a
   * restarted process take back its own pending messages at once (they are claimed by anyone
   * after `visibilityTimeoutMs` anyway); two live subscriptions of one group must not share
   * one (a second subscribe of the same topic and group on this adapter is refused with
   * `INVALID_OPTION` while the first is open; other processes cannot be checked).
   * @default `${hostname}-${pid}-${random}`, new for every subscription
   */
  readonly consumerName?: string | undefined
}

interface ResolvedRedisOptions extends ResolvedCommonOptions {
  readonly maxLength: number
  readonly visibilityTimeoutMs: number
  readonly claimIntervalMs: number
  readonly blockMs: number
  readonly commandTimeoutMs: number
  readonly consumerName: string | undefined
}

/** The keys RedisBrokerOptions takes (internal: not exported from the package root). */
export const redisOptions = optionKeys<RedisBrokerOptions>({
  ...commonOptionKeys,
  maxLength: true,
  visibilityTimeoutMs: true,
  claimIntervalMs: true,
  blockMs: true,
  commandTimeoutMs: true,
  consumerName: true,
})

const loadRedis = lazyDriver('ioredis', () => import('ioredis'))

/** ioredis options a URL query could set that connectRedis sets or relies on being unset. */
const reservedQuery = new Set([
  'lazyConnect',
  'protocol',
  'connectTimeout',
  'connectionName',
  'enableOfflineQueue',
  'maxRetriesPerRequest',
  'enableAutoPipelining',
  'commandTimeout',
  'blockingTimeout',
  'socketTimeout',
  'autoResendUnfulfilledCommands',
  'autoResubscribe',
  'stringNumbers',
  'keyPrefix',
])

/**
 * The largest database number a Redis server can have: SELECT reads a C int, and `databases`
 * (the count, 16 by default) is at most 2147483647. Any lower one may be configured, so the
 * default count is no limit here; past this ioredis's SELECT fails and connect() rejects with a
 * bare "Connection is closed.".
 */
const maxRedisDb = 2_147_483_646

// How long stopReceiving() waits before it sends CLIENT UNBLOCK again, when the read it meant to
// wake had not reached the server yet: a round trip or two.
const unblockRetryMs = 5

/** Whether `text` is a database number a Redis server may have, as ioredis reads it (parseInt). */
function isDbNumber(text: string): boolean {
  return /^\d+$/.test(text) && Number(text) <= maxRedisDb
}

/**
 * The URL query parameters the adapter lets through to ioredis, with the values it reads
 * right: ioredis parses `db` and `port` with parseInt (`3x` would mean 3) and keeps a `family`
 * it cannot parse as a string that no socket takes. A `port` outside 1 to 65535 is refused as
 * the host part's is: ioredis would fail every connect with a RangeError, reported as a
 * retryable outage.
 */
// The TLS profiles ioredis 5 and 6 know (ioredis/built/constants/TLSProfiles.js), by exact name:
// ioredis is loaded lazily, so its table cannot be read at construction.
const redisTlsProfiles: readonly string[] = ['RedisCloudFixed', 'RedisCloudFlexible']
const queryFormats = new Map<string, (value: string) => boolean>([
  ['db', isDbNumber],
  ['port', isPortNumber],
  ['family', (value) => /^[046]$/.test(value)],
  ['username', () => true],
  ['password', () => true],
  // One of ioredis's TLS profile names. ioredis turns TLS on for any text here and spreads an
  // unknown name into tls.connect's options: ?tls=false connected over TLS to a plain port
  // and every publish failed as a server that does not answer (retryable, for ever).
  ['tls', (value) => redisTlsProfiles.includes(value)],
])
const queryFormatNames: Readonly<Record<string, string>> = {
  db: `a database number from 0 to ${maxRedisDb}`,
  port: 'a port number from 1 to 65535',
  family: '0, 4 or 6',
  tls: `an ioredis TLS profile name, ${redisTlsProfiles.join(' or ')} (for TLS otherwise use rediss:// and the tls option)`,
}

/**
 * A Redis Streams publisher (XADD, pipelined) and subscriber (consumer groups).
 *
 * `publish()` sends one XADD per message in a single pipeline (one round trip) and resolves
 * when Redis has answered every one. With `appendonly yes` and `appendfsync always` Redis
 * fsyncs before it answers; with other settings an answer only means the message is in
 * memory. Redis has no dedupe: a batch published twice is stored twice, so consumers dedupe
 * by id (the inbox).
 *
 * A subscription reads new messages with XREADGROUP (blocking), acks with XACK after the
 * handler resolves, and claims messages pending longer than `visibilityTimeoutMs` (XAUTOCLAIM)
 * for redelivery: those of crashed consumers and those whose handler failed (a failed message
 * is marked claimable after `retryDelayMs`). The delivery count comes from Redis's pending
 * entries list. Held messages are kept fresh, and acked, only while the group's pending
 * entries list still names this consumer (a Lua script, so the user needs EVAL and EVALSHA).
 *
 * A new subscription (a restarted process, whose default consumer name is new) whose group has
 * entries pending for other consumers while no other subscription of the group is connected
 * starts no handler until it has claimed them, or `visibilityTimeoutMs`, `claimIntervalMs` and a
 * second have passed; what it reads meanwhile is queued in order. They were left by a
 * predecessor that crashed (its handler held them), and XAUTOCLAIM takes them only after
 * `visibilityTimeoutMs`, behind which the key's later messages would otherwise run first. It
 * does not wait when it joins live subscribers of its group (their entries never come back to
 * it), nor when the user may not run `CLIENT LIST` (which tells a live subscription by its
 * reader connection's name, `breakwater-reader-<tag of topic and group>`), nor while the server
 * still holds a dead predecessor's connection (its host vanished without closing it).
 *
 * A `rediss://` URL whose port is a plain Redis fails `publish()` and `subscribe()` with a
 * non-retryable `BROKER_MISCONFIGURED` suggesting `redis://`, after half of `connectTimeoutMs`:
 * Redis never answers a TLS handshake, so a handshake not done by then makes the adapter ask the
 * port a plain-text PING on a second connection, and a Redis answer settles it. A port that
 * answers neither (a frozen server) stays a retryable `BROKER_UNAVAILABLE` after
 * `connectTimeoutMs`.
 *
 * Every command waits at most `commandTimeoutMs` for its answer (a blocking read `blockMs`
 * longer), so a server that keeps the connection but stops answering fails a subscription's
 * commands with `BROKER_UNAVAILABLE` and it reconnects, instead of hanging.
 *
 * An entry whose `headers` field is not the JSON object of string values the publisher writes
 * (corrupt JSON, an array, `null`, a number or other non-string value: another producer's
 * format, or a hand edit) never reaches the handler, as the SQL queue does with such a row:
 * delivering it without the headers it was sent with could make a handler act wrongly without a
 * word, and no retry can repair it. It is reported to `onError` with phase `refused`, a
 * `BROKER_REJECTED` error (not retryable) naming the entry id, and the message (id, key and
 * payload; headers empty), then acked for the group. The entry itself stays in the stream until
 * trimmed, to be inspected (`XRANGE <topic> <entry id> <entry id>`) and published again. So is
 * an entry without a `payload` field (another producer's layout, e.g. `XADD orders * data {...}
 * type order.placed`): handed on, its handler would have succeeded on an empty payload and the
 * entry been acked, its content lost. The error names the fields it has. An empty `payload`
 * field is a payload (breakwater writes one for an empty body).
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming
 * it (`redis.visibilityTimeout`), its value hidden when it is text or bytes.
 *
 * @example
 * ```ts
 * import { createRedisBroker } from 'breakwater/brokers'
 * const broker = createRedisBroker({ url: 'redis://127.0.0.1:6379' })
 * await broker.subscriber.subscribe('orders', 'billing', async (m) => bill(m.payload))
 * await broker.publisher.publish([{ id: 'e1', topic: 'orders', key: 'order-7', payload: '{}', headers: {} }])
 * await broker.close()
 * ```
 */
export function createRedisBroker(options: RedisBrokerOptions): Broker {
  const resolved = resolveRedisOptions(options)
  return pairBroker(new RedisPublisher(resolved), new RedisSubscriber(resolved))
}

function resolveRedisOptions(options: RedisBrokerOptions): ResolvedRedisOptions {
  const common = resolveCommonOptions(
    'redis',
    options,
    ['redis:', 'rediss:'],
    ['rediss:'],
    redisOptions,
  )
  // What the refusals below show: a misspelt parameter's value may be a credential.
  const shown = redactUrlQuery(options.url, (name) => queryFormats.has(name))
  // ioredis reads the path as the database number with parseInt and ignores the rest, so
  // '/3x' would silently mean database 3 and '/abc' database 0.
  const path = common.url.pathname.replace(/^\//, '')
  if (path !== '' && !isDbNumber(path)) {
    throw new InvalidOptionError(
      'redis.url',
      `a redis:// or rediss:// URL whose path is empty or a database number from 0 to ${maxRedisDb} (/0, /1, ...)`,
      shown,
    )
  }
  // ioredis lets the URL's query override the options the adapter gives it, which would undo
  // what it relies on: RESP2 reply shapes, failing fast instead of queueing or retrying through
  // an outage, its own connect sequence and timeouts.
  for (const [name, value] of common.url.searchParams) {
    // ioredis would take the query's tls (a TLS profile name) over the tls option.
    if (reservedQuery.has(name) || (name === 'tls' && common.tls !== undefined)) {
      throw new InvalidOptionError(
        'redis.url',
        `a redis:// or rediss:// URL whose query does not set ${name} (the adapter sets it; see RedisBrokerOptions)`,
        shown,
      )
    }
    // Any other name becomes an ioredis option: a typo is ignored without a word, and some act
    // behind the adapter's back (monitor, readOnly, path: a Unix socket instead of the host).
    const format = queryFormats.get(name)
    if (format === undefined || !format(value)) {
      throw new InvalidOptionError(
        'redis.url',
        format === undefined
          ? `a redis:// or rediss:// URL whose query sets only ${[...queryFormats.keys()].join(', ')}, not "${name}"`
          : `a redis:// or rediss:// URL whose query parameter "${name}" is ${queryFormatNames[name]}`,
        shown,
      )
    }
  }
  // ioredis keeps a repeated parameter's last value (?db=3&db=4 is database 4), dropping the
  // other without a word.
  const repeated = repeatedQueryParameter(common.url)
  if (repeated !== undefined) {
    throw new InvalidOptionError(
      'redis.url',
      `a redis:// or rediss:// URL that sets "${repeated}" once, in its query`,
      shown,
    )
  }
  // ioredis takes what the URL itself names and ignores the query's: one would be dropped.
  const url = common.url
  for (const [name, named, where] of [
    ['db', url.pathname.length > 1, 'path'],
    ['port', url.port !== '', 'host part'],
    ['username', url.username !== '' || url.password !== '', 'user:password@'],
    ['password', url.username !== '' || url.password !== '', 'user:password@'],
  ] as const) {
    if (named && url.searchParams.has(name)) {
      throw new InvalidOptionError(
        'redis.url',
        `a redis:// or rediss:// URL that sets "${name}" once, in its ${where} or in its query`,
        shown,
      )
    }
  }
  // ioredis reads no fragment: whatever it holds would be dropped.
  if (common.url.hash !== '') {
    throw new InvalidOptionError(
      'redis.url',
      'a redis:// or rediss:// URL without a fragment (#...)',
      shown,
    )
  }
  const consumerName = options.consumerName
  if (consumerName !== undefined && (typeof consumerName !== 'string' || consumerName === '')) {
    throw new InvalidOptionError('redis.consumerName', 'a non-empty string', consumerName)
  }
  const visibilityTimeoutMs = ms(
    'redis.visibilityTimeoutMs',
    options.visibilityTimeoutMs,
    30_000,
    100,
  )
  return {
    ...common,
    maxLength: checkInteger('redis.maxLength', options.maxLength ?? 0, 0),
    visibilityTimeoutMs,
    // The claim loop also keeps held messages fresh, so it must run well within the timeout.
    claimIntervalMs: checkInteger(
      'redis.claimIntervalMs',
      options.claimIntervalMs ?? Math.min(1_000, Math.floor(visibilityTimeoutMs / 3)),
      10,
      Math.max(10, Math.floor(visibilityTimeoutMs / 3)),
    ),
    blockMs: ms('redis.blockMs', options.blockMs, 5_000, 1),
    commandTimeoutMs: ms('redis.commandTimeoutMs', options.commandTimeoutMs, 10_000, 1),
    consumerName,
  }
}

async function connectRedis(options: ResolvedRedisOptions, role: string): Promise<Redis> {
  const { Redis } = await loadRedis()
  const client = new Redis(options.url.toString(), {
    lazyConnect: true,
    // RESP2 replies keep the documented stream reply shapes (RESP3 maps arrive flattened).
    protocol: 2,
    connectTimeout: options.connectTimeoutMs,
    connectionName: `breakwater-${role}`,
    // Fail fast instead of queueing commands through an outage and reconnecting behind our
    // back: the caller's retry policy (publisher) or the subscription's backoff decides.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    // Not enableAutoPipelining: in ioredis 6.0.0 it breaks call()/callBuffer(). Commands are
    // still pipelined on the socket; they just are not coalesced into one write.
    // ioredis hands tls to tls.connect (rediss:// alone means tls: true, Node's defaults).
    ...(options.tls === undefined ? {} : { tls: connectTlsOptions(options.tls) }),
  })
  // Without a listener ioredis logs errors; 'end' is where users of the client react.
  client.on('error', () => {})
  // A refused login (WRONGPASS, NOAUTH) or database reaches only the 'error' event: connect()
  // itself then rejects with a bare "Connection is closed.".
  let refusal: unknown
  const onRefusal = (error: unknown): void => {
    refusal ??= error
  }
  client.on('error', onRefusal)
  const where = redactUrl(options.url.toString())
  // Where ioredis connects: a URL query sets the port (`?port=`) when the URL names none.
  const target = {
    host: client.options.host ?? options.url.hostname,
    port: Number(client.options.port ?? 6379),
  }
  const watch = new AbortController()
  try {
    // ioredis's connectTimeout covers the TCP connect only: a server that accepts but never
    // answers (frozen, overloaded) would hold connect(), and the publish or subscribe waiting
    // on it, for good.
    await within(
      Promise.race([client.connect(), plainRedisOnTlsUrl(options, target, where, watch.signal)]),
      options.clock,
      options.connectTimeoutMs,
      () =>
        new BrokerError(
          'BROKER_UNAVAILABLE',
          'redis',
          `cannot connect to ${where}: no answer within ${options.connectTimeoutMs} ms`,
        ),
    )
    client.off('error', onRefusal)
    // ioredis reports a refused SELECT (a database beyond the server's `databases`) on the
    // 'error' event only and connects anyway, to database 0: every write would land there.
    const refused = refusedLogin(options, refusal)
    if (refused !== undefined) throw refused
    return client
  } catch (error) {
    client.disconnect()
    if (error instanceof BrokerError && error.code === 'BROKER_MISCONFIGURED') throw error
    // A failed TLS handshake, like a refused login, reaches only the 'error' event.
    throw (
      refusedLogin(options, refusal) ??
      tlsFailure('redis', refusal, `cannot connect to ${where}`) ??
      (await refusedClient(options, refusal, target, where, watch.signal)) ??
      redisError(error, `cannot connect to ${where}`)
    )
  } finally {
    watch.abort()
  }
}

/**
 * For a rediss:// connection reset as it opened, a `BROKER_MISCONFIGURED` when the server
 * refused the client's certificate or its absence (`tls-auth-clients yes`), else undefined.
 * Redis checks a TLS 1.3 client's certificate after the client's side of the handshake is
 * done, when ioredis has already written its first command: the server's close then reaches
 * ioredis as a reset of that write, and its alert is lost, so the connection would read as an
 * outage retried for ever. The port is asked again on a TLS connection that writes nothing
 * (bounded by `connectTimeoutMs`), which reads the alert; a reset for another reason costs
 * that one connection.
 */
async function refusedClient(
  options: ResolvedRedisOptions,
  refusal: unknown,
  target: { readonly host: string; readonly port: number },
  where: string,
  signal: AbortSignal,
): Promise<BrokerError | undefined> {
  const code = (refusal as { code?: unknown } | undefined)?.code
  if (options.url.protocol !== 'rediss:' || (code !== 'ECONNRESET' && code !== 'EPIPE')) {
    return undefined
  }
  const why = await tlsRefusal(target, options.tls, options.clock, options.connectTimeoutMs, signal)
  return tlsFailure('redis', why, `cannot connect to ${where}`)
}

/**
 * For a rediss:// URL, rejects with `BROKER_MISCONFIGURED` when the port turns out to be a
 * plain Redis; otherwise never settles (it only ever loses the race with connecting). `target`
 * is where ioredis connects (the URL's host and port, or its query's `port`).
 *
 * A plain Redis never answers a TLS ClientHello (it reads it as the start of an inline
 * command and waits for its end), so the handshake would just time out and read as an outage,
 * retried for ever. A handshake not done by half of `connectTimeoutMs` is suspect, but a frozen
 * or overloaded TLS server looks the same; so the port is asked a plain-text PING on a
 * connection of its own, and only a RESP answer (`+PONG`, `-NOAUTH ...`) makes it a
 * misconfiguration. A TLS server takes the PING for a bad record and closes; a frozen one says
 * nothing: both stay what the connect makes of them. The check costs nothing on a connect that
 * succeeds in time, and ends (with its connection) when `signal` aborts.
 */
async function plainRedisOnTlsUrl(
  options: ResolvedRedisOptions,
  target: { readonly host: string; readonly port: number },
  where: string,
  signal: AbortSignal,
): Promise<never> {
  const never = new Promise<never>(() => {})
  if (options.url.protocol !== 'rediss:') return never
  const half = Math.floor(options.connectTimeoutMs / 2)
  try {
    await sleep(options.clock, half, signal)
    const answer = await plainAnswer(
      target.host,
      Number(target.port),
      'PING\r\n',
      /^[+-][^\r\n]*\r\n/,
      options.clock,
      options.connectTimeoutMs - half,
      signal,
    )
    if (answer === undefined) return never
  } catch {
    // Aborted: connecting settled first.
    return never
  }
  const plain = new URL(options.url.toString())
  plain.protocol = 'redis:'
  throw new BrokerError(
    'BROKER_MISCONFIGURED',
    'redis',
    `cannot connect to ${where}: TLS failed: the server did not answer the TLS handshake but answers plain Redis on this port, which is probably not a TLS port; use ${redactUrl(plain.toString())} (redis://), or the server's TLS port`,
  )
}

/**
 * A `BROKER_MISCONFIGURED` error when the server refused the login (WRONGPASS: unknown user or
 * wrong password; NOAUTH: a password is required and the URL has none) or the database (an
 * index beyond its `databases`), else undefined. Every attempt fails alike: read as an outage
 * it would be retried for ever. Names the user and database, never the password.
 */
function refusedLogin(options: ResolvedRedisOptions, error: unknown): BrokerError | undefined {
  if (error === undefined) return undefined
  const reason = reasonOf(error)
  const url = options.url
  const user = url.username === '' ? 'default' : decodeURIComponent(url.username)
  const db = url.pathname.slice(1) === '' ? '0' : decodeURIComponent(url.pathname.slice(1))
  const where = redactUrl(url.toString())
  if (reason.startsWith('WRONGPASS') || reason.startsWith('NOAUTH')) {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'redis',
      `login refused for user "${user}" at ${where}: ${reason}; check the user name and password in the URL`,
      { cause: error },
    )
  }
  if (reason.startsWith('ERR DB index is out of range')) {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'redis',
      `database ${db} refused for user "${user}" at ${where}: ${reason}; check the database (the URL's path)`,
      { cause: error },
    )
  }
  return undefined
}

/**
 * Waits for `reply`, an answer from `client` to the command `what`, at most `commandTimeoutMs`
 * (plus `extraMs`, for a command that blocks on purpose) on the adapter's clock. On timeout the
 * connection is dropped: the answer may still come, and whoever uses the connection reconnects
 * (ioredis's own `commandTimeout` runs on the system clock and leaves the connection up).
 */
function answered<T>(
  options: ResolvedRedisOptions,
  client: Redis,
  what: string,
  reply: Promise<T>,
  extraMs = 0,
): Promise<T> {
  const limit = Math.min(maxTimerDelayMs, options.commandTimeoutMs + extraMs)
  return within(reply, options.clock, limit, () => {
    client.disconnect()
    return new BrokerError(
      'BROKER_UNAVAILABLE',
      'redis',
      `${what} got no answer within ${limit} ms (commandTimeoutMs)`,
    )
  })
}

/** Sends a command on `client`, bounded by {@link answered}. */
function command(
  options: ResolvedRedisOptions,
  client: Redis,
  name: string,
  ...args: Array<string | Buffer>
): Promise<unknown> {
  return answered(options, client, name, client.call(name, ...args))
}

/**
 * Settles or refreshes entries only where the group's pending entries list still names this
 * consumer as their owner, atomically per call. XCLAIM with min-idle 0 and XACK would act on
 * an entry whatever consumer holds it: after a stall longer than `visibilityTimeoutMs`
 * another consumer may have claimed it (XAUTOCLAIM) and be running it, and taking it back or
 * acking it under that consumer breaks the key's order and loses its run's failure.
 *
 * KEYS[1] the stream; ARGV: group, consumer, action (`ack`, `claim`), idle ms for `claim`
 * (empty: none), then entry ids. Acks or claims (JUSTID) those still owned; returns the others
 * as `[id, owner]` pairs (owner empty when the entry is no longer pending at all).
 */
const ownedScript = `
local stream, group, consumer, action, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mine, lost = {}, {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', stream, group, id, id, 1)[1]
  if row ~= nil and row[2] == consumer then
    mine[#mine + 1] = id
  else
    lost[#lost + 1] = id
    lost[#lost + 1] = row ~= nil and row[2] or ''
  end
end
if #mine > 0 then
  if action == 'ack' then
    redis.call('XACK', stream, group, unpack(mine))
  else
    local args = {stream, group, consumer, '0'}
    for _, id in ipairs(mine) do args[#args + 1] = id end
    if idle ~= '' then
      args[#args + 1] = 'IDLE'
      args[#args + 1] = idle
    end
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
  end
end
return lost
`
const ownedScriptSha = createHash('sha1').update(ownedScript).digest('hex')
/** Ids per script call: Lua's unpack() is limited by its C stack (about 8000 values). */
const ownedChunk = 1_000

/** An entry this consumer held that the group now gives to another consumer, or to none. */
interface LostEntry {
  readonly entryId: string
  /** The consumer that now holds it; empty when it is no longer pending at all. */
  readonly owner: string
}

/**
 * Acks or claims (`IDLE idle` when given) the entries `ids` that `consumer` still owns in
 * `group`, through {@link ownedScript}; returns those it no longer owns.
 */
async function settleOwned(
  options: ResolvedRedisOptions,
  client: Redis,
  topic: string,
  group: string,
  consumer: string,
  action: 'ack' | 'claim',
  ids: readonly string[],
  idle?: number,
): Promise<LostEntry[]> {
  const lost: LostEntry[] = []
  for (let start = 0; start < ids.length; start += ownedChunk) {
    const args = [
      '1',
      topic,
      group,
      consumer,
      action,
      idle === undefined ? '' : String(idle),
      ...ids.slice(start, start + ownedChunk),
    ]
    // Named by what it does, as a plain XACK or XCLAIM would be in a timeout's message.
    const what = action === 'ack' ? 'XACK' : 'XCLAIM'
    const reply = (await answered(
      options,
      client,
      what,
      client.call('EVALSHA', ownedScriptSha, ...args),
    ).catch((error: unknown) => {
      // Not cached yet (a new or restarted server): send it once in full.
      if (!reasonOf(error).startsWith('NOSCRIPT')) throw error
      return answered(options, client, what, client.call('EVAL', ownedScript, ...args))
    })) as string[]
    for (let i = 0; i + 1 < reply.length; i += 2) {
      lost.push({ entryId: String(reply[i]), owner: String(reply[i + 1]) })
    }
  }
  return lost
}

/** Closes `client` with QUIT, bounded by {@link answered}, or drops it. */
async function quit(options: ResolvedRedisOptions, client: Redis): Promise<void> {
  await answered(options, client, 'QUIT', client.quit()).catch(() => client.disconnect())
}

/** Maps a driver error to a {@link BrokerError}. */
function redisError(error: unknown, context: string): BrokerError {
  if (error instanceof BrokerError) return error
  const tls = tlsFailure('redis', error, context)
  if (tls !== undefined) return tls
  const message = `${context}: ${reasonOf(error)}`
  // WRONGTYPE: the topic's key holds something that is not a stream.
  if (reasonOf(error).startsWith('WRONGTYPE')) {
    return new BrokerError('BROKER_REJECTED', 'redis', message, { cause: error })
  }
  // NOPERM: the user's ACL does not allow the command or key. No retry grants it, and it is
  // not the message's fault.
  if (reasonOf(error).startsWith('NOPERM')) {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'redis',
      `${message}; grant the user the command and keys (ACL SETUSER)`,
      { cause: error },
    )
  }
  return new BrokerError('BROKER_UNAVAILABLE', 'redis', message, { cause: error })
}

function whenEnded(client: Redis): Promise<void> {
  return new Promise((resolve) => {
    if (client.status === 'end') resolve()
    else client.once('end', () => resolve())
  })
}

class RedisPublisher implements Publisher {
  readonly #options: ResolvedRedisOptions
  #client: Promise<Redis> | undefined
  #closed = false

  constructor(options: ResolvedRedisOptions) {
    this.#options = options
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal)
    if (this.#closed) throw closedError('redis', 'publisher')
    checkOutgoing('redis', messages)
    if (messages.length === 0) return
    const options = this.#options
    const connecting = this.#connect()
    const client = await untilAborted(connecting, signal)
    const trim = options.maxLength > 0 ? ['MAXLEN', '~', String(options.maxLength)] : []
    const pipeline = client.pipeline()
    for (const message of messages) {
      pipeline.call(
        'XADD',
        message.topic,
        ...trim,
        '*',
        'id',
        message.id,
        'key',
        message.key,
        'headers',
        JSON.stringify(message.headers),
        'payload',
        payloadBuffer(message.payload),
      )
    }
    let results: Array<[error: Error | null, result: unknown]> | null
    try {
      results = await within(
        pipeline.exec(),
        options.clock,
        options.publishTimeoutMs,
        () => {
          // Replies may still come on this connection; start the next publish on a fresh one.
          this.#forget(connecting, true)
          return new BrokerError('BROKER_UNAVAILABLE', 'redis', 'XADD replies timed out')
        },
        signal,
      )
    } catch (error) {
      throw redisError(error, 'publish failed')
    }
    if (results === null) throw new BrokerError('BROKER_UNAVAILABLE', 'redis', 'publish failed')
    for (const [error] of results) if (error !== null) throw redisError(error, 'XADD failed')
  }

  async close(): Promise<void> {
    this.#closed = true
    const client = this.#client
    this.#client = undefined
    const open = await client?.catch(() => undefined)
    if (open !== undefined) await quit(this.#options, open)
  }

  #connect(): Promise<Redis> {
    let client = this.#client
    if (client !== undefined) return client
    // Opened in breakwater's own context, not the first publisher's: the connection outlives
    // that call, and its socket, pings, reconnects and watchers would otherwise run in (and
    // keep alive) that caller's request store or deadline for every later publish.
    client = detached(() => connectRedis(this.#options, 'publisher'))
    this.#client = client
    detached(() =>
      client.then(
        (open) => void whenEnded(open).then(() => this.#forget(client, false)),
        () => this.#forget(client, false),
      ),
    )
    return client
  }

  #forget(client: Promise<Redis>, closeIt: boolean): void {
    if (this.#client === client) this.#client = undefined
    if (closeIt) {
      void client.then(
        (open) => open.disconnect(),
        () => {},
      )
    }
  }
}

type Fields = Buffer[] | null
type Entry = [id: Buffer, fields: Fields]

/**
 * An entry's message. Its id is the `id` field breakwater's publisher writes; an entry another
 * producer wrote without one (or with an empty one, or one that is not UTF-8, which no string
 * can hold as it is) gets `<topic>:<entry id>`, stable across
 * redeliveries and unique across streams (two streams' entries of one millisecond share the
 * entry id `<ms>-0`), so an inbox can deduplicate it.
 *
 * An entry without a `headers` field has no headers. One without a `payload` field, or whose
 * `headers` field is not the JSON record of strings the publisher writes, comes with `refused`
 * (the message with empty headers is still built, for the report): see {@link createRedisBroker}.
 */
function toIncoming(
  topic: string,
  group: string,
  entryId: string,
  fields: Buffer[],
  deliveryCount: number,
): { readonly message: IncomingMessage; readonly refused?: BrokerError } {
  let id = ''
  let key = ''
  let headers: Record<string, string> = {}
  let bad: { readonly error: unknown } | undefined
  // A field another producer wrote twice (XADD takes repeated names): which value it meant
  // cannot be told, so the entry is refused rather than read with the last one.
  let repeated: string | undefined
  let seen = 0
  let payload: Uint8Array = new Uint8Array(0)
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!.toString('utf8')
    const value = fields[i + 1]!
    const bit = knownFieldBits[name as KnownField]
    if (bit !== undefined) {
      if ((seen & bit) !== 0) repeated ??= name
      seen |= bit
    }
    // An id that is not UTF-8 (another producer's binary id) is read as absent: decoded, every
    // byte sequence that is not UTF-8 becomes U+FFFD, so two such ids would arrive as one, and
    // an inbox would drop the second as a duplicate of the first.
    if (name === 'id') id = isUtf8(value) ? value.toString('utf8') : ''
    else if (name === 'key') key = value.toString('utf8')
    else if (name === 'payload') payload = value
    else if (name === 'headers') {
      const parsed = parseHeaders(value.toString('utf8'))
      if ('headers' in parsed) {
        headers = parsed.headers
        bad = undefined
      } else {
        headers = {}
        bad = parsed
      }
    }
  }
  if (id === '') id = `${topic}:${entryId}`
  const message: IncomingMessage = { id, topic, key, payload, headers, deliveryCount }
  // Without a payload field (another producer's layout: `data`, `body`, ...) the entry would
  // reach the handler with an empty payload and be acked: its content lost without a word.
  const noPayload = (seen & knownFieldBits.payload) === 0
  if (bad === undefined && repeated === undefined && !noPayload) return { message }
  // Handing it on without the headers it was sent with (a correlation id, a tenant, a saga
  // step), or with one of two values of a field, could make a handler do the wrong thing
  // without a word; no retry can repair it.
  const problem =
    repeated !== undefined
      ? `its ${repeated} field appears more than once (which value was meant cannot be told)`
      : bad !== undefined
        ? 'its headers field is not the JSON record of strings the publisher writes'
        : `it has no payload field (its fields: ${fieldNames(fields)}; the publisher writes id, key, headers and payload)`
  const refused = new BrokerError(
    'BROKER_REJECTED',
    'redis',
    `refused entry ${entryId} (message ${JSON.stringify(id)}) of stream ${JSON.stringify(topic)}: ${problem}, so group ${JSON.stringify(group)} acked it without calling the handler; the entry stays in the stream until trimmed (XRANGE ${topic} ${entryId} ${entryId})`,
    repeated === undefined && bad !== undefined ? { cause: bad.error } : {},
  )
  return { message, refused }
}

/** An entry's field names, quoted, for a report (the first 20; values left out). */
function fieldNames(fields: readonly Buffer[]): string {
  const total = Math.floor(fields.length / 2)
  if (total === 0) return 'none'
  const names: string[] = []
  for (let i = 0; i < Math.min(total, 20); i++) {
    names.push(JSON.stringify(fields[2 * i]!.toString('utf8')))
  }
  return total > names.length
    ? `${names.join(', ')} and ${total - names.length} more`
    : names.join(', ')
}

type KnownField = 'id' | 'key' | 'payload' | 'headers'
const knownFieldBits: Readonly<Record<KnownField, number>> = Object.assign(Object.create(null), {
  id: 1,
  key: 2,
  payload: 4,
  headers: 8,
})

/**
 * A `headers` field's record of strings, or the reason it is not one (the parse error, or
 * undefined for valid JSON of another shape or with a value that is not a string).
 */
function parseHeaders(
  json: string,
): { readonly headers: Record<string, string> } | { readonly error: unknown } {
  let parsed: unknown
  try {
    parsed = JSON.parse(json)
  } catch (error) {
    return { error }
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return { error: undefined }
  }
  // No prototype: a header named __proto__ (the outbox keeps those) is then an ordinary key
  // instead of being dropped by the assignment below.
  const headers: Record<string, string> = Object.create(null)
  for (const [name, value] of Object.entries(parsed)) {
    if (typeof value !== 'string') return { error: undefined }
    headers[name] = value
  }
  return { headers }
}

interface RedisDelivery extends Delivery {
  readonly entryId: string
  /** The session (connections) it arrived on. */
  readonly session: number
}

/** What a subscription's sessions share. */
interface RedisSubscriptionState {
  readonly dispatcher: KeyedDispatcher<RedisDelivery>
  /** Entry ids in the dispatcher (queued or running): claimed for us, never delivered twice. */
  readonly held: Set<string>
  /**
   * Held entries found claimed by another consumer while their handler runs (reported once):
   * no longer refreshed; their settle acks or returns them only if they are ours again.
   */
  readonly lost: Set<string>
  /**
   * When (on the adapter's clock) the last refresh that answered was sent: the held entries
   * have been idle at most since then, so none could be claimed by another consumer before
   * `freshAt + visibilityTimeoutMs`.
   */
  freshAt: number
  /** The current session's command connection: acks go out on it, whichever session read. */
  commands: Redis | undefined
  sessions: number
}

/** A stream entry id (`<ms>-<seq>`) as one comparable number: its place in the stream. */
function entryOrder(entryId: string): bigint | undefined {
  const dash = entryId.indexOf('-')
  if (dash <= 0) return undefined
  try {
    return (BigInt(entryId.slice(0, dash)) << 64n) | BigInt(entryId.slice(dash + 1))
  } catch {
    return undefined
  }
}

/** A short tag of (topic, group) for connection names, which allow no spaces. */
function groupTag(topic: string, group: string): string {
  return createHash('sha1').update(`${topic}\u0000${group}`).digest('hex').slice(0, 16)
}

/**
 * How many entries of `group` other consumers hold when none of them is live, for a new
 * subscription to wait for; 0 when a live subscription of the group is connected.
 *
 * Why: a subscriber process killed while its handler held an entry leaves it pending under its
 * consumer name, which a restarted process (a new default name) does not own; XAUTOCLAIM gives
 * it back only after `visibilityTimeoutMs`, and meanwhile the key's next entry would run first.
 * Live peers' entries never come back to this one (they refresh them), so waiting for them
 * would idle a subscriber joining a busy group for the whole timeout; a group of several keeps
 * no order across its subscribers anyway. A peer is live while its reader connection (named
 * after the group) is open: CLIENT LIST tells, and a SIGKILLed process's sockets close at once.
 * A user refused CLIENT LIST does not wait (as before); nor does one whose dead predecessor's
 * connection the server still holds (a host that vanished without closing it).
 */
async function orphanedEntries(
  options: ResolvedRedisOptions,
  client: Redis,
  topic: string,
  group: string,
  consumer: string,
  readerId: string,
): Promise<number> {
  const summary = (await command(options, client, 'XPENDING', topic, group)) as [
    unknown,
    unknown,
    unknown,
    Array<[string, string]> | null,
  ]
  let others = 0
  for (const [name, count] of summary[3] ?? []) if (name !== consumer) others += Number(count)
  if (others === 0) return 0
  let clients: string
  try {
    clients = String(await command(options, client, 'CLIENT', 'LIST', 'TYPE', 'normal'))
  } catch {
    return 0
  }
  const name = `name=breakwater-reader-${groupTag(topic, group)}`
  const live = clients
    .split('\n')
    .some((line) => line.split(' ').includes(name) && !line.startsWith(`id=${readerId} `))
  return live ? 0 : others
}

class RedisSubscriber implements Subscriber {
  readonly #options: ResolvedRedisOptions
  readonly #subscriptions = new Set<Subscription>()
  /** (topic, group) pairs with a live subscription under the fixed `consumerName`. */
  readonly #named = new Set<string>()
  #closed = false

  constructor(options: ResolvedRedisOptions) {
    this.#options = options
  }

  async subscribe(
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
  ): Promise<Subscription> {
    checkSubscribeArgs(topic, group, handler)
    if (this.#closed) throw closedError('redis', 'subscriber')
    const options = this.#options
    // Two live subscriptions of a group under one consumer name would each read the other's
    // pending entries back as their own (running them twice at once, out of key order).
    const slot = `${topic}\u0000${group}`
    if (options.consumerName !== undefined) {
      if (this.#named.has(slot)) {
        throw new InvalidOptionError(
          'redis.consumerName',
          `a name not already used by a live subscription of group "${group}" on "${topic}" (close it first, or leave consumerName unset)`,
          options.consumerName,
        )
      }
      this.#named.add(slot)
    }
    let named = options.consumerName !== undefined
    // Once only: a second close() must not free the slot of a later subscription.
    const releaseName = (): void => {
      if (named) this.#named.delete(slot)
      named = false
    }
    // One name for the subscription's lifetime, so after a reconnect it still owns what it held.
    const consumer =
      options.consumerName ?? `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`
    // One dispatcher for the subscription's lifetime: a key's entries still pending after a
    // reconnect stay awaited, so the new session cannot overtake them.
    const state: RedisSubscriptionState = {
      dispatcher: subscriptionDispatcher<RedisDelivery>('redis', options, topic, group, handler),
      held: new Set(),
      lost: new Set(),
      freshAt: options.clock.now(),
      commands: undefined,
      sessions: 0,
    }
    let inner: SupervisedSubscription
    try {
      inner = await superviseSessions({
        open: () => this.#open(topic, group, consumer, state),
        clock: options.clock,
        reconnectDelayMs: options.reconnectDelayMs,
        maxReconnectDelayMs: options.maxReconnectDelayMs,
        onError: (error) => options.onError({ error, phase: 'connection', topic, group }),
      })
    } catch (error) {
      await state.dispatcher.close()
      releaseName()
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
      releaseName()
      throw closedWhileSubscribing('redis', topic, group, options.closeTimeoutMs, unfinished)
    }
    return trackedSubscription(this.#subscriptions, async () => {
      // Reading and claiming stop first, or entries the dispatcher releases would be claimed
      // straight back while running handlers finish.
      await inner.stopReceiving()
      // Bounded: a handler still running after closeTimeoutMs is left pending, and another
      // consumer claims it once it has been idle for visibilityTimeoutMs.
      const unfinished = await state.dispatcher.close(options.closeTimeoutMs)
      await inner.close()
      releaseName()
      if (unfinished > 0) {
        throw new SubscriptionCloseTimeoutError(
          'redis',
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

  async #open(
    topic: string,
    group: string,
    consumer: string,
    state: RedisSubscriptionState,
  ): Promise<Session> {
    const options = this.#options
    const { dispatcher, held } = state
    const reportLost = (entry: LostEntry, message: IncomingMessage, running: boolean): void => {
      const where = `entry ${entry.entryId} (message ${JSON.stringify(message.id)}) of stream ${JSON.stringify(topic)}`
      const fate =
        entry.owner === ''
          ? `is no longer pending in group ${JSON.stringify(group)} (another consumer took and settled it)`
          : `was claimed by consumer ${JSON.stringify(entry.owner)} of group ${JSON.stringify(group)}, which runs it again (dedupe by id)`
      const here = running
        ? 'its handler here ran without the claim, and its outcome is not settled for the group'
        : 'this consumer dropped it without running it'
      options.onError({
        error: new BrokerError(
          'BROKER_UNAVAILABLE',
          'redis',
          `${where} ${fate}: consumer ${JSON.stringify(consumer)} held it past visibilityTimeoutMs (a stalled process?); ${here}, and left the later entries of its key to be claimed again`,
        ),
        phase: 'settle',
        topic,
        group,
        message,
      })
    }
    // Keeps the held entries from being claimed by others, only where they are still ours: an
    // entry another consumer claimed while this one stalled is dropped here (not run, not
    // awaited, its key's later entries handed back), never taken back (see ownedScript).
    const refresh = async (client: Redis): Promise<void> => {
      const sentAt = options.clock.now()
      const ids = [...held].filter((id) => !state.lost.has(id))
      const lost =
        ids.length === 0
          ? []
          : await settleOwned(options, client, topic, group, consumer, 'claim', ids)
      state.freshAt = Math.max(state.freshAt, sentAt)
      if (lost.length === 0) return
      const owners = new Map(lost.map((entry) => [entry.entryId, entry]))
      // Only those still in the dispatcher: one settled meanwhile reports itself (settle).
      const gone = dispatcher.held().filter((d) => owners.has(d.entryId))
      const dropped = new Set(dispatcher.forsake((d) => owners.has(d.entryId)))
      for (const delivery of gone) {
        // Another refresh (the claim loop's, a settle's) found it first.
        if (state.lost.has(delivery.entryId)) continue
        const running = !dropped.has(delivery)
        if (running) state.lost.add(delivery.entryId)
        else held.delete(delivery.entryId)
        reportLost(owners.get(delivery.entryId)!, delivery.message, running)
      }
    }
    const session = ++state.sessions
    // Two connections: XREADGROUP BLOCK occupies the reader; acks, claims and heartbeats must
    // not wait behind it.
    const commands = await connectRedis(options, 'commands')
    let reader: Redis | undefined
    let readerId: string
    // Entries of the group held by consumers that are gone (see orphanedEntries), claimed only
    // after visibilityTimeoutMs: no handler starts until they are back, or a key's later
    // entries, read meanwhile, would run first.
    let gate: LostDeliveryGate | undefined
    let owed = 0
    let gateUntil = 0
    try {
      await command(options, commands, 'XGROUP', 'CREATE', topic, group, '0', 'MKSTREAM').catch(
        (error) => {
          if (!reasonOf(error).startsWith('BUSYGROUP')) throw error
        },
      )
      // Named after its group, so that a new subscription can tell live peers from gone ones.
      reader = await connectRedis(options, `reader-${groupTag(topic, group)}`)
      readerId = String(await command(options, reader, 'CLIENT', 'ID'))
      // Not after a reconnect: this consumer's own entries come back first (readOwnPending),
      // and the dispatcher awaits those it knew of.
      if (session === 1) {
        owed = await orphanedEntries(options, commands, topic, group, consumer, readerId)
        if (owed > 0) {
          const timeoutMs = options.visibilityTimeoutMs + options.claimIntervalMs + 1_000
          gateUntil = options.clock.now() + timeoutMs
          gate = gateLostDeliveries(
            dispatcher,
            { pending: owed, deliveredUpTo: 0, known: 0 },
            options.clock,
            timeoutMs,
          )
        }
      }
    } catch (error) {
      gate?.release()
      commands.disconnect()
      reader?.disconnect()
      throw redisError(error, `cannot subscribe ${group} to ${topic}`)
    }
    const blocking = reader
    state.commands = commands

    let stopping = false
    // False once stopReceiving() ran: no more reads or claims, but held entries are still kept
    // fresh (XCLAIM) and acked while their handlers finish.
    let receiving = true
    // Resolved by stopReceiving(): a read loop waiting for room (the dispatcher full, behind a
    // handler that never settles) stops waiting. It waited on, stopReceiving() waited for it,
    // and close() never got to closeTimeoutMs: it hung for good.
    let receivingStopped!: () => void
    const stoppedReceiving = new Promise<void>((resolve) => {
      receivingStopped = resolve
    })
    const abort = new AbortController()
    const settle = async (
      entryId: string,
      message: IncomingMessage,
      outcome: Outcome,
    ): Promise<void> => {
      held.delete(entryId)
      const reported = state.lost.delete(entryId)
      // Entry ids are the group's, not the connection's: settle on the live connection.
      const live = state.commands ?? commands
      // The dispatcher starts the next handler (of this key, or another) as soon as this
      // returns. After a stall (no refresh answered for about visibilityTimeoutMs: the process
      // just resumed, and its claim loop has not run yet) what it would start may be another
      // consumer's by now: check what is held first. (Synchronous up to here, so the pause is
      // in place before the dispatcher goes on.)
      if (
        options.clock.now() - state.freshAt >=
        options.visibilityTimeoutMs - options.claimIntervalMs
      ) {
        const resume = dispatcher.pause()
        try {
          await refresh(live)
        } catch {
          // The claim loop meets the same failure and the session reconnects.
        } finally {
          resume()
        }
      }
      // Only while still ours: acking or returning an entry another consumer claimed would end
      // or disturb that consumer's run of it.
      let lost: LostEntry[]
      try {
        if (outcome === 'ack') {
          lost = await settleOwned(options, live, topic, group, consumer, 'ack', [entryId])
        } else {
          // Leave it pending but make it look idle for long enough that the claim loop (ours
          // or another consumer's) takes it: after retryDelayMs, or at once on release.
          const delay = outcome === 'retry' ? options.retryDelayMs : 0
          const idle = Math.max(0, options.visibilityTimeoutMs - delay)
          lost = await settleOwned(options, live, topic, group, consumer, 'claim', [entryId], idle)
        }
      } catch (error) {
        // Reported to onError (phase settle) as this is thrown: ioredis's own "Connection is
        // closed." (the server gone mid-ack) named neither Redis nor the entry.
        const what = outcome === 'ack' ? 'ack' : 'hand back'
        throw redisError(
          error,
          `cannot ${what} entry ${entryId} of ${topic} (group ${JSON.stringify(group)})`,
        )
      }
      if (lost.length === 0 || reported) return
      reportLost(lost[0]!, message, true)
      // The others held may be lost too (a stall outlives every claim): drop them before they
      // run beside the other consumer's runs.
      await refresh(live).catch(() => {})
    }
    const deliver = (
      entryId: string,
      fields: Buffer[],
      deliveryCount: number,
      claimed = false,
    ): void => {
      if (held.has(entryId)) return
      const { message, refused } = toIncoming(topic, group, entryId, fields, deliveryCount)
      if (refused !== undefined) {
        // Reported with the message, so it is never lost without a word, then acked: claimed
        // again it would only be refused again. It never enters the dispatcher, so it holds no
        // key. An ack that fails leaves it pending, to be claimed and refused once more.
        // (options.onError is shielded: a throwing listener cannot end the read loop.)
        options.onError({ error: refused, phase: 'refused', topic, group, message })
        void command(options, state.commands ?? commands, 'XACK', topic, group, entryId).catch(
          (error: unknown) =>
            options.onError({
              error: redisError(error, `cannot ack refused entry ${entryId} of ${topic}`),
              phase: 'settle',
              topic,
              group,
              message,
            }),
        )
        return
      }
      held.add(entryId)
      const order = entryOrder(entryId)
      const delivery: RedisDelivery = {
        entryId,
        session,
        message,
        ...(order === undefined ? {} : { order }),
        settle: (outcome) => settle(entryId, message, outcome),
      }
      // Only claimed entries can be the orphaned ones the gate waits for (position 0: each
      // one it does not track counts).
      if (gate === undefined || !claimed) dispatcher.push(delivery)
      else {
        owed--
        gate.admit(message.key, message.id, 0, () => dispatcher.push(delivery))
      }
    }

    // What this consumer still has pending from before (a lost connection's unstarted and
    // unacknowledged entries) comes back first: the dispatcher awaits them.
    const readOwnPending = async (): Promise<void> => {
      let after = '0'
      for (;;) {
        const reply = (await answered(
          options,
          blocking,
          'XREADGROUP',
          blocking.callBuffer(
            'XREADGROUP',
            'GROUP',
            group,
            consumer,
            'COUNT',
            String(Math.max(16, options.prefetch)),
            'STREAMS',
            topic,
            after,
          ),
        )) as Array<[Buffer, Entry[]]> | null
        const entries = reply?.[0]?.[1] ?? []
        if (entries.length === 0) return
        const ids = entries.map(([id]) => id.toString('latin1'))
        const counts = await deliveryCounts(ids)
        for (const [id, fields] of entries) {
          const entryId = id.toString('latin1')
          if (fields !== null) deliver(entryId, fields, counts.get(entryId) ?? 2)
          // A pending entry trimmed from the stream: nothing left to deliver.
          else await command(options, commands, 'XACK', topic, group, entryId)
        }
        after = ids[ids.length - 1]!
      }
    }

    const readLoop = async (): Promise<void> => {
      await readOwnPending()
      while (!stopping && receiving) {
        await Promise.race([dispatcher.whenRoom(), stoppedReceiving])
        if (stopping || !receiving) return
        // Taken again by now (an awaited entry came back): COUNT 0 would read without a limit.
        const room = dispatcher.room
        if (room === 0) continue
        const reply = (await answered(
          options,
          blocking,
          'XREADGROUP',
          blocking.callBuffer(
            'XREADGROUP',
            'GROUP',
            group,
            consumer,
            'COUNT',
            String(room),
            'BLOCK',
            String(options.blockMs),
            'STREAMS',
            topic,
            '>',
          ),
          // Redis answers a read that found nothing after blockMs.
          options.blockMs,
        )) as Array<[Buffer, Entry[]]> | null
        for (const [, entries] of reply ?? []) {
          for (const [id, fields] of entries) {
            if (fields !== null) deliver(id.toString('latin1'), fields, 1)
          }
        }
      }
    }

    const claimLoop = async (): Promise<void> => {
      let cursor = '0-0'
      while (!stopping) {
        try {
          await sleep(options.clock, options.claimIntervalMs, abort.signal)
        } catch {
          return
        }
        // Keep what we hold from being claimed by others while it waits or runs.
        await refresh(commands)
        // Claim even when full while a key awaits a handed-back entry, or that key could wait
        // for good; an entry claimed beyond the capacity is handed back again.
        // And while the gate waits for orphaned entries: read entries may have filled the paused
        // dispatcher, which must not keep those out.
        const orphans = owed > 0 && options.clock.now() < gateUntil ? options.prefetch : 0
        const room = Math.max(
          dispatcher.room,
          Math.min(dispatcher.awaited, options.prefetch),
          orphans,
        )
        if (room === 0 || stopping || !receiving) continue
        const reply = (await answered(
          options,
          commands,
          'XAUTOCLAIM',
          commands.callBuffer(
            'XAUTOCLAIM',
            topic,
            group,
            consumer,
            String(options.visibilityTimeoutMs),
            cursor,
            'COUNT',
            String(room),
          ),
        )) as [Buffer, Array<Entry | null>, Buffer[]?]
        cursor = reply[0].toString('latin1')
        const claimed: Array<[string, Buffer[]]> = []
        for (const entry of reply[1]) {
          if (entry === null || entry[1] === null) continue
          const id = entry[0].toString('latin1')
          if (!held.has(id)) claimed.push([id, entry[1]])
        }
        // Entries trimmed away while pending: nothing left to deliver, drop them from the PEL.
        const deleted = (reply[2] ?? []).map((id) => id.toString('latin1'))
        if (deleted.length > 0) await command(options, commands, 'XACK', topic, group, ...deleted)
        if (claimed.length === 0 || stopping) continue
        const counts = await deliveryCounts(claimed.map(([id]) => id))
        for (const [id, fields] of claimed) deliver(id, fields, counts.get(id) ?? 2, true)
      }
    }

    const deliveryCounts = async (ids: string[]): Promise<Map<string, number>> => {
      const counts = new Map<string, number>()
      const rows = (await command(
        options,
        commands,
        'XPENDING',
        topic,
        group,
        ids[0]!,
        ids[ids.length - 1]!,
        String(ids.length + held.size + 16),
        consumer,
      )) as Array<[string, string, number, number]>
      for (const [id, , , deliveries] of rows) counts.set(id, Number(deliveries))
      return counts
    }

    const reading = readLoop()
    const claiming = claimLoop()
    const ended = Promise.race([
      whenEnded(commands).then(() => new Error('connection closed')),
      whenEnded(blocking).then(() => new Error('connection closed')),
      // Reading that stopped because of stopReceiving() has not ended the session.
      reading.then(
        () => (stopping ? undefined : new Promise<never>(() => {})),
        (error: unknown) => error,
      ),
      claiming.then(
        () => undefined,
        (error: unknown) => error,
      ),
    ]).then((reason) =>
      stopping || reason === undefined
        ? undefined
        : redisError(reason, `subscription ${group} on ${topic} lost`),
    )

    let stoppingReceipt: Promise<void> | undefined
    const stopReceiving = (): Promise<void> => {
      stoppingReceipt ??= (async () => {
        receiving = false
        receivingStopped()
        // Wake the blocked XREADGROUP now instead of after blockMs. A read sent just before
        // (the loop sends the next one as soon as a message is read) goes on the reader's own
        // connection and may reach the server after this UNBLOCK, which then wakes nothing
        // (it answers 0) and close() took blockMs longer: ask again, a few ms apart, until the
        // read has ended. A failed UNBLOCK stops asking (the read ends with its connection, or
        // after blockMs).
        let readEnded = false
        const ended = reading.then(
          () => {
            readEnded = true
          },
          () => {
            readEnded = true
          },
        )
        while (!readEnded) {
          const woken = await command(options, commands, 'CLIENT', 'UNBLOCK', readerId).catch(
            () => undefined,
          )
          if (readEnded || woken === undefined || Number(woken) !== 0) break
          await Promise.race([ended, sleep(options.clock, unblockRetryMs)])
        }
        await ended
      })()
      return stoppingReceipt
    }
    let closing: Promise<void> | undefined
    return {
      ended,
      stopReceiving,
      close: () => {
        closing ??= (async () => {
          stopping = true
          abort.abort()
          await stopReceiving()
          await claiming.catch(() => {})
          gate?.release()
          // Entries of this session that never started stay pending for this consumer; the
          // next session reads them back first, and the dispatcher holds their keys until then.
          for (const delivery of dispatcher.abandon((d) => d.session === session)) {
            held.delete(delivery.entryId)
          }
          if (state.commands === commands) state.commands = undefined
          // Forget this consumer when it holds nothing, so groups do not collect dead names.
          // (XGROUP DELCONSUMER would drop the pending entries of a consumer that has some.)
          await command(options, commands, 'XPENDING', topic, group, '-', '+', '1', consumer)
            .then(async (rows) => {
              if (Array.isArray(rows) && rows.length === 0) {
                await command(options, commands, 'XGROUP', 'DELCONSUMER', topic, group, consumer)
              }
            })
            .catch(() => {})
          await quit(options, blocking)
          await quit(options, commands)
        })()
        return closing
      },
    }
  }
}
