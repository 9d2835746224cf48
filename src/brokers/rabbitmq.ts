// RabbitMQ adapter. The `amqplib` driver is imported lazily, here only.
import { createHash } from 'node:crypto'
import { setMaxListeners } from 'node:events'
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib'
import { sleep, within } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkOneOf, optionKeys } from '../core/validate.js'
import {
  type BrokerCommonOptions,
  checkOutgoing,
  checkSubscribeArgs,
  closeAll,
  closedError,
  closedWhileSubscribing,
  commonOptionKeys,
  KEY_HEADER,
  lazyDriver,
  ms,
  pairBroker,
  payloadBuffer,
  type ResolvedCommonOptions,
  rabbitmqOwnHeader,
  redactUrl,
  redactUrlQuery,
  repeatedQueryParameter,
  resolveCommonOptions,
  shielded,
  subscriptionDispatcher,
  throwIfAborted,
  trackedSubscription,
  untilAborted,
} from './common.js'
import type { Delivery, KeyedDispatcher, Outcome } from './dispatcher.js'
import { BrokerError, reasonOf, SubscriptionCloseTimeoutError } from './errors.js'
import { type Session, type SupervisedSubscription, superviseSessions } from './sessions.js'
import { connectTlsOptions, tlsFailure } from './tls.js'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'

/**
 * Options of {@link createRabbitMqBroker}.
 *
 * Messages go to one durable exchange with the topic as routing key. Each (topic, group) pair is
 * a durable queue bound to the exchange with the topic as binding key; competing subscribers of
 * a group consume the same queue.
 */
export interface RabbitMqBrokerOptions extends BrokerCommonOptions {
  /**
   * The exchange messages are published to (declared durable when missing): at most 255 bytes,
   * not starting with `amq.`. @default 'breakwater'
   */
  readonly exchange?: string | undefined
  /**
   * Its type. With `topic`, topics are dot-separated words and a subscription's topic may use
   * `*` and `#` wildcards. @default 'topic'
   */
  readonly exchangeType?: 'topic' | 'direct' | undefined
  /**
   * The queue of a subscription. Scoped to the topic as well as the group, so one group name
   * can subscribe to several topics without their messages mixing, as on NATS and Redis.
   * @default (topic, group) => `${topic}.${group}`
   */
  readonly queueName?: ((topic: string, group: string) => string) | undefined
  /**
   * Queue type declared for subscriptions: `quorum` (replicated Raft log, fsynced before the
   * confirm, delivery counts) or `classic`. @default 'quorum'
   */
  readonly queueType?: 'quorum' | 'classic' | undefined
  /**
   * Publish `mandatory`: a message no queue is bound for comes back and `publish()` fails with
   * `BROKER_UNROUTABLE`, instead of RabbitMQ dropping it silently. @default true
   */
  readonly mandatory?: boolean | undefined
  /**
   * How often each subscription checks that its queue is still bound to the exchange, and binds
   * it again when not. Deleting the exchange (an operator, another application) removes its
   * bindings without a word to the consumer, and the publisher declares it again, empty, on its
   * next connection: without the check, every later publish of the topic fails
   * `BROKER_UNROUTABLE` until the subscription reconnects for another reason. A deletion found
   * is reported to `onError` (phase `connection`). `0` turns the check off: see
   * docs/rabbitmq.md. @default 10000
   */
  readonly bindingCheckIntervalMs?: number | undefined
}

interface ResolvedRabbitOptions extends ResolvedCommonOptions {
  readonly exchange: string
  readonly exchangeType: 'topic' | 'direct'
  readonly queueName: (topic: string, group: string) => string
  readonly queueType: 'quorum' | 'classic'
  readonly mandatory: boolean
  readonly bindingCheckIntervalMs: number
}

/** The keys RabbitMqBrokerOptions takes (internal: not exported from the package root). */
export const rabbitOptions = optionKeys<RabbitMqBrokerOptions>({
  ...commonOptionKeys,
  exchange: true,
  exchangeType: true,
  queueName: true,
  queueType: true,
  mandatory: true,
  bindingCheckIntervalMs: true,
})

const loadAmqp = lazyDriver('amqplib', () => import('amqplib'))

/**
 * A RabbitMQ publisher (confirm channel, persistent messages) and subscriber (prefetch-limited
 * consumer on a quorum queue, acking after the handler). A message whose handler failed is not
 * returned to the queue: it stays unacknowledged and runs again on the same subscription after
 * `retryDelayMs`, its `deliveryCount` one more each time, so the queue keeps its key's order
 * when the consumer dies (see docs/rabbitmq.md). Closing a subscription waits for its running
 * handlers and acks them; what it held but never ran goes back with the channel, in order.
 *
 * `publish()` writes the whole batch, then waits for the broker's confirm of every message: a
 * quorum queue confirms once a majority has fsynced it; a negative confirm or a returned
 * (unroutable) message fails the batch. Connections are not re-established in the background:
 * the publisher reconnects on its next `publish()`, a subscription reconnects with backoff.
 * Every other round trip to the server (opening channels, declarations, cancelling, closing)
 * waits at most `connectTimeoutMs`, then drops the connection: a server that keeps it open but
 * stops answering cannot hold `subscribe()` or `close()` for good. A subscription checks every
 * `bindingCheckIntervalMs` that its queue is still bound, and binds it again (reporting it) when
 * the exchange was deleted under it, which no consumer is told of: see docs/rabbitmq.md.
 *
 * An exchange or queue that exists with other settings than this adapter declares (another
 * type, a classic queue where a quorum one is declared), or that the user may not configure,
 * write to or read from as this adapter needs (403 ACCESS_REFUSED on declare, bind or publish),
 * fails `publish()` and `subscribe()` with `BROKER_MISCONFIGURED` (not retryable, and not the
 * message's fault) naming it and the server's reason; so does a refused login or vhost: see
 * docs/rabbitmq.md.
 *
 * A delivered message's id is its AMQP `messageId` property, which this publisher always sets.
 * A message from another producer without one (or with an empty one), or with one that is not
 * UTF-8 (amqplib decodes such bytes as U+FFFD, so two different ids would arrive as one; an id
 * holding U+FFFD itself is taken the same way, and this publisher refuses to send one), never
 * reaches the handler: RabbitMQ has no stable id of its own to stand in for it (NATS and Redis
 * give the stream position), so it is rejected without requeueing (dead-lettered if the queue
 * has a dead-letter exchange, by policy) and reported to `onError` (phase `refused`,
 * `BROKER_REJECTED`), rather than handed on with an id an inbox could not tell apart from
 * every other such message.
 *
 * Header values arrive as text. breakwater's publisher sends strings only; another producer's
 * numbers, booleans, decimals, timestamps, byte arrays, tables and arrays are converted to
 * deterministic text (tables and arrays as canonical JSON, decimals exact, timestamps ISO 8601,
 * byte arrays base64): see docs/rabbitmq.md.
 *
 * An unknown (misspelt) option is refused with `InvalidOptionError` (`INVALID_OPTION`) naming
 * it (`rabbitmq.exchangeTyp`), its value hidden when it is text or bytes. So is a URL query
 * parameter amqplib does not read, one given twice, or a value it cannot use (`heartbeat`,
 * `channelMax`, `frameMax`, `maxFrameSize`, `locale`: see docs/rabbitmq.md), and a fragment.
 *
 * @example
 * ```ts
 * import { createRabbitMqBroker } from 'breakwater/brokers'
 * const broker = createRabbitMqBroker({ url: 'amqp://guest:guest@127.0.0.1:5672' })
 * await broker.subscriber.subscribe('orders.created', 'billing', async (m) => bill(m.payload))
 * await broker.publisher.publish([{ id: 'e1', topic: 'orders.created', key: 'order-7', payload: '{}', headers: {} }])
 * await broker.close()
 * ```
 */
export function createRabbitMqBroker(options: RabbitMqBrokerOptions): Broker {
  const resolved = resolveRabbitOptions(options)
  return pairBroker(new RabbitPublisher(resolved), new RabbitSubscriber(resolved))
}

function resolveRabbitOptions(options: RabbitMqBrokerOptions): ResolvedRabbitOptions {
  const common = resolveCommonOptions(
    'rabbitmq',
    options,
    ['amqp:', 'amqps:'],
    ['amqps:'],
    rabbitOptions,
  )
  checkRabbitUrl(common.url, options.url)
  const exchange = options.exchange ?? 'breakwater'
  // At most 255 bytes (an AMQP short string): a longer one would fail every publish with
  // amqplib's TypeError, which reads as a rejected message rather than a bad setting.
  if (
    typeof exchange !== 'string' ||
    exchange === '' ||
    exchange.startsWith('amq.') ||
    Buffer.byteLength(exchange) > 255
  ) {
    throw new InvalidOptionError(
      'rabbitmq.exchange',
      'a non-empty name of at most 255 bytes not starting with "amq."',
      exchange,
    )
  }
  const queueName = options.queueName ?? ((topic: string, group: string) => `${topic}.${group}`)
  if (typeof queueName !== 'function') {
    throw new InvalidOptionError('rabbitmq.queueName', 'a function', queueName)
  }
  const mandatory = options.mandatory ?? true
  if (typeof mandatory !== 'boolean') {
    throw new InvalidOptionError('rabbitmq.mandatory', 'a boolean', mandatory)
  }
  return {
    ...common,
    exchange,
    exchangeType: checkOneOf('rabbitmq.exchangeType', options.exchangeType ?? 'topic', [
      'topic',
      'direct',
    ]),
    queueName,
    queueType: checkOneOf('rabbitmq.queueType', options.queueType ?? 'quorum', [
      'quorum',
      'classic',
    ]),
    mandatory,
    bindingCheckIntervalMs: ms(
      'rabbitmq.bindingCheckIntervalMs',
      options.bindingCheckIntervalMs,
      10_000,
      0,
    ),
  }
}

/** An unsigned decimal integer, as amqplib's parseInt reads it in full (no sign, unit or point). */
const digits = /^\d+$/

/**
 * The query parameters amqplib reads from the URL when it connects, and which of their values
 * it can use: each field's range in the AMQP frame it is sent in (channel-max and heartbeat
 * are 16-bit; frame-max 32-bit and, unless 0, at least the protocol's 4096 bytes, which
 * RabbitMQ enforces by dropping the connection; locale a short string), and amqplib's own rule
 * for maxFrameSize (the largest frame it accepts from the server).
 */
const rabbitQuery: ReadonlyMap<
  string,
  { readonly valid: (v: string) => boolean; readonly is: string }
> = new Map([
  [
    'heartbeat',
    {
      valid: (v) => digits.test(v) && Number(v) <= 0xffff,
      is: 'an integer from 0 to 65535 (seconds; 0 turns heartbeats off)',
    },
  ],
  [
    'channelMax',
    {
      valid: (v) => digits.test(v) && Number(v) <= 0xffff,
      is: "an integer from 0 to 65535 (0: the server's limit)",
    },
  ],
  [
    'frameMax',
    { valid: frameSize, is: "0 (the server's limit) or an integer from 4096 to 4294967295" },
  ],
  ['maxFrameSize', { valid: frameSize, is: '0 (no limit) or an integer from 4096 to 4294967295' }],
  [
    'locale',
    {
      valid: (v) => v !== '' && Buffer.byteLength(v) <= 255,
      is: 'a non-empty name of at most 255 bytes',
    },
  ],
])

function frameSize(value: string): boolean {
  if (!digits.test(value)) return false
  const size = Number(value)
  return size === 0 || (size >= 4096 && size <= 0xffffffff)
}

/**
 * Refuses at construction what amqplib would misread or throw on when it connects: an unknown
 * (misspelt) query parameter is ignored without a word, a bad value throws a TypeError or
 * RangeError from connect (or is read as its leading digits: heartbeat=10s as 10), a repeated
 * one keeps its first value, a fragment is dropped. The value of a parameter amqplib does not
 * take is never quoted: the query may have been pasted with a secret in it (`?pass=`).
 */
function checkRabbitUrl(url: URL, given: string): void {
  const refuse = (expected: string): never => {
    throw new InvalidOptionError(
      'rabbitmq.url',
      `an amqp:// or amqps:// URL ${expected}`,
      // A misspelt parameter's value may be a credential (?pass=...): only amqplib's are shown.
      redactUrlQuery(given, (name) => rabbitQuery.has(name)),
    )
  }
  for (const [name, value] of url.searchParams) {
    const parameter = rabbitQuery.get(name)
    if (parameter === undefined) {
      refuse(`whose query sets only ${[...rabbitQuery.keys()].join(', ')}, not "${name}"`)
    } else if (!parameter.valid(value)) {
      refuse(`whose query parameter "${name}" is ${parameter.is}`)
    }
  }
  const repeated = repeatedQueryParameter(url)
  if (repeated !== undefined) refuse(`that sets "${repeated}" once (amqplib would keep the first)`)
  if (url.hash !== '') refuse('without a fragment (#...)')
}

async function connectRabbit(options: ResolvedRabbitOptions): Promise<ChannelModel> {
  const amqp = await loadAmqp()
  try {
    const { user, password } = loginOf(options.url)
    const model = await amqp.connect(options.url.toString(), {
      timeout: options.connectTimeoutMs,
      clientProperties: { connection_name: 'breakwater' },
      // amqplib decodes the URL's user name and password with unescape(), which reads each
      // %XX as one Latin-1 character: a UTF-8 encoded 'é' (%C3%A9) would log in as 'Ã©' and
      // be refused. Decoded here as UTF-8, as URLs encode them.
      credentials: amqp.credentials.plain(user, password),
      // amqplib hands its socket options to tls.connect for amqps://.
      ...connectTlsOptions(options.tls),
    })
    // Without a listener an 'error' event would crash the process; 'close' follows it and is
    // where each user of the connection reacts.
    model.on('error', () => {})
    return model
  } catch (error) {
    const context = `cannot connect to ${redactUrl(options.url.toString())}`
    // While connecting, amqplib throws TypeError and RangeError over its settings (a field
    // that does not fit its frame: a vhost over 255 bytes), never over a message: every
    // message would fail alike, so it is the setup's fault, and a relay must not dead-letter
    // events for it (rabbitError reads them as a refused message).
    if (
      (error instanceof TypeError || error instanceof RangeError) &&
      tlsFailure('rabbitmq', error, context) === undefined
    ) {
      throw new BrokerError(
        'BROKER_MISCONFIGURED',
        'rabbitmq',
        `${context}: amqplib refused a connection setting: ${reasonOf(error)}; check the URL`,
        { cause: error },
      )
    }
    throw refusedLogin(options, error) ?? rabbitError(error, context)
  }
}

/**
 * The user name, password and vhost to log in with: guest (password guest) when the URL has no
 * user name and password, as amqplib does, and vhost `/` when it has no path.
 */
function loginOf(url: URL): {
  readonly user: string
  readonly password: string
  readonly vhost: string
} {
  const guest = url.username === '' && url.password === ''
  const vhost = url.pathname.slice(1)
  return {
    user: guest ? 'guest' : decodeURIComponent(url.username),
    password: guest ? 'guest' : decodeURIComponent(url.password),
    vhost: vhost === '' ? '/' : decodeURIComponent(vhost),
  }
}

/**
 * A `BROKER_MISCONFIGURED` error when the server refused the handshake itself, else undefined.
 * A refused login (403 ACCESS_REFUSED: unknown user, wrong password) or a refused vhost (the
 * server answers connection.open with connection.close: the vhost does not exist or the user
 * has no permission on it) fails every attempt alike: read as an outage, a relay would retry
 * it for ever and a caller's retry policy would hide it. The error names the user and vhost,
 * never the password. amqplib keeps the server's reason for a refused vhost to itself, so that
 * message lists the causes RabbitMQ has for it; a connection limit of the user or vhost is one
 * of them, and clears by itself once other connections close.
 */
function refusedLogin(options: ResolvedRabbitOptions, error: unknown): BrokerError | undefined {
  const reason = reasonOf(error)
  const where = redactUrl(options.url.toString())
  const { user, vhost } = loginOf(options.url)
  if (reason.startsWith('Handshake terminated by server: 403 ')) {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'rabbitmq',
      `login refused for user "${user}" in vhost "${vhost}" at ${where}: ${reason}; check the user name and password in the URL (rabbitmqctl authenticate_user)`,
      { cause: error },
    )
  }
  if (reason.startsWith('Expected ConnectionOpenOk; got <ConnectionClose')) {
    return new BrokerError(
      'BROKER_MISCONFIGURED',
      'rabbitmq',
      `vhost "${vhost}" refused for user "${user}" at ${where}: the vhost does not exist, the user has no permission on it, or a connection limit of the user or vhost is reached; check the vhost (the URL's path) and the user's permissions (rabbitmqctl list_permissions -p <vhost>)`,
      { cause: error },
    )
  }
  return undefined
}

/**
 * Drops a connection at once, without the close handshake a frozen server never answers. The
 * socket is destroyed with an error: the driver listens for 'error' and 'end' only, so a plain
 * destroy would leave it believing the connection open, its channels never closed, and every
 * wait on them ('drain', confirms, replies, a close) pending for good.
 */
function destroy(model: ChannelModel): void {
  const stream = (model.connection as unknown as { stream?: { destroy(error?: Error): void } })
    .stream
  stream?.destroy(new Error('connection dropped: the server did not answer in time'))
}

/**
 * Waits for `work`, a round trip to the server on `model` (opening a channel, a declaration,
 * cancelling a consumer, closing), at most `connectTimeoutMs`: a server that keeps the
 * connection open but stops answering would hold connecting, subscribing and `close()` for
 * good. On timeout the connection is dropped (its users see it closed and reconnect) and the
 * wait fails with `BROKER_UNAVAILABLE`.
 */
function answered<T>(
  options: ResolvedRabbitOptions,
  model: ChannelModel,
  what: string,
  work: Promise<T>,
): Promise<T> {
  return within(work, options.clock, options.connectTimeoutMs, () => {
    destroy(model)
    return new BrokerError(
      'BROKER_UNAVAILABLE',
      'rabbitmq',
      `${what} got no answer within ${options.connectTimeoutMs} ms (connectTimeoutMs)`,
    )
  })
}

/**
 * Declares the exchange or a queue, bounded by {@link answered}. A server that refuses the
 * declaration with 406 PRECONDITION_FAILED holds an exchange or queue of that name with other
 * settings (another type, durability or arguments, e.g. a classic queue where a quorum one is
 * declared); one that refuses it with 403 ACCESS_REFUSED does not let the user configure it
 * (its `configure` permission in the vhost does not match the name). Both are configuration
 * errors no retry can clear, so they fail with `BROKER_MISCONFIGURED` (not retryable) naming the
 * exchange or queue and the server's reason, instead of a `BROKER_UNAVAILABLE` a retry policy
 * would hide, or a `BROKER_REJECTED` a relay would charge to (and dead-letter) every event.
 */
async function declare<T>(
  options: ResolvedRabbitOptions,
  model: ChannelModel,
  kind: 'exchange' | 'queue',
  name: string,
  declared: string,
  work: Promise<T>,
): Promise<T> {
  try {
    return await answered(options, model, `declaring the ${kind} ${name}`, work)
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code
    if (code === 406) {
      throw new BrokerError(
        'BROKER_MISCONFIGURED',
        'rabbitmq',
        `${kind} "${name}" exists with other settings than this adapter declares (${declared}): ${reasonOf(error)}; delete it, or configure the adapter to match it`,
        { cause: error },
      )
    }
    if (code === 403) {
      throw new BrokerError(
        'BROKER_MISCONFIGURED',
        'rabbitmq',
        `${kind} "${name}" may not be declared by this user: ${reasonOf(error)}; grant the user configure permission on it in the vhost (rabbitmqctl set_permissions), or use a ${kind} name it may configure`,
        { cause: error },
      )
    }
    throw error
  }
}

/** What the adapter declares its exchange as, for {@link declare}'s error. */
/**
 * Declares the adapter's exchange (durable, `rabbitmq.exchangeType`) on `channel`, as both the
 * publisher and the subscriber need it; a clash with an existing one is refused by
 * {@link declare}, naming these settings.
 */
async function declareExchange(
  options: ResolvedRabbitOptions,
  model: ChannelModel,
  channel: Channel,
): Promise<void> {
  await declare(
    options,
    model,
    'exchange',
    options.exchange,
    `type ${options.exchangeType} (rabbitmq.exchangeType), durable`,
    channel.assertExchange(options.exchange, options.exchangeType, { durable: true }),
  )
}

/** What {@link watchBinding} watches, on which connection, and where it reports. */
interface BindingWatch {
  readonly options: ResolvedRabbitOptions
  readonly model: ChannelModel
  readonly queue: string
  readonly topic: string
  /** Aborted when the session ends or stops receiving: the watch ends with it. */
  readonly signal: AbortSignal
  readonly report: (error: unknown) => void
}

/**
 * The name of the marker exchange that tells whether `exchange` was deleted since `queue` was
 * bound to it: one per (exchange, queue), so competing subscribers of a group share it and
 * restarts reuse it, never leaving one behind per connection. Internal: not exported from the
 * package root (tests wait for it).
 */
export function bindingMarker(exchange: string, queue: string): string {
  const hash = createHash('sha256').update(`${exchange}\n${queue}`).digest('hex')
  return `breakwater.binding-check.${hash.slice(0, 32)}`
}

/**
 * Checks every `bindingCheckIntervalMs` (on the clock) that `queue` is still bound to the
 * exchange, for as long as the session lasts. Deleting an exchange removes its bindings but
 * cancels no consumer, and the publisher declares the exchange again (empty) on its next
 * connection, so neither the consumer nor a passive check of the exchange shows the loss. A
 * marker does: a durable auto-delete exchange bound to the exchange (as its source, so it routes
 * nothing), which RabbitMQ deletes with the binding when the exchange is deleted. When the
 * marker is gone the exchange is declared, the queue bound and the marker set again, and the
 * deletion reported. A user who may not declare or bind the marker (403: it needs configure
 * permission on its name and write permission on the exchange) is checked without it: the
 * exchange passively (404: declared, bound and reported), and the queue bound again at every
 * check (idempotent), which repairs a deletion and re-creation between two checks but cannot
 * tell it happened, so reports nothing for it. Errors are reported; the check goes on.
 */
async function watchBinding(watch: BindingWatch): Promise<void> {
  const { options, queue, topic, signal } = watch
  const marker = bindingMarker(options.exchange, queue)
  // Tried again at the next check when setting it fails (the exchange may be gone just then).
  let marked = await markBinding(watch, marker).catch((): MarkerState => 'unset')
  for (;;) {
    try {
      await sleep(options.clock, options.bindingCheckIntervalMs, signal)
    } catch {
      return // the session ended
    }
    try {
      const gone = await exchangeGone(watch, marked === 'set' ? marker : options.exchange)
      if (gone) {
        await throwaway(watch, `binding the queue ${queue} again`, async (channel) => {
          await channel.assertExchange(options.exchange, options.exchangeType, { durable: true })
          await channel.bindQueue(queue, options.exchange, topic)
        })
        watch.report(
          new BrokerError(
            'BROKER_UNAVAILABLE',
            'rabbitmq',
            `exchange "${options.exchange}" was deleted (by an operator or another application), which removed the binding of queue ${queue} for topic "${topic}": publishes of the topic meanwhile failed BROKER_UNROUTABLE or reached other queues only; declared the exchange and bound the queue again`,
          ),
        )
        marked = 'unset'
      } else if (marked !== 'set') {
        await throwaway(watch, `binding the queue ${queue} again`, (channel) =>
          channel.bindQueue(queue, options.exchange, topic),
        )
      }
      if (marked === 'unset') marked = await markBinding(watch, marker)
    } catch (error) {
      if (signal.aborted) return
      watch.report(rabbitError(error, `cannot check the binding of queue ${queue}`))
    }
  }
}

/** Whether {@link watchBinding}'s marker is set, yet to be set, or refused to this user. */
type MarkerState = 'unset' | 'set' | 'refused'

/**
 * Declares the marker of {@link watchBinding} and binds it to the exchange: `set`, or `refused`
 * when the server refuses it (403 ACCESS_REFUSED); other failures reject.
 */
async function markBinding(watch: BindingWatch, marker: string): Promise<MarkerState> {
  try {
    await throwaway(watch, `declaring the binding check exchange ${marker}`, async (channel) => {
      await channel.assertExchange(marker, 'fanout', { durable: true, autoDelete: true })
      await channel.bindExchange(watch.options.exchange, marker, '')
    })
    return 'set'
  } catch (error) {
    if ((error as { code?: unknown } | null)?.code === 403) return 'refused'
    throw error
  }
}

/** Whether the exchange `name` is missing (a passive declare answered 404 NOT_FOUND). */
async function exchangeGone(watch: BindingWatch, name: string): Promise<boolean> {
  try {
    await throwaway(watch, `checking the exchange ${name}`, (channel) =>
      channel.checkExchange(name),
    )
    return false
  } catch (error) {
    if ((error as { code?: unknown } | null)?.code === 404) return true
    throw error
  }
}

/**
 * Runs `work` on a channel of its own, closed after: a 404 or 403 closes the channel it comes
 * on, which must not be the consuming one. Bounded by {@link answered}.
 */
async function throwaway<T>(
  watch: BindingWatch,
  what: string,
  work: (channel: Channel) => Promise<T>,
): Promise<T> {
  const { options, model } = watch
  const channel = await answered(options, model, 'opening a channel', model.createChannel())
  // The server's reason also rejects `work`; without a listener 'error' would be thrown.
  channel.on('error', () => {})
  try {
    return await answered(options, model, what, work(channel))
  } finally {
    // Already closed by the server after a 404 or 403: then close() throws, harmlessly.
    await answered(
      options,
      model,
      'closing the channel',
      Promise.resolve().then(() => channel.close()),
    ).catch(() => {})
  }
}

/** Closes a connection, bounded by {@link answered} (dropped on timeout); never rejects. */
async function closeConnection(options: ResolvedRabbitOptions, model: ChannelModel): Promise<void> {
  await answered(options, model, 'closing the connection', model.close()).catch(() => {})
}

/** Closes a channel and its connection, each bounded by {@link answered}. */
async function closeBoth(
  options: ResolvedRabbitOptions,
  model: ChannelModel,
  channel: Channel,
): Promise<void> {
  await answered(options, model, 'closing the channel', channel.close()).catch(() => {})
  await closeConnection(options, model)
}

/**
 * The body size the server named when it closed the channel over a message above its
 * max_message_size, if that is why it closed it.
 */
function oversizedBody(failure: unknown): number | undefined {
  const found = /message size (\d+) is larger than configured max size/.exec(reasonOf(failure))
  return found === null ? undefined : Number(found[1])
}

/**
 * Why a consuming channel ended, from the server's error when it closed it (none when the
 * connection went first). A handler that held a message longer than the server's
 * `consumer_timeout`, or a message retried on the subscription (its handler failing) for
 * longer, makes it close the channel with 406 PRECONDITION_FAILED and requeue what the channel
 * held: the error says so and what to change, since the reconnect alone runs the message again
 * and, with a handler that slow, meets the same timeout.
 */
function channelLoss(failure: unknown): unknown {
  if (failure === undefined) return new Error('channel closed')
  const reason = reasonOf(failure)
  if (!/delivery acknowledgement on channel \d+ timed out/.test(reason)) return failure
  return new Error(
    `${reason}; a handler ran longer than the server's consumer_timeout (or a message whose handler kept failing was retried for longer): the server closed the channel and requeued its unacknowledged messages, which run again after the reconnect. Raise consumer_timeout (rabbitmq.conf) above the slowest handler, or bound the handler below it`,
    { cause: failure },
  )
}

/** Maps a driver error to a {@link BrokerError}. */
function rabbitError(error: unknown, context: string): BrokerError {
  if (error instanceof BrokerError) return error
  const tls = tlsFailure('rabbitmq', error, context)
  if (tls !== undefined) return tls
  const message = `${context}: ${reasonOf(error)}`
  // amqplib throws RangeError when a message's headers do not fit a frame, and TypeError when
  // a short-string field is longer than 255 bytes (message id, topic as routing key, queue):
  // the same message or name can never go through, so neither is worth a retry.
  if (error instanceof RangeError || error instanceof TypeError) {
    return new BrokerError('BROKER_REJECTED', 'rabbitmq', message, { cause: error })
  }
  return new BrokerError('BROKER_UNAVAILABLE', 'rabbitmq', message, { cause: error })
}

interface PublishChannel {
  readonly model: ChannelModel
  readonly channel: ConfirmChannel
  /**
   * The publishes awaiting their confirms on this channel. A returned (unroutable) message is
   * recorded only in the ones that sent its id, and only while they wait: a return that comes
   * back after its publish gave up (aborted, a negative confirm) must not fail a later publish
   * of the same id, which may well be routable by then.
   */
  readonly watches: Set<ReturnWatch>
  /** Why the server closed the channel, once it did: its confirms then fail as 'channel closed'. */
  failure: unknown
}

/** One publish's ids and which of them came back unroutable. */
interface ReturnWatch {
  readonly ids: ReadonlySet<string>
  readonly returned: Set<string>
}

class RabbitPublisher implements Publisher {
  readonly #options: ResolvedRabbitOptions
  #connection: Promise<PublishChannel> | undefined
  #closed = false

  constructor(options: ResolvedRabbitOptions) {
    this.#options = options
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal)
    if (this.#closed) throw closedError('rabbitmq', 'publisher')
    checkOutgoing('rabbitmq', messages, shortStrings)
    if (messages.length === 0) return
    const connection = this.#connect()
    const open = await untilAborted(connection, signal)
    const { channel, watches } = open
    const watch: ReturnWatch = { ids: new Set(messages.map((m) => m.id)), returned: new Set() }
    watches.add(watch)
    try {
      await this.#publishOn(connection, open, channel, messages, watch, signal)
    } finally {
      watches.delete(watch)
    }
  }

  /** Sends a batch on `channel` and waits for its confirms; `watch` collects its returns. */
  async #publishOn(
    connection: Promise<PublishChannel>,
    open: PublishChannel,
    channel: ConfirmChannel,
    messages: readonly OutgoingMessage[],
    watch: ReturnWatch,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const options = this.#options
    const confirms: Array<Promise<void>> = []
    // Set once publish() stopped waiting (deadline, abort): the rest of the batch is not sent.
    let givenUp = false
    // The deadline covers writing as well as confirms: a server that stops reading (frozen, or
    // blocked by a resource alarm) fills the socket and the channel's buffer, and the wait for
    // 'drain' would otherwise outlast publishTimeoutMs and the caller's signal.
    const sending = (async (): Promise<Array<PromiseSettledResult<void>>> => {
      try {
        for (const message of messages) {
          if (givenUp) break
          let written = true
          confirms.push(
            new Promise<void>((resolve, reject) => {
              written = channel.publish(
                options.exchange,
                message.topic,
                payloadBuffer(message.payload),
                {
                  persistent: true,
                  mandatory: options.mandatory,
                  messageId: message.id,
                  headers: { ...message.headers, [KEY_HEADER]: message.key },
                },
                (error: unknown) => (error == null ? resolve() : reject(error)),
              )
            }),
          )
          if (!written) await drained(channel)
        }
      } catch (error) {
        // A publish that throws (channel closed, frame too large) leaves the channel suspect.
        this.#forget(connection, true)
        await Promise.allSettled(confirms)
        throw rabbitError(error, 'publish failed')
      }
      return Promise.allSettled(confirms)
    })()
    let results: Array<PromiseSettledResult<void>>
    try {
      results = await within(
        sending,
        options.clock,
        options.publishTimeoutMs,
        () => {
          // Writes and confirms that never came may still come; this channel's state is unknown.
          this.#forget(connection, true)
          return new BrokerError(
            'BROKER_UNAVAILABLE',
            'rabbitmq',
            `publish not written and confirmed within ${options.publishTimeoutMs} ms (publishTimeoutMs)`,
          )
        },
        signal,
      )
    } finally {
      givenUp = true
    }
    for (const result of results) {
      if (result.status === 'rejected') {
        // The server's reason for closing the channel says more than the driver's 'channel
        // closed'. A message above max_message_size fails the same way at every attempt: its
        // batch is refused for good; others that shared the channel just publish again.
        const size = oversizedBody(open.failure)
        if (size !== undefined && messages.some((m) => payloadBuffer(m.payload).length === size)) {
          throw new BrokerError(
            'BROKER_REJECTED',
            'rabbitmq',
            `publish refused: ${reasonOf(open.failure)}`,
            { cause: open.failure },
          )
        }
        // 403 ACCESS_REFUSED: the user may not write to the exchange. No retry grants it.
        if ((open.failure as { code?: unknown } | null)?.code === 403) {
          throw new BrokerError(
            'BROKER_MISCONFIGURED',
            'rabbitmq',
            `publish to exchange "${options.exchange}" refused: ${reasonOf(open.failure)}; grant the user write permission on it in the vhost (rabbitmqctl set_permissions)`,
            { cause: open.failure },
          )
        }
        throw rabbitError(open.failure ?? result.reason, 'publish not confirmed')
      }
    }
    // basic.return arrives before the confirm of the same message, so this set is complete.
    let unroutable: string | undefined
    for (const message of messages) {
      if (watch.returned.has(message.id)) unroutable ??= message.topic
    }
    if (unroutable !== undefined) {
      throw new BrokerError(
        'BROKER_UNROUTABLE',
        'rabbitmq',
        `no queue is bound for topic "${unroutable}" on exchange "${options.exchange}"`,
      )
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    const connection = this.#connection
    this.#connection = undefined
    if (connection === undefined) return
    const open = await connection.catch(() => undefined)
    if (open !== undefined) {
      await closeBoth(this.#options, open.model, open.channel)
    }
  }

  #connect(): Promise<PublishChannel> {
    let connection = this.#connection
    if (connection !== undefined) return connection
    // Opened in breakwater's own context, not the first publisher's: the connection outlives
    // that call, and its socket, pings, reconnects and watchers would otherwise run in (and
    // keep alive) that caller's request store or deadline for every later publish.
    connection = detached(() => this.#open())
    this.#connection = connection
    detached(() =>
      connection.then(
        ({ model, channel }) => {
          // Forget a connection once it is gone: the next publish opens a new one.
          const lost = (): void => this.#forget(connection, false)
          model.once('close', lost)
          channel.once('close', lost)
        },
        () => this.#forget(connection, false),
      ),
    )
    return connection
  }

  async #open(): Promise<PublishChannel> {
    const options = this.#options
    const model = await connectRabbit(options)
    try {
      const channel = await answered(
        options,
        model,
        'opening a channel',
        model.createConfirmChannel(),
      )
      const opened: { failure: unknown } = { failure: undefined }
      // Emitted before 'close' fails the unconfirmed messages.
      channel.on('error', (error: unknown) => {
        opened.failure = error
      })
      const watches = new Set<ReturnWatch>()
      channel.on('return', (message: ConsumeMessage) => {
        const id = message.properties.messageId
        if (typeof id !== 'string') return
        for (const watch of watches) if (watch.ids.has(id)) watch.returned.add(id)
      })
      await declareExchange(options, model, channel)
      return Object.assign(opened, { model, channel, watches })
    } catch (error) {
      await closeConnection(options, model)
      throw rabbitError(error, 'cannot open a confirm channel')
    }
  }

  #forget(connection: Promise<PublishChannel>, closeIt: boolean): void {
    if (this.#connection === connection) this.#connection = undefined
    if (closeIt) {
      // Bounded like every other round trip: a frozen server never sends the close-ok, and
      // the connection (with the given-up publish's wait for 'drain') would outlive it.
      const options = this.#options
      void connection.then(
        ({ model }) => closeConnection(options, model),
        () => {},
      )
    }
  }
}

/**
 * What RabbitMQ cannot carry as it is, checked before the batch is sent. The message id and the
 * topic (routing key), and the name of each header, travel as AMQP short strings of at most
 * 255 bytes: amqplib would throw in the middle of the batch, after the earlier messages went
 * out, and the channel would be dropped. A header named `__proto__` (the outbox keeps such headers) would be sent, but
 * amqplib decodes a headers table into a plain object, where that name sets the prototype:
 * the header would vanish on the way without a word. So would a header named like RabbitMQ's
 * own (`x-death`, `x-delivery-count`, ...), which the subscriber leaves out of a delivery.
 */
function shortStrings(message: OutgoingMessage): string | undefined {
  if (Buffer.byteLength(message.id) > 255) return '.id is longer than 255 bytes'
  if (message.id.includes('\uFFFD')) {
    return '.id holds U+FFFD, which the subscriber cannot tell from an id that is not UTF-8 and refuses'
  }
  if (Buffer.byteLength(message.topic) > 255) return '.topic is longer than 255 bytes'
  if (Object.hasOwn(message.headers, '__proto__')) {
    return '.headers has a header named __proto__, which the amqplib driver drops on receipt'
  }
  for (const name of Object.keys(message.headers)) {
    // A header table's field names are short strings too.
    if (Buffer.byteLength(name) > 255) {
      return `.headers has a header name longer than 255 bytes ("${name.slice(0, 32)}…")`
    }
    if (rabbitmqOwnHeader.test(name)) {
      return `.headers has a header named ${name}, which is RabbitMQ's own: the subscriber does not deliver it`
    }
  }
  return undefined
}

/** Resolves when the channel can take more writes (or is gone). */
function drained(channel: Channel): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      channel.removeListener('drain', done)
      channel.removeListener('close', done)
      resolve()
    }
    channel.once('drain', done)
    channel.once('close', done)
  })
}

/**
 * Why a delivery without a message id is refused. RabbitMQ gives a message no id of its own
 * that survives redelivery (a delivery tag is per channel and changes each time), and one made
 * up from the content would make two equal messages one: so a message whose `messageId`
 * property is missing or empty is rejected without requeueing (dead-lettered when the queue
 * has a dead-letter exchange, dropped otherwise) and reported to `onError` with
 * `BROKER_REJECTED`, instead of reaching the handler with the id '' that an inbox would take
 * for one message delivered again and again. breakwater's publisher always sets it.
 */
const MISSING_ID_REASON =
  'refused a message without a messageId property (set by every breakwater publisher; other producers must set a unique one): it has no id to deduplicate on, so it was rejected without requeueing (dead-lettered if the queue has a dead-letter exchange)'

/**
 * Why a delivery whose message id holds U+FFFD is refused, as one without an id is (see
 * {@link MISSING_ID_REASON}). amqplib decodes the `messageId` short string as UTF-8 and keeps no
 * bytes: every byte sequence that is not UTF-8 becomes U+FFFD, so `62 69 6e ff fe` and
 * `62 69 6e fe ff` both arrive as "bin\uFFFD\uFFFD", and an inbox would ack the second as a
 * duplicate of the first without running its handler. NATS and Redis substitute the stream
 * position for such an id; RabbitMQ has none that survives redelivery. An id that held U+FFFD
 * itself cannot be told from those, so it is refused too (the publisher refuses to send one).
 */
const UNREADABLE_ID_REASON =
  'refused a message whose messageId property is not UTF-8 (or holds U+FFFD): the driver decodes every byte sequence that is not UTF-8 as U+FFFD, so two different ids would arrive as one and an inbox would drop the second as a duplicate; it was rejected without requeueing (dead-lettered if the queue has a dead-letter exchange)'

/** Why a delivery cannot reach the handler with its id, or `undefined` when it can. */
function idProblem(id: string): string | undefined {
  if (id === '') return MISSING_ID_REASON
  if (id.includes('\uFFFD')) return UNREADABLE_ID_REASON
  return undefined
}

/**
 * The text an AMQP header value takes in {@link IncomingMessage.headers}, whose values are
 * strings: breakwater's publisher sends only strings, but another producer may send any AMQP
 * field type, which amqplib decodes as follows. The conversion is deterministic (equal values
 * give equal text, whatever the order of a table's fields) and keeps everything amqplib decoded,
 * so two different values of one type never arrive as the same text:
 *
 * - a string: as it is;
 * - an integer or float: `String(n)` (`42`, `-7`, `1.5`; a 32-bit float keeps its binary
 *   value, so 0.1 arrives as `0.10000000149011612`; amqplib decodes a 64-bit integer into a
 *   JS number, exact up to 2^53 only);
 * - a boolean: `true` / `false`; a void field: `null`;
 * - a decimal (`{ digits, places }` in amqplib): its exact decimal text, scale kept
 *   (digits 150, places 2: `1.50`; digits 5, places 3: `0.005`);
 * - a timestamp (seconds since the epoch): ISO 8601 UTC without fraction,
 *   `2023-11-14T22:13:20Z` (the count of seconds if beyond what a Date can hold);
 * - a byte array: base64 (its bytes need not be UTF-8, which would lose them);
 * - a table or an array: JSON text, a table's fields sorted by name, and within it strings as
 *   JSON strings, numbers, booleans and null as JSON, decimals as JSON numbers with the text
 *   above, timestamps and byte arrays as JSON strings with the text above, and NaN or an
 *   infinite float as the JSON string `"NaN"`, `"Infinity"` or `"-Infinity"`.
 */
function headerText(value: unknown): string {
  if (typeof value === 'string') return value
  if (typeof value === 'number') return String(value)
  const special = specialText(value)
  if (special !== undefined) return special
  return fieldJson(value)
}

/** A decimal, timestamp or byte array as text, or undefined for any other value. */
function specialText(value: unknown): string | undefined {
  if (Buffer.isBuffer(value)) return value.toString('base64')
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined
  // amqplib decodes a decimal as { '!': 'decimal', value: { places, digits } } and a timestamp
  // as { '!': 'timestamp', value: seconds }.
  const typed = value as { readonly '!'?: unknown; readonly value?: unknown }
  if (typed['!'] === 'decimal') {
    const { digits, places } = (typed.value ?? {}) as { digits?: unknown; places?: unknown }
    if (typeof digits === 'number' && typeof places === 'number') {
      const text = String(digits).padStart(places + 1, '0')
      if (places === 0) return text
      return `${text.slice(0, text.length - places)}.${text.slice(text.length - places)}`
    }
  }
  if (typed['!'] === 'timestamp' && typeof typed.value === 'number') {
    const seconds = typed.value
    const date = new Date(seconds * 1000)
    // Beyond ±8.64e12 s a Date is invalid: the count itself is the only exact text left.
    if (Number.isNaN(date.getTime())) return String(seconds)
    return date.toISOString().replace('.000Z', 'Z')
  }
  return undefined
}

/** A field value as canonical JSON text (see {@link headerText}). */
function fieldJson(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isFinite(value) ? String(value) : JSON.stringify(String(value))
  }
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'boolean' || value === null) return String(value)
  if (typeof value === 'object') {
    const special = specialText(value)
    if (special !== undefined) {
      return (value as { '!'?: unknown })['!'] === 'decimal' ? special : JSON.stringify(special)
    }
    if (Array.isArray(value)) return `[${value.map(fieldJson).join(',')}]`
    const table = value as Record<string, unknown>
    const fields = Object.keys(table)
      .sort()
      .map((name) => `${JSON.stringify(name)}:${fieldJson(table[name])}`)
    return `{${fields.join(',')}}`
  }
  // amqplib decodes nothing else; should it one day, keep the value rather than fail.
  return JSON.stringify(String(value))
}

function toIncoming(message: ConsumeMessage): IncomingMessage {
  const raw = (message.properties.headers ?? {}) as Record<string, unknown>
  const headers: Record<string, string> = {}
  let key = ''
  for (const name in raw) {
    const text = headerText(raw[name])
    if (name === KEY_HEADER) key = text
    else if (!rabbitmqOwnHeader.test(name)) headers[name] = text
  }
  // Quorum queues count returned deliveries in x-delivery-count; classic queues only flag a
  // redelivery, which then counts as the second. The header is read only on a redelivery, and
  // only as a whole number from 1: another producer may send one of its own, which the server
  // passes on as it is to a first delivery (-5 made that delivery's count -4, 1.5 made it 2.5).
  const count = raw['x-delivery-count']
  const deliveryCount = !message.fields.redelivered
    ? 1
    : Number.isSafeInteger(count) && (count as number) >= 1
      ? (count as number) + 1
      : 2
  const id = message.properties.messageId
  return {
    id: typeof id === 'string' ? id : '',
    topic: message.fields.routingKey,
    key,
    payload: message.content,
    headers,
    deliveryCount,
  }
}

interface RabbitDelivery extends Delivery {
  readonly raw: ConsumeMessage
  /** The session (channel) it arrived on. */
  readonly session: number
}

class RabbitSubscriber implements Subscriber {
  readonly #options: ResolvedRabbitOptions
  readonly #subscriptions = new Set<Subscription>()
  #closed = false

  constructor(options: ResolvedRabbitOptions) {
    this.#options = options
  }

  async subscribe(
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
  ): Promise<Subscription> {
    checkSubscribeArgs(topic, group, handler)
    if (this.#closed) throw closedError('rabbitmq', 'subscriber')
    const options = this.#options
    const queue = options.queueName(topic, group)
    // A queue name is an AMQP short string: a longer one would fail each connection attempt
    // with amqplib's TypeError instead of naming the setting (or the topic and group) at fault.
    if (typeof queue !== 'string' || queue === '' || Buffer.byteLength(queue) > 255) {
      throw new InvalidOptionError(
        'rabbitmq.queueName()',
        'a non-empty string of at most 255 bytes',
        queue,
      )
    }
    // One dispatcher for the subscription's lifetime, so a key's unacknowledged messages are
    // still awaited after a reconnect. RabbitMQ has no log position: a message keeps the
    // position of its first arrival when it comes back (matched by message id).
    const dispatcher = subscriptionDispatcher<RabbitDelivery>(
      'rabbitmq',
      options,
      topic,
      group,
      handler,
    )
    // Every message waiting out its retry delay listens on this signal: not a leak.
    const abort = new AbortController()
    setMaxListeners(0, abort.signal)
    const shared = { dispatcher, abort: abort.signal, group, sessions: 0 }
    let inner: SupervisedSubscription
    try {
      inner = await superviseSessions({
        open: () => this.#open(topic, queue, shared),
        clock: options.clock,
        reconnectDelayMs: options.reconnectDelayMs,
        maxReconnectDelayMs: options.maxReconnectDelayMs,
        onError: (error) => options.onError({ error, phase: 'connection', topic, group }),
      })
    } catch (error) {
      await dispatcher.close()
      throw error
    }
    if (this.#closed) {
      // close() ran while this subscription connected and could not see it: without this, it
      // would keep consuming (and competing in its group) after its subscriber was closed.
      abort.abort()
      await inner.stopReceiving()
      // Bounded as close() is: a handler that started meanwhile and never settles is left
      // unacknowledged (see closedWhileSubscribing).
      const unfinished = await dispatcher.close(options.closeTimeoutMs)
      await inner.close()
      throw closedWhileSubscribing('rabbitmq', topic, group, options.closeTimeoutMs, unfinished)
    }
    return trackedSubscription(this.#subscriptions, async () => {
      abort.abort()
      // The consumer is cancelled first: RabbitMQ delivers nothing more while running
      // handlers finish.
      await inner.stopReceiving()
      // Waits for the running handlers and their acks, at most closeTimeoutMs; what never ran
      // (or did not finish by then) stays unacked for the channel's close to return, in order
      // (see settle in #open).
      const unfinished = await dispatcher.close(options.closeTimeoutMs)
      await inner.close()
      if (unfinished > 0) {
        throw new SubscriptionCloseTimeoutError(
          'rabbitmq',
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
    queue: string,
    shared: {
      readonly dispatcher: KeyedDispatcher<RabbitDelivery>
      readonly abort: AbortSignal
      readonly group: string
      sessions: number
    },
  ): Promise<Session> {
    const options = this.#options
    const { dispatcher } = shared
    const session = ++shared.sessions
    const model = await connectRabbit(options)
    let channel: Channel
    let resolveEnded!: (reason: unknown) => void
    const ended = new Promise<unknown>((resolve) => {
      resolveEnded = resolve
    })
    let stopping = false
    let lost = false
    // Ends the binding check when the session ends, is stopped or closes.
    const watching = new AbortController()
    const lose = (reason: unknown): void => {
      lost = true
      watching.abort()
      resolveEnded(
        stopping
          ? undefined
          : rabbitError(reason ?? new Error('connection closed'), `subscription ${queue} lost`),
      )
    }
    model.once('close', lose)
    const settle = async (delivery: RabbitDelivery, outcome: Outcome): Promise<void> => {
      // A delivery tag belongs to its channel: once that is gone, RabbitMQ has requeued the
      // message already.
      if (lost) return
      if (outcome === 'ack') return channel.ack(delivery.raw)
      if (outcome === 'retry') return retry(delivery)
      // 'release': the subscription is closing and the delivery never ran (held behind its
      // key's running or retrying message). It stays unacked, and the channel's close (after
      // the running handlers settled) returns it with everything else the channel held, in the
      // queue's order. Nacked with requeue one by one, RabbitMQ 4's quorum queues put each at
      // the back, behind the key's messages not yet delivered, while the channel's close put
      // a failed earlier message back in front: the next consumer ran m0 m3 m4 m1.
    }
    // A delivery to retry (its handler failed, or it was handed back) is kept unacked and runs
    // again here after retryDelayMs, at its place in its key's order. Nacked with requeue, a
    // quorum queue put it back behind the key's later messages this consumer held, so when the
    // channel died (a crash, a lost connection) those came back before it and the next consumer
    // ran them first. Unacked, everything the channel held returns in the queue's order.
    const retry = async (delivery: RabbitDelivery): Promise<void> => {
      const closing = await sleep(options.clock, options.retryDelayMs, shared.abort).then(
        () => false,
        () => true,
      )
      // Closing: the channel's close returns it to the queue, in order, with the key's others.
      if (lost || closing) return
      // The broker counts only its own redeliveries: each run here counts one more.
      const message = { ...delivery.message, deliveryCount: delivery.message.deliveryCount + 1 }
      receive(delivery.raw, message)
    }
    const receive = (raw: ConsumeMessage, message: IncomingMessage): void => {
      const delivery: RabbitDelivery = {
        raw,
        session,
        message,
        settle: (outcome) => settle(delivery, outcome),
      }
      dispatcher.push(delivery)
    }
    // A message without an id (another producer's, published without `messageId`) or with one
    // amqplib could not decode cannot be told from its redeliveries or from other such
    // messages: see MISSING_ID_REASON and UNREADABLE_ID_REASON.
    const refuse = (raw: ConsumeMessage, message: IncomingMessage, reason: string): void => {
      if (lost) return
      channel.nack(raw, false, false)
      options.onError({
        error: new BrokerError(
          'BROKER_REJECTED',
          'rabbitmq',
          `${reason} (queue ${queue}, delivery tag ${raw.fields.deliveryTag})`,
        ),
        phase: 'refused',
        topic,
        group: shared.group,
        message,
      })
    }
    let consumerTag: string
    try {
      channel = await answered(options, model, 'opening a channel', model.createChannel())
      // The server's reason comes with 'error', just before 'close': without it a channel the
      // server closed (consumer_timeout, a redeclare elsewhere) reads as a network fault.
      let failure: unknown
      channel.on('error', (error: unknown) => {
        failure = error
      })
      channel.once('close', () => {
        if (failure !== undefined) return lose(channelLoss(failure))
        // No reason of its own: the connection is closing, and amqplib closes its channels
        // before it emits the connection's 'close' with the server's reason (an operator's
        // CONNECTION_FORCED comes with no 'error' event at all). That 'close' follows in the
        // same tick, so the reason is awaited for one microtask; acks stop at once.
        lost = true
        queueMicrotask(() => lose(channelLoss(undefined)))
      })
      await answered(options, model, 'setting the prefetch', channel.prefetch(options.prefetch))
      await declareExchange(options, model, channel)
      await declare(
        options,
        model,
        'queue',
        queue,
        `${options.queueType} (rabbitmq.queueType), durable`,
        channel.assertQueue(queue, {
          durable: true,
          arguments: options.queueType === 'quorum' ? { 'x-queue-type': 'quorum' } : {},
        }),
      )
      await answered(
        options,
        model,
        `binding the queue ${queue}`,
        channel.bindQueue(queue, options.exchange, topic),
      ).catch((error: unknown) => {
        // 403 ACCESS_REFUSED: binding needs write permission on the queue and read permission
        // on the exchange. Like a refused declare, no retry grants it.
        if ((error as { code?: unknown } | null)?.code !== 403) throw error
        throw new BrokerError(
          'BROKER_MISCONFIGURED',
          'rabbitmq',
          `queue "${queue}" may not be bound to exchange "${options.exchange}" by this user: ${reasonOf(error)}; grant the user write permission on the queue and read permission on the exchange in the vhost (rabbitmqctl set_permissions)`,
          { cause: error },
        )
      })
      const reply = await answered(
        options,
        model,
        `consuming from ${queue}`,
        channel.consume(
          queue,
          (raw) => {
            // null: the broker cancelled the consumer, which RabbitMQ does when the queue is
            // deleted (with what it held): start over, which declares the queue again.
            if (raw === null) {
              lose(
                new Error(
                  `the server cancelled the consumer of queue ${queue}: the queue was deleted (by an operator or another application; the messages it held went with it) or became unavailable; declaring it again`,
                ),
              )
            } else {
              const message = toIncoming(raw)
              const problem = idProblem(message.id)
              if (problem !== undefined) refuse(raw, message, problem)
              else receive(raw, message)
            }
          },
          { noAck: false },
        ),
      ).catch((error: unknown) => {
        // 403 ACCESS_REFUSED: consuming needs read permission on the queue.
        if ((error as { code?: unknown } | null)?.code !== 403) throw error
        throw new BrokerError(
          'BROKER_MISCONFIGURED',
          'rabbitmq',
          `queue "${queue}" may not be consumed by this user: ${reasonOf(error)}; grant the user read permission on it in the vhost (rabbitmqctl set_permissions)`,
          { cause: error },
        )
      })
      consumerTag = reply.consumerTag
    } catch (error) {
      watching.abort()
      stopping = true
      await closeConnection(options, model)
      throw rabbitError(error, `cannot subscribe ${queue} to ${topic}`)
    }

    if (options.bindingCheckIntervalMs > 0) {
      void watchBinding({
        options,
        model,
        queue,
        topic,
        signal: watching.signal,
        report: shielded((error: unknown) =>
          options.onError({ error, phase: 'connection', topic, group: shared.group }),
        ),
      })
    }

    let stoppingReceipt: Promise<void> | undefined
    const stopReceiving = (): Promise<void> => {
      stoppingReceipt ??= (async () => {
        stopping = true
        watching.abort()
        await answered(
          options,
          model,
          `cancelling the consumer of ${queue}`,
          channel.cancel(consumerTag),
        ).catch(() => {})
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
          // What this channel delivered and never started goes back to the queue with the
          // channel; the dispatcher holds its keys' later messages until it is back.
          dispatcher.abandon((d) => d.session === session)
          // Closing the channel returns anything still unacked to the queue.
          await closeBoth(options, model, channel)
          resolveEnded(undefined)
        })()
        return closing
      },
    }
  }
}
