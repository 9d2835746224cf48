// The shared check of the "an option given as null is refused" tables: only undefined (or
// leaving the option out) means the default, so each known key set to null must be refused
// with INVALID_OPTION naming it, and each one that has a default must take undefined as left out.
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
  /** Keys with no default, which undefined does not stand for (not walked by the undefined check). */
  readonly required?: readonly string[]
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

/**
 * Sets each key of `bag.keys` but the required ones to undefined in turn: each call must
 * succeed (no throw or rejection), as it does with the key left out. The option types say
 * `name?: T | undefined`, so a caller forwarding an optional value (`{ afterId: last?.id }`)
 * compiles under exactOptionalPropertyTypes; this checks the runtime agrees. A key is required
 * when `bag.required` names it, or when the bag without it is refused (it has no default, so
 * undefined does not stand for one).
 */
export async function expectUndefinedOptionsAccepted(bag: NullOptionCase): Promise<void> {
  await bag.build({ ...bag.good })
  for (const key of bag.keys) {
    if (bag.required?.includes(key)) continue
    const { [key]: _left, ...without } = bag.good
    const leftOut = await Promise.resolve()
      .then(() => bag.build(without))
      .then(
        () => true,
        () => false,
      )
    if (!leftOut) continue
    await Promise.resolve()
      .then(() => bag.build({ ...bag.good, [key]: undefined }))
      .catch((error: unknown) => {
        throw new Error(`${key}: undefined was not taken as left out`, { cause: error })
      })
  }
}
