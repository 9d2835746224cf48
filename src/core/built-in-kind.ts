import { types } from 'node:util'

// Built-ins whose data lives in internal slots, not in enumerable properties: read as options or
// as a record of names they are {} (a Map's entries, a Date's time, a Headers' fields are all
// dropped without a word). util.types looks at the slots, so another realm's (a vm context's,
// a jsdom window's) count too, and a subclass of one is one.
const slotted: ReadonlyArray<(value: object) => boolean> = [
  types.isMap,
  types.isSet,
  types.isWeakMap,
  types.isWeakSet,
  types.isDate,
  types.isRegExp,
  types.isPromise,
  types.isNativeError,
  types.isAnyArrayBuffer,
  types.isArrayBufferView,
  types.isBoxedPrimitive,
]
type WebClass = abstract new (...args: never[]) => object
// The web classes util.types has no test for; these are checked against this realm's classes.
// Read when first needed, not at import: in Node 20 they are lazy globals, and the first read
// loads Node's bundled fetch (about 35 ms of every start of a program importing breakwater).
let webClasses: readonly WebClass[] | undefined
function realmWebClasses(): readonly WebClass[] {
  webClasses ??= ['Headers', 'URLSearchParams', 'FormData', 'Blob']
    .map((name) => (globalThis as Record<string, unknown>)[name])
    .filter((c): c is WebClass => typeof c === 'function')
  return webClasses
}

// A subclass may give itself any Symbol.toStringTag: only a name goes into a message.
const tagPattern = /^[A-Z][A-Za-z0-9]{0,39}$/

/**
 * The kind of built-in `value` is (`a Map`, `a Headers`, `an ArrayBuffer`) when it is one whose
 * data is not in its enumerable properties, else undefined: a Map, Set, WeakMap, WeakSet, Date,
 * RegExp, Promise, Error, ArrayBuffer, typed array or DataView (a Buffer), boxed primitive,
 * Headers, URLSearchParams, FormData or Blob. Named by its `Symbol.toStringTag`, as
 * `Object.prototype.toString` gives it (a Buffer is a Uint8Array, any Error an Error); `a
 * built-in object` when that tag is not a plain name or cannot be read.
 *
 * The one test of both `isObjectRecord` (which refuses these where a record is expected) and
 * `describeValue` (which names them in a refusal). Never throws: a Proxy whose traps throw, or a
 * revoked one, is not a built-in it can tell (undefined). A plain object, the common case (and
 * the per-event one: event headers, metadata), costs one prototype lookup.
 */
export function builtInKind(value: object): string | undefined {
  try {
    const proto: unknown = Object.getPrototypeOf(value)
    if (proto === Object.prototype || proto === null) return undefined
    if (!slotted.some((is) => is(value)) && !realmWebClasses().some((c) => value instanceof c))
      return undefined
  } catch {
    return undefined
  }
  let tag = ''
  try {
    tag = Object.prototype.toString.call(value).slice(8, -1)
  } catch {
    // A Symbol.toStringTag getter that throws: still a built-in, by its slots.
  }
  if (!tagPattern.test(tag)) return 'a built-in object'
  // No built-in's name starts with a U read as a vowel (Uint8Array, URLSearchParams).
  return `${/^[AEIO]/.test(tag) ? 'an' : 'a'} ${tag}`
}
