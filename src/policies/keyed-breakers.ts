import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkKnownOptions,
  checkObject,
  isDroppedPromise,
  optionKeys,
} from '../core/validate.js'
import type { CircuitBreaker } from './circuit-breaker.js'
import { optionalClock, optionalInteger, optionalNumber } from './options.js'

/** Options of {@link createKeyedBreakers}. */
export interface KeyedBreakersOptions {
  /**
   * Builds the breaker for a key the first time it is asked for. Required. Called
   * synchronously by `get()`: what it returns must be a breaker (one that returns a promise,
   * an async function, is refused with `InvalidOptionError` naming `keyedBreakers.create`).
   */
  readonly create: (key: string) => CircuitBreaker
  /**
   * How many breakers are kept, at most. When a new key would pass the bound, the least
   * recently used closed breaker is dropped. When every other kept breaker is open, half-open
   * or isolated, the least recently used open or half-open one is dropped (its key starts
   * closed next time), and an isolated one only when all others are isolated: the bound holds
   * whatever the state of the circuits.
   * @default 1000
   */
  readonly maxKeys?: number | undefined
  /**
   * A closed breaker not asked for during this long is dropped. An open, half-open or isolated
   * one is kept (it carries the knowledge that the key is unhealthy) and checked again after
   * another `idleMs`.
   * @default 600_000
   */
  readonly idleMs?: number | undefined
  /**
   * Time source for idleness.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** A bounded set of circuit breakers by key; see {@link createKeyedBreakers}. */
export interface KeyedBreakers {
  /**
   * The breaker for `key`, created on first use. A key that is not a string throws
   * `InvalidOptionError` (code `INVALID_OPTION`) naming `keyedBreakers.get(key)`.
   */
  get(key: string): CircuitBreaker
  /**
   * Drops (and disposes) the breaker for `key`; true when there was one. A key that is not a
   * string throws `InvalidOptionError` naming `keyedBreakers.delete(key)`.
   */
  delete(key: string): boolean
  /** Breakers currently kept. */
  readonly size: number
  /** Disposes every breaker and forgets them all. */
  close(): void
}

interface Entry {
  readonly breaker: CircuitBreaker
  lastUsedMs: number
}

/**
 * Keeps one circuit breaker per key (host, tenant, shard) so one bad downstream does not open
 * the circuit for the healthy ones, with memory bounded by `maxKeys` (least recently used
 * closed breakers go first, unhealthy ones only when no closed one is left) and idle closed
 * breakers dropped after `idleMs`. Work is done in
 * `get()`: O(1) amortised, no timer. A dropped breaker is disposed; a caller still holding it
 * keeps a working but detached breaker. An unknown (misspelt) option is refused with
 * `InvalidOptionError` (code `INVALID_OPTION`) naming it.
 *
 * @example
 * ```ts
 * import { circuitBreaker, createKeyedBreakers } from 'breakwater'
 * const breakers = createKeyedBreakers({ create: () => circuitBreaker({ cooldownMs: 5_000 }) })
 * const url = new URL('http://10.0.0.7:8080/orders')
 * await breakers.get(url.host).execute(({ signal }) => fetch(url, { signal }))
 * ```
 */
export function createKeyedBreakers(options: KeyedBreakersOptions): KeyedBreakers {
  return new KeyedBreakerSet(options)
}

/** The option keys `createKeyedBreakers` takes (internal: not exported from the package root). */
export const keyedBreakersOptions = optionKeys<KeyedBreakersOptions>({
  create: true,
  maxKeys: true,
  idleMs: true,
  clock: true,
})

class KeyedBreakerSet implements KeyedBreakers {
  readonly #create: (key: string) => CircuitBreaker
  readonly #maxKeys: number
  readonly #idleMs: number
  readonly #clock: Clock
  // Map iteration order is insertion order; re-inserting on every use makes it LRU order.
  readonly #entries = new Map<string, Entry>()
  // The earliest time anything can need dropping; until then get() skips the sweep.
  #nextSweepMs = Number.NEGATIVE_INFINITY

  constructor(options: KeyedBreakersOptions) {
    checkObject('keyedBreakers', options)
    checkKnownOptions('keyedBreakers', options, keyedBreakersOptions)
    this.#create = checkFunction('keyedBreakers.create', options.create)
    this.#maxKeys = optionalInteger('keyedBreakers.maxKeys', options.maxKeys, 1000, 1)
    this.#idleMs = optionalNumber('keyedBreakers.idleMs', options.idleMs, 600_000, 1)
    const clock = optionalClock('keyedBreakers.clock', options.clock)
    this.#clock = clock
  }

  get size(): number {
    return this.#entries.size
  }

  get(key: string): CircuitBreaker {
    // A Map compares an object key by identity: a key object built per request would make a
    // fresh breaker per call that never trips, so only strings are keys.
    if (typeof key !== 'string')
      throw new InvalidOptionError('keyedBreakers.get(key)', 'a string', key)
    const now = this.#clock.now()
    const entries = this.#entries
    let entry = entries.get(key)
    if (entry !== undefined) {
      entry.lastUsedMs = now
      entries.delete(key)
      entries.set(key, entry)
    } else {
      const breaker = this.#create(key)
      // The set reads `state` to keep unhealthy keys and calls `dispose()` on the ones it drops.
      if (
        typeof breaker !== 'object' ||
        breaker === null ||
        typeof breaker.execute !== 'function' ||
        typeof breaker.dispose !== 'function' ||
        typeof breaker.state !== 'string'
      )
        // get() is synchronous: an async create's promise is refused like any other value,
        // saying why, and its outcome dropped (a rejection would otherwise be unhandled).
        throw new InvalidOptionError(
          'keyedBreakers.create',
          isDroppedPromise(breaker)
            ? 'a function returning a CircuitBreaker, not a promise (it is not awaited)'
            : 'a function returning a CircuitBreaker',
          breaker,
        )
      entry = { breaker, lastUsedMs: now }
      entries.set(key, entry)
      if (entries.size > this.#maxKeys) this.#nextSweepMs = now
    }
    if (now >= this.#nextSweepMs) this.#sweep(now, key)
    return entry.breaker
  }

  delete(key: string): boolean {
    if (typeof key !== 'string')
      throw new InvalidOptionError('keyedBreakers.delete(key)', 'a string', key)
    const entry = this.#entries.get(key)
    if (entry === undefined) return false
    this.#entries.delete(key)
    entry.breaker.dispose()
    return true
  }

  close(): void {
    for (const entry of this.#entries.values()) entry.breaker.dispose()
    this.#entries.clear()
  }

  // Drops idle closed breakers, and keeps the count at or below maxKeys: the least recently
  // used closed breakers go first, then (only when every other kept breaker is unhealthy) the
  // least recently used open or half-open one, and an isolated one last of all.
  #sweep(now: number, justUsed: string): void {
    this.#walk(now, justUsed)
    if (this.#entries.size > this.#maxKeys) {
      this.#evictUnhealthy(justUsed, false)
      this.#evictUnhealthy(justUsed, true)
    }
  }

  // Walks from the least recently used end while something is idle or the map is over its
  // bound. A breaker that must be kept is moved to the newest end (as if used now), so each
  // kept breaker costs one step per idle period and the walk ends after at most size steps.
  #walk(now: number, justUsed: string): void {
    const entries = this.#entries
    let budget = entries.size
    this.#nextSweepMs = now + this.#idleMs
    for (const [key, entry] of entries) {
      if (key === justUsed) return
      if (budget-- <= 0) {
        this.#nextSweepMs = now
        return
      }
      const over = entries.size > this.#maxKeys
      const idle = now - entry.lastUsedMs >= this.#idleMs
      if (!over && !idle) {
        this.#nextSweepMs = entry.lastUsedMs + this.#idleMs
        return
      }
      entries.delete(key)
      if (entry.breaker.state === 'closed') entry.breaker.dispose()
      else {
        entry.lastUsedMs = now
        entries.set(key, entry)
      }
    }
  }

  // Still over the bound after the walk: only the breaker just asked for and unhealthy ones are
  // left (the walk dropped every closed one before it). Remembering an unhealthy key is worth
  // less than the bound, which is what keeps memory in check when keys come from outside (a
  // host per request): the least recently used goes, and its key starts closed next time.
  // Isolated breakers (opened by hand) go only when nothing else is left.
  #evictUnhealthy(justUsed: string, isolated: boolean): void {
    const entries = this.#entries
    for (const [key, entry] of entries) {
      if (entries.size <= this.#maxKeys) return
      if (key === justUsed || (entry.breaker.state === 'isolated') !== isolated) continue
      entries.delete(key)
      entry.breaker.dispose()
    }
  }
}
