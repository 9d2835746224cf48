import { channel } from 'node:diagnostics_channel'
import { getEventListeners } from 'node:events'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { AbortedError, BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { DeadlineExceededError, TimeoutError } from '../../src/policies/errors.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { type TimeoutEvent, timeout } from '../../src/policies/timeout.js'
import { type TimerEntry, type TimerQueue, timerQueueFor } from '../../src/policies/timer-queue.js'
import { neverAbortedSignal, type PolicyContext } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

function track<T>(clock: ManualClock, promise: Promise<T>) {
  const state: { settled: boolean; at?: number; value?: T; error?: unknown } = { settled: false }
  promise.then(
    (value) => Object.assign(state, { settled: true, at: clock.now(), value }),
    (error: unknown) => Object.assign(state, { settled: true, at: clock.now(), error }),
  )
  return state
}

/** A promise settled from outside, standing for work that is in flight. */
function deferred<T>() {
  let resolve!: (value: T) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

describe('timeout, cooperative (default)', () => {
  it('passes a fast result through and leaves no timer behind', async () => {
    const clock = new ManualClock()
    const policy = timeout(1_000, { clock })
    expect(policy.mode).toBe('cooperative')
    expect(await policy.execute(() => 42)).toBe(42)
    expect(await policy.execute(async ({ attempt }) => attempt)).toBe(1)
    await expect(
      policy.execute(() => {
        throw new Error('sync failure')
      }),
    ).rejects.toThrow('sync failure')
    expect(clock.pendingTimers).toBe(0)
  })

  it('aborts ctx.signal at the timeout and rejects with TimeoutError once fn gives up', async () => {
    const clock = new ManualClock()
    const run = track(
      clock,
      timeout(100, { clock }).execute(({ signal }) => sleep(clock, 10_000, signal)),
    )
    await clock.advance(99)
    expect(run.settled).toBe(false)
    await clock.advance(1)
    expect(run.at).toBe(100)
    expect(run.error).toBeInstanceOf(TimeoutError)
    const error = run.error as TimeoutError
    expect(error.code).toBe('TIMEOUT')
    expect(error.retryable).toBe(true)
    expect(error.timeoutMs).toBe(100)
    expect(error.cause).toBeInstanceOf(AbortedError)
    expect(clock.pendingTimers).toBe(0)
  })

  it('waits for fn: a value that arrives after the timeout is still returned', async () => {
    const clock = new ManualClock()
    const work = deferred<string>()
    let signal: AbortSignal | undefined
    const run = track(
      clock,
      timeout(100, { clock }).execute((ctx) => {
        signal = ctx.signal
        return work.promise
      }),
    )
    await clock.advance(500)
    expect(signal?.aborted).toBe(true)
    expect(signal?.reason).toBeInstanceOf(TimeoutError)
    expect(run.settled).toBe(false)
    work.resolve('late but fine')
    await clock.advance(0)
    expect(run.value).toBe('late but fine')
  })

  it('hands a signal created after the timeout already aborted', async () => {
    const clock = new ManualClock()
    const run = track(
      clock,
      timeout(50, { clock }).execute(async (ctx) => {
        await sleep(clock, 80)
        return ctx.signal.aborted
      }),
    )
    await clock.advance(100)
    expect(run.value).toBe(true)
  })

  it('rethrows the abort reason itself when fn rejects with it (as fetch does)', async () => {
    const clock = new ManualClock()
    const run = track(
      clock,
      timeout(10, { clock }).execute(
        ({ signal }) =>
          new Promise((_, reject) => {
            signal.addEventListener('abort', () => reject(signal.reason))
          }),
      ),
    )
    await clock.advance(10)
    expect(run.error).toBeInstanceOf(TimeoutError)
    expect((run.error as TimeoutError).cause).toBeUndefined()
  })

  it('a caller abort rejects promptly with AbortedError and aborts ctx.signal', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    let inner: AbortSignal | undefined
    const run = track(
      clock,
      timeout(1_000, { clock }).execute((ctx) => {
        inner = ctx.signal
        return new Promise(() => {}) // ignores its signal
      }, controller.signal),
    )
    await clock.advance(10)
    controller.abort('caller gone')
    await clock.advance(0)
    expect(run.at).toBe(10)
    expect(run.error).toBeInstanceOf(AbortedError)
    expect((run.error as AbortedError).cause).toBe('caller gone')
    expect(inner?.aborted).toBe(true)
    expect(clock.pendingTimers).toBe(0)
  })

  it('rejects at once, without running fn, when the caller signal is already aborted', async () => {
    let ran = false
    await expect(
      timeout(10).execute(() => {
        ran = true
      }, AbortSignal.abort()),
    ).rejects.toBeInstanceOf(AbortedError)
    expect(ran).toBe(false)
  })

  it('with a caller signal that never aborts, still times out and cleans up its listener', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const policy = timeout(20, { clock })
    for (let i = 0; i < 3; i++) {
      expect(await policy.execute(async () => i, controller.signal)).toBe(i)
    }
    const run = track(
      clock,
      policy.execute(({ signal }) => sleep(clock, 100, signal), controller.signal),
    )
    await clock.advance(20)
    expect(run.error).toBeInstanceOf(TimeoutError)
    // Aborting afterwards reaches nobody: every call removed its listener.
    controller.abort()
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('timeout, hard', () => {
  it('rejects the caller at the timeout while fn keeps running in the background', async () => {
    const clock = new ManualClock()
    const work = deferred<string>()
    let signal: AbortSignal | undefined
    let finished = false
    const run = track(
      clock,
      timeout(100, { clock, mode: 'hard' }).execute(async (ctx) => {
        signal = ctx.signal
        const value = await work.promise
        finished = true
        return value
      }),
    )
    await clock.advance(100)
    expect(run.at).toBe(100)
    expect(run.error).toBeInstanceOf(TimeoutError)
    expect(signal?.aborted).toBe(true)
    expect(finished).toBe(false)
    work.resolve('too late')
    await clock.advance(0)
    expect(finished).toBe(true)
    expect(run.error).toBeInstanceOf(TimeoutError)
  })

  it('swallows a late failure of fn (no unhandled rejection) and returns fast results', async () => {
    const clock = new ManualClock()
    const policy = timeout(100, { clock, mode: 'hard' })
    expect(await policy.execute(async () => 'fast')).toBe('fast')
    await expect(policy.execute(() => Promise.reject(new Error('fast failure')))).rejects.toThrow(
      'fast failure',
    )
    const work = deferred<never>()
    const run = track(
      clock,
      policy.execute(() => work.promise),
    )
    await clock.advance(100)
    work.reject(new Error('late failure'))
    await clock.advance(0)
    expect(run.error).toBeInstanceOf(TimeoutError)
    expect(clock.pendingTimers).toBe(0)
  })

  it('a caller abort rejects with AbortedError', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const run = track(
      clock,
      timeout(100, { clock, mode: 'hard' }).execute(() => new Promise(() => {}), controller.signal),
    )
    controller.abort()
    await clock.advance(0)
    expect(run.error).toBeInstanceOf(AbortedError)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('timeout and deadlines', () => {
  it('is clipped to the remaining deadline and then rejects with DeadlineExceededError', async () => {
    const clock = new ManualClock()
    const events: TimeoutEvent[] = []
    const policy = timeout(1_000, { clock })
    policy.events.on((event) => events.push(event))
    const run = track(
      clock,
      withDeadline(300, () => policy.execute(({ signal }) => sleep(clock, 5_000, signal)), {
        clock,
      }),
    )
    await clock.advance(300)
    expect(run.at).toBe(300)
    expect(run.error).toBeInstanceOf(DeadlineExceededError)
    const error = run.error as DeadlineExceededError
    expect(error.code).toBe('DEADLINE_EXCEEDED')
    expect(error.retryable).toBe(false)
    expect(events).toEqual([
      { type: 'timeout', timeoutMs: 300, deadline: true, mode: 'cooperative' },
    ])
    expect(clock.pendingTimers).toBe(0)
  })

  it('keeps its own TimeoutError when the timeout is nearer than the deadline', async () => {
    const clock = new ManualClock()
    const run = track(
      clock,
      withDeadline(
        10_000,
        () => timeout(100, { clock, mode: 'hard' }).execute(() => new Promise(() => {})),
        { clock },
      ),
    )
    await clock.advance(100)
    expect(run.error).toBeInstanceOf(TimeoutError)
  })

  it('rejects at once, without running fn, when the deadline has already passed', async () => {
    const clock = new ManualClock()
    let ran = false
    const run = track(
      clock,
      withDeadline(
        50,
        async () => {
          await sleep(clock, 60)
          return timeout(1_000, { clock }).execute(() => {
            ran = true
          })
        },
        { clock },
      ),
    )
    await clock.advance(60)
    expect(run.error).toBeInstanceOf(DeadlineExceededError)
    expect(ran).toBe(false)
  })

  it('an infinite timeout enforces only the deadline', async () => {
    const clock = new ManualClock()
    const policy = timeout(Number.POSITIVE_INFINITY, { clock, mode: 'hard' })
    expect(await policy.execute(async () => 'no timer')).toBe('no timer')
    expect(clock.pendingTimers).toBe(0)
    const run = track(
      clock,
      withDeadline(70, () => policy.execute(() => new Promise(() => {})), { clock }),
    )
    await clock.advance(70)
    expect(run.error).toBeInstanceOf(DeadlineExceededError)
  })
})

describe('timeout timers', () => {
  it('fires many overlapping timeouts each at its exact time, with one clock timer', async () => {
    const clock = new ManualClock()
    const durations = [500, 120, 310, 120, 999, 1, 64, 250, 777, 42]
    const runs = durations.map((ms) => ({
      ms,
      run: track(
        clock,
        timeout(ms, { clock }).execute(({ signal }) => sleep(clock, 10_000, signal)),
      ),
    }))
    // The ten fn sleeps hold ten timers; all the timeouts share one.
    expect(clock.pendingTimers).toBe(11)
    await clock.advance(1_000)
    for (const { ms, run } of runs) {
      expect(run.error).toBeInstanceOf(TimeoutError)
      expect(run.at).toBe(ms)
    }
    expect(clock.pendingTimers).toBe(0)
  })

  it('a call that finishes removes only its own timeout', async () => {
    const clock = new ManualClock()
    const quick = deferred<string>()
    const fired: number[] = []
    const policy = timeout(100, { clock })
    policy.events.on(() => fired.push(clock.now()))
    const a = track(
      clock,
      policy.execute(() => quick.promise),
    )
    await clock.advance(30)
    const b = track(
      clock,
      policy.execute(({ signal }) => sleep(clock, 1_000, signal)),
    )
    quick.resolve('a')
    await clock.advance(0)
    expect(a.value).toBe('a')
    await clock.advance(99)
    expect(fired).toEqual([])
    await clock.advance(1)
    expect(fired).toEqual([130])
    expect(b.error).toBeInstanceOf(TimeoutError)
  })

  it('publishes to diagnostics_channel only while subscribed', async () => {
    const clock = new ManualClock()
    const published: unknown[] = []
    const listener = (message: unknown) => published.push(message)
    channel('breakwater:timeout:timeout').subscribe(listener)
    const policy = timeout(5, { clock, mode: 'hard' })
    const first = track(
      clock,
      policy.execute(() => new Promise(() => {})),
    )
    await clock.advance(5)
    channel('breakwater:timeout:timeout').unsubscribe(listener)
    const second = track(
      clock,
      policy.execute(() => new Promise(() => {})),
    )
    await clock.advance(5)
    expect(first.error).toBeInstanceOf(TimeoutError)
    expect(second.error).toBeInstanceOf(TimeoutError)
    expect(published).toEqual([{ type: 'timeout', timeoutMs: 5, deadline: false, mode: 'hard' }])
  })
})

describe('the shared timer queue behind timeouts and deadlines', () => {
  type Op =
    | { readonly kind: 'add'; readonly delayMs: number }
    | { readonly kind: 'remove'; readonly pick: number }
    | { readonly kind: 'advance'; readonly ms: number }
    | { readonly kind: 'jump'; readonly ms: number }

  // Up to 60 operations; with `jumpBackMs`, steps of the wall clock back up to that far too.
  function opsOf(maxDelayMs: number, maxAdvanceMs: number, jumpBackMs = 0): fc.Arbitrary<Op[]> {
    const kinds: Array<fc.Arbitrary<Op>> = [
      fc.record({
        kind: fc.constant('add' as const),
        delayMs: fc.integer({ min: 0, max: maxDelayMs }),
      }),
      fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }),
      fc.record({
        kind: fc.constant('advance' as const),
        ms: fc.integer({ min: 0, max: maxAdvanceMs }),
      }),
    ]
    if (jumpBackMs > 0)
      kinds.push(
        fc.record({
          kind: fc.constant('jump' as const),
          ms: fc.integer({ min: -jumpBackMs, max: 0 }),
        }),
      )
    return fc.array(fc.oneof(...kinds), { maxLength: 60 })
  }

  // Removes the pending entry `pick` chooses, if any.
  function removePicked(queue: TimerQueue, pending: Map<number, TimerEntry>, pick: number): void {
    const ids = [...pending.keys()]
    if (ids.length === 0) return
    const id = ids[pick % ids.length]!
    queue.remove(pending.get(id)!)
    pending.delete(id)
  }

  it('fires exactly the entries that fall due, each at its time and in order, never a removed one', async () => {
    await fc.assert(
      fc.asyncProperty(opsOf(500, 300), async (ops) => {
        const clock = new ManualClock()
        const queue = timerQueueFor(clock)
        const fired: Array<{ id: number; atMs: number; firedAt: number }> = []
        const pending = new Map<number, TimerEntry>()
        let nextId = 0
        for (const o of ops) {
          if (o.kind === 'add') {
            const id = nextId++
            const entry: TimerEntry = {
              atMs: clock.now() + o.delayMs,
              queueIndex: -1,
              fire() {
                fired.push({ id, atMs: this.atMs, firedAt: clock.now() })
                pending.delete(id)
              },
              clockStepped() {
                throw new Error('the clock never steps here')
              },
            }
            pending.set(id, entry)
            queue.add(entry)
          } else if (o.kind === 'remove') removePicked(queue, pending, o.pick)
          else {
            const before = fired.length
            await clock.advance(o.ms)
            const now = clock.now()
            for (const f of fired.slice(before)) expect(f.firedAt).toBe(f.atMs)
            for (let i = before + 1; i < fired.length; i++) {
              expect(fired[i]!.atMs).toBeGreaterThanOrEqual(fired[i - 1]!.atMs)
            }
            for (const entry of pending.values()) expect(entry.atMs).toBeGreaterThan(now)
          }
          expect(queue.size).toBe(pending.size)
          // One clock timer at most, and none once nothing is queued.
          expect(clock.pendingTimers).toBe(pending.size === 0 ? 0 : 1)
        }
        expect(new Set(fired.map((f) => f.id)).size).toBe(fired.length)
      }),
      { numRuns: 300 },
    )
  })

  // Found by the property below (CI, seed 312549417): the timer fires 11 ms short of its time, a
  // step back, and an entry timed after the step for the very time the timer was armed for was
  // moved with the one the timer was armed for, and fired 11 ms early.
  it('does not move an entry timed after a step back for the time the timer was armed for', async () => {
    const clock = new ManualClock()
    const queue = timerQueueFor(clock)
    const firedAt: Record<string, number> = {}
    let jumpedMs = 0
    const entryAt = (name: string, delayMs: number): TimerEntry => {
      const now = clock.now()
      const entry: TimerEntry = {
        atMs: now + delayMs,
        queueIndex: -1,
        fire() {
          firedAt[name] = clock.now() - jumpedMs
        },
        clockStepped(stepMs) {
          ;(this as { atMs: number }).atMs += stepMs
        },
      }
      queue.add(entry, now)
      return entry
    }
    entryAt('before', 2)
    clock.jump(-11)
    jumpedMs = -11
    await clock.advance(1)
    entryAt('after', 12) // due 13 ms from the start, for the same clock time (2) as 'before'
    await clock.runAll()
    // 'before' is late by the step (documented), 'after' is on time; neither is early.
    expect(firedAt).toEqual({ before: 13, after: 13 })
  })

  // Steps of the wall clock back (see timeout-clock-step.test.ts): every entry still fires after
  // its delay of elapsed time. A step below the queue's tolerance (10 ms) is not followed: an
  // entry timed after one may fire that much early.
  it('fires every entry across steps of the clock back, none more than 10 ms early', async () => {
    await fc.assert(
      fc.asyncProperty(opsOf(2_000, 600, 10_000), async (ops) => {
        const clock = new ManualClock()
        let jumpedMs = 0
        const elapsed = () => clock.now() - jumpedMs
        const queue = timerQueueFor(clock)
        const fired: Array<{ id: number; dueAt: number; firedAt: number }> = []
        const pending = new Map<number, TimerEntry>()
        let nextId = 0
        for (const o of ops) {
          if (o.kind === 'add') {
            const id = nextId++
            const now = clock.now()
            const dueAt = elapsed() + o.delayMs
            const entry: TimerEntry = {
              atMs: now + o.delayMs,
              queueIndex: -1,
              fire() {
                fired.push({ id, dueAt, firedAt: elapsed() })
                pending.delete(id)
              },
              clockStepped(stepMs) {
                ;(this as { atMs: number }).atMs += stepMs
              },
            }
            pending.set(id, entry)
            queue.add(entry, now)
          } else if (o.kind === 'remove') removePicked(queue, pending, o.pick)
          else if (o.kind === 'advance') await clock.advance(o.ms)
          else {
            jumpedMs += o.ms
            clock.jump(o.ms)
          }
          expect(queue.size).toBe(pending.size)
        }
        await clock.runAll()
        expect(pending.size).toBe(0)
        for (const f of fired) expect(f.firedAt).toBeGreaterThanOrEqual(f.dueAt - 10)
        expect(new Set(fired.map((f) => f.id)).size).toBe(fired.length)
      }),
      { numRuns: 300 },
    )
  })
})

describe('timeout in a pipeline', () => {
  it('hands the outer attempt through, and an outer timeout reaches the inner signal', async () => {
    const clock = new ManualClock()
    const seen: Array<[number, boolean]> = []
    const policy = pipeline(
      timeout(1_000, { clock }),
      retry({ clock, maxAttempts: 3, jitter: 'none' }),
      timeout(400, { clock }),
    )
    const run = track(
      clock,
      policy.execute(async (ctx: PolicyContext) => {
        seen.push([ctx.attempt, ctx.signal === neverAbortedSignal])
        await sleep(clock, 10_000, ctx.signal)
      }),
    )
    await clock.advance(2_000)
    // Attempt 1 times out at 400, backoff 100, attempt 2 from 500 to 900, backoff 200 would
    // end at 1100, past the outer timeout's 1000: the retry gives up at 900 with attempt 2's
    // own failure rather than sleep into the outer timeout.
    expect(seen).toEqual([
      [1, false],
      [2, false],
    ])
    expect(run.at).toBe(900)
    expect(run.error).toBeInstanceOf(TimeoutError)
    expect((run.error as TimeoutError).timeoutMs).toBe(400)
    expect(clock.pendingTimers).toBe(0)
  })

  it('a caller abort through the pipeline rejects promptly', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const policy = pipeline(timeout(1_000, { clock }), retry({ clock }), timeout(500, { clock }))
    const run = track(
      clock,
      policy.execute(() => new Promise(() => {}), controller.signal),
    )
    await clock.advance(10)
    controller.abort('bye')
    await clock.advance(0)
    expect(run.at).toBe(10)
    expect(run.error).toBeInstanceOf(AbortedError)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('timeout allocation', () => {
  // Counts AbortControllers created while `body` runs, by swapping the global class.
  async function countControllers(body: () => Promise<void>): Promise<number> {
    const Original = globalThis.AbortController
    let created = 0
    globalThis.AbortController = class extends Original {
      constructor() {
        super()
        created++
      }
    }
    try {
      await body()
    } finally {
      globalThis.AbortController = Original
    }
    return created
  }

  it('creates no AbortController unless fn reads ctx.signal, and one when it does', async () => {
    const clock = new ManualClock()
    const policy = pipeline(
      timeout(1_000, { clock }),
      retry({ clock }),
      timeout(100, { clock }),
      timeout(50, { clock, mode: 'hard' }),
    )
    const untouched = await countControllers(async () => {
      for (let i = 0; i < 10; i++) expect(await policy.execute(async () => i)).toBe(i)
    })
    expect(untouched).toBe(0)
    const read = await countControllers(async () => {
      expect(await policy.execute(async ({ signal }) => signal.aborted)).toBe(false)
    })
    expect(read).toBe(1)
    expect(clock.pendingTimers).toBe(0)
  })

  it('an outer timeout firing mid-attempt aborts the signal the innermost fn holds', async () => {
    const clock = new ManualClock()
    const policy = pipeline(timeout(300, { clock }), retry({ clock }), timeout(1_000, { clock }))
    let reason: unknown
    const run = track(
      clock,
      policy.execute(async ({ signal }) => {
        signal.addEventListener('abort', () => {
          reason = signal.reason
        })
        await sleep(clock, 10_000, signal)
      }),
    )
    await clock.advance(300)
    expect(reason).toBeInstanceOf(TimeoutError)
    expect((reason as TimeoutError).timeoutMs).toBe(300)
    expect(run.at).toBe(300)
    expect(run.error).toBeInstanceOf(TimeoutError)
    expect((run.error as TimeoutError).timeoutMs).toBe(300)
    expect(clock.pendingTimers).toBe(0)
  })

  it('leaves no listener on a long-lived caller signal, with or without a deadline', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const policy = pipeline(
      timeout(1_000, { clock }),
      retry({ clock, jitter: 'none' }),
      timeout(100, { clock, mode: 'hard' }),
    )
    const work = (i: number) =>
      policy.execute(async ({ signal, attempt }) => {
        if (i % 2 === 0) expect(signal.aborted).toBe(false)
        if (i % 3 === 0 && attempt === 1) throw new TimeoutError(1)
        return i
      }, controller.signal)
    for (let i = 0; i < 30; i++) {
      const run = track(clock, work(i))
      await clock.advance(200)
      expect(run.value).toBe(i)
    }
    for (let i = 0; i < 30; i++) {
      const run = track(
        clock,
        withDeadline(5_000, () => work(i), { clock }),
      )
      await clock.advance(200)
      expect(run.value).toBe(i)
    }
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
    expect(clock.pendingTimers).toBe(0)
  })

  it('handles timeouts longer than a Node timer can hold (2^31 - 1 ms)', async () => {
    const clock = new ManualClock()
    const longMs = 3_000_000_000
    const run = track(
      clock,
      timeout(longMs, { clock, mode: 'hard' }).execute(() => new Promise(() => {})),
    )
    await clock.advance(2 ** 31)
    expect(run.settled).toBe(false)
    await clock.advance(longMs - 2 ** 31 - 1)
    expect(run.settled).toBe(false)
    await clock.advance(1)
    expect(run.at).toBe(longMs)
    expect(run.error).toBeInstanceOf(TimeoutError)
  })
})

describe('timeout options', () => {
  it.each([
    [0, {}, 'timeout.timeoutMs'],
    [-5, {}, 'timeout.timeoutMs'],
    [Number.NaN, {}, 'timeout.timeoutMs'],
    ['100', {}, 'timeout.timeoutMs'],
    [100, { mode: 'soft' }, 'timeout.mode'],
  ])('rejects timeout(%o, %o) naming %s', (ms, options, name) => {
    const create = () => timeout(ms as never, options as never)
    expect(create).toThrow(InvalidOptionError)
    expect(create).toThrow(new RegExp(`^${name.replace('.', '\\.')}: expected`))
  })

  it('errors are breakwater errors', () => {
    expect(BreakwaterError.is(new TimeoutError(1))).toBe(true)
    expect(BreakwaterError.is(new DeadlineExceededError(1))).toBe(true)
  })
})

// Whether a pending timeout holds the process open, read from Node's list of referenced
// handles (a referenced timer is listed as a 'Timeout'). Real system-clock timers, but nothing
// waits for them: each call is ended at once by its caller's abort.
describe('timeout on the system clock', () => {
  const heldTimers = (): number =>
    process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length

  it('holds the process open while a call is timed, and lets go once none is', async () => {
    const before = heldTimers()
    for (const mode of ['cooperative', 'hard'] as const) {
      // A function that never settles and holds nothing: exactly what a timeout must end, so a
      // script awaiting it must not exit (code 13, unsettled await) before the timeout fires.
      const stop = new AbortController()
      const call = timeout(60_000, { mode }).execute(() => new Promise(() => {}), stop.signal)
      expect(heldTimers()).toBe(before + 1)
      // A second call behind it reuses the armed timer.
      const stop2 = new AbortController()
      const second = timeout(120_000).execute(() => new Promise(() => {}), stop2.signal)
      expect(heldTimers()).toBe(before + 1)
      stop.abort()
      stop2.abort()
      await expect(call).rejects.toBeInstanceOf(AbortedError)
      await expect(second).rejects.toBeInstanceOf(AbortedError)
      // The armed timer may stay for the next call, but it no longer holds the process.
      expect(heldTimers()).toBe(before)
    }
  })
})

describe('timeout, hard, inside another timeout', () => {
  it('gives up when the outer timeout runs out, whether or not the caller passed a signal', async () => {
    // The inner hard timeout only listened to its parent when a caller's real signal was among
    // its ancestors: without one it ignored the outer timeout's abort and the caller waited for
    // the inner timeout (1 s) instead of the outer one (100 ms).
    const outcomes: string[] = []
    for (const signal of [undefined, new AbortController().signal]) {
      for (const outerMode of ['cooperative', 'hard'] as const) {
        const clock = new ManualClock()
        const chain = pipeline(
          timeout(100, { clock, mode: outerMode }),
          timeout(1_000, { clock, mode: 'hard' }),
        )
        const run = track(
          clock,
          chain.execute(() => sleep(clock, 5_000), signal),
        )
        await clock.advance(100)
        expect(run.error).toBeInstanceOf(TimeoutError)
        expect((run.error as TimeoutError).timeoutMs).toBe(100)
        outcomes.push(`${run.at}`)
        await clock.advance(5_000)
        expect(clock.pendingTimers).toBe(0)
      }
    }
    expect(outcomes).toEqual(['100', '100', '100', '100'])
  })
})

describe("timeout, cooperative, and the caller's signal", () => {
  it('an outer timeout running out leaves the inner one waiting for fn, signal or not', async () => {
    // With a caller's signal the inner timeout raced its parent scope and rejected at the
    // outer timeout's abort, as if the outer one were hard, while fn went on behind the
    // caller's back; without a signal it waited for fn, as a cooperative timeout promises.
    const outcomes: string[] = []
    for (const withRetry of [false, true]) {
      for (const signal of [undefined, new AbortController().signal]) {
        const clock = new ManualClock()
        const chain = withRetry
          ? pipeline(timeout(50, { clock }), retry({ clock }), timeout(100, { clock }))
          : pipeline(timeout(50, { clock }), timeout(100, { clock }))
        let inner: AbortSignal | undefined
        const run = track(
          clock,
          chain.execute(async (ctx) => {
            inner = ctx.signal
            await sleep(clock, 70) // ignores its signal, then answers
            return 'value'
          }, signal),
        )
        await clock.advance(200)
        expect(inner?.reason).toBeInstanceOf(TimeoutError)
        outcomes.push(`${run.at} ${String(run.value ?? run.error)}`)
        expect(clock.pendingTimers).toBe(0)
      }
    }
    expect(outcomes).toEqual(['70 value', '70 value', '70 value', '70 value'])
  })

  it('a caller abort after the timeout ran out still rejects at once, with the timeout', async () => {
    // Once its own timeout had fired the call stopped listening to the caller's signal, so a
    // caller whose fn ignores signals could no longer leave: it waited for fn (here, forever).
    // The timeout came first, so its error is the answer, as fn passing its signal on gives.
    for (const make of [
      (clock: ManualClock) => timeout(50, { clock }),
      (clock: ManualClock) => pipeline(timeout(50, { clock }), retry({ clock })),
      (clock: ManualClock) => pipeline(timeout(50, { clock }), timeout(100, { clock })),
    ]) {
      const clock = new ManualClock()
      const controller = new AbortController()
      const run = track(
        clock,
        make(clock).execute(() => new Promise(() => {}), controller.signal),
      )
      await clock.advance(150)
      expect(run.settled).toBe(false)
      controller.abort('caller gone')
      await clock.advance(0)
      expect(run.at).toBe(150)
      expect(run.error).toBeInstanceOf(TimeoutError)
      expect((run.error as TimeoutError).timeoutMs).toBe(50)
      expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
      expect(clock.pendingTimers).toBe(0)
    }
  })
})
