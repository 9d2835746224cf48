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

  it('gives up as timeout, blaming no caller, when the timeout ends an attempt', async () => {
    for (const honour of ['with the reason', 'with its own error'] as const) {
      const clock = new ManualClock(0)
      const retrying = retry({ clock, maxAttempts: 5, baseDelayMs: 100 })
      const events: RetryEvent[] = []
      retrying.events.on((e) => events.push(e))
      const policies = [timeout(300, { clock }), retrying]
      const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
      const ownError = new Error('gave up')
      let settled: unknown
      void policy
        .execute(
          (ctx) =>
            new Promise((_resolve, reject) => {
              ctx.signal.addEventListener('abort', () =>
                reject(honour === 'with the reason' ? ctx.signal.reason : ownError),
              )
            }),
        )
        .catch((error: unknown) => {
          settled = error
        })
      await flushJobs()
      await clock.advance(300)
      expect(settled).toMatchObject({ code: 'TIMEOUT', timeoutMs: 300 })
      // The attempt's own failure, as the cooperative timeout reports any: not an AbortedError
      // saying the caller aborted.
      const cause = (settled as Error).cause
      if (honour === 'with the reason') expect(cause).toBeUndefined()
      else expect(cause).toBe(ownError)
      expect(events).toEqual([
        {
          type: 'giveUp',
          attempt: 1,
          reason: 'timeout',
          error: honour === 'with the reason' ? settled : ownError,
        },
      ])
    }
  })
})
