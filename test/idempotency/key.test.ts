import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  checkOperationKey,
  IdempotencyInProgressError,
  IdempotencyKeyInvalidError,
  IdempotencyKeyMissingError,
  IdempotencyMismatchError,
  parseIdempotencyKey,
  problemDetailsOf,
  problemResponse,
} from '../../src/idempotency/index.js'

function ruleOf(value: string, repeated?: boolean): string | undefined {
  try {
    parseIdempotencyKey(value, repeated)
    return undefined
  } catch (error) {
    expect(error).toBeInstanceOf(IdempotencyKeyInvalidError)
    return (error as IdempotencyKeyInvalidError).rule
  }
}

describe('parseIdempotencyKey', () => {
  it('accepts a bare token and an RFC 8941 sf-string, trimming spaces and tabs', () => {
    expect(parseIdempotencyKey('8e03978e-40d5-43e8-bc93-6894a57f9324')).toBe(
      '8e03978e-40d5-43e8-bc93-6894a57f9324',
    )
    expect(parseIdempotencyKey('"8e03978e-40d5-43e8"')).toBe('8e03978e-40d5-43e8')
    expect(parseIdempotencyKey(' \t"abc" ')).toBe('abc')
    expect(parseIdempotencyKey('order-42:charge')).toBe('order-42:charge')
    expect(parseIdempotencyKey('aGVsbG8+/w==')).toBe('aGVsbG8+/w==')
    expect(parseIdempotencyKey('a_b.c~d')).toBe('a_b.c~d')
  })

  it('accepts exactly 255 characters and refuses 256 with the too-long rule', () => {
    expect(parseIdempotencyKey('k'.repeat(255))).toHaveLength(255)
    expect(parseIdempotencyKey(`"${'k'.repeat(255)}"`)).toHaveLength(255)
    expect(ruleOf('k'.repeat(256))).toBe('too-long')
    expect(ruleOf(`"${'k'.repeat(256)}"`)).toBe('too-long')
  })

  it('refuses empty keys, bad characters and malformed quoted strings, naming the rule', () => {
    expect(ruleOf('')).toBe('empty')
    expect(ruleOf('""')).toBe('empty')
    expect(ruleOf('a b')).toBe('characters')
    expect(ruleOf('a,b')).toBe('characters')
    expect(ruleOf('caf\u00e9')).toBe('characters')
    expect(ruleOf('"a\\"b"')).toBe('characters')
    expect(ruleOf('"abc')).toBe('syntax')
    expect(ruleOf('"')).toBe('syntax')
    expect(ruleOf('"a"b"')).toBe('syntax')
    expect(ruleOf('"caf\u00e9"')).toBe('syntax')
  })

  // An sf-string ends at its first unescaped quote: a value going on after it (an RFC 8941
  // parameter, `"k1";v=1`) was told its quoted string "does not end", which it does.
  it('says a quoted key has text after its closing quote rather than that the quote does not end', () => {
    for (const value of ['"k1";v=1', '"k1" x', '"k1"x"', '"a\\\\"b']) {
      expect(ruleOf(value)).toBe('syntax')
      expect(() => parseIdempotencyKey(value)).toThrow(/text after its closing quote/)
    }
    expect(() => parseIdempotencyKey('"abc')).toThrow(/starts a quoted string that does not end/)
    expect(() => parseIdempotencyKey('"ab\\"')).not.toThrow(/text after/)
  })

  it('refuses a key sent on two header lines with the repeated rule, exactly when told', () => {
    // Folded by Node and by Fetch Headers into one value joined with ", ".
    expect(ruleOf('abc, abd')).toBe('repeated')
    expect(ruleOf('"abc", "abd"')).toBe('repeated')
    expect(() => parseIdempotencyKey('abc, abd')).toThrow(/sent more than once/)
    // The caller that counted the header lines decides: two lines, whatever they hold...
    expect(ruleOf('abc', true)).toBe('repeated')
    // ...or one line whose value has a comma, which is then only a bad character.
    expect(ruleOf('abc, abd', false)).toBe('characters')
    expect(ruleOf('abc,abd', undefined)).toBe('characters')
  })

  it('accepts every key of 1..255 allowed characters and returns it unchanged, bare or quoted', () => {
    const allowed = 'ABCXYZabcxyz0189-_.:~+/='.split('')
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom(...allowed), { minLength: 1, maxLength: 255 }),
        (chars) => {
          const key = chars.join('')
          expect(parseIdempotencyKey(key)).toBe(key)
          expect(parseIdempotencyKey(`"${key}"`)).toBe(key)
        },
      ),
    )
  })

  it('refuses any key containing a character outside the allowed set', () => {
    fc.assert(
      fc.property(
        fc.string({ maxLength: 20 }),
        fc.string({ minLength: 1, maxLength: 1 }).filter((c) => !/[A-Za-z0-9\-_.:~+/=]/.test(c)),
        fc.string({ maxLength: 20 }),
        (before, bad, after) => {
          expect(() => parseIdempotencyKey(`k${before}${bad}${after}k`)).toThrow(
            IdempotencyKeyInvalidError,
          )
        },
      ),
    )
  })
})

describe('checkOperationKey', () => {
  it('allows any printable key of 1..255 characters and refuses the rest', () => {
    expect(checkOperationKey('saga 7: reserve inventory')).toBe('saga 7: reserve inventory')
    expect(() => checkOperationKey('')).toThrow(IdempotencyKeyInvalidError)
    expect(() => checkOperationKey('x'.repeat(256))).toThrow(/at most 255/)
    expect(() => checkOperationKey('a\nb')).toThrow(/control characters/)
    expect(() => checkOperationKey(42)).toThrow(IdempotencyKeyInvalidError)
  })

  // The documented rule is "no control characters", but only C0 and DEL were refused: a C1
  // control (U+0085, next line, among them) passed. The line and paragraph separators are not
  // controls, but end a line as \n does (in logs, in JavaScript source), so they go with them.
  it.each([
    ['U+0080', '\u0080'],
    ['U+0085 (next line)', '\u0085'],
    ['U+009F', '\u009f'],
    ['U+2028 (line separator)', '\u2028'],
    ['U+2029 (paragraph separator)', '\u2029'],
    ['U+0000', '\u0000'],
    ['U+007F', '\u007f'],
  ])('refuses a key holding %s, with the characters rule', (_name, character) => {
    let error: unknown
    try {
      checkOperationKey(`order${character}42`)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(IdempotencyKeyInvalidError)
    expect(error).toMatchObject({ code: 'IDEMPOTENCY_KEY_INVALID', rule: 'characters' })
    expect((error as Error).message).toMatch(/control characters/)
  })

  it.each([
    ['U+00A0 (no-break space), right after the C1 range', 'a\u00a0b'],
    ['U+00FF', 'a\u00ffb'],
    ['letters beyond ASCII', 'ключ-ü'],
    ['an emoji', 'k\u{1f600}'],
    ['U+2027 and U+202A, either side of the separators', 'a\u2027\u202ab'],
    ['a byte-order mark, which is not a control', '\ufeffk'],
  ])('takes a key holding %s', (_name, key) => {
    expect(checkOperationKey(key)).toBe(key)
  })
})

describe('problem+json', () => {
  it('names the rule broken in type, title, detail, status and code', () => {
    const missing = problemDetailsOf(new IdempotencyKeyMissingError())
    expect(missing).toEqual({
      type: 'https://breakwater.dev/problems/idempotency-key-missing',
      title: 'Idempotency-Key header missing',
      status: 400,
      detail: 'The Idempotency-Key header is required for this request',
      code: 'IDEMPOTENCY_KEY_MISSING',
    })
    const long = problemDetailsOf(new IdempotencyKeyInvalidError('too-long', 'too long'))
    expect(long.type).toBe('https://breakwater.dev/problems/idempotency-key-too-long')
    expect(long.rule).toBe('too-long')
    const bad = problemDetailsOf(new IdempotencyKeyInvalidError('characters', 'bad'), 'urn:x:')
    expect(bad.type).toBe('urn:x:idempotency-key-malformed')
    const twice = problemDetailsOf(new IdempotencyKeyInvalidError('repeated', 'twice'))
    expect(twice).toMatchObject({
      type: 'https://breakwater.dev/problems/idempotency-key-repeated',
      title: 'Idempotency-Key sent more than once',
      status: 400,
      code: 'IDEMPOTENCY_KEY_INVALID',
      rule: 'repeated',
    })
    expect(problemDetailsOf(new IdempotencyMismatchError('k')).status).toBe(422)
  })

  it('sends 409 with Retry-After in whole seconds and the problem media type', () => {
    const response = problemResponse(new IdempotencyInProgressError('k', 'in-flight', 1_500))
    expect(response.status).toBe(409)
    expect(response.headers['content-type']).toBe('application/problem+json')
    expect(response.headers['retry-after']).toBe('2')
    const body = JSON.parse(Buffer.from(response.body).toString('utf8'))
    expect(body).toMatchObject({
      type: 'https://breakwater.dev/problems/idempotency-key-in-progress',
      status: 409,
      code: 'IDEMPOTENCY_IN_PROGRESS',
    })
  })

  it('marks only the in-progress error retryable', () => {
    expect(new IdempotencyInProgressError('k', 'in-flight', 0).retryable).toBe(true)
    expect(new IdempotencyMismatchError('k').retryable).toBe(false)
    expect(new IdempotencyKeyMissingError().retryable).toBe(false)
  })
})
