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
 * The JSON text of `value`. When JSON cannot hold it (a BigInt or a cycle, which make
 * `JSON.stringify` throw; undefined, a function or a symbol, which have no JSON text), throws
 * `InvalidOptionError` naming `option`, instead of a bare TypeError or a NULL for the database
 * to refuse.
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
  return text
}
