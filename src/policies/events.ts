import { type Channel, channel } from 'node:diagnostics_channel'
import { checkFunction } from '../core/validate.js'

/** Removes a listener added with {@link EventSource.on}. */
export type Unsubscribe = () => void

/**
 * A minimal typed event source. Emitting costs one length check when nobody listens, which
 * keeps the policies' hot path free of work nobody asked for.
 */
export class EventSource<T> {
  #listeners: Array<(event: T) => void> = []

  /**
   * Adds a listener; returns a function that removes it (that one subscription: a listener
   * added twice stays subscribed once; calling it again does nothing). Throws
   * `InvalidOptionError` for a listener that is not a function: accepted, it would throw at
   * every event, each time as an uncaught exception.
   */
  on(listener: (event: T) => void): Unsubscribe {
    checkFunction('events.on(listener)', listener)
    this.#listeners = [...this.#listeners, listener]
    let subscribed = true
    return () => {
      // One shared function (a logger) may be subscribed by two parts of an app: one leaving
      // must not silence the other.
      if (!subscribed) return
      subscribed = false
      const index = this.#listeners.indexOf(listener)
      if (index >= 0) this.#listeners = this.#listeners.toSpliced(index, 1)
    }
  }

  /** True when at least one listener is attached. */
  get hasListeners(): boolean {
    return this.#listeners.length > 0
  }

  /** Calls every listener; a listener that throws cannot break the policy that emitted. */
  emit(event: T): void {
    const listeners = this.#listeners
    for (let i = 0; i < listeners.length; i++) {
      try {
        listeners[i]!(event)
      } catch (error) {
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }
}

/**
 * The `node:diagnostics_channel` channel named `breakwater:<area>:<event>`, for tracers and
 * APM agents that subscribe without touching user code. Publish only when `hasSubscribers`.
 */
export function diagnosticsChannel(area: string, event: string): Channel {
  return channel(`breakwater:${area}:${event}`)
}
