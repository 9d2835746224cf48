import { createHistogram } from 'node:perf_hooks'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CallLog, isFastFailure, peakInWindow, percentile } from '../../src/demo/policies/index.js'
import { eventLoopDelayP99Ms } from '../../src/demo/policies/measure.js'
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  IsolatedCircuitError,
  TimeoutError,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

describe('percentile', () => {
  it('is the nearest-rank percentile', () => {
    expect(percentile([], 50)).toBe(0)
    expect(percentile([5, 1, 3, 2, 4], 50)).toBe(3)
    expect(percentile([5, 1, 3, 2, 4], 100)).toBe(5)
    expect(percentile([5, 1, 3, 2, 4], 0)).toBe(1)
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i)
    expect(percentile(hundred, 99)).toBe(99)
  })

  it('has at least p% of the values at or below it and fewer strictly below', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 1_000 }), { minLength: 1, maxLength: 200 }),
        fc.integer({ min: 1, max: 100 }),
        (values, p) => {
          const result = percentile(values, p)
          const rank = Math.ceil((p / 100) * values.length)
          expect(values).toContain(result)
          expect(values.filter((v) => v <= result).length).toBeGreaterThanOrEqual(rank)
          expect(values.filter((v) => v < result).length).toBeLessThan(rank)
        },
      ),
    )
  })
})

describe('peakInWindow', () => {
  it('counts the busiest window [t, t + w)', () => {
    expect(peakInWindow([], 10)).toBe(0)
    expect(peakInWindow([0, 1, 2, 50, 51], 10)).toBe(3)
    expect(peakInWindow([0, 10, 20], 10)).toBe(1)
    expect(peakInWindow([20, 0, 10, 9], 10)).toBe(2)
  })

  it('agrees with counting every window that starts at an arrival', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 500 }), { maxLength: 200 }),
        fc.integer({ min: 1, max: 100 }),
        (times, windowMs) => {
          const brute = Math.max(
            0,
            ...times.map((start) => times.filter((t) => t >= start && t < start + windowMs).length),
          )
          expect(peakInWindow(times, windowMs)).toBe(brute)
        },
      ),
    )
  })
})

describe('CallLog', () => {
  it('counts outcomes, tells fast failures from slow ones, and times every call', async () => {
    const clock = new ManualClock()
    const log = new CallLog(clock)
    const taking = (ms: number, error?: unknown) => async () => {
      await clock.advance(ms)
      if (error !== undefined) throw error
    }
    await log.time(taking(10))
    await log.time(taking(20))
    await log.time(taking(0, new BrokenCircuitError(100)))
    await log.time(taking(0, new BulkheadRejectedError('full', 1, 0)))
    await log.time(taking(30, new BulkheadRejectedError('queueTimeout', 1, 1)))
    await log.time(taking(40, new TimeoutError(40)))
    expect(log.summary()).toEqual({
      calls: 6,
      successes: 2,
      failures: 4,
      fastFailures: 2,
      p50Ms: 10,
      p99Ms: 40,
    })
  })

  it('calls only policy refusals that cost no wait fast', () => {
    expect(isFastFailure(new BrokenCircuitError(0))).toBe(true)
    expect(isFastFailure(new IsolatedCircuitError())).toBe(true)
    expect(isFastFailure(new BulkheadRejectedError('full', 1, 0))).toBe(true)
    expect(isFastFailure(new BulkheadRejectedError('queueTimeout', 1, 0))).toBe(false)
    expect(isFastFailure(new TimeoutError(10))).toBe(false)
    expect(isFastFailure(new Error('boom'))).toBe(false)
  })
})

describe('eventLoopDelayP99Ms', () => {
  // monitorEventLoopDelay records the time between two of its timer's runs, its resolution
  // included: an idle loop sampled every 10 ms records about 10 ms, a loop 25 ms late 35 ms.
  const sampled = (intervalsMs: readonly number[]) => {
    const histogram = createHistogram()
    for (const ms of intervalsMs) histogram.record(Math.round(ms * 1e6))
    return histogram
  }

  it('is the delay beyond the sampling interval, not the interval itself', () => {
    expect(eventLoopDelayP99Ms(sampled(Array(100).fill(10)), 10)).toBe(0)
    expect(eventLoopDelayP99Ms(sampled([...Array(98).fill(10), 35, 35]), 10)).toBe(25)
  })

  it('is 0 for a timer that ran a little early, and with no samples', () => {
    expect(eventLoopDelayP99Ms(sampled(Array(10).fill(9.2)), 10)).toBe(0)
    expect(eventLoopDelayP99Ms(createHistogram(), 10)).toBe(0)
  })
})
