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

// An HTTP-date is always GMT (RFC 9110 §5.6.7), asctime's included although it names no zone.
// Date.parse reads a date without a zone in the process's local time zone, so on a host not
// set to UTC an asctime Retry-After was off by the zone's offset: "retry at once" east of
// Greenwich, a wait of hours (capped to maxRetryAfterMs) west of it.
describe('parseRetryAfter on a host not set to UTC', () => {
  const zones = ['America/Los_Angeles', 'Asia/Tokyo']
  const forms = [
    'Sun, 06 Nov 1994 08:49:37 GMT',
    'Sunday, 06-Nov-94 08:49:37 GMT',
    'Sun Nov  6 08:49:37 1994',
  ]
  for (const zone of zones) {
    it.each(forms)(`reads %j as 37000 ms in ${zone}`, (value) => {
      const saved = process.env.TZ
      process.env.TZ = zone
      try {
        expect(parseRetryAfter(value, now)).toBe(37_000)
      } finally {
        if (saved === undefined) delete process.env.TZ
        else process.env.TZ = saved
      }
    })
  }
})

// Only the three HTTP-date forms are dates (the docs say so): other strings that Date.parse
// happens to accept after a day name read as a date in the past ("retry at once") or years
// ahead, instead of as no hint.
describe('parseRetryAfter refuses what is not an HTTP-date', () => {
  it.each([
    'Mon 5',
    'Sun, 06 Nov 1994',
    'Sun, 06 Nov 1994 08:49:37',
    'Sun, 06 Nov 1994 08:49:37 PST',
    'Sun, 06 Nov 1994 08:49:37 +0200',
    'Sun, 31 Feb 1994 08:49:37 GMT',
    'Sun, 06 Nov 1994 25:49:37 GMT',
    'Sunday 06 Nov 1994 08:49:37 GMT',
  ])('reads %j as no hint', (value) => {
    expect(parseRetryAfter(value, now)).toBeUndefined()
  })

  // RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is the latest past year with
  // those digits.
  it('reads an RFC 850 two-digit year as RFC 9110 says', () => {
    const in2026 = Date.parse('Fri, 04 Dec 2026 21:00:00 GMT')
    expect(parseRetryAfter('Friday, 04-Dec-26 21:00:05 GMT', in2026)).toBe(5_000)
    // 2080 would be 54 years ahead: 1980, long past.
    expect(parseRetryAfter('Wednesday, 04-Dec-80 21:00:05 GMT', in2026)).toBe(0)
  })
})
