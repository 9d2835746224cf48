// The idle wait of the relay and the SQL queue's subscribers: a wake that arrives while nobody
// waits is remembered (a notification during a batch must not be lost), a wait ends on its
// timer, a wake, or the stop signal, and leaves no timer behind.
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
})
