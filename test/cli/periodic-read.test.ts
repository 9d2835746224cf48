// The relay's /metrics read the whole-outbox figures (outboxStats: counts that scan the pending
// rows) on every scrape: 1.2-1.7 s per scrape per relay at a million pending rows, and a scrape
// waited for it. The figures are now read in the background at most once per interval, never
// twice at once, and a scrape gets the last ones read. Driven on a ManualClock.
import { describe, expect, it } from 'vitest'
import { periodicRead } from '../../src/cli/periodic-read.js'
import { ManualClock } from '../../src/testing/index.js'

/** A read that counts its calls and settles when the test says. */
function gatedRead() {
  const calls: Array<{ resolve(value: number): void; reject(error: unknown): void }> = []
  return {
    calls,
    read: () =>
      new Promise<number>((resolve, reject) => {
        calls.push({ resolve, reject })
      }),
  }
}

describe('periodicRead', () => {
  it('reads once per interval, in the background, never twice at once', async () => {
    const clock = new ManualClock(1_000_000)
    const gate = gatedRead()
    const errors: unknown[] = []
    const stats = periodicRead(gate.read, {
      intervalMs: 15_000,
      clock,
      onError: (error) => errors.push(error),
    })

    // The first scrape starts a read and does not wait for it: nothing read yet.
    expect(stats.latest()).toEqual({ value: undefined, ok: false })
    expect(gate.calls).toHaveLength(1)
    // A scrape while it runs starts no second one.
    await clock.advance(5_000)
    expect(stats.latest()).toEqual({ value: undefined, ok: false })
    expect(gate.calls).toHaveLength(1)

    gate.calls[0]?.resolve(42)
    await stats.idle()
    // Two scrapes within the interval of the read's start: one read, the last value served.
    expect(stats.latest()).toEqual({ value: 42, ok: true })
    expect(stats.latest()).toEqual({ value: 42, ok: true })
    expect(gate.calls).toHaveLength(1)

    // The interval passed since the read started: the scrape gets the last value and starts
    // the next read.
    await clock.advance(10_000)
    expect(stats.latest()).toEqual({ value: 42, ok: true })
    expect(gate.calls).toHaveLength(2)
    gate.calls[1]?.resolve(43)
    await stats.idle()
    expect(stats.latest()).toEqual({ value: 43, ok: true })
    expect(gate.calls).toHaveLength(2)
    expect(errors).toEqual([])
  })

  it('keeps the last value after a failed read, says it failed and reports the error', async () => {
    const clock = new ManualClock(0)
    const gate = gatedRead()
    const errors: unknown[] = []
    const stats = periodicRead(gate.read, {
      intervalMs: 1_000,
      clock,
      onError: (error) => errors.push(error),
    })
    stats.latest()
    gate.calls[0]?.resolve(7)
    await stats.idle()
    await clock.advance(1_000)
    stats.latest()
    const failure = new Error('database down')
    gate.calls[1]?.reject(failure)
    await stats.idle()
    expect(stats.latest()).toEqual({ value: 7, ok: false })
    expect(errors).toEqual([failure])
    // Not retried before the interval has passed again.
    expect(gate.calls).toHaveLength(2)
    await clock.advance(1_000)
    stats.latest()
    expect(gate.calls).toHaveLength(3)
  })

  it('reads again when the clock stepped back behind the last read', async () => {
    const clock = new ManualClock(100_000)
    const gate = gatedRead()
    const stats = periodicRead(gate.read, { intervalMs: 15_000, clock, onError: () => {} })
    stats.latest()
    gate.calls[0]?.resolve(1)
    await stats.idle()
    // A wall clock set back an hour: waiting for it to catch up would serve the figures for
    // an hour.
    clock.jump(-3_600_000)
    stats.latest()
    expect(gate.calls).toHaveLength(2)
  })

  it('reads on every scrape with interval 0, still one at a time', async () => {
    const clock = new ManualClock(0)
    const gate = gatedRead()
    const stats = periodicRead(gate.read, { intervalMs: 0, clock, onError: () => {} })
    stats.latest()
    stats.latest()
    expect(gate.calls).toHaveLength(1)
    gate.calls[0]?.resolve(1)
    await stats.idle()
    stats.latest()
    expect(gate.calls).toHaveLength(2)
  })
})
