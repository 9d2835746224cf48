/**
 * A small least-recently-used map: `get` refreshes an entry, `set` evicts the oldest entry once
 * `capacity` is reached. Built on `Map`'s insertion order, so both are O(1).
 */
export class LruCache<K, V> {
  readonly #capacity: number
  readonly #entries = new Map<K, V>()

  /** @param capacity How many entries are kept; at least 1. */
  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity)
  }

  /** How many entries are cached. */
  get size(): number {
    return this.#entries.size
  }

  /** Returns the entry for `key` and marks it most recently used. */
  get(key: K): V | undefined {
    const value = this.#entries.get(key)
    if (value !== undefined) {
      this.#entries.delete(key)
      this.#entries.set(key, value)
    }
    return value
  }

  /** Stores `value`, evicting the least recently used entry when full. */
  set(key: K, value: V): void {
    this.#entries.delete(key)
    if (this.#entries.size >= this.#capacity) {
      const oldest = this.#entries.keys().next()
      if (oldest.done !== true) this.#entries.delete(oldest.value)
    }
    this.#entries.set(key, value)
  }

  /** Removes the entry for `key`, if any. */
  delete(key: K): void {
    this.#entries.delete(key)
  }

  /** Removes every entry. */
  clear(): void {
    this.#entries.clear()
  }
}
