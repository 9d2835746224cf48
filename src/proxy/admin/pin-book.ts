import type { ProxyConfig } from '../contracts.js'
import { makeRoomForPin } from '../inbound/retry-affinity.js'
import type { SharedRetryPin } from '../inbound/routes.js'

/**
 * The primary's copy of the retry affinity pins its workers reported, so that a worker that
 * starts later (a crashed worker's replacement) is given them and sends a retry where the
 * first attempt went, as its siblings do. It holds at most as many pins as the routes may hold
 * together (the sum of their `maxKeys`), dropping the oldest first, and drops expired pins as
 * it goes. Insertion order is roughly expiry order (every route's pins live `ttlMs` from their
 * first request), so both clean-ups look at the head of the map only.
 */
export class PinBook {
  readonly #pins = new Map<string, SharedRetryPin>()
  #capacity: number

  constructor(config: ProxyConfig) {
    this.#capacity = PinBook.capacityOf(config)
  }

  /** The most pins the routes of `config` may hold together. */
  static capacityOf(config: ProxyConfig): number {
    let total = 0
    for (const listener of config.listeners)
      for (const route of listener.routes) total += route.retryAffinity?.maxKeys ?? 0
    return total
  }

  /** Follows a reloaded config's limits, dropping the oldest pins beyond the new one. */
  configure(config: ProxyConfig): void {
    this.#capacity = PinBook.capacityOf(config)
    for (const id of this.#pins.keys()) {
      if (this.#pins.size <= this.#capacity) break
      this.#pins.delete(id)
    }
  }

  /** Records a pin a worker reported (a later report of the same key replaces it). */
  add(pin: SharedRetryPin, now: number): void {
    if (pin.expiresAt <= now || this.#capacity === 0) return
    const id = `${pin.route}\u0000${pin.key}`
    this.#pins.delete(id)
    makeRoomForPin(this.#pins, now, this.#capacity)
    this.#pins.set(id, pin)
  }

  /** The pins still live at `now`, oldest first, in batches of at most `size`. */
  *batches(now: number, size: number): Generator<SharedRetryPin[]> {
    let batch: SharedRetryPin[] = []
    for (const [id, pin] of this.#pins) {
      if (pin.expiresAt <= now) {
        this.#pins.delete(id)
        continue
      }
      batch.push(pin)
      if (batch.length === size) {
        yield batch
        batch = []
      }
    }
    if (batch.length > 0) yield batch
  }

  /** Pins held (expired ones not yet dropped included). */
  get size(): number {
    return this.#pins.size
  }
}
