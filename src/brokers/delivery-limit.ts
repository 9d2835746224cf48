// A delivery limit for poison messages, as a handler wrapper: it reads the delivery count every
// adapter fills, so it works alike on NATS, RabbitMQ, Redis, the SQL queue and any Subscriber
// of the application's own, without a broker-side setting (NATS max_deliver, a RabbitMQ
// x-delivery-limit) that would drop or divert the message where the per-key order cannot see it.
import { BreakwaterError } from '../core/errors.js'
import { otelInstruments } from '../core/otel-instruments.js'
import { checkFunction, checkInteger, checkObject, optionKeys } from '../core/validate.js'
import { diagnosticsChannel } from '../policies/events.js'
import { LruCache } from '../stores/lru.js'
import { checkKnownBrokerOptions } from './option-keys.js'
import type { IncomingMessage } from './types.js'

/** Options of {@link withDeliveryLimit}. */
export interface DeliveryLimitOptions {
  /**
   * Deliveries of one message that may run the handler: a failure on the delivery whose
   * `deliveryCount` reaches it dead-letters the message instead of handing it back. An integer
   * from 1. There is no default: without the wrapper a message is redelivered without limit.
   */
  readonly maxDeliveries: number
  /**
   * Called once a message is given up, with the message and the error its handler last failed
   * with (a {@link DeliveryLimitError} when this process did not see that failure). Keep the
   * message here (a dead-letter table or topic, a log). It may be async: the message is
   * acknowledged only after it resolves. If it throws, the message is not acknowledged and
   * comes back, and is offered to it again (the handler does not run again). Called at least
   * once per message, not exactly once: an ack lost after it resolved, or a `close()` that gave
   * up (`closeTimeoutMs`) while it ran, brings the message back past its limit to it again, so
   * make it idempotent by message id.
   */
  readonly onDeadLetter: (message: IncomingMessage, lastError: unknown) => Promise<void> | void
}

/** The keys DeliveryLimitOptions takes (internal: not exported from the package root). */
export const deliveryLimitOptions = optionKeys<DeliveryLimitOptions>({
  maxDeliveries: true,
  onDeadLetter: true,
})

/**
 * A message that reached its delivery limit (`DELIVERY_LIMIT_REACHED`): handed to
 * `onDeadLetter` as the last error when the failure before it happened in another process (or
 * its handler never ran there: it was handed back unrun, or its process died or closed while
 * the handler ran), and thrown into the subscription when `onDeadLetter` itself failed (the
 * hook's error is the `cause`; the message is redelivered). Not retryable.
 */
export class DeliveryLimitError extends BreakwaterError {
  /** The message's id. */
  readonly messageId: string
  /** The delivery it happened on (the message's `deliveryCount`). */
  readonly deliveryCount: number
  /** The limit. */
  readonly maxDeliveries: number

  constructor(
    message: IncomingMessage,
    maxDeliveries: number,
    text: string,
    options: { readonly cause?: unknown } = {},
  ) {
    super(
      'DELIVERY_LIMIT_REACHED',
      `message ${JSON.stringify(message.id)} of topic ${JSON.stringify(message.topic)} reached its delivery limit (delivery ${message.deliveryCount}, at most ${maxDeliveries}): ${text}`,
      options,
    )
    this.messageId = message.id
    this.deliveryCount = message.deliveryCount
    this.maxDeliveries = maxDeliveries
  }
}

/** What `breakwater:broker:dead-lettered` publishes for each message given up. */
export interface DeadLetteredEvent {
  readonly topic: string
  readonly messageId: string
  readonly key: string
  readonly deliveryCount: number
  readonly maxDeliveries: number
  /** The last error, as `onDeadLetter` was given it. */
  readonly error: unknown
}

const deadLetteredChannel = diagnosticsChannel('broker', 'dead-lettered')

// Made on first use, not at import, and again for a new global meter provider.
const deadLetters = otelInstruments((meter) =>
  meter.createCounter('breakwater.broker.dead_letters', {
    description: 'Messages given up by withDeliveryLimit after maxDeliveries (attribute topic)',
  }),
)

// Last errors of messages whose onDeadLetter failed, kept for the hook's next try: bounded,
// the least recently used dropped first (its next try then gets a DeliveryLimitError instead).
const rememberedLimit = 1_024

/**
 * Wraps a subscription handler with a delivery limit: a message whose handler fails on its
 * `maxDeliveries`-th delivery (by `IncomingMessage.deliveryCount`) is passed to `onDeadLetter`
 * and then acknowledged, rather than redelivered for ever (and, with a key, holding back that
 * key's later messages, which then run). Earlier failures reject as before, so the message
 * comes back after the adapter's `retryDelayMs`. A delivery already past the limit (the hook
 * failed before, or the process running the last delivery died or closed) goes to
 * `onDeadLetter` without running the handler. If `onDeadLetter` throws, the wrapper rejects
 * with a {@link DeliveryLimitError} (its cause the hook's error, reported to the adapter's
 * `onError`, phase `handler`), the message is not acknowledged and comes back: nothing is lost.
 * Each message given up is published on the diagnostics channel
 * `breakwater:broker:dead-lettered` ({@link DeadLetteredEvent}) once the hook resolved, and
 * counted in the OpenTelemetry counter `breakwater.broker.dead_letters` (attribute `topic`).
 *
 * A wrapper rather than a subscriber option: it works with every {@link Subscriber} (and
 * composes with `inboxHandler`), and each subscription picks its own limit. Options are checked
 * once, here (an unknown key is refused with `InvalidOptionError`).
 *
 * `deliveryCount` counts the broker's deliveries, not handler runs: a delivery handed back unrun
 * (over `prefetch`, a closing subscription, a lost connection) counts too, so the handler may
 * have run fewer times. On RabbitMQ a classic queue only flags a redelivery after a lost channel
 * (counted 2) and a quorum queue counts returns: after a reconnect the count starts lower than
 * the runs so far (see docs/outbox.md). A delivery whose count is no whole number from 1 (a
 * Subscriber of the application's own that does not know it) is never given up.
 *
 * @example
 * ```ts
 * import { withDeliveryLimit } from 'breakwater/brokers'
 * await broker.subscriber.subscribe('orders', 'billing', withDeliveryLimit(bill, {
 *   maxDeliveries: 5,
 *   onDeadLetter: (message, error) => parked.insert(message, error),
 * }))
 * ```
 */
export function withDeliveryLimit(
  handler: (message: IncomingMessage) => Promise<void>,
  options: DeliveryLimitOptions,
): (message: IncomingMessage) => Promise<void> {
  checkFunction('handler', handler)
  checkObject('deliveryLimit', options)
  checkKnownBrokerOptions('deliveryLimit', options, deliveryLimitOptions)
  const max = checkInteger(
    'deliveryLimit.maxDeliveries',
    options.maxDeliveries,
    1,
    Number.MAX_SAFE_INTEGER,
  )
  const onDeadLetter = checkFunction<DeliveryLimitOptions['onDeadLetter']>(
    'deliveryLimit.onDeadLetter',
    options.onDeadLetter,
  )
  const remembered = new LruCache<string, unknown>(rememberedLimit)

  const deadLetter = async (message: IncomingMessage, error: unknown): Promise<void> => {
    try {
      await onDeadLetter(message, error)
    } catch (hookError) {
      remembered.set(message.id, error)
      throw new DeliveryLimitError(
        message,
        max,
        'onDeadLetter failed, so it is left unacknowledged and comes back',
        { cause: hookError },
      )
    }
    remembered.delete(message.id)
    deadLetters().add(1, { topic: message.topic })
    if (deadLetteredChannel.hasSubscribers) {
      const event: DeadLetteredEvent = {
        topic: message.topic,
        messageId: message.id,
        key: message.key,
        deliveryCount: message.deliveryCount,
        maxDeliveries: max,
        error,
      }
      deadLetteredChannel.publish(event)
    }
  }

  return async (message) => {
    const count = message.deliveryCount
    // A count that is no whole number from 1 (a Subscriber of the application's own that does
    // not know it) cannot tell a last delivery: such a message is never given up.
    if (!Number.isSafeInteger(count) || count < 1) return handler(message)
    if (count > max) {
      const error =
        remembered.get(message.id) ??
        new DeliveryLimitError(
          message,
          max,
          'its last failure was not seen by this process (it failed elsewhere, or was handed back or cut off before its handler finished)',
        )
      await deadLetter(message, error)
      return
    }
    try {
      await handler(message)
    } catch (error) {
      if (count < max) throw error
      await deadLetter(message, error)
    }
  }
}
