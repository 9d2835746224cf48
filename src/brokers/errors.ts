import { BreakwaterError } from '../core/errors.js'

/** Which adapter raised a {@link BrokerError}. */
export type BrokerKind = 'nats' | 'rabbitmq' | 'redis'

/** Why a broker operation failed; the stable code of a {@link BrokerError}. */
export type BrokerErrorCode =
  | 'BROKER_UNAVAILABLE'
  | 'BROKER_UNROUTABLE'
  | 'BROKER_REJECTED'
  | 'BROKER_MISCONFIGURED'

/** Options of a {@link BrokerError}. */
export interface BrokerErrorOptions {
  /** The driver's error, if any. */
  readonly cause?: unknown | undefined
}

/**
 * A broker could not be reached, did not confirm a message in time, or refused it.
 *
 * - `BROKER_UNAVAILABLE` (retryable): connection refused or lost, confirm timeout, a negative
 *   confirm, a server-side limit. The message may or may not have been stored; publish again.
 * - `BROKER_UNROUTABLE` (retryable): the broker is up but nothing takes messages for the topic
 *   yet (no RabbitMQ queue bound, no JetStream stream); publishing again once a subscriber or
 *   stream exists succeeds.
 * - `BROKER_REJECTED` (not retryable): the message itself is refused (too large, an invalid
 *   subject or header), so publishing it again cannot succeed.
 * - `BROKER_MISCONFIGURED` (not retryable): the broker refuses the adapter's setup, whatever
 *   the message: the login (wrong user or password), the vhost, a permission, or an exchange,
 *   queue or stream that exists with other settings, or TLS (a server certificate the client does
 *   not trust, one that has expired or names another host, a server without TLS on the port, a
 *   failed handshake: see `tlsFailure` in tls.ts). Only a change of configuration on either
 *   side clears it. Distinct from `BROKER_REJECTED` because it is not the message's fault: a
 *   relay must not charge (and dead-letter) every event for it.
 *
 * The shared classifier reads `retryable`, so a relay's retry and circuit breaker treat the
 * first two as transient.
 *
 * @example
 * ```ts
 * import { BreakwaterError } from 'breakwater'
 * try { await publisher.publish(batch) }
 * catch (error) { if (BreakwaterError.is(error) && error.retryable) scheduleRetry() }
 * ```
 */
export class BrokerError extends BreakwaterError {
  /** The adapter that failed. */
  readonly broker: BrokerKind

  constructor(
    code: BrokerErrorCode,
    broker: BrokerKind,
    message: string,
    options: BrokerErrorOptions = {},
  ) {
    super(code, `${broker}: ${message}`, {
      cause: options.cause,
      retryable: code === 'BROKER_UNAVAILABLE' || code === 'BROKER_UNROUTABLE',
    })
    this.broker = broker
  }
}

/**
 * A subscription's `close()` (or its subscriber's, or its broker's) gave up waiting for handlers
 * that did not finish within `closeTimeoutMs` (`SUBSCRIPTION_CLOSE_TIMEOUT`). Everything else
 * of the close was done (nothing more is received, the connection is closed); the unfinished
 * messages were left unacknowledged, also when their handlers finish later, so the broker
 * redelivers them (RabbitMQ at once, the others once their ack wait, visibility timeout or lease
 * has run out). Not retryable: the subscription's `close()` called again rejects the same way
 * (its close is done), while the subscriber's or broker's resolves (the subscription is gone).
 */
export class SubscriptionCloseTimeoutError extends BreakwaterError {
  /** The adapter (`sql-queue` for the SQL queue). */
  readonly broker: BrokerKind | 'sql-queue'
  readonly topic: string
  readonly group: string
  /** The `closeTimeoutMs` it waited. */
  readonly timeoutMs: number
  /** Handlers still running when it gave up. */
  readonly unfinished: number

  constructor(
    broker: BrokerKind | 'sql-queue',
    topic: string,
    group: string,
    timeoutMs: number,
    unfinished: number,
  ) {
    super(
      'SUBSCRIPTION_CLOSE_TIMEOUT',
      `${broker}: closing the subscription of group ${JSON.stringify(group)} to ${JSON.stringify(topic)} gave up after ${timeoutMs} ms (closeTimeoutMs) with ${unfinished} handler${unfinished === 1 ? '' : 's'} still running; ${unfinished === 1 ? 'its message is' : 'their messages are'} left unacknowledged for redelivery`,
    )
    this.broker = broker
    this.topic = topic
    this.group = group
    this.timeoutMs = timeoutMs
    this.unfinished = unfinished
  }
}

/** Short text of a driver error for a message, without its stack. */
export function reasonOf(error: unknown): string {
  if (error instanceof Error) return error.message
  return String(error)
}

/** A broker driver package (`nats`, `amqplib`, `ioredis`) could not be loaded. */
export class BrokerDriverMissingError extends BreakwaterError {
  /** The npm package to install. */
  readonly driver: string

  constructor(driver: string, cause: unknown) {
    super(
      'DRIVER_MISSING',
      `The "${driver}" package is needed for this broker but could not be loaded; install it with \`npm install ${driver}\``,
      { cause },
    )
    this.driver = driver
  }
}
