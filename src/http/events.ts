import { checkFunction } from '../core/validate.js'
import type { CircuitState, GiveUpReason, Unsubscribe } from '../index.js'

/**
 * What an HTTP client reports about one downstream service. Every event names its `service`.
 * Nothing is built or emitted while nobody listens, and the policies' own events are only
 * subscribed to while somebody listens here.
 */
export type HttpClientEvent =
  | {
      /** An attempt is about to be sent (after the policies admitted it). */
      readonly type: 'attempt'
      readonly service: string
      readonly method: string
      /** The request path without the query string. */
      readonly path: string
      /** 1 for the first attempt, 2 for the first retry, and so on. */
      readonly attempt: number
    }
  | {
      /** An attempt failed and the call will be retried after `delayMs`. */
      readonly type: 'retry'
      readonly service: string
      /** The attempt that failed. */
      readonly attempt: number
      readonly delayMs: number
      readonly error: unknown
    }
  | {
      /** The retry policy stopped: the call fails (or resolves, see `response`) with `error`. */
      readonly type: 'giveUp'
      readonly service: string
      readonly attempt: number
      readonly reason: GiveUpReason
      readonly error: unknown
    }
  | {
      /** The service's circuit breaker changed state. */
      readonly type: 'stateChange'
      readonly service: string
      readonly from: CircuitState
      readonly to: CircuitState
    }
  | {
      /** The circuit breaker failed a call fast without sending it. */
      readonly type: 'rejected'
      readonly service: string
      readonly by: 'breaker'
      readonly state: CircuitState
      readonly retryAfterMs: number
    }
  | {
      /** The bulkhead refused a call: no free slot or queue place, or the queue wait ran out. */
      readonly type: 'rejected'
      readonly service: string
      readonly by: 'bulkhead'
      readonly reason: 'full' | 'queueTimeout'
    }
  | {
      /** A call resolved with a response (any status the caller gets as a response). */
      readonly type: 'response'
      readonly service: string
      readonly method: string
      readonly path: string
      readonly status: number
      readonly attempts: number
      /** From the call to its result, backoff included, on the client's clock. */
      readonly durationMs: number
    }
  | {
      /** A call failed for good with `error`. */
      readonly type: 'failure'
      readonly service: string
      readonly method: string
      readonly path: string
      readonly error: unknown
      readonly durationMs: number
    }

/** A typed source of {@link HttpClientEvent}s. */
export interface HttpEvents {
  /**
   * Adds a listener; returns a function that removes it. A throwing listener breaks nothing.
   * Throws `InvalidOptionError` for a listener that is not a function.
   */
  on(listener: (event: HttpClientEvent) => void): Unsubscribe
  /** True while at least one listener is attached. */
  readonly hasListeners: boolean
}

/**
 * The events of one service. `attach` runs when the first listener arrives and returns what
 * undoes it, so the policies emit nothing while nobody listens here.
 */
export class ServiceEvents implements HttpEvents {
  #listeners: Array<(event: HttpClientEvent) => void> = []
  #detach: Unsubscribe | undefined
  readonly #attach: (events: ServiceEvents) => Unsubscribe

  constructor(attach: (events: ServiceEvents) => Unsubscribe) {
    this.#attach = attach
  }

  get hasListeners(): boolean {
    return this.#listeners.length > 0
  }

  on(listener: (event: HttpClientEvent) => void): Unsubscribe {
    // A stable code like the policies' events; accepted, it would throw at every event.
    checkFunction('events.on(listener)', listener)
    this.#listeners = [...this.#listeners, listener]
    if (this.#listeners.length === 1) this.#detach = this.#attach(this)
    let removed = false
    return () => {
      if (removed) return
      removed = true
      const index = this.#listeners.indexOf(listener)
      this.#listeners = [...this.#listeners.slice(0, index), ...this.#listeners.slice(index + 1)]
      if (this.#listeners.length === 0) {
        this.#detach?.()
        this.#detach = undefined
      }
    }
  }

  emit(event: HttpClientEvent): void {
    const listeners = this.#listeners
    for (let i = 0; i < listeners.length; i++) {
      try {
        listeners[i]!(event)
      } catch (error) {
        // A listener's bug must not fail the request; it still surfaces as an uncaught error.
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }
}

/** The events of every service of a client, fanned in. */
export class ClientEvents implements HttpEvents {
  readonly #services: readonly ServiceEvents[]

  constructor(services: readonly ServiceEvents[]) {
    this.#services = services
  }

  get hasListeners(): boolean {
    return this.#services.some((s) => s.hasListeners)
  }

  on(listener: (event: HttpClientEvent) => void): Unsubscribe {
    const offs = this.#services.map((s) => s.on(listener))
    return () => {
      for (const off of offs) off()
    }
  }
}
