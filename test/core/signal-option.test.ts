// The shared check for `signal` options (core/validate.ts), and sleep(), the root export that
// takes one: a value that was not an AbortSignal failed inside sleep with a bare TypeError
// (`signal?.addEventListener is not a function`) after arming its timer.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { checkSignal, signalRefusal } from '../../src/core/validate.js'
import { sleep } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

const notSignals: readonly unknown[] = ['abort', {}, { aborted: false }, null, 0]

describe('signal options', () => {
  it('checkSignal passes undefined and AbortSignals, refuses anything else naming the option', () => {
    const signal = new AbortController().signal
    expect(checkSignal('options.signal', undefined)).toBeUndefined()
    expect(checkSignal('options.signal', signal)).toBe(signal)
    for (const value of notSignals) {
      expect(() => checkSignal('options.signal', value)).toThrow(InvalidOptionError)
      expect(() => checkSignal('options.signal', value)).toThrow(
        /options\.signal: expected an AbortSignal/,
      )
    }
  })

  it('signalRefusal answers a rejection instead of throwing', async () => {
    expect(signalRefusal('execute(signal)', undefined)).toBeUndefined()
    expect(signalRefusal('execute(signal)', AbortSignal.abort())).toBeUndefined()
    for (const value of notSignals) {
      await expect(signalRefusal('execute(signal)', value)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'execute(signal)',
      })
    }
  })

  it('sleep rejects a signal that is not an AbortSignal without arming a timer', async () => {
    const clock = new ManualClock(0)
    for (const value of notSignals) {
      await expect(sleep(clock, 1000, value as AbortSignal)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'sleep.signal',
      })
    }
    expect(clock.pendingTimers).toBe(0)
  })
})
