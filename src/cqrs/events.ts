import { type Channel, channel } from 'node:diagnostics_channel'

/**
 * What the cqrs module publishes on `node:diagnostics_channel`, for tracers, metrics and
 * tests. Channel names are `breakwater:cqrs:<event>` (see {@link cqrsChannelNames}).
 */
export interface CqrsEvents {
  /** Events were appended (in the caller's transaction when it passed `tx`: not yet committed). */
  readonly appended: { stream: string; count: number; version: number; lastPosition: number }
  /** An append, `setStreamMetadata` or `deleteStream` found the stream at another version than expected. */
  readonly conflict: { stream: string; expected: string | number; actual: number }
  /** A command handler decides a command again after a conflict (`attempt`: the next one). */
  readonly 'command-retry': { stream: string; attempt: number; error: unknown }
  /** A projector committed a batch. */
  readonly 'projection-batch': { projection: string; applied: number; position: number }
  /** A projector's batch failed and was rolled back; it is retried after a delay. */
  readonly 'projection-error': { projection: string; error: unknown }
  /** A projection rebuild swapped its fresh tables in. */
  readonly 'projection-rebuilt': { projection: string; position: number; events: number }
}

/** The channel names: `breakwater:cqrs:<event>`. */
export const cqrsChannelNames: { readonly [E in keyof CqrsEvents]: string } = {
  appended: 'breakwater:cqrs:appended',
  conflict: 'breakwater:cqrs:conflict',
  'command-retry': 'breakwater:cqrs:command-retry',
  'projection-batch': 'breakwater:cqrs:projection-batch',
  'projection-error': 'breakwater:cqrs:projection-error',
  'projection-rebuilt': 'breakwater:cqrs:projection-rebuilt',
}

const channels = new Map<string, Channel>()

/** @internal Publishes `message` on the event's channel; one check when nobody subscribes. */
export function publish<E extends keyof CqrsEvents>(event: E, message: CqrsEvents[E]): void {
  const name = cqrsChannelNames[event]
  let ch = channels.get(name)
  if (ch === undefined) {
    ch = channel(name)
    channels.set(name, ch)
  }
  if (ch.hasSubscribers) ch.publish(message)
}
