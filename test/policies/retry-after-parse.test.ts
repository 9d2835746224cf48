// Retry-After is delay-seconds (digits) or an HTTP-date (RFC 9110 §10.2.3); anything else is
// invalid and reads as no hint at all, not as "retry at once".
import { describe, expect, it } from 'vitest'
import { parseRetryAfter } from '../../src/policies/classify.js'

const now = Date.parse('Sun, 06 Nov 1994 08:49:00 GMT')

describe('parseRetryAfter', () => {
  it.each([
    ['120', 120_000],
    [' 7 ', 7_000],
    ['0', 0],
    ['Sun, 06 Nov 1994 08:49:37 GMT', 37_000],
    ['Sunday, 06-Nov-94 08:49:37 GMT', 37_000],
    ['Sun Nov  6 08:49:37 1994', 37_000],
    ['Sun, 06 Nov 1994 08:48:00 GMT', 0],
  ])('reads %j as %d ms', (value, ms) => {
    expect(parseRetryAfter(value, now)).toBe(ms)
  })

  it.each(['-5', '1.5', '+3', 'abc 7', '7 seconds', '1e3', 'soon', '06 Nov 1994', ''])(
    'reads %j as no hint',
    (value) => {
      expect(parseRetryAfter(value, now)).toBeUndefined()
    },
  )
})
