// The system clock honours any delay. Node's own timers fire a delay above 2^31 - 1 ms (about
// 24.8 days) after 1 ms instead, with only a warning: a breaker cooldown, a backoff ceiling or
// a server's Retry-After that large would have turned "much later" into "now". Driven by
// vitest's fake timers, which systemClock picks up because it reads the globals at call time.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { type Clock, type TimerHandle, within } from '../../src/core/clock.js'
import { retry, sleep, systemClock, TimeoutError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

const maxNodeTimerMs = 2 ** 31 - 1

describe('systemClock timers', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 })
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('fires a delay longer than Node allows at its time, not after 1 ms', () => {
    const fired: number[] = []
    const delayMs = 3 * maxNodeTimerMs + 12_345
    systemClock.setTimeout(() => fired.push(Date.now()), delayMs)
    vi.advanceTimersByTime(1)
    expect(fired).toEqual([])
    vi.advanceTimersByTime(delayMs - 2)
    expect(fired).toEqual([])
    vi.advanceTimersByTime(1)
    expect(fired).toEqual([1_000_000 + delayMs])
  })

  it('cancels a long timer in any of its slices', () => {
    let fired = false
    const handle = systemClock.setTimeout(
      () => {
        fired = true
      },
      2 * maxNodeTimerMs + 5,
    )
    vi.advanceTimersByTime(maxNodeTimerMs + 10)
    systemClock.clearTimeout(handle)
    vi.advanceTimersByTime(3 * maxNodeTimerMs)
    expect(fired).toBe(false)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('never fires an infinite delay, and a sleep that long ends only by its signal', async () => {
    let fired = false
    systemClock.setTimeout(() => {
      fired = true
    }, Number.POSITIVE_INFINITY)
    vi.advanceTimersByTime(10 * maxNodeTimerMs)
    expect(fired).toBe(false)
    const stop = new AbortController()
    const slept = sleep(systemClock, Number.POSITIVE_INFINITY, stop.signal)
    vi.advanceTimersByTime(10 * maxNodeTimerMs)
    stop.abort()
    await expect(slept).rejects.toMatchObject({ code: 'ABORTED' })
  })

  it('reads a numeric string as Node does, even one longer than Node allows', () => {
    const fired: number[] = []
    const delayMs = 2 * maxNodeTimerMs
    systemClock.setTimeout(() => fired.push(Date.now()), String(delayMs) as unknown as number)
    vi.advanceTimersByTime(delayMs - 1)
    expect(fired).toEqual([])
    vi.advanceTimersByTime(1)
    expect(fired).toEqual([1_000_000 + delayMs])
  })

  it('runs a NaN, negative or missing delay as a 0 one, in creation order', () => {
    const fired: string[] = []
    systemClock.setTimeout(() => fired.push('nan'), Number.NaN)
    systemClock.setTimeout(() => fired.push('zero'), 0)
    systemClock.setTimeout(() => fired.push('negative'), -5)
    systemClock.setTimeout(() => fired.push('missing'), undefined as unknown as number)
    systemClock.setTimeout(() => fired.push('later'), 2)
    vi.advanceTimersByTime(1)
    expect(fired).toEqual(['nan', 'zero', 'negative', 'missing'])
    expect(Number.isFinite(Date.now())).toBe(true)
  })

  it('keeps ordinary delays on one Node timer', () => {
    let fired = 0
    systemClock.setTimeout(() => fired++, 250)
    expect(vi.getTimerCount()).toBe(1)
    vi.advanceTimersByTime(250)
    expect(fired).toBe(1)
  })
})

describe('ManualClock timers', () => {
  // Node fires every delay below its 1 ms minimum (0, negative, NaN, a non-number) after 1 ms,
  // so all alike and in creation order; the ManualClock's minimum is 0 (due on the next
  // advance, even advance(0)), and it reads them all as that minimum. A NaN used to be stored
  // as the timer's time: it fired on the next advance and left now() NaN for good.
  it('reads a NaN, negative or non-number delay as Node does, never corrupting now()', async () => {
    const clock = new ManualClock(100)
    const fired: string[] = []
    clock.setTimeout(() => fired.push('nan'), Number.NaN)
    clock.setTimeout(() => fired.push('zero'), 0)
    clock.setTimeout(() => fired.push('negative'), -5)
    clock.setTimeout(() => fired.push('missing'), undefined as unknown as number)
    clock.setTimeout(() => fired.push('object'), {} as unknown as number)
    clock.setTimeout(() => fired.push('string'), '25' as unknown as number)
    expect(clock.nextTimerAt()).toBe(100)
    await clock.advance(0)
    expect(fired).toEqual(['nan', 'zero', 'negative', 'missing', 'object'])
    expect(clock.now()).toBe(100)
    await clock.advance(25)
    expect(fired.at(-1)).toBe('string')
    expect(clock.now()).toBe(125)
    expect(clock.pendingTimers).toBe(0)
  })

  it('honours a delay longer than Node allows, like the system clock', async () => {
    const clock = new ManualClock(0)
    const fired: number[] = []
    clock.setTimeout(() => fired.push(clock.now()), 2 * maxNodeTimerMs)
    await clock.advance(1)
    expect(fired).toEqual([])
    await clock.runAll()
    expect(fired).toEqual([2 * maxNodeTimerMs])
  })

  it('refuses to move time by NaN, Infinity or backwards, or to start at NaN', async () => {
    const clock = new ManualClock(10)
    await expect(clock.advance(Number.NaN)).rejects.toMatchObject({ code: 'INVALID_OPTION' })
    await expect(clock.advance(-1)).rejects.toMatchObject({ code: 'INVALID_OPTION' })
    await expect(clock.advance(Number.POSITIVE_INFINITY)).rejects.toMatchObject({
      code: 'INVALID_OPTION',
    })
    expect(clock.now()).toBe(10)
    expect(() => new ManualClock(Number.NaN)).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION' }),
    )
  })

  it('jumps now() back or forward as a stepped wall clock does, timers keeping the time they had left', async () => {
    const clock = new ManualClock(10_000)
    const fired: Array<[string, number]> = []
    clock.setTimeout(() => fired.push(['a', clock.now()]), 500)
    clock.setTimeout(() => fired.push(['never', clock.now()]), Number.POSITIVE_INFINITY)
    await clock.advance(100)
    clock.jump(-5_000)
    expect(clock.now()).toBe(5_100)
    expect(fired).toEqual([])
    clock.setTimeout(() => fired.push(['b', clock.now()]), 100)
    await clock.advance(400)
    expect(fired).toEqual([
      ['b', 5_200],
      ['a', 5_500],
    ])
    clock.setTimeout(() => fired.push(['c', clock.now()]), 1_000)
    clock.jump(3_600_000)
    expect(fired).toHaveLength(2)
    await clock.advance(1_000)
    expect(fired.at(-1)).toEqual(['c', 3_606_500])
    expect(clock.pendingTimers).toBe(1)
    expect(() => clock.jump(Number.NaN)).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION' }),
    )
    expect(clock.now()).toBe(3_606_500)
  })

  it('never fires an infinite delay, not even in runAll, like the system clock', async () => {
    const clock = new ManualClock(0)
    const fired: string[] = []
    clock.setTimeout(() => fired.push('never'), Number.POSITIVE_INFINITY)
    clock.setTimeout(() => fired.push('soon'), 10)
    await clock.runAll()
    expect(fired).toEqual(['soon'])
    expect(clock.pendingTimers).toBe(1)
    await clock.advance(Number.MAX_SAFE_INTEGER)
    expect(fired).toEqual(['soon'])
  })

  it('runs advances that overlap (one not awaited) one after the other: time never goes back', async () => {
    const clock = new ManualClock(0)
    const seen: number[] = []
    for (const at of [10, 60, 120, 149]) clock.setTimeout(() => seen.push(clock.now()), at)
    // A test that forgets to await one advance before the next.
    const first = clock.advance(100)
    const second = clock.advance(50)
    await Promise.all([first, second])
    expect(clock.now()).toBe(150)
    expect(seen).toEqual([10, 60, 120, 149])
    expect(clock.pendingTimers).toBe(0)
  })

  it('refuses a runAll limit that is not a whole number >= 1, naming it', async () => {
    const clock = new ManualClock(0)
    clock.setTimeout(() => {}, 10)
    for (const limit of [0, -1, Number.NaN, 1.5, '3' as unknown as number])
      await expect(clock.runAll(limit)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        message: expect.stringContaining('ManualClock.runAll limit'),
      })
    expect(clock.pendingTimers).toBe(1)
    await clock.runAll(1)
    expect(clock.pendingTimers).toBe(0)
  })
})

// Whether a wait holds the process open, read from Node's list of referenced handles: a
// referenced timer is listed as a 'Timeout', an unreferenced one is not. Real timers, but
// nothing waits for them: each wait is aborted (or its policy's attempt settled) at once.
describe('which system-clock timers hold the process open', () => {
  const heldTimers = (): number =>
    process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length

  it('a sleep does, so a script awaiting it is resumed instead of ending', async () => {
    const before = heldTimers()
    const stop = new AbortController()
    const slept = sleep(systemClock, 60_000, stop.signal)
    expect(heldTimers()).toBe(before + 1)
    stop.abort()
    await expect(slept).rejects.toMatchObject({ code: 'ABORTED' })
    expect(heldTimers()).toBe(before)
  })

  it('a sleep longer than Node allows does too, slice after slice', async () => {
    const before = heldTimers()
    const stop = new AbortController()
    const slept = sleep(systemClock, 3 * maxNodeTimerMs, stop.signal)
    expect(heldTimers()).toBe(before + 1)
    stop.abort()
    await expect(slept).rejects.toMatchObject({ code: 'ABORTED' })
  })

  it('a retry backoff does', async () => {
    // The backoff's own timer is asked, not the process-wide count: the count is read across
    // the ticks the first attempt takes, when another timer of the worker may come or go.
    const handles: TimerHandle[] = []
    const cleared: TimerHandle[] = []
    const recording: Clock = {
      now: systemClock.now,
      setTimeout(callback, delay) {
        const handle = systemClock.setTimeout(callback, delay)
        handles.push(handle)
        return handle
      },
      clearTimeout(handle) {
        cleared.push(handle)
        systemClock.clearTimeout(handle)
      },
    }
    const stop = new AbortController()
    let attempts = 0
    const policy = retry({ maxAttempts: 3, baseDelayMs: 60_000, jitter: 'none', clock: recording })
    const run = policy.execute(async () => {
      attempts++
      throw new TimeoutError(10)
    }, stop.signal)
    for (let tick = 0; tick < 100 && handles.length === 0; tick++) {
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(attempts).toBe(1)
    expect(handles).toHaveLength(1)
    expect((handles[0] as { hasRef(): boolean }).hasRef()).toBe(true)
    stop.abort()
    await expect(run).rejects.toMatchObject({ code: 'ABORTED' })
    expect(cleared).toEqual(handles)
  })

  it('a bounded wait (within) does while it waits, and lets go once it settles', async () => {
    // A saga worker's stop({ timeoutMs }) waits this way for steps that may never settle: with
    // the timer unreferenced, a script awaiting the stop ended under it (exit code 13).
    const before = heldTimers()
    const stop = new AbortController()
    const never = new Promise<never>(() => {})
    const waited = within(never, systemClock, 60_000, () => new Error('gave up'), stop.signal)
    expect(heldTimers()).toBe(before + 1)
    stop.abort()
    await expect(waited).rejects.toMatchObject({ code: 'ABORTED' })
    expect(heldTimers()).toBe(before)
    let settle: (value: string) => void = () => {}
    const work = new Promise<string>((resolve) => {
      settle = resolve
    })
    const done = within(work, systemClock, 60_000, () => new Error('gave up'))
    expect(heldTimers()).toBe(before + 1)
    settle('ok')
    await expect(done).resolves.toBe('ok')
    expect(heldTimers()).toBe(before)
  })

  it('a plain clock timer (a cooldown, an idle timer) does not', () => {
    const before = heldTimers()
    const handle = systemClock.setTimeout(() => {}, 60_000)
    const long = systemClock.setTimeout(() => {}, 3 * maxNodeTimerMs)
    expect(heldTimers()).toBe(before)
    systemClock.clearTimeout(handle)
    systemClock.clearTimeout(long)
  })
})

// sleep's clock is checked like every clock option: a wrong value used to fail deep inside
// with a bare TypeError (`clock.setTimeout is not a function`), or, with delay 0 and no
// signal, to be accepted without a look.
describe('sleep refuses a clock that is not a Clock', () => {
  it.each([
    ['undefined', undefined, 10],
    ['null', null, 10],
    ['Date', Date, 10],
    ['an object without clearTimeout', { now: (): number => 0, setTimeout: (): number => 0 }, 10],
    ['a string, even for a wait of 0', 'system', 0],
  ])('%s, rejecting with INVALID_OPTION naming sleep.clock', async (_, clock, delayMs) => {
    await expect(sleep(clock as unknown as Clock, delayMs)).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      option: 'sleep.clock',
    })
  })

  it('before it looks at the signal', async () => {
    await expect(sleep(null as unknown as Clock, 10, AbortSignal.abort())).rejects.toMatchObject({
      option: 'sleep.clock',
    })
  })
})

// The delay was not checked: NaN, undefined or a negative delay was read as Node's timers read
// it (at once), and a string ('25') as its number, so a delay computed wrongly or read from
// configuration unparsed went by without a word.
describe('sleep refuses a delay that is not a number of milliseconds', () => {
  it.each([
    ['NaN', Number.NaN],
    ['undefined', undefined],
    ['null', null],
    ['a numeric string', '25'],
    ['an object', {}],
    ['a negative number', -1],
    ['-Infinity', Number.NEGATIVE_INFINITY],
  ])('%s, rejecting with INVALID_OPTION naming sleep.delayMs', async (_, delayMs) => {
    const clock = new ManualClock()
    await expect(sleep(clock, delayMs as unknown as number)).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      option: 'sleep.delayMs',
    })
    await expect(
      sleep(clock, delayMs as unknown as number, new AbortController().signal),
    ).rejects.toMatchObject({ option: 'sleep.delayMs' })
    expect(clock.nextTimerAt()).toBeUndefined()
  })

  it('takes 0, a fraction and Infinity (until the signal aborts)', async () => {
    const clock = new ManualClock()
    await expect(sleep(clock, 0)).resolves.toBeUndefined()
    const fraction = sleep(clock, 0.5)
    await clock.advance(0.5)
    await expect(fraction).resolves.toBeUndefined()
    const stop = new AbortController()
    const forever = sleep(clock, Number.POSITIVE_INFINITY, stop.signal)
    await clock.advance(1e15)
    stop.abort('done')
    await expect(forever).rejects.toMatchObject({ code: 'ABORTED' })
  })
})
