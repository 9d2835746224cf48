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
