import { hasLoneSurrogate } from '../core/text.js'
import { IdempotencyKeyInvalidError } from './errors.js'

/** The longest idempotency key accepted, in characters. */
export const maxKeyLength = 255

// The allowed set covers UUIDs, ULIDs, base64 and base64url, and composed keys such as
// `order-42:charge`, while keeping out spaces, quotes, commas (two headers folded into one) and
// anything that would need escaping in a log line or a problem+json body.
const allowedKey = /^[A-Za-z0-9\-_.:~+/=]+$/

/**
 * Parses an `Idempotency-Key` header value: a bare token (`abc-123`) or, as the IETF httpapi
 * draft defines the field, an RFC 8941 sf-string (`"abc-123"`). Surrounding spaces and tabs are
 * ignored.
 *
 * The key must have 1 to 255 characters from `A-Z a-z 0-9 - _ . : ~ + / =`. A header sent on
 * more than one line is refused with the `repeated` rule: pass `repeated` when the framework
 * counted the lines (Node's `req.headersDistinct`); without it, a value containing `, ` (how
 * Node and Fetch's `Headers` join the lines) counts as repeated.
 *
 * @param headerValue - The header's value, its lines joined with `, ` if it had several.
 * @param repeated - Whether the header came on more than one line, when the caller knows.
 * @throws {@link IdempotencyKeyInvalidError} naming the rule broken.
 * @example
 * ```ts
 * parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"') // '8e03978e-40d5-...'
 * parseIdempotencyKey('a, b') // throws, rule 'repeated'
 * ```
 */
export function parseIdempotencyKey(headerValue: string, repeated?: boolean): string {
  // Checked first: two keys make no key, and "characters" would blame a comma the client never
  // sent. A comma is outside the allowed set, so guessing from ", " refuses no valid key.
  if (repeated ?? headerValue.includes(', ')) {
    throw new IdempotencyKeyInvalidError(
      'repeated',
      'The Idempotency-Key header was sent more than once; send one key per request',
    )
  }
  let key = hasOuterWhitespace(headerValue)
    ? headerValue.replace(/^[ \t]+|[ \t]+$/g, '')
    : headerValue
  if (key.startsWith('"')) {
    if (key.length < 2 || !key.endsWith('"') || /(^|[^\\])"/.test(key.slice(1, -1))) {
      throw quotedStringError(key)
    }
    const inner = key.slice(1, -1)
    // Escapes (\" and \\) are valid sf-string syntax, but the characters they produce are not in
    // the allowed set, so a quoted key containing one is rejected with the characters rule below.
    if (/[^\x20-\x7e]/.test(inner)) {
      throw new IdempotencyKeyInvalidError(
        'syntax',
        'The Idempotency-Key header is not a valid quoted string',
      )
    }
    key = inner.replace(/\\(["\\])/g, '$1')
  }
  checkKeyCharacters(key)
  return key
}

/**
 * The refusal of a quoted key whose string does not close at its last character: either it
 * never closes, or it closes earlier and text follows (an RFC 8941 parameter, `"k1";v=1`, which
 * the draft defines none of). Told apart only here, on the way to a 400: such a value was told
 * its quoted string "does not end", which sent the client looking for a missing quote.
 */
function quotedStringError(value: string): IdempotencyKeyInvalidError {
  for (let i = 1; i < value.length; i++) {
    const c = value[i]
    if (c === '\\') i++
    else if (c === '"') {
      return new IdempotencyKeyInvalidError(
        'syntax',
        'The Idempotency-Key header has text after its closing quote; send the quoted key alone, without parameters',
      )
    }
  }
  return new IdempotencyKeyInvalidError(
    'syntax',
    'The Idempotency-Key header starts a quoted string that does not end',
  )
}

// A space or tab at either end (what the trim removes); checked first because a key rarely has
// one, and the regular expression costs more than two character tests.
function hasOuterWhitespace(value: string): boolean {
  if (value.length === 0) return false
  const first = value.charCodeAt(0)
  const last = value.charCodeAt(value.length - 1)
  return first === 32 || first === 9 || last === 32 || last === 9
}

function checkKeyCharacters(key: string): void {
  if (key.length === 0) {
    throw new IdempotencyKeyInvalidError('empty', 'The Idempotency-Key header is empty')
  }
  if (key.length > maxKeyLength) {
    throw new IdempotencyKeyInvalidError(
      'too-long',
      `The idempotency key has ${key.length} characters; at most ${maxKeyLength} are allowed`,
    )
  }
  if (!allowedKey.test(key)) {
    throw new IdempotencyKeyInvalidError(
      'characters',
      'The idempotency key may only contain letters, digits and - _ . : ~ + / =',
    )
  }
}

// The control characters (C0, DEL and C1: Unicode's Cc) and the line and paragraph separators.
// C1 was let through (U+0085 is a line break, like U+2028 and U+2029): each ends a line of a
// log, as \n does. Format characters (a BOM, bidi marks) are left alone: they are not controls.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const controlOrLineBreak = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/

/**
 * Checks a key given to `idempotent()` (message ids, saga id + step name): 1 to 255 characters,
 * no control characters (U+0000 to U+001F, U+007F to U+009F) and no line or paragraph separator
 * (U+2028, U+2029). It is not a header value, so the header's character set does not apply.
 * Only new keys are checked: records stored under a key refused now are read and swept as any.
 *
 * @throws {@link IdempotencyKeyInvalidError} naming the rule broken.
 */
export function checkOperationKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) {
    throw new IdempotencyKeyInvalidError('empty', 'The idempotency key must be a non-empty string')
  }
  if (key.length > maxKeyLength) {
    throw new IdempotencyKeyInvalidError(
      'too-long',
      `The idempotency key has ${key.length} characters; at most ${maxKeyLength} are allowed`,
    )
  }
  if (controlOrLineBreak.test(key)) {
    throw new IdempotencyKeyInvalidError(
      'characters',
      'The idempotency key must not contain control characters (U+0000 to U+001F, U+007F to U+009F) or line separators (U+2028, U+2029)',
    )
  }
  // Half of a surrogate pair (a key cut from text at 255 UTF-16 units) has no UTF-8 form: the
  // database would store U+FFFD in its place, making different keys one key.
  if (hasLoneSurrogate(key)) {
    throw new IdempotencyKeyInvalidError(
      'characters',
      'The idempotency key must be well-formed Unicode (it contains half of a surrogate pair)',
    )
  }
  return key
}
