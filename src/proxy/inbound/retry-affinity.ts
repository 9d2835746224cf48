// Retry affinity for weighted routes: a request that carries an idempotency key is sent where
// the first request with that key went, even if the split moved in between.
//
// Why: during a strangler migration the two sides keep separate stores. A client whose first
// attempt reached the legacy side (and did the work) but whose answer was lost retries with
// the same Idempotency-Key; if the weights changed meanwhile (an operator moved 90% to the new
// service, or rolled back) the retry would land on the other side, which has never seen the
// key, and the order would be placed, charged and shipped twice. The shop demo's checker found
// exactly that under load. Sticky hashing alone does not prevent it: moving weight is precisely
// what moves users to the other side.
//
// Decisions, written down here because nobody else will:
// - The pin holds through overrides and rollbacks, even when the pinned service now has weight
//   0: the first attempt may have done the work there, and a retry elsewhere repeats it. A retry
//   that then fails is an error the client sees; a retry that succeeds twice is not.
// - The pin is dropped when its service is no longer a target of the route at all (a reload
//   removed it): there is nowhere left to follow it to.
// - A pin is only kept once a request with its key may have reached the service (the forward
//   says whether any attempt was written to it). If every request with the key so far was
//   refused before that (breaker open, connection refused, no endpoint), nothing can have been
//   done anywhere, and the pin is dropped: during an incident an operator who moves the split
//   away from a broken side moves its retries too, instead of pinning them to it for ttlMs.
// - Pins live in the proxy process's memory, per route, bounded by `maxKeys` (oldest dropped
//   first) and `ttlMs` (counted from the first request, not refreshed by retries). With
//   `workers > 1`, a worker tells the primary about each pin as soon as a request may have
//   reached its service, and the primary passes it on to the other workers (IPC, well under a
//   millisecond, while a client's retry comes after its timeout and backoff). The primary keeps
//   a copy (src/proxy/admin/pin-book.ts) and gives a worker started later (a crashed one's
//   replacement) the live pins as it comes up. A restart of the whole proxy forgets them.

import type { Clock } from '../../core/clock.js'
import { sha256Hex } from '../../idempotency/fingerprint.js'
import { credentialOf } from '../../idempotency/scope.js'
import type { RetryAffinityConfig } from '../contracts.js'
import { headerValueOf } from './header-value.js'

/** The settings a config file gets when it does not mention `retryAffinity`. */
export const retryAffinityDefaults: RetryAffinityConfig = {
  header: 'idempotency-key',
  ttlMs: 600_000,
  maxKeys: 100_000,
}

interface Pin {
  readonly service: string
  readonly expiresAt: number
  /** A request with this key may have reached `service`: the pin stays. */
  reached: boolean
  /** Requests with this key between choose and settle. */
  inFlight: number
}

/**
 * The pins of one route: key to the service its first request went to. A Map keeps insertion
 * order, and every pin has the same lifetime, so the oldest pins (the first to expire, and the
 * first to drop when full) are at its head: both clean-ups are amortized O(1).
 */
export class RetryPins {
  readonly #pins = new Map<string, Pin>()
  /** Requests whose key was pinned already, sent to its pinned service (admin API). */
  followed = 0
  /** Called when a pin becomes one a request may have got through (to share it). */
  onReached: ((key: string, service: string, expiresAt: number) => void) | undefined

  // No settings of its own: a reload's route shares the pins of the route it replaces, and each
  // passes its own ttlMs and maxKeys, so a reload refused after its routes were built changes
  // nothing for the running route's.
  constructor(readonly clock: Clock) {}

  /**
   * The service `key` is pinned to, or undefined (never pinned, or its pin expired). A request
   * that goes there calls {@link RetryPins.follow} and, when it is done, {@link RetryPins.settle}.
   */
  pinned(key: string): string | undefined {
    const pin = this.#pins.get(key)
    if (pin === undefined) return undefined
    if (pin.expiresAt <= this.clock.now()) {
      this.#pins.delete(key)
      return undefined
    }
    return pin.service
  }

  /** Counts a request sent to `key`'s live pin (checked with {@link RetryPins.pinned}). */
  follow(key: string): void {
    const pin = this.#pins.get(key)
    if (pin === undefined) return
    pin.inFlight++
    this.followed++
  }

  /**
   * Pins `key` to `service` for `config.ttlMs`, for a request about to go there, dropping
   * expired pins and, when `config.maxKeys` are pinned, the oldest.
   */
  pin(key: string, service: string, config: RetryAffinityConfig): void {
    const now = this.clock.now()
    makeRoomForPin(this.#pins, now, config.maxKeys)
    this.#pins.set(key, {
      service,
      expiresAt: now + config.ttlMs,
      reached: false,
      inFlight: 1,
    })
  }

  /**
   * A request with `key` sent to `service` is done; `reached`: whether it may have reached the
   * service. A pin that no request may have got through is dropped once none is in flight.
   */
  settle(key: string, service: string, reached: boolean): void {
    const pin = this.#pins.get(key)
    if (pin === undefined || pin.service !== service) return
    if (pin.inFlight > 0) pin.inFlight--
    if (reached) {
      if (!pin.reached) {
        pin.reached = true
        this.onReached?.(key, service, pin.expiresAt)
      }
    } else if (!pin.reached && pin.inFlight === 0) this.#pins.delete(key)
  }

  /**
   * Takes a pin another process reported (its request may have reached `service`). A pin of
   * this process that a request may have got through already stays; an expired one is ignored.
   * At most `maxKeys` are kept, the oldest dropped first.
   */
  adopt(key: string, service: string, expiresAt: number, maxKeys: number): void {
    const now = this.clock.now()
    if (expiresAt <= now) return
    if (this.#pins.get(key)?.reached === true) return
    this.#pins.delete(key)
    makeRoomForPin(this.#pins, now, maxKeys)
    this.#pins.set(key, { service, expiresAt, reached: true, inFlight: 0 })
  }

  /** Forgets `key` (its pinned service is gone from the route). */
  forget(key: string): void {
    this.#pins.delete(key)
  }

  /** Keys pinned now (expired ones not yet dropped included). */
  get size(): number {
    return this.#pins.size
  }
}

/**
 * Makes room for one more pin in `pins` (insertion order, roughly expiry order): drops expired
 * pins at the head, then the oldest while `capacity` is reached. Adopted pins may carry an
 * earlier expiry than the last one set, so an expired pin can sit behind a live one; it is
 * dropped when read or when it reaches the head. Shared by each route's pins and the primary's
 * copy of every route's (`PinBook`).
 */
export function makeRoomForPin(
  pins: Map<string, { readonly expiresAt: number }>,
  now: number,
  capacity: number,
): void {
  for (const [oldKey, pin] of pins) {
    if (pin.expiresAt > now && pins.size < capacity) break
    pins.delete(oldKey)
  }
}

/**
 * The pin key of a request: undefined without an affinity header (or with an empty one), else
 * the SHA-256 of the key together with who sent it, the way idempotency keys are scoped: the
 * credential (`Authorization`, else `X-API-Key`, as the sidecar's idempotency scopes keys) and
 * the route's sticky value. Two clients that happen to use the same key never share a pin, and
 * a pin costs the same memory however long the key or the token is. A repeated header is
 * joined with `, `, as everywhere else in the proxy.
 */
export function retryKeyOf(
  config: RetryAffinityConfig | undefined,
  headers: Readonly<Record<string, string | string[]>>,
  stickyValue: string | undefined,
): string | undefined {
  if (config === undefined) return undefined
  const key = headerValueOf(headers, config.header)
  if (key === undefined || key === '') return undefined
  const credential = credentialOf((name) => headerValueOf(headers, name))
  const client = credential === undefined ? '' : `${credential.header}:${credential.value}`
  // NUL cannot occur in header values, so the parts cannot run into each other.
  return sha256Hex(`${client}\u0000${stickyValue ?? ''}\u0000${key}`)
}
