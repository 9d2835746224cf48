// A timeout around a bulkhead (the per-try timeout of the recommended stack) that ran out while
// its call waited in the bulkhead's queue was reported as a TimeoutError caused by an
// AbortedError "The operation was aborted by the caller": the queue took the timeout's abort for
// a cancellation by the caller. It is not one (as for a retry's backoff sleep): the queued call
// now rejects with the timeout's own error, which the timeout reports as it is.
import { describe, expect, it } from 'vitest'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { Opaque } from './opaque-policy.js'

function hog(limiter: Policy): () => Promise<unknown> {
  let release!: () => void
  const running = limiter.execute(() => new Promise<void>((resolve) => (release = resolve)))
  return () => {
    release()
    return running
  }
}

describe.each([
  ['fused', false],
  ['unfused', true],
])('a timeout around a queued bulkhead call (%s)', (_name, opaque) => {
  for (const mode of ['cooperative', 'hard'] as const) {
    it(`${mode}: rejects with the timeout's own TimeoutError, no AbortedError`, async () => {
      const clock = new ManualClock(0)
      const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
      const policies = [timeout(100, { clock, mode }), limiter]
      const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
      const release = hog(limiter)
      let ran = false
      let settled: unknown
      void policy
        .execute(() => {
          ran = true
        })
        .catch((error: unknown) => {
          settled = error
        })
      await flushJobs()
      expect(limiter.queued).toBe(1)
      await clock.advance(100)
      expect(settled).toMatchObject({ code: 'TIMEOUT', timeoutMs: 100 })
      expect((settled as Error).cause).toBeUndefined()
      expect(limiter.queued).toBe(0)
      await release()
      expect(ran).toBe(false)
      expect(limiter.running).toBe(0)
    })
  }

  it('in the recommended stack: the call fails with the per-try TimeoutError as it is', async () => {
    const clock = new ManualClock(0)
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
    const policies = [
      retry({ maxAttempts: 1, clock }),
      circuitBreaker({ window: { kind: 'consecutive', failures: 5 }, clock }),
      timeout(100, { clock }),
      limiter,
    ]
    const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
    const release = hog(limiter)
    let settled: unknown
    void policy
      .execute(() => 'never')
      .catch((error: unknown) => {
        settled = error
      })
    await clock.advance(100)
    expect(settled).toMatchObject({ code: 'TIMEOUT' })
    expect((settled as Error).cause).toBeUndefined()
    await release()
  })
})

describe('a bulkhead queue and a signal a timeout hands on', () => {
  it("rejects with the timeout's error, which the timeout reports as it is", async () => {
    const clock = new ManualClock(0)
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
    const release = hog(limiter)
    let settled: unknown
    void timeout(100, { clock })
      .execute(({ signal }) => limiter.execute(() => 'never', signal))
      .catch((error: unknown) => {
        settled = error
      })
    await clock.advance(100)
    expect(settled).toMatchObject({ code: 'TIMEOUT' })
    expect((settled as Error).cause).toBeUndefined()
    expect(limiter.queued).toBe(0)
    await release()
  })

  it('still blames the caller for its own abort, and reports a deadline as the deadline', async () => {
    const clock = new ManualClock(0)
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
    const release = hog(limiter)
    const controller = new AbortController()
    const aborted = limiter.execute(() => 'never', controller.signal).catch((e: unknown) => e)
    controller.abort('no longer needed')
    expect(await aborted).toMatchObject({ code: 'ABORTED', cause: 'no longer needed' })
    const late = withDeadline(
      100,
      () => limiter.execute(() => 'never', currentDeadline()?.signal),
      { clock },
    ).catch((e: unknown) => e)
    await clock.advance(100)
    expect(await late).toMatchObject({ code: 'DEADLINE_EXCEEDED', started: false })
    await release()
  })
})
