import { BreakwaterError, describeValue } from '../core/errors.js'
import { exceedsBytes, isStorableText, maxStoredIdBytes } from '../core/text.js'

/**
 * A consumed message the inbox can never handle, however often it is delivered (code
 * `POISON_MESSAGE`, not retryable): its id is empty, holds text the database cannot store
 * as it is (a NUL, half of a surrogate pair), or is longer than 2048 UTF-8 bytes (more than
 * PostgreSQL can index), so it cannot be recorded and deduplicated. Only
 * another producer's message can be like that (breakwater's publishers and the outbox refuse
 * such ids). The inbox refuses it for good rather than throw, which would have the broker
 * redeliver it forever: nothing is written, the handler does not run, the message is
 * acknowledged, and this error reports it (`InboxResult.refused`, `InboxOptions.onRefused`,
 * the diagnostics channel `breakwater:outbox:message-refused`).
 *
 * @example
 * ```ts
 * import { createInbox } from 'breakwater/outbox'
 * const inbox = createInbox({
 *   consumer: 'billing',
 *   onRefused: (message, error) => console.warn(error.code, error.message),
 * })
 * ```
 */
export class PoisonMessageError extends BreakwaterError {
  /** The refused message's id, as received. */
  readonly messageId: string
  /** The inbox consumer that refused it. */
  readonly consumer: string

  /**
   * @param reason why the message can never be handled, when it is not its id (a reacting
   * service's `createReactor` refuses an event whose `correlation-id` no flow can carry).
   */
  constructor(consumer: string, messageId: string, reason?: string) {
    super(
      'POISON_MESSAGE',
      `inbox ${JSON.stringify(consumer)}: refused message ${describeValue(messageId)} for good (acknowledged, handler not run): ${reason ?? `its message id is ${unstorableIdReason(messageId) ?? 'unstorable'}, so it cannot be deduplicated`}`,
    )
    this.messageId = messageId
    this.consumer = consumer
  }
}

/**
 * @internal Why the inbox cannot record a message with this id (what {@link PoisonMessageError}
 * says), or undefined when it can.
 */
export function unstorableIdReason(messageId: string): string | undefined {
  if (messageId === '') return 'empty'
  if (!isStorableText(messageId))
    return 'text the database cannot store (a NUL or a lone surrogate)'
  if (exceedsBytes(messageId, maxStoredIdBytes))
    return `longer than ${maxStoredIdBytes} UTF-8 bytes (more than the database can index)`
  return undefined
}

/**
 * The default of the outbox's and the relay's `maxPayloadBytes`: 1 MiB, the default
 * `max_payload` of a NATS server, and far below RabbitMQ's and Redis's limits. A message that
 * large already costs a broker and its consumers dearly; data larger than that belongs in a
 * blob store, with a reference in the event.
 */
export const defaultMaxPayloadBytes = 1024 * 1024

/**
 * An event's payload is larger than `maxPayloadBytes` (code `PAYLOAD_TOO_LARGE`, not
 * retryable): its JSON text counted in UTF-8 bytes, as brokers count it. `enqueue` throws it
 * before writing anything (`createOutbox({ maxPayloadBytes })`); the relay dead-letters a row
 * stored above its own `maxPayloadBytes` (an outbox with a higher limit wrote it, or it
 * predates the limit) with it as the reason, without handing it to the broker: a message of
 * a hundred megabytes took the RabbitMQ client seconds to write, starving its heartbeats, and
 * was refused at every attempt all the same.
 *
 * @example
 * ```ts
 * import { createOutbox } from 'breakwater/outbox'
 * const outbox = createOutbox({ maxPayloadBytes: 4 * 1024 * 1024 })
 * try { await outbox.enqueue(tx, event) }
 * catch (error) { if (error.code === 'PAYLOAD_TOO_LARGE') console.warn(error.bytes, error.limit) }
 * ```
 */
export class PayloadTooLargeError extends BreakwaterError {
  /**
   * The payload's size: UTF-8 bytes of its JSON text; for a row the relay did not read (see
   * `measured`), its count of characters, which that size is at least.
   */
  readonly bytes: number
  /** The `maxPayloadBytes` it exceeds. */
  readonly limit: number
  /**
   * `bytes` when the UTF-8 text was counted; `characters` when the relay left the payload of
   * a stored row out of its read, since it had more characters than the limit allows bytes
   * (a character is at least one byte), so as not to load a payload of any size to refuse it.
   */
  readonly measured: 'bytes' | 'characters'

  /**
   * @param subject what is refused, as the message starts: the field (`events[1].payload`) at
   * enqueue, the event (`event "e1" (row 7)`) at the relay.
   * @param owner whose limit it is: `outbox` or `relay`, named in the message with the option.
   * @param measured what `bytes` counts (see {@link PayloadTooLargeError.measured}).
   */
  constructor(
    subject: string,
    bytes: number,
    limit: number,
    owner: 'outbox' | 'relay',
    measured: 'bytes' | 'characters' = 'bytes',
  ) {
    const size =
      measured === 'bytes'
        ? `${bytes} bytes of JSON`
        : `${bytes} characters of JSON as stored (so at least ${bytes} bytes; it was not read)`
    super(
      'PAYLOAD_TOO_LARGE',
      `${subject}: the payload is ${size}, more than the ${owner}'s maxPayloadBytes of ${limit} (${sizeText(limit)}); put large data elsewhere and send a reference, or raise maxPayloadBytes (on the outbox and the relay) within what the broker takes`,
    )
    this.measured = measured
    this.bytes = bytes
    this.limit = limit
  }
}

/** `1 MiB`, `512 KiB` or `100 bytes`: a limit as a person reads it. */
function sizeText(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`
  return `${bytes} bytes`
}

/**
 * @internal The UTF-8 size of `json` when it is over `limit`, else undefined (short text is not
 * counted: a UTF-16 unit is at most 3 bytes).
 */
export function oversizeBytes(json: string, limit: number): number | undefined {
  if (!exceedsBytes(json, limit)) return undefined
  return Buffer.byteLength(json, 'utf8')
}
