// Refusals that said the wrong thing about what is accepted: a failure-rate threshold outside
// [0, 1] was told "expected a number in [0, 1]" although 0 is refused too.
import { describe, expect, it } from 'vitest'
import { circuitBreaker, InvalidOptionError } from '../../src/index.js'

function refusal(make: () => unknown): InvalidOptionError {
  try {
    make()
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  throw new Error('accepted')
}

describe('a count or time window refuses a failureRateThreshold outside (0, 1]', () => {
  for (const kind of ['count', 'time'] as const) {
    it(`${kind} window: says (0, 1] whatever the value`, () => {
      for (const [value, shown] of [
        [0, '0'],
        [1.5, '1.5'],
        [-0.1, '-0.1'],
        [Number.NaN, 'NaN'],
        ['0.5', '"0.5"'],
      ] as const) {
        const error = refusal(() =>
          circuitBreaker({ window: { kind, failureRateThreshold: value as number } }),
        )
        expect(error.message).toBe(
          `circuitBreaker.window.failureRateThreshold: expected a number in (0, 1], got ${shown}`,
        )
      }
      expect(
        refusal(() =>
          circuitBreaker({ window: { kind, failureRateThreshold: null as unknown as number } }),
        ).message,
      ).toBe(
        'circuitBreaker.window.failureRateThreshold: expected a number in (0, 1] or left out, got null',
      )
      // The bounds that are accepted.
      circuitBreaker({ window: { kind, failureRateThreshold: 1 } }).dispose()
      circuitBreaker({ window: { kind, failureRateThreshold: Number.MIN_VALUE } }).dispose()
    })
  }
})
