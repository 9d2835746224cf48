// For model tests on a ManualClock: a promise that settles only after timers fire (a close or
// stop waiting for its work in hand) is settled by moving the clock, never by real waiting.

import { flushJobs, type ManualClock } from '../../src/testing/index.js'

/**
 * Moves `clock` forward in 50 ms steps (at most 200) until `promise` settles, then returns its
 * outcome. Fails, naming `what` and adding `describe()` (the model's trace), when it does not.
 */
export async function settleOnClock(
  clock: ManualClock,
  promise: Promise<unknown>,
  what: string,
  describe: () => string,
): Promise<void> {
  let settled = false
  promise.then(
    () => (settled = true),
    () => (settled = true),
  )
  await flushJobs()
  for (let i = 0; i < 200 && !settled; i++) await clock.advance(50)
  if (!settled) throw new Error(`${what} did not settle\n${describe()}`)
  await promise
}
