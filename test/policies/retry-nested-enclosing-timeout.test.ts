// A retry never starts a backoff sleep that would end past the end of any timeout around it,
// however deep it sits: behind another retry (whose contexts must pass the timeout on), or
// inside several timeouts (the earliest end bounds it, not the innermost timeout's). Found by
// a differential test of fused and unfused pipelines: a retry inside a retry slept into the
// outer timeout on the promise-based path, and under timeout(1), timeout(100) a retry slept
// past the outer 1 ms on both paths; each call ended in the timeout's TimeoutError at 1 ms in
// place of the last attempt's own error at once.
import { describe, expect, it } from 'vitest'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryEvent, type RetryPolicy, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { Opaque } from './opaque-policy.js'

const reset = () => Object.assign(new Error('reset'), { code: 'ECONNRESET' })

type Shape = (clock: ManualClock) => { policies: Policy[]; retries: RetryPolicy[] }

const shapes: ReadonlyArray<[string, Shape]> = [
  [
    'timeout, retry, retry',
    (clock) => {
      const outer = retry({ maxAttempts: 2, baseDelayMs: 50, jitter: 'none', clock })
      const inner = retry({ maxAttempts: 3, baseDelayMs: 2, jitter: 'none', clock })
      return { policies: [timeout(1, { clock }), outer, inner], retries: [outer, inner] }
    },
  ],
  [
    'timeout, timeout(longer), retry',
    (clock) => {
      const inner = retry({ maxAttempts: 3, baseDelayMs: 2, jitter: 'none', clock })
      return { policies: [timeout(1, { clock }), timeout(100, { clock }), inner], retries: [inner] }
    },
  ],
  [
    'hard timeout, retry, timeout(longer), retry',
    (clock) => {
      const outer = retry({ maxAttempts: 2, baseDelayMs: 50, jitter: 'none', clock })
      const inner = retry({ maxAttempts: 3, baseDelayMs: 2, jitter: 'none', clock })
      return {
        policies: [timeout(1, { clock, mode: 'hard' }), outer, timeout(100, { clock }), inner],
        retries: [outer, inner],
      }
    },
  ],
]

describe.each([
  ['fused', false, false],
  ['fused, with a caller signal', false, true],
  ['unfused', true, false],
  ['unfused, with a caller signal', true, true],
])('a retry under an enclosing timeout it is nested in (%s)', (_name, opaque, withSignal) => {
  it.each(shapes)('%s: fails at once with the attempt error', async (_shape, shape) => {
    const clock = new ManualClock(0)
    const { policies, retries } = shape(clock)
    const events: RetryEvent[] = []
    for (const r of retries) r.events.on((e) => events.push(e))
    const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
    let calls = 0
    let settled: { error: unknown; atMs: number } | undefined
    void policy
      .execute(
        () => {
          calls++
          return Promise.reject(reset())
        },
        withSignal ? new AbortController().signal : undefined,
      )
      .catch((error: unknown) => {
        settled = { error, atMs: clock.now() }
      })
    await flushJobs()
    // Every sleep (2 ms inside, 50 ms outside) would end past the 1 ms timeout: no retry.
    expect(settled).toMatchObject({ error: { code: 'ECONNRESET' }, atMs: 0 })
    expect(calls).toBe(1)
    expect(events.filter((e) => e.type === 'retry')).toEqual([])
    expect(events.map((e) => e.type === 'giveUp' && e.reason)).toEqual(retries.map(() => 'timeout'))
    await clock.advance(10)
    expect(clock.pendingTimers).toBe(0)
  })

  it('still retries when the sleep ends before the earliest timeout', async () => {
    const clock = new ManualClock(0)
    const outer = retry({ maxAttempts: 2, baseDelayMs: 50, jitter: 'none', clock })
    const inner = retry({ maxAttempts: 3, baseDelayMs: 2, jitter: 'none', clock })
    const policies = [timeout(5, { clock }), outer, timeout(100, { clock }), inner]
    const policy = opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
    const at: number[] = []
    let settled: { error: unknown; atMs: number } | undefined
    void policy
      .execute(
        () => {
          at.push(clock.now())
          return Promise.reject(reset())
        },
        withSignal ? new AbortController().signal : undefined,
      )
      .catch((error: unknown) => {
        settled = { error, atMs: clock.now() }
      })
    await clock.advance(10)
    // Inner: 2 ms (ends at 2 < 5), then 4 ms (would end at 6 >= 5): given up at 2 ms; the
    // outer retry's 50 ms does not fit either.
    expect(at).toEqual([0, 2])
    expect(settled).toMatchObject({ error: { code: 'ECONNRESET' }, atMs: 2 })
    expect(clock.pendingTimers).toBe(0)
  })
})
