// A retry policy's jitter the saga refuses names the values it takes, as the policy's own
// refusal does, under the step's path (it said only "a valid value", found by exploratory
// testing).
import { describe, expect, it } from 'vitest'
import { defineSaga } from '../../src/saga/index.js'

describe('a saga step retry option the retry policy refuses', () => {
  it.each([false, 'lots'])('jitter %j lists the values it takes', (jitter) => {
    const define = () =>
      defineSaga({
        name: 'p6',
        version: 1,
        steps: [{ name: 'b', action: async () => {}, retry: { jitter: jitter as never } }],
      })
    expect(define).toThrow(
      `saga "p6".steps["b"].retry.jitter: expected one of "full", "equal", "decorrelated", "none", got ${JSON.stringify(jitter)}`,
    )
  })
})
