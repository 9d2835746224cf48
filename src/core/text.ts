import { InvalidOptionError } from './errors.js'

// Checks on text that is about to be stored, run per operation (unlike the option validators
// in validate.ts), shared by the capabilities that write it.

/**
 * Whether `value` holds half of a UTF-16 surrogate pair. Such a string has no UTF-8 form: the
 * PostgreSQL driver sends U+FFFD in its place, so two different strings would be stored as one.
 */
export function hasLoneSurrogate(value: string): boolean {
  // With the u flag a well-formed pair is one code point, so only a lone half matches.
  return /\p{Cs}/u.test(value)
}

/**
 * Whether both databases store `value` exactly as given: PostgreSQL text cannot hold NUL (a
 * bare driver error there, which aborts the caller's transaction, while SQLite stores it), and
 * half of a surrogate pair has no UTF-8 form (stored as U+FFFD, so two different names or ids
 * would become one).
 */
export function isStorableText(value: string): boolean {
  return !value.includes('\u0000') && !hasLoneSurrogate(value)
}

/**
 * Checks a name or id about to be stored as text (a stream name, an event id, an outbox
 * topic, an inbox message id): a non-empty string that {@link isStorableText} accepts, or
 * `InvalidOptionError` naming `option`. Returns the value.
 */
export function checkStoredName(option: string, value: unknown): string {
  if (typeof value !== 'string' || value === '' || !isStorableText(value)) {
    throw new InvalidOptionError(
      option,
      'a non-empty string without NUL characters or lone surrogates',
      value,
    )
  }
  return value
}

/**
 * The most UTF-8 bytes of an id stored as an index key (an outbox event or aggregate id, an
 * inbox message id). PostgreSQL refuses an index entry over about 2,700 bytes with a bare
 * "index row size" error (54000), depending on how well the value compresses, while SQLite
 * stores any length: the cap keeps both databases alike, and an id one accepts storable by
 * the other.
 */
export const maxStoredIdBytes = 2048

/**
 * The most UTF-8 bytes of a name stored beside an id in the same index key (an inbox's
 * consumer, a SQL queue's topic and group): with an id of {@link maxStoredIdBytes} the entry
 * still fits what PostgreSQL takes.
 */
export const maxStoredNameBytes = 256

/** Whether `value` is longer than `maxBytes` in UTF-8. */
export function exceedsBytes(value: string, maxBytes: number): boolean {
  // A UTF-16 unit is at most 3 UTF-8 bytes: short text needs no count.
  return value.length * 3 > maxBytes && Buffer.byteLength(value, 'utf8') > maxBytes
}

/**
 * {@link checkStoredName} for text stored as an index key: also at most `maxBytes` UTF-8
 * bytes (see {@link maxStoredIdBytes}), or `InvalidOptionError` naming `option`.
 */
export function checkStoredKey(
  option: string,
  value: unknown,
  maxBytes = maxStoredIdBytes,
): string {
  const text = checkStoredName(option, value)
  if (exceedsBytes(text, maxBytes)) {
    throw new InvalidOptionError(
      option,
      `a non-empty string of at most ${maxBytes} UTF-8 bytes without NUL characters or lone surrogates`,
      text,
    )
  }
  return text
}

/**
 * The JSON text of `value`. When JSON cannot hold it (a BigInt or a cycle, which make
 * `JSON.stringify` throw; undefined, a function or a symbol, which have no JSON text; NaN or
 * ±Infinity anywhere in it, which `JSON.stringify` writes as `null`, so another value than the
 * caller's would be stored), throws `InvalidOptionError` naming `option`, and for a non-finite
 * number also where in the value it is (`option.items[2].price`), instead of a bare TypeError,
 * a NULL for the database to refuse, or a silent `null`.
 */
export function jsonTextOf(
  option: string,
  value: unknown,
  expected = 'a JSON-serializable value',
): string {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch (error) {
    throw new InvalidOptionError(option, `${expected} (${String(error)})`, value)
  }
  if (text === undefined) throw new InvalidOptionError(option, expected, value)
  // Text without `null` holds no non-finite number, so the common case pays one substring
  // search; otherwise a second pass looks for one.
  if (text.includes('null')) {
    const found = nonFiniteIn(option, value)
    if (found !== undefined) {
      throw new InvalidOptionError(
        option,
        `${expected} (${String(found.number)} at ${found.path} has no JSON form: it would be stored as null)`,
        value,
      )
    }
  }
  return text
}

/**
 * The first NaN or ±Infinity that `JSON.stringify(value)` would write as `null`, with its path
 * from `root`. A replacer sees values after `toJSON`, as the text does, so a `toJSON` that hides
 * one is no error; `this` in the replacer is the object holding the value, whose path was
 * recorded when it was itself visited (none for the wrapper JSON.stringify puts around the root).
 */
function nonFiniteIn(root: string, value: unknown): { number: number; path: string } | undefined {
  const paths = new WeakMap<object, string>()
  let found: { number: number; path: string } | undefined
  JSON.stringify(value, function (this: object, key: string, v: unknown) {
    if (found !== undefined) return v
    const holder = paths.get(this)
    const path =
      holder === undefined
        ? root
        : Array.isArray(this)
          ? `${holder}[${key}]`
          : /^[A-Za-z_$][\w$]*$/.test(key)
            ? `${holder}.${key}`
            : `${holder}[${JSON.stringify(key)}]`
    const n = v instanceof Number ? v.valueOf() : v
    if (typeof n === 'number' && !Number.isFinite(n)) found = { number: n, path }
    else if (typeof v === 'object' && v !== null) paths.set(v, path)
    return v
  })
  return found
}
