// A sweeper outlives the code that creates it: an application that bounds its startup with
// withDeadline must not have every sweep of the next hours run under that (long expired)
// deadline. The store is an in-memory fake that records what its sweep() sees.
import { describe, expect, it } from 'vitest'
import { createSweeper, type IdempotencyStore } from '../../src/idempotency/index.js'
import { currentDeadline, type Deadline, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'

describe('sweeper context', () => {
  it('sweeps outside the deadline createSweeper was called under', async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const seen: Array<Deadline | undefined> = []
    const store = {
      async sweep() {
        seen.push(currentDeadline())
        return 0
      },
    } as unknown as IdempotencyStore
    const sweeper = await withDeadline(
      1_000,
      async () => createSweeper({ store, clock, intervalMs: 5_000 }),
      { clock },
    )
    try {
      await clock.advance(5_000)
      await clock.advance(5_000)
      expect(seen).toEqual([undefined, undefined])
    } finally {
      await sweeper.close()
    }
  })

  it("sweepNow() is the caller's work and sees the caller's deadline", async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const seen: Array<number | undefined> = []
    const store = {
      async sweep() {
        seen.push(currentDeadline()?.atMs)
        return 0
      },
    } as unknown as IdempotencyStore
    const sweeper = createSweeper({ store, clock, intervalMs: 5_000 })
    try {
      await withDeadline(1_000, () => sweeper.sweepNow(), { clock })
      expect(seen).toEqual([clock.now() + 1_000])
    } finally {
      await sweeper.close()
    }
  })
})
