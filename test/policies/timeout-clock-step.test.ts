// Timeouts and deadlines when the wall clock steps back (an NTP correction). Their times are
// wall-clock times (clock.now()), but the one timer they share counts elapsed time (Node's
// timers are monotonic), and when it fired it compared the times with the stepped clock: a
// 500 ms timeout with the clock stepped back 5 s 100 ms into the call ran out after 5.5 s.
// ManualClock.jump steps now() the way NTP does, its timers keeping the time they had left.
import { describe, expect, it } from 'vitest'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { TimeoutError } from '../../src/policies/errors.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { timeout } from '../../src/policies/timeout.js'
import type { PolicyContext } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

const T0 = 1_700_000_000_000

// The elapsed time (see steppedClock) at which `promise` settled.
function track(elapsed: () => number, promise: Promise<unknown>) {
  const state: { at?: number; error?: unknown } = {}
  promise.then(
    () => Object.assign(state, { at: elapsed() }),
    (error: unknown) => Object.assign(state, { at: elapsed(), error }),
  )
  return state
}

/** A ManualClock and the elapsed time on it (what advance() added up), jumps left out. */
function steppedClock() {
  const clock = new ManualClock(T0)
  let jumpedMs = 0
  return {
    clock,
    elapsed: () => clock.now() - T0 - jumpedMs,
    jump(ms: number) {
      jumpedMs += ms
      clock.jump(ms)
    },
  }
}

// Work that only ends when its signal aborts.
const hang = ({ signal }: PolicyContext) =>
  new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)))

const kinds = [
  ['timeout()', (ms: number, clock: ManualClock) => timeout(ms, { clock })],
  [
    'timeout() in hard mode',
    (ms: number, clock: ManualClock) => timeout(ms, { clock, mode: 'hard' }),
  ],
  [
    'pipeline(timeout()) (fused)',
    (ms: number, clock: ManualClock) => pipeline(timeout(ms, { clock })),
  ],
] as const

describe.each(kinds)('%s across a wall-clock step back', (_, make) => {
  it('runs out after its time, not after its time and the step', async () => {
    const { clock, elapsed, jump } = steppedClock()
    const run = track(elapsed, make(500, clock).execute(hang))
    await clock.advance(100)
    jump(-5_000)
    await clock.advance(399)
    expect(run.at).toBeUndefined()
    await clock.advance(1)
    expect(run.at).toBe(500)
    expect(run.error).toBeInstanceOf(TimeoutError)
  })

  it('runs out after its time for calls on both sides of the step (a busy service)', async () => {
    const { clock, elapsed, jump } = steppedClock()
    const policy = make(500, clock)
    const before = [track(elapsed, policy.execute(hang))]
    await clock.advance(10)
    before.push(track(elapsed, policy.execute(hang)))
    await clock.advance(90)
    before.push(track(elapsed, policy.execute(hang)))
    jump(-3_600_000)
    const after = track(elapsed, policy.execute(hang))
    await clock.advance(1_000)
    expect(before.map((run) => run.at)).toEqual([500, 510, 600])
    expect(after.at).toBe(600)
  })

  it('never runs out early: a call started after a step the queue had not seen yet keeps its time', async () => {
    const { clock, elapsed, jump } = steppedClock()
    const short = track(elapsed, make(1_000, clock).execute(hang))
    await clock.advance(300)
    jump(-200)
    const long = track(elapsed, make(2_000, clock).execute(hang))
    await clock.advance(3_000)
    expect(short.at).toBe(1_000)
    expect(long.at).toBe(2_300)
  })
})

describe('a deadline across a wall-clock step back', () => {
  it('aborts its signal after its time, not after its time and the step', async () => {
    const { clock, elapsed, jump } = steppedClock()
    const run = track(
      elapsed,
      withDeadline(500, () => hang({ signal: currentDeadline()!.signal } as PolicyContext), {
        clock,
      }),
    )
    await clock.advance(100)
    jump(-5_000)
    await clock.advance(400)
    expect(run.at).toBe(500)
    expect(run.error).toMatchObject({ code: 'DEADLINE_EXCEEDED' })
  })
})
