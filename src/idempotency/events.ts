import { type Channel, channel } from 'node:diagnostics_channel'

/**
 * What the idempotency protocol publishes on `node:diagnostics_channel`, for tracers, metrics
 * and tests. Each message names the scope and key (never a credential: scopes hold its hash).
 */
export interface IdempotencyEvents {
  /** A holder got the key: a first execution (`attempt` 1) or a takeover (2 and more). */
  readonly claimed: { scope: string; key: string; attempt: number }
  /** A recorded result was replayed. */
  readonly replayed: { scope: string; key: string }
  /** Another holder is in flight (`reason`: in-flight or wait-timeout). */
  readonly 'in-progress': { scope: string; key: string; reason: string }
  /** The key was reused for a different request. */
  readonly mismatch: { scope: string; key: string }
  /** A request's key was missing or invalid (`code`). */
  readonly 'key-rejected': { code: string }
  /** A result was recorded and committed. */
  readonly recorded: { scope: string; key: string; status: number | undefined }
  /** A holder gave the key back (handler failed or its result is not recorded). */
  readonly released: { scope: string; key: string }
  /**
   * A holder could not give the key back: the store failed (`error`). The key stays in progress
   * until its lease ends; a retry meanwhile is answered in-progress (409).
   */
  readonly 'release-failed': { scope: string; key: string; error: unknown }
  /** A holder's lease expired before it recorded its result; its writes were rolled back. */
  readonly 'lease-lost': { scope: string; key: string }
}

/** The channel names: `breakwater:idempotency:<event>`. */
export const idempotencyChannelNames: { readonly [E in keyof IdempotencyEvents]: string } = {
  claimed: 'breakwater:idempotency:claimed',
  replayed: 'breakwater:idempotency:replayed',
  'in-progress': 'breakwater:idempotency:in-progress',
  mismatch: 'breakwater:idempotency:mismatch',
  'key-rejected': 'breakwater:idempotency:key-rejected',
  recorded: 'breakwater:idempotency:recorded',
  released: 'breakwater:idempotency:released',
  'release-failed': 'breakwater:idempotency:release-failed',
  'lease-lost': 'breakwater:idempotency:lease-lost',
}

const channels = new Map<string, Channel>()

/** Publishes `message` on the event's channel; costs one check when nobody subscribes. */
export function publish<E extends keyof IdempotencyEvents>(
  event: E,
  message: IdempotencyEvents[E],
): void {
  const name = idempotencyChannelNames[event]
  let ch = channels.get(name)
  if (ch === undefined) {
    ch = channel(name)
    channels.set(name, ch)
  }
  if (ch.hasSubscribers) ch.publish(message)
}
