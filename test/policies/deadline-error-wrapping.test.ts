import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { DeadlineExceededError } from '../../src/policies/errors.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

// One deadline running out is one DeadlineExceededError: never one whose cause is another
// DeadlineExceededError. (fn's own error may carry the deadline as its reason: an AbortedError
// from a signal the deadline aborted; that is fn's, and stays in the chain.)
function wrapsDeadlineError(error: unknown): boolean {
  for (let e = error; e instanceof Error; e = e.cause) {
    if (isDeadlineError(e) && isDeadlineError(e.cause)) return true
  }
  return false
}

function isDeadlineError(error: unknown): boolean {
  return BreakwaterError.is(error) && error.code === 'DEADLINE_EXCEEDED'
}

describe('a deadline error is wrapped once', () => {
  it.each<[string, (clock: ManualClock) => Policy]>([
    ['timeout, timeout', (clock) => pipeline(timeout(1_000, { clock }), timeout(500, { clock }))],
    [
      'timeout, retry, breaker, timeout',
      (clock) =>
        pipeline(
          timeout(1_000, { clock }),
          retry({ clock }),
          circuitBreaker({ clock }),
          timeout(500, { clock }),
        ),
    ],
    [
      'timeout, bulkhead, timeout',
      (clock) =>
        pipeline(
          timeout(1_000, { clock }),
          bulkhead({ maxConcurrent: 1 }),
          timeout(400, { clock }),
        ),
    ],
  ])('when several timeouts are clamped to the same deadline (%s)', async (_, make) => {
    const clock = new ManualClock(0)
    const policy = make(clock)
    for (const honours of [true, false]) {
      const outcome = withDeadline(
        300,
        () =>
          policy.execute(async ({ signal }) => {
            await sleep(clock, 400, honours ? signal : undefined)
            throw new Error('late')
          }),
        { clock },
      ).catch((e: unknown) => e)
      await clock.advance(1_000)
      const error = await outcome
      expect(error).toBeInstanceOf(DeadlineExceededError)
      expect(wrapsDeadlineError(error)).toBe(false)
    }
  })

  it.each<[string, (clock: ManualClock) => Policy]>([
    ['timeout', (clock) => timeout(500, { clock })],
    ['breaker', (clock) => circuitBreaker({ clock })],
    ['bulkhead', () => bulkhead({ maxConcurrent: 1 })],
    ['retry', (clock) => retry({ clock })],
  ])('when the caller aborted with a deadline error before the call (%s)', async (_, make) => {
    const clock = new ManualClock(0)
    const controller = new AbortController()
    controller.abort(new DeadlineExceededError(0))
    const error = await make(clock)
      .execute(() => 'ran', controller.signal)
      .catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'DEADLINE_EXCEEDED', started: false, deadlineAtMs: 0 })
    expect(wrapsDeadlineError(error)).toBe(false)
  })
})
