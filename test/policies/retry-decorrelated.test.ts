import { describe, expect, it } from 'vitest'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryOptions, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

// Decorrelated jitter keeps state between retries (the previous delay), which the other jitter
// kinds do not; these tests pin down how a server's Retry-After hint meets that state.

/** A 503 carrying the hint the webhook and HTTP adapters attach (`retryAfterMs`). */
const hinted = (retryAfterMs?: number) =>
  Object.assign(new Error('HTTP 503'), {
    status: 503,
    ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
  })

/** Runs a call that fails with `hints[i]` on attempt i + 1, and returns the retry delays. */
async function delaysOf(
  options: RetryOptions,
  hints: ReadonlyArray<number | undefined>,
  wrap: (policy: ReturnType<typeof retry>, clock: ManualClock) => Policy = (p) => p,
) {
  const clock = new ManualClock()
  const policy = retry({ clock, maxAttempts: hints.length, ...options })
  const delays: number[] = []
  const starts: number[] = []
  policy.events.on((event) => {
    if (event.type === 'retry') delays.push(event.delayMs)
  })
  const run = wrap(policy, clock)
    .execute(({ attempt }) => {
      starts.push(clock.now())
      throw hinted(hints[attempt - 1])
    })
    .catch((error: unknown) => error)
  await clock.advance(0)
  await clock.runAll()
  await run
  return { delays, starts }
}

describe('retry with decorrelated jitter and Retry-After', () => {
  const options: RetryOptions = {
    jitter: 'decorrelated',
    baseDelayMs: 100,
    maxDelayMs: 10_000,
    random: () => 0.5,
  }

  for (const [name, wrap] of [
    ['alone', undefined],
    [
      'in a fused pipeline',
      (p: Policy, clock: ManualClock) => pipeline(p, timeout(60_000, { clock })),
    ],
  ] as const) {
    it(`waits at least the hint, as the other jitter kinds do (${name})`, async () => {
      // random 0.5: the first decorrelated draw is 100 + (300 - 100) / 2 = 200.
      const { delays, starts } = await delaysOf(options, [5_000, undefined], wrap)
      expect(delays).toEqual([5_000])
      expect(starts).toEqual([0, 5_000])
      for (const jitter of ['full', 'equal', 'none'] as const) {
        const other = await delaysOf({ ...options, jitter }, [5_000, undefined], wrap)
        expect(other.delays).toEqual([5_000])
      }
    })

    it(`caps the hint at maxRetryAfterMs, as the other jitter kinds do (${name})`, async () => {
      const capped = { ...options, maxRetryAfterMs: 2_000 }
      const { delays } = await delaysOf(capped, [3_600_000, undefined], wrap)
      expect(delays).toEqual([2_000])
      for (const jitter of ['full', 'equal', 'none'] as const) {
        const other = await delaysOf({ ...capped, jitter }, [3_600_000, undefined], wrap)
        expect(other.delays).toEqual([2_000])
      }
    })
  }

  it('keeps the decorrelated sequence on its own draws after a hinted wait', async () => {
    // random 0.5 draws base + (3 * previous - base) / 2: 200, then 350 after 200, 575 after
    // 350. A 5 s hint on the first failure makes that wait 5 s, but the next draw continues
    // from 200 (giving 350), not from the 5 s wait (which would give 7_550).
    const { delays } = await delaysOf(options, [5_000, undefined, undefined, undefined])
    expect(delays).toEqual([5_000, 350, 575])
  })

  it('a hint shorter than the draw leaves the draw and the sequence alone', async () => {
    const { delays } = await delaysOf(options, [50, 50, 50, undefined])
    expect(delays).toEqual([200, 350, 575])
  })
})
