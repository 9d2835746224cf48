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
