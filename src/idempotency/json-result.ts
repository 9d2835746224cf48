import { InvalidOptionError } from '../core/errors.js'

/**
 * @internal The JSON text recorded for a value that `idempotent()` returns to every later call
 * (its result, a phase's value), refusing with `INVALID_OPTION` (naming `option` and the path
 * of the first bad part) a value JSON would not give back: a Map or Set (stored as `{}`), an
 * instance of a class without `toJSON` (it would come back a plain object, or `{}`), a
 * function or symbol (dropped), a BigInt (JSON has none), NaN or ±Infinity (stored as null), a
 * cycle. Refused rather than stored: the caller's later calls would get another value than the
 * first returned, silently. What `toJSON` returns (a Date's ISO string) is stored, as before;
 * so are plain objects, arrays, strings, finite numbers, booleans and null, with object fields
 * that are `undefined` left out, as JSON does. One pass: the replacer sees every value after
 * `toJSON`, as the text does; `this` is the object holding it, whose path was noted when it was
 * itself visited (none for the wrapper JSON.stringify puts around the root).
 */
export function recordableJson(option: string, value: unknown): string {
  const paths = new WeakMap<object, string>()
  let text: string | undefined
  try {
    text = JSON.stringify(value, function (this: object, key: string, v: unknown) {
      const holder = paths.get(this)
      const path = holder === undefined ? option : childPath(holder, this, key)
      const problem = noJsonForm(v, Array.isArray(this))
      if (problem !== undefined) {
        throw new InvalidOptionError(
          option,
          `a JSON value (${problem.what} at ${path} has no JSON form: ${problem.outcome})`,
          value,
        )
      }
      if (typeof v === 'object' && v !== null) paths.set(v, path)
      return v
    })
  } catch (error) {
    if (error instanceof InvalidOptionError) throw error
    // A cycle (the only other way JSON.stringify throws once toJSON has run).
    throw new InvalidOptionError(option, `a JSON value (${String(error)})`, value)
  }
  if (text === undefined) throw new InvalidOptionError(option, 'a JSON value', value)
  return text
}

function childPath(holder: string, parent: object, key: string): string {
  if (Array.isArray(parent)) return `${holder}[${key}]`
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${holder}.${key}` : `${holder}[${JSON.stringify(key)}]`
}

/** What is wrong with `v` (after its `toJSON`), or undefined when JSON keeps it as it is. */
function noJsonForm(
  v: unknown,
  inArray: boolean,
): { readonly what: string; readonly outcome: string } | undefined {
  switch (typeof v) {
    case 'number':
      return Number.isFinite(v)
        ? undefined
        : { what: String(v), outcome: 'it would be stored as null' }
    case 'bigint':
      return { what: 'a BigInt', outcome: 'JSON has no such number' }
    case 'function':
    case 'symbol':
      return {
        what: typeof v === 'function' ? 'a function' : 'a symbol',
        outcome: inArray ? 'it would be stored as null' : 'it would be left out',
      }
    case 'object': {
      if (v === null || Array.isArray(v)) return undefined
      // JSON writes boxed primitives as the primitive.
      if (v instanceof Number) return noJsonForm(v.valueOf(), inArray)
      if (v instanceof String || v instanceof Boolean) return undefined
      const proto: unknown = Object.getPrototypeOf(v)
      // A plain object, of this realm or another (its prototype's prototype is null).
      if (proto === null || Object.getPrototypeOf(proto) === null) return undefined
      if (v instanceof Map) return { what: 'a Map', outcome: 'it would be stored as {}' }
      if (v instanceof Set) return { what: 'a Set', outcome: 'it would be stored as {}' }
      const name = (v as { constructor?: { name?: unknown } }).constructor?.name
      return {
        what: `an instance of ${typeof name === 'string' && name !== '' ? name : 'a class'} without toJSON`,
        outcome: 'it would come back as a plain object of its own enumerable fields',
      }
    }
    default:
      return undefined
  }
}
