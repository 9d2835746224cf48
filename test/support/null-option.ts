// The shared check of the "an option given as null is refused" tables: only undefined (or
// leaving the option out) means the default, so each known key set to null must be refused
// with INVALID_OPTION naming it.
import { expect } from 'vitest'
import { optionRefusal } from './unknown-option.js'

/** One options bag of a factory or function, as the null tables walk it. */
export interface NullOptionCase {
  /** Calls the factory with `options` (a good bag with one key replaced). */
  readonly build: (options: Record<string, unknown>) => unknown
  /** A bag the factory accepts, holding every required option. */
  readonly good: Record<string, unknown>
  /** Every key of the bag: the factory's own set, which optionKeys<T> keeps complete. */
  readonly keys: ReadonlySet<string>
  /** How errors name the options: `${prefix}.${key}`, or the bare key when `undefined`. */
  readonly prefix: string | undefined
  /** Keys that hold the caller's data, where null is a value (not walked here). */
  readonly data?: readonly string[]
}

/**
 * Sets each key of `bag.keys` (but its data keys) to null in turn; each call must throw or
 * reject with `InvalidOptionError` naming that option, with the value null.
 */
export async function expectNullOptionsRefused(bag: NullOptionCase): Promise<void> {
  for (const key of bag.keys) {
    if (bag.data?.includes(key)) continue
    const refused = await optionRefusal(() => bag.build({ ...bag.good, [key]: null }))
    expect(refused.option, key).toBe(bag.prefix === undefined ? key : `${bag.prefix}.${key}`)
    expect(refused.value, key).toBeNull()
  }
}
