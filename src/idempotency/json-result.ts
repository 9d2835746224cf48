import { jsonTextOf } from '../core/text.js'

/**
 * @internal The JSON text recorded for a value that `idempotent()` returns to every later call
 * (its result, a phase's value). The rule is breakwater's one rule for stored JSON
 * ({@link jsonTextOf}): a value whose JSON loses data (a Map or Set, a function or symbol, a
 * BigInt, NaN or ±Infinity, an invalid Date, an undefined array element, a cycle, an object
 * with only `#private` fields) is refused with `INVALID_OPTION` naming `option` and the path of
 * the bad part, rather than stored as another value than the first call returned; so is a
 * throwing toJSON or getter (its error the `cause`). A class instance with own enumerable
 * fields is kept, and comes back (to the first call too) as a plain object of those fields.
 */
export function recordableJson(option: string, value: unknown): string {
  return jsonTextOf(option, value, 'a JSON value')
}
