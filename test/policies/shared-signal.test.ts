// One caller's AbortSignal shared by many concurrent calls of a policy: Node warns
// (MaxListenersExceededWarning) once more than 10 listeners wait on one signal. The policies
// listen to a caller's signal through one shared listener per signal, removed with the last call.
import { getEventListeners } from 'node:events'
import { describe, expect, it } from 'vitest'
import { bulkhead, pipeline, retry, timeout } from '../../src/index.js'
import type { PolicyContext } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

interface Executes {
  execute<T>(fn: (ctx: PolicyContext) => Promise<T>, signal?: AbortSignal): Promise<T>
}

const transient = () => Object.assign(new Error('reset'), { code: 'ECONNRESET' })

// [name, the policy, how a call waits: reading ctx.signal until released, or failing once so
// that it sleeps in a retry backoff]
const cases: ReadonlyArray<readonly [string, (clock: ManualClock) => Executes, 'hold' | 'fail']> = [
  ['timeout (cooperative)', (clock) => timeout(10_000, { clock }), 'hold'],
  ['timeout (hard)', (clock) => timeout(10_000, { clock, mode: 'hard' }), 'hold'],
  [
    'retry, in its backoff',
    (clock) => retry({ clock, baseDelayMs: 1_000, jitter: 'none' }),
    'fail',
  ],
  ['a fused pipeline', (clock) => pipeline(timeout(10_000, { clock }), retry({ clock })), 'hold'],
  [
    'a linked pipeline, in a retry backoff',
    (clock) =>
      pipeline(
        timeout(10_000, { clock }),
        retry({ clock, baseDelayMs: 1_000, jitter: 'none' }),
        timeout(5_000, { clock }),
      ),
    'fail',
  ],
  ['bulkhead, queued', (clock) => bulkhead({ maxConcurrent: 1, maxQueued: 100, clock }), 'hold'],
]

describe('policies: one caller signal shared by many concurrent calls', () => {
  for (const [name, make, how] of cases) {
    it(`${name}: at most one listener on it, none once the calls settle`, async () => {
      const clock = new ManualClock()
      const policy = make(clock)
      const signal = new AbortController().signal
      let release: () => void = () => {}
      const released = new Promise<void>((resolve) => {
        release = resolve
      })
      const calls = Array.from({ length: 30 }, () =>
        policy.execute(async (ctx) => {
          if (how === 'fail' && ctx.attempt === 1) throw transient()
          // Reading the signal links the policies' scopes to the caller's signal.
          void ctx.signal
          await released
          return 'ok'
        }, signal),
      )
      // Let every call reach its wait (the attempt, a backoff sleep, the bulkhead queue).
      for (let i = 0; i < 20; i++) await Promise.resolve()
      expect(getEventListeners(signal, 'abort').length).toBeLessThanOrEqual(1)
      release()
      await clock.advance(1_000)
      expect(await Promise.all(calls)).toEqual(Array(30).fill('ok'))
      expect(getEventListeners(signal, 'abort')).toHaveLength(0)
    })
  }

  it('aborting it ends every call, each told once, and leaves no listener', async () => {
    const clock = new ManualClock()
    const policy = pipeline(timeout(10_000, { clock }), retry({ clock }))
    const controller = new AbortController()
    let runs = 0
    const calls = Array.from({ length: 30 }, () =>
      policy
        .execute(
          (ctx) =>
            new Promise<never>((_resolve, reject) => {
              runs++
              ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))
            }),
          controller.signal,
        )
        .catch((e: unknown) => e),
    )
    controller.abort(new Error('enough'))
    const errors = await Promise.all(calls)
    expect(runs).toBe(30)
    expect(errors.map((e) => (e as { code?: string }).code)).toEqual(Array(30).fill('ABORTED'))
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
  })
})
