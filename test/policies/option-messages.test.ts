// Refusals that said the wrong thing about what is accepted: a failure-rate threshold outside
// [0, 1] was told "expected a number in [0, 1]" although 0 is refused too, and a bulkhead was
// built with a queue timeout that could never apply (maxQueued defaults to 0: no call waits).
import { describe, expect, it } from 'vitest'
import { bulkhead, circuitBreaker, InvalidOptionError } from '../../src/index.js'
import { createBulkheads } from '../../src/policies/bulkhead-registry.js'

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

describe('a bulkhead refuses a queue timeout without a queue', () => {
  it('refuses queueTimeoutMs while maxQueued is 0, given or by default', () => {
    for (const options of [
      { maxConcurrent: 1, queueTimeoutMs: 100 },
      { maxConcurrent: 1, maxQueued: 0, queueTimeoutMs: 100 },
    ]) {
      const error = refusal(() => bulkhead(options))
      expect(error.option).toBe('bulkhead.queueTimeoutMs')
      expect(error.message).toContain('maxQueued > 0')
      expect(error.value).toBe(100)
    }
    // A queue makes it apply; without a queue timeout nothing is refused.
    expect(bulkhead({ maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 100 }).queued).toBe(0)
    expect(bulkhead({ maxConcurrent: 1 }).queued).toBe(0)
  })

  it('names the bulkhead of a registry the refusal is about', () => {
    const error = refusal(() =>
      createBulkheads({ search: { maxConcurrent: 1, queueTimeoutMs: 50 } }),
    )
    expect(error.option).toBe('bulkheads.search.queueTimeoutMs')
  })
})
