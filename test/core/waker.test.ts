// The idle wait of the relay and the SQL queue's subscribers: a wake that arrives while nobody
// waits is remembered (a notification during a batch must not be lost), a wait ends on its
// timer, a wake, or the stop signal, and leaves no timer behind.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { Waker } from '../../src/core/waker.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'

function tracked(promise: Promise<void>): { done: () => boolean } {
  let done = false
  void promise.then(() => {
    done = true
  })
  return { done: () => done }
}

describe('Waker', () => {
  it('remembers a wake while nobody waits, once', async () => {
    const clock = new ManualClock(0)
    const waker = new Waker(clock)
    waker.wake()
    waker.wake()
    await waker.wait(60_000, new AbortController().signal)
    expect(clock.pendingTimers).toBe(0)
    const next = tracked(waker.wait(60_000, new AbortController().signal))
    await flushJobs()
    expect(next.done()).toBe(false)
    await clock.advance(60_000)
    expect(next.done()).toBe(true)
  })

  it('ends a wait on wake or abort, clearing its timer', async () => {
    const clock = new ManualClock(0)
    const waker = new Waker(clock)
    const woken = tracked(waker.wait(1_000, new AbortController().signal))
    waker.wake()
    await flushJobs()
    expect(woken.done()).toBe(true)
    expect(clock.pendingTimers).toBe(0)
    const stop = new AbortController()
    const stopped = tracked(waker.wait(1_000, stop.signal))
    stop.abort()
    await flushJobs()
    expect(stopped.done()).toBe(true)
    expect(clock.pendingTimers).toBe(0)
    // Already aborted: returns at once, without a timer.
    await waker.wait(1_000, stop.signal)
    expect(clock.pendingTimers).toBe(0)
  })

  // Every caller runs one loop, but nothing stopped a second wait at once: it took the first's
  // place, so the first wait never ended on its own timer (its timer was dropped, still
  // pending) and the first's stop signal ended the second instead.
  it('runs concurrent waits independently: each on its own timer or signal, all on a wake', async () => {
    const clock = new ManualClock(0)
    const waker = new Waker(clock)
    const stopShort = new AbortController()
    const short = tracked(waker.wait(1_000, stopShort.signal))
    const long = tracked(waker.wait(5_000, new AbortController().signal))
    expect(clock.pendingTimers).toBe(2)
    await clock.advance(1_000)
    expect(short.done()).toBe(true)
    expect(long.done()).toBe(false)
    expect(clock.pendingTimers).toBe(1)
    await clock.advance(4_000)
    expect(long.done()).toBe(true)
    expect(clock.pendingTimers).toBe(0)

    // A stop signal ends only its own wait.
    const stopFirst = new AbortController()
    const first = tracked(waker.wait(1_000, stopFirst.signal))
    const second = tracked(waker.wait(1_000, new AbortController().signal))
    stopFirst.abort()
    await flushJobs()
    expect(first.done()).toBe(true)
    expect(second.done()).toBe(false)
    expect(clock.pendingTimers).toBe(1)

    // A wake ends every running wait and is not remembered for the next.
    const third = tracked(waker.wait(1_000, new AbortController().signal))
    waker.wake()
    await flushJobs()
    expect(second.done()).toBe(true)
    expect(third.done()).toBe(true)
    expect(clock.pendingTimers).toBe(0)
    const next = tracked(waker.wait(1_000, new AbortController().signal))
    await flushJobs()
    expect(next.done()).toBe(false)
    await clock.advance(1_000)
    expect(next.done()).toBe(true)
  })

  // Model check over any mix of waits, wakes, stop signals and time: a wait has ended exactly
  // when its own timer fell due, a wake came while it ran, or its own signal aborted, and only
  // running waits hold a timer.
  it('ends each wait exactly when its model says, over any interleaving', async () => {
    type Op =
      | { kind: 'wait'; delayMs: number }
      | { kind: 'wake' }
      | { kind: 'abort'; index: number }
      | { kind: 'advance'; ms: number }
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({
        kind: fc.constant('wait' as const),
        delayMs: fc.integer({ min: 0, max: 3_000 }),
      }),
      fc.record({ kind: fc.constant('wake' as const) }),
      fc.record({ kind: fc.constant('abort' as const), index: fc.nat(8) }),
      fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 2_000 }) }),
    )
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 25 }), async (ops) => {
        const clock = new ManualClock(0)
        const waker = new Waker(clock)
        const waits: { stop: AbortController; at: number; ended: boolean; done: () => boolean }[] =
          []
        let pending = false
        for (const step of ops) {
          const running = waits.filter((w) => !w.ended)
          if (step.kind === 'wait') {
            const stop = new AbortController()
            const at = clock.now() + step.delayMs
            waits.push({
              stop,
              at,
              ended: pending,
              ...tracked(waker.wait(step.delayMs, stop.signal)),
            })
            pending = false
          } else if (step.kind === 'wake') {
            waker.wake()
            if (running.length === 0) pending = true
            for (const w of running) w.ended = true
          } else if (step.kind === 'abort') {
            const w = waits[step.index]
            if (w === undefined) continue
            w.stop.abort()
            w.ended = true
          } else {
            await clock.advance(step.ms)
            for (const w of running) if (w.at <= clock.now()) w.ended = true
          }
          await flushJobs()
          expect(waits.map((w) => w.done())).toEqual(waits.map((w) => w.ended))
          expect(clock.pendingTimers).toBe(waits.filter((w) => !w.ended).length)
        }
      }),
      { numRuns: 150 },
    )
  })
})
