import { describe, expect, it } from 'vitest'
import { parseDuration } from '../../src/cli/duration.js'
import { UsageError } from '../../src/cli/usage.js'

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['45s', 45_000],
    ['90m', 5_400_000],
    ['12h', 43_200_000],
    ['30d', 2_592_000_000],
    ['0s', 0],
  ])('%s is %d ms', (text, ms) => {
    expect(parseDuration('--older-than', text)).toBe(ms)
  })

  it('refuses a duration too long to count in milliseconds', () => {
    expect(() => parseDuration('--older-than', '999999999999d')).toThrow(
      /^--older-than is too long/,
    )
    expect(parseDuration('--older-than', '999999999999s')).toBe(999_999_999_999_000)
  })

  it('says how many digits are allowed when there are more', () => {
    expect(() => parseDuration('--older-than', '9007199254740991ms')).toThrow(
      /^--older-than is too long \(at most 12 digits before the unit\)/,
    )
  })

  it.each(['30', 'd', '1.5d', '-3d', '3 d', '3D', '3w', ''])(
    '%j is refused, naming the flag',
    (text) => {
      expect(() => parseDuration('--older-than', text)).toThrow(UsageError)
      expect(() => parseDuration('--older-than', text)).toThrow(/^--older-than must be/)
    },
  )
})
