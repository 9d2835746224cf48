import { InvalidOptionError } from '../core/errors.js'
import {
  checkFunction,
  checkInteger,
  checkObject,
  isDroppedPromise,
  optionKeys,
} from '../core/validate.js'
import { checkOptionKeys } from './checks.js'
import { UpcastError } from './errors.js'
import type { EventShape } from './types.js'

/**
 * One step of an event type's schema evolution: turns the data of `type` at schema version
 * `fromVersion` into its data at `fromVersion + 1`. Stored events are never rewritten; every
 * read (streams, `readAll`, subscriptions, projections, command handlers) runs the chain of
 * steps from the stored version to the current one.
 *
 * Typed, `E` is what the step produces, as events (see `Event`): for the last step of a chain,
 * the application's union (`Upcaster<OrderEvent, PlacedV2>`), so `type` must be one of its
 * types and `upcast` must return that type's data; for an earlier step, an event of the
 * version it produces (`Upcaster<Event<'order-placed', PlacedV2>, PlacedV1>`). `From` is the
 * stored data it reads (the default, `unknown`, leaves it to the step to check). Like the
 * store's type, neither is checked at run time, and the store does not check that a chain ends
 * in its union: which step is the last is only known from the versions, at run time.
 *
 * The store refuses an upcaster with any other own key (a misspelt `fromVersoin`) with
 * `InvalidOptionError` (`INVALID_OPTION`) naming it, as `upcasters[0].fromVersoin`.
 *
 * @example
 * ```ts
 * // v1 stored `amount` in cents as a string; v2 holds a number and a currency.
 * type PriceEvent = Event<'price-set', { amount: number; currency: string }>
 * const priceV1toV2: Upcaster<PriceEvent, { amount: string }> = {
 *   type: 'price-set',
 *   fromVersion: 1,
 *   upcast: (data) => ({ amount: Number(data.amount), currency: 'EUR' }),
 * }
 * ```
 */
// Distributed over E, so that an object literal with a `type` of the union is checked against
// that member's data (and a type outside the union against none).
export type Upcaster<E extends EventShape = EventShape, From = unknown> = E extends EventShape
  ? {
      /** The event type this step reads. */
      readonly type: E['type']
      /** The schema version it reads; it returns the data of version `fromVersion + 1`. */
      readonly fromVersion: number
      /**
       * Returns the new data, synchronously (not `undefined` nor a promise: either fails the
       * read with `UpcastError`). Must be pure (it runs on every read) and must not mutate its
       * input. `metadata` is the event's metadata, for steps that need it.
       */
      // A method, not a function property: a typed step (its `data: From`) is then still an
      // untyped `Upcaster`, which is what the store takes.
      upcast(data: From, metadata: Readonly<Record<string, unknown>>): E['data']
    }
  : never

const upcasterKeys = optionKeys<Upcaster>({ type: true, fromVersion: true, upcast: true })

/** The upcasters of an event store, indexed for reads and for the current version per type. */
export class UpcasterChain {
  readonly #steps = new Map<string, Map<number, Upcaster>>()
  readonly #current = new Map<string, number>()

  constructor(upcasters: readonly Upcaster[]) {
    if (!Array.isArray(upcasters)) {
      throw new InvalidOptionError('upcasters', 'an array of upcasters', upcasters)
    }
    upcasters.forEach((upcaster: Upcaster, index) => {
      const at = `upcasters[${index}]`
      checkObject(at, upcaster)
      // A misspelt key was dropped without a word: a stray `fromVersoin` beside the right one,
      // or `upcaster` for `upcast` refused as a missing function, the typo left unnamed.
      checkOptionKeys(at, upcaster, upcasterKeys)
      if (typeof upcaster.type !== 'string' || upcaster.type === '') {
        throw new InvalidOptionError(`${at}.type`, 'a non-empty string', upcaster.type)
      }
      // The current version (one above) must fit the 32-bit schema_version column, as an
      // append's own schemaVersion must: otherwise every append of the type fails in the driver.
      checkInteger(`${at}.fromVersion`, upcaster.fromVersion, 1, 2_147_483_646)
      checkFunction(`${at}.upcast`, upcaster.upcast)
      let steps = this.#steps.get(upcaster.type)
      if (steps === undefined) {
        steps = new Map()
        this.#steps.set(upcaster.type, steps)
      }
      if (steps.has(upcaster.fromVersion)) {
        throw new InvalidOptionError(
          `${at}.fromVersion`,
          `one upcaster per type and version (another reads "${upcaster.type}" v${upcaster.fromVersion})`,
          upcaster.fromVersion,
        )
      }
      steps.set(upcaster.fromVersion, upcaster)
    })
    for (const [type, steps] of this.#steps) {
      const versions = [...steps.keys()].sort((a, b) => a - b)
      const last = versions[versions.length - 1] ?? 0
      // A gap would leave events of the missing version stuck below the current one.
      for (let v = versions[0] ?? 1; v <= last; v++) {
        if (!steps.has(v)) {
          throw new InvalidOptionError(
            'upcasters',
            `a gap-free chain for "${type}" (no upcaster reads v${v})`,
            upcasters,
          )
        }
      }
      this.#current.set(type, last + 1)
    }
  }

  /** Whether any upcaster is registered (reads skip the lookup when none is). */
  get empty(): boolean {
    return this.#steps.size === 0
  }

  /** The schema version new events of `type` are written with. */
  currentVersion(type: string): number {
    return this.#current.get(type) ?? 1
  }

  /**
   * Upcasts `data` of `type` from `version` to the current version; returns [data, version].
   * An event below the current version that no chain leads up from (the oldest upcaster of its
   * type reads a later version), or one an upcaster throws on, fails with {@link UpcastError}
   * naming it (`at`): handed on as stored, its readers would get data in a shape they do not
   * expect, silently.
   */
  upcast(
    type: string,
    version: number,
    data: unknown,
    metadata: Readonly<Record<string, unknown>>,
    at: { readonly stream: string; readonly position: number; readonly eventId: string },
  ): [unknown, number] {
    const steps = this.#steps.get(type)
    if (steps === undefined) return [data, version]
    const currentVersion = this.currentVersion(type)
    // Above the current version (written by a newer release): nothing to do, and the event says
    // its version. Below it, the chain must be complete.
    if (version >= currentVersion) return [data, version]
    const event = { type, schemaVersion: version, currentVersion, ...at }
    if (!steps.has(version)) throw new UpcastError(event)
    let current = data
    for (let v = version; v < currentVersion; v++) {
      try {
        // Registration refused gaps: every step from here to the current version exists.
        current = steps.get(v)!.upcast(current, metadata)
        // A step that mutates its input and forgets to return it: event data is never
        // undefined (no append can write it), so readers would get a shape nobody wrote.
        if (current === undefined) throw new TypeError('it returned undefined')
        // An async step: readers would get a Promise as the data, and one that rejects would be
        // an unhandled rejection (Node exits). Reads are synchronous; its outcome is dropped.
        if (isDroppedPromise(current)) {
          throw new TypeError('it returned a promise (upcasters must be synchronous)')
        }
      } catch (error) {
        throw new UpcastError(event, { error, fromVersion: v })
      }
    }
    return [current, currentVersion]
  }
}
