// A bulkhead counts only what runs inside it. With a timeout inside the bulkhead
// (`pipeline(bulkhead(), timeout(ms))`, the reverse of the recommended order) and a function that
// ignores its signal, a hard timeout rejects at once and the bulkhead hands the slot on while the
// function still runs: more than maxConcurrent functions run. A cooperative timeout (the default)
// waits for the function to settle, so the slot is held; so is it with the bulkhead innermost
// whatever the mode. These tests pin what docs/policies.md and the TSDoc of bulkhead() and
// TimeoutMode say about the order.
import { describe, expect, it } from 'vitest'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { type TimeoutMode, timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { Opaque } from './opaque-policy.js'

/**
 * Starts a call through `policy` whose function ignores its signal, lets its timeout run out,
 * starts a second such call while the first still runs, and returns the most functions that
 * ran at once.
 */
async function mostAtOnce(clock: ManualClock, policy: Policy): Promise<number> {
  let running = 0
  let most = 0
  const gates: (() => void)[] = []
  const call = (): Promise<unknown> =>
    policy
      .execute(
        () =>
          new Promise<void>((resolve) => {
            running++
            most = Math.max(most, running)
            gates.push(() => {
              running--
              resolve()
            })
          }),
      )
      .catch((error: unknown) => error)
  const first = call()
  await flushJobs()
  await clock.advance(100)
  const second = call()
  await flushJobs()
  // Release what runs, twice: the second call may start only when the first settles.
  for (let round = 0; round < 2; round++) {
    for (const release of gates.splice(0)) release()
    await flushJobs()
  }
  await Promise.all([first, second])
  return most
}

describe.each([
  ['fused', false],
  ['unfused', true],
])('a bulkhead of one slot and a timeout (%s)', (_name, opaque) => {
  const build = (...policies: Policy[]): Policy =>
    opaque ? pipeline(new Opaque(), ...policies) : pipeline(...policies)

  it('timeout inside, hard: the slot is handed on while the timed-out function runs', async () => {
    const clock = new ManualClock(0)
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 1, clock })
    const policy = build(limiter, timeout(100, { mode: 'hard', clock }))
    expect(await mostAtOnce(clock, policy)).toBe(2)
  })

  for (const mode of ['cooperative', 'hard'] as const satisfies readonly TimeoutMode[]) {
    it(`timeout outside, ${mode}: one function at a time`, async () => {
      const clock = new ManualClock(0)
      const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 1, clock })
      const policy = build(timeout(100, { mode, clock }), limiter)
      expect(await mostAtOnce(clock, policy)).toBe(1)
    })
  }

  it('timeout inside, cooperative: the slot is held until the function settles', async () => {
    const clock = new ManualClock(0)
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 1, clock })
    const policy = build(limiter, timeout(100, { clock }))
    expect(await mostAtOnce(clock, policy)).toBe(1)
  })
})
