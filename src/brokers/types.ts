/**
 * The broker seam. Every adapter (NATS JetStream, RabbitMQ, Redis Streams, SQL queue, webhook)
 * implements these interfaces and passes one shared conformance suite.
 */

/** A message handed to a {@link Publisher}. */
export interface OutgoingMessage {
  /** Stable id; brokers that can dedupe on it must (NATS `Nats-Msg-Id`). */
  readonly id: string
  /** Where the message goes (subject, routing key, stream). */
  readonly topic: string
  /**
   * Ordering key (aggregate id): order is kept per key. The empty string means no key: such
   * messages are not ordered (see {@link Subscriber.subscribe}).
   */
  readonly key: string
  /** The body. Strings are sent as UTF-8. */
  readonly payload: Uint8Array | string
  /** Trace context, correlation id, causation id, event type, ... */
  readonly headers: Readonly<Record<string, string>>
}

/** Publishes batches; resolves only after the broker has confirmed it holds every message. */
export interface Publisher {
  /**
   * Publishes `messages` in order. Resolves when all are confirmed; rejects if any is not,
   * in which case any subset may have been delivered (the caller retries the whole batch and
   * relies on dedupe ids and idempotent consumers).
   */
  publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void>
  /** Flushes and closes the connection. */
  close(): Promise<void>
}

/** A message handed to a subscription handler. */
export interface IncomingMessage {
  readonly id: string
  readonly topic: string
  /**
   * The ordering key; `''` when the message has none (a producer other than breakwater sets no
   * `breakwater-key` header or `key` field), and then it is ordered with nothing.
   */
  readonly key: string
  readonly payload: Uint8Array
  readonly headers: Readonly<Record<string, string>>
  /**
   * How many times the broker has delivered this message (1 on first delivery), when known.
   * Deliveries are counted, not handler runs: one handed back unrun (over `prefetch`, by a
   * closing subscription) counts too. NATS gives JetStream's count, Redis its pending entry's,
   * the SQL queue its delivery row's; RabbitMQ counts the subscription's own retries, and after
   * a lost channel only what the queue knows (a classic queue's redelivered flag as 2, a quorum
   * queue's returns plus one). `withDeliveryLimit` reads it.
   */
  readonly deliveryCount: number
}

/** A live subscription. */
export interface Subscription {
  /**
   * Stops receiving; in-flight handlers finish first, for at most the adapter's
   * `closeTimeoutMs` (30 s by default). Past it, the connection is closed anyway and `close()`
   * rejects with `SubscriptionCloseTimeoutError` (`SUBSCRIPTION_CLOSE_TIMEOUT`); the unfinished
   * messages are left unacknowledged (also when their handlers finish later), so the broker
   * redelivers them.
   */
  close(): Promise<void>
}

/** Receives messages; a message is acknowledged only after its handler resolves. */
export interface Subscriber {
  /**
   * Calls `handler` for each message on `topic` for the consumer group `group` (competing
   * consumers share a group). A handler that rejects leaves the message unacknowledged, so the
   * broker redelivers it.
   *
   * Resolves once the group exists on the broker (durable consumer, queue, consumer group), so
   * every message published afterwards reaches it; a new group also receives what the broker
   * still holds for the topic, where it keeps history (NATS, Redis). Rejects with a
   * `BrokerError` when the broker cannot be reached; after that first success the
   * subscription reconnects by itself. When the subscriber is closed while this connects, it
   * rejects with `BROKER_UNAVAILABLE` once it has closed what it opened, waiting for handlers
   * that started meanwhile at most `closeTimeoutMs` (the rejection's `cause` is then a
   * `SubscriptionCloseTimeoutError`). Messages with the same key are handled one at a time,
   * in order, by this subscription. Across competing subscribers of one group (several
   * processes), only the SQL queue keeps that order: it leases no message of a key while an
   * earlier one is held, and a group's consumers lease one after the other (on PostgreSQL
   * behind an advisory lock per topic and group), so none leases past another's uncommitted
   * lease; only a consumer stalled past its visibility timeout loses its batch to another
   * (and starts none of the rest once it sees that). NATS, RabbitMQ and Redis hand out a
   * group's messages one by one to whichever subscriber asks, so two subscribers may run
   * messages of one key at once; for order per key across processes there, run one
   * subscriber per group (RabbitMQ's limits over half-open connections are in
   * docs/rabbitmq.md).
   *
   * A message without a key (`''`: every message of a producer that sets no `breakwater-key`
   * header or Redis `key` field) is ordered with nothing: it may run beside or before any other,
   * and while it fails no other message waits for it. A message whose handler always fails (a
   * poison message) is still redelivered as the broker is set up to: every `retryDelayMs`
   * (1 s by default) with no limit on NATS (the adapter's consumers have `max_deliver` -1),
   * Redis, the SQL queue and a RabbitMQ classic queue (or quorum queue before RabbitMQ 4.0); a
   * RabbitMQ 4 quorum queue dead-letters
   * it (or drops it, without a dead-letter exchange) after its delivery limit, 20 returns by
   * default. With a key, it holds that key's later messages for as long (see docs/outbox.md);
   * without one, it costs a handler slot each time it comes back and holds nothing. To give it
   * up after a number of deliveries, wrap the handler in `withDeliveryLimit(handler,
   * { maxDeliveries, onDeadLetter })`: the failure on its last delivery (by
   * {@link IncomingMessage.deliveryCount}) hands it to `onDeadLetter`, then it is acknowledged
   * and the key's later messages run.
   *
   * `handler` runs in breakwater's own async context, not the caller's: a deadline set around
   * the `subscribe()` call (`withDeadline`, a request's) or an `AsyncLocalStorage` store of the
   * caller is not seen by any delivery. Set a deadline per message inside the handler.
   */
  subscribe(
    topic: string,
    group: string,
    handler: (message: IncomingMessage) => Promise<void>,
  ): Promise<Subscription>
  /**
   * Closes every subscription and the connection; resolves once each subscription's running
   * handlers have finished and been acknowledged, those of a subscription whose own `close()`
   * was already under way included. Each subscription waits at most `closeTimeoutMs`: once
   * every one has closed, a subscription that gave up makes this reject with its
   * `SubscriptionCloseTimeoutError` (see {@link Subscription.close}).
   */
  close(): Promise<void>
}

/**
 * A publisher and a subscriber for one broker, as `openBroker()` and the `create*Broker`
 * factories return them. Each side opens its own connections lazily, on first use.
 */
export interface Broker {
  /** Publishes batches; see {@link Publisher}. */
  readonly publisher: Publisher
  /** Subscribes consumer groups; see {@link Subscriber}. */
  readonly subscriber: Subscriber
  /** Closes both sides. */
  close(): Promise<void>
}
