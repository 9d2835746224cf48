// The process-wide timer queue of systemClock keeps its one timer armed when idle. systemClock
// looks the global timers up at call time, so fake timers drive it; but a timer armed under one
// fake clock belongs to it: after uninstall() (or under the next fake clock) it never fires, and
// a timeout later than the time it was armed for reused it and never ran out. Any test suite
// mixing fake and real timers in one worker hung.
import FakeTimers from '@sinonjs/fake-timers'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { PolicyContext } from '../../src/policies/types.js'

// Work that only ends when its signal aborts.
const hang = ({ signal }: PolicyContext) =>
  new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)))

const codeOf = (promise: Promise<unknown>) =>
  promise.then(
    () => 'settled',
    (error: { code?: string }) => error.code,
  )

let installed: ReturnType<typeof FakeTimers.install> | undefined
// Only what systemClock reads. By default the fake clock also takes setImmediate, setInterval,
// hrtime and performance: something vitest's worker scheduled with one of them during a test
// was dropped with the clock at uninstall(), and a fresh-clone CI run hung after this file had
// passed (its worker idle, with no timer left, never reporting the file done).
const install = (now: number) => {
  installed = FakeTimers.install({ now, toFake: ['setTimeout', 'clearTimeout', 'Date'] })
  return installed
}
afterEach(() => {
  installed?.uninstall()
  installed = undefined
})

describe('timer queue on systemClock across fake clocks', () => {
  it('a timeout under a second fake clock runs out after one used under the first', async () => {
    const first = install(0)
    await timeout(1000).execute(() => 'fast')
    first.uninstall()
    const second = install(5000)
    const result = codeOf(timeout(50).execute(hang))
    await second.tickAsync(50)
    expect(await result).toBe('TIMEOUT')
  })

  it('a call still waiting under the first fake clock runs out once the second ticks', async () => {
    const t = timeout(100)
    const first = install(0)
    const stranded = codeOf(t.execute(hang))
    first.uninstall()
    const second = install(5000)
    // Same policy: appended to its list behind the stranded call, whose time is long past.
    const result = codeOf(t.execute(hang))
    await second.tickAsync(100)
    expect(await stranded).toBe('TIMEOUT')
    expect(await result).toBe('TIMEOUT')
  })

  it('pipelines and deadlines run out on a later fake clock too', async () => {
    const first = install(0)
    await pipeline(timeout(20), retry()).execute(() => 'fast')
    first.uninstall()
    const second = install(5000)
    const piped = codeOf(pipeline(timeout(500), retry(), timeout(100)).execute(hang))
    const deadline = withDeadline(
      100,
      () =>
        new Promise((_, reject) =>
          currentDeadline()!.signal.addEventListener('abort', () => reject('deadline aborted')),
        ),
    ).catch((error: unknown) => error)
    // The inner timeout runs out at 100 and retry() tries again; the outer one ends it at 500.
    await second.tickAsync(500)
    expect(await piped).toBe('TIMEOUT')
    expect(await deadline).toBe('deadline aborted')
  })

  it('a real timeout runs out after a call under fake timers', async () => {
    const first = install(0)
    await timeout(1000).execute(() => 'fast')
    first.uninstall()
    installed = undefined
    expect(await codeOf(timeout(1).execute(hang))).toBe('TIMEOUT')
  })

  it('a real timer left armed is cleared with the real clearTimeout, not the fake one', async () => {
    await timeout(60_000).execute(() => 'fast')
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {})
    try {
      const fake = install(0)
      const result = codeOf(timeout(50).execute(hang))
      await fake.tickAsync(50)
      expect(await result).toBe('TIMEOUT')
      expect(warn).not.toHaveBeenCalled()
    } finally {
      warn.mockRestore()
    }
  })
})
