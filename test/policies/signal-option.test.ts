// A signal that is not an AbortSignal was silently ignored by most policies (the call ran as if
// none was given, so the caller believed it could cancel) and failed with a bare TypeError
// (`parent.addEventListener is not a function`) in timeout() and some pipelines. Every
// policy's execute now rejects it with INVALID_OPTION naming the parameter, before fn runs.
import { describe, expect, it } from 'vitest'
import { retry } from '../../src/index.js'
import { ManualClock } from '../../src/testing/manual-clock.js'
import { everyPolicy as policies } from './every-policy.js'

describe('policies refuse a signal that is not an AbortSignal', () => {
  for (const [test, name, make] of policies) {
    it(`${test}: execute(fn, signal)`, async () => {
      const policy = make()
      let runs = 0
      for (const signal of ['abort', {}, { aborted: false }, null]) {
        const call = policy.execute(() => ++runs, signal as unknown as AbortSignal)
        await expect(call).rejects.toMatchObject({
          code: 'INVALID_OPTION',
          option: `${name}.execute(signal)`,
        })
      }
      expect(runs).toBe(0)
      // Undefined and a real signal are still fine.
      await expect(policy.execute(() => 'ok')).resolves.toBe('ok')
      await expect(policy.execute(() => 'ok', new AbortController().signal)).resolves.toBe('ok')
    })
  }
})

// A signal that is an AbortSignal in all but its class: another realm's (a jsdom window's) or a
// polyfill's (abort-controller), which policies honoured through addEventListener before they
// checked signals; refusing it broke callers that were cancelling correctly.
class ForeignSignal extends EventTarget {
  aborted = false
  reason: unknown = undefined
  onabort: ((event: Event) => void) | null = null
  throwIfAborted(): void {
    if (this.aborted) throw this.reason
  }
  abort(reason: unknown): void {
    this.aborted = true
    this.reason = reason
    this.dispatchEvent(new Event('abort'))
  }
}

describe('policies take a signal of another realm or a polyfill', () => {
  for (const [test, , make] of policies) {
    it(`${test}: execute(fn, signal) runs fn`, async () => {
      const signal = new ForeignSignal() as unknown as AbortSignal
      await expect(make().execute(() => 'ok', signal)).resolves.toBe('ok')
    })
  }

  it('retry: aborting it ends the backoff sleep', async () => {
    const clock = new ManualClock()
    const signal = new ForeignSignal()
    const policy = retry({ maxAttempts: 3, baseDelayMs: 10_000, shouldRetry: () => true, clock })
    const call = policy.execute(
      () => {
        throw new Error('transient')
      },
      signal as unknown as AbortSignal,
    )
    const outcome = call.catch((error: unknown) => error)
    await clock.advance(0)
    signal.abort('stop')
    expect(await outcome).toMatchObject({ code: 'ABORTED' })
  })
})
