// A retry inside a timeout (the HTTP client's overall timeout around its retries) must not sleep
// into the timeout's end: the backoff or Retry-After wait that outlasts what is left of the
// timeout would only end in a TimeoutError that hides the real failure. It gives up at once with
// the last failure, as it does before a deadline (withDeadline).
import { describe, expect, it } from 'vitest'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryEvent, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import { neverAbortedSignal, type Policy, type PolicyFunction } from '../../src/policies/types.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'

/** A policy breakwater does not know: in front of a pipeline it keeps the whole chain unfused. */
class Opaque implements Policy {
  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
  }
}

const busy = (retryAfterS: number) =>
  Object.assign(new Error('busy'), { status: 503, headers: { 'retry-after': String(retryAfterS) } })

describe.each([
  ['fused', false],
  ['unfused', true],
])('retry inside a timeout (%s)', (_name, opaque) => {
  it('gives up with the failure when the wait would outlast the timeout', async () => {
    const clock = new ManualClock(0)
    const retrying = retry({ clock, maxAttempts: 5, baseDelayMs: 100, maxRetryAfterMs: 10_000 })
    const events: RetryEvent[] = []
    retrying.events.on((e) => events.push(e))
    const policies = [timeout(1_500, { clock }), retrying]
    const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
    let calls = 0
    let settled: unknown
    void policy
      .execute(async () => {
        calls++
        // The first failure asks for 1 s (it fits), the second for 1 s more (it does not).
        throw busy(1)
      })
      .catch((error: unknown) => {
        settled = error
      })
    await flushJobs()
    expect(calls).toBe(1)
    await clock.advance(1_000)
    expect(calls).toBe(2)
    // At 1 000 ms, with 500 ms left: no third wait, the 503 at once.
    expect(settled).toMatchObject({ message: 'busy', status: 503 })
    expect(events.at(-1)).toMatchObject({ type: 'giveUp', attempt: 2 })
    expect(clock.pendingTimers).toBe(0)
  })
})
