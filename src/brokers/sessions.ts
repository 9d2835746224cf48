import { type Clock, sleep } from '../core/clock.js'
import { detached } from '../core/detached.js'
import { shielded } from './common.js'
import type { Subscription } from './types.js'

/** One connected run of a subscription, from connect to connection loss or close. */
export interface Session {
  /** Settles when the session is over: the connection was lost (with the reason) or closed. */
  readonly ended: Promise<unknown>
  /**
   * Stops taking deliveries from the broker but keeps the connection open, so handlers still
   * running can ack. Idempotent; the session does not count as ended because of it.
   */
  stopReceiving(): Promise<void>
  /**
   * Stops receiving, lets running handlers finish and their acks go out, releases what was
   * received but not started, and closes the connection. Idempotent.
   */
  close(): Promise<void>
}

/** A supervised subscription: {@link Subscription} plus a way to stop receiving first. */
export interface SupervisedSubscription extends Subscription {
  /**
   * Stops the current session receiving and opens no new session after a loss, while
   * connections stay open for the acks of running handlers. A subscription's `close()` calls
   * it before it waits for its handlers: a consumer left active meanwhile would be handed
   * again, at once, every message the closing dispatcher releases, a hot loop of redeliveries
   * for as long as the slowest handler runs.
   */
  stopReceiving(): Promise<void>
}

/** How {@link superviseSessions} reconnects. */
export interface SupervisorOptions {
  /** Connects and starts consuming; rejects when that fails. */
  readonly open: () => Promise<Session>
  readonly clock: Clock
  readonly reconnectDelayMs: number
  readonly maxReconnectDelayMs: number
  /** Receives why a session ended or a reconnect attempt failed. */
  readonly onError: (error: unknown) => void
}

/**
 * Opens the first session (its failure rejects, so `subscribe()` fails loudly when the broker
 * is unreachable), then keeps the subscription alive: whenever a session ends by itself it is
 * closed and a new one is opened, with exponential backoff on `clock` between failed attempts.
 */
export function superviseSessions(options: SupervisorOptions): Promise<SupervisedSubscription> {
  // Every session's connection, its driver callbacks and the reconnect loop outlive the
  // subscribe() that started them: they run in breakwater's own context, so none of them carries
  // the caller's deadline, request store or transaction into later deliveries and reconnects.
  return detached(() => supervise(options))
}

async function supervise(options: SupervisorOptions): Promise<SupervisedSubscription> {
  const stop = new AbortController()
  // onError is the application's listener (an adapter's onError option): one that throws must
  // not end the loop, which would leave the subscription without a connection for good and
  // its promise rejected with nobody to catch it (a crash under Node's default).
  const report = shielded(options.onError)
  let current: Session | undefined = await options.open()
  let closed = false
  let receiving = true

  const backoff = (attempt: number): number =>
    Math.min(options.maxReconnectDelayMs, options.reconnectDelayMs * 2 ** Math.min(attempt, 30))

  const loop = (async () => {
    let session: Session | undefined = current
    while (session !== undefined) {
      const reason = await session.ended
      if (closed) return
      // undefined: it ended because we stopped it (stopReceiving), not a failure to report.
      if (reason !== undefined) report(reason)
      current = undefined
      await session.close().catch(report)
      session = undefined
      // Not receiving any more: nothing to reconnect for; close() ends what is left.
      if (!receiving) return
      for (let attempt = 0; session === undefined; attempt++) {
        try {
          await sleep(options.clock, backoff(attempt), stop.signal)
        } catch {
          return // closed while waiting
        }
        try {
          session = await options.open()
        } catch (error) {
          if (closed) return
          report(error)
        }
      }
      if (closed || !receiving) {
        await session.close().catch(() => {})
        return
      }
      current = session
    }
  })()

  return {
    async stopReceiving() {
      receiving = false
      // A reconnect waiting out its backoff gives up now.
      stop.abort()
      await current?.stopReceiving()
    },
    async close() {
      if (closed) return loop
      closed = true
      stop.abort()
      await current?.close()
      await loop
    },
  }
}
