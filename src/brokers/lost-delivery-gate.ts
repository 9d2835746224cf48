import type { Clock } from '../core/clock.js'
import type { Delivery, KeyedDispatcher } from './dispatcher.js'

/** What a broker reported about a consumer when a subscription reconnected. */
export interface PendingAtReconnect {
  /** Deliveries the broker counts as sent and not yet acknowledged (NATS `num_ack_pending`). */
  readonly pending: number
  /** The highest stream position the broker had delivered (NATS `delivered.stream_seq`). */
  readonly deliveredUpTo: number
  /**
   * Of `pending`, how many the subscription knows of: held by its dispatcher (running), awaited
   * by it (handed back or abandoned), or handled with their ack still owed to the broker.
   */
  readonly known: number
}

/** Holds a dispatcher's handlers until the deliveries lost with a connection are back. */
export interface LostDeliveryGate {
  /**
   * Pushes a delivery through `push`, counting it as one of the lost ones when it is an old
   * delivery (at or below `deliveredUpTo`) the dispatcher does not know; handlers start again
   * once all of them are back.
   */
  admit(key: string, id: string, position: number, push: () => void): void
  /** Lets handlers start again now (the session ends, or the wait is given up). */
  release(): void
}

/**
 * Opens a gate on `dispatcher` when a reconnected subscription's broker (or a new one's, whose
 * predecessor crashed) counts more deliveries as pending than the subscription knows of, or
 * returns `undefined`.
 *
 * Why: a broker such as JetStream counts a message as delivered once it has written it to the
 * connection. When the connection dies with deliveries in flight, the subscriber never saw them,
 * so its dispatcher cannot hold their keys' later messages; the broker sends them again only
 * after its ack wait, and meanwhile the key's next message would run first. No broker API names
 * the lost positions or their keys, so every handler waits (deliveries are queued, in order, and
 * kept alive by the adapter's heartbeat) until as many unknown old deliveries have come back as
 * were missing, or until `timeoutMs` (the ack wait and a margin: by then the broker has sent
 * them again, to this subscriber or to another of its group). In a group with several
 * subscribers the deliveries held by the others count as missing too, so a reconnect after an
 * outage may wait out the whole `timeoutMs`: decided here, the order of a key over a lost
 * connection is worth that pause, which only follows a lost connection.
 */
export function gateLostDeliveries<D extends Delivery>(
  dispatcher: KeyedDispatcher<D>,
  reported: PendingAtReconnect,
  clock: Clock,
  timeoutMs: number,
): LostDeliveryGate | undefined {
  let missing = reported.pending - reported.known
  if (missing <= 0) return undefined
  const resume = dispatcher.pause()
  let open = true
  const timer = clock.setTimeout(() => release(), timeoutMs)
  const release = (): void => {
    if (!open) return
    open = false
    clock.clearTimeout(timer)
    resume()
  }
  return {
    admit: (key, id, position, push) => {
      const lost = open && position <= reported.deliveredUpTo && !dispatcher.tracks(key, id)
      // Pushed before the release, so that it takes its place ahead of its key's later ones.
      push()
      if (lost && --missing <= 0) release()
    },
    release,
  }
}
