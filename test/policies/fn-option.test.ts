// A `fn` that is not a function failed with a bare TypeError (`fn is not a function`,
// `this.fn is not a function` in a pipeline); a circuit breaker counted that TypeError as a
// downstream failure (three execute(undefined) opened a consecutive-3 circuit) and a fallback
// resolved its fallback value, hiding the caller's bug. Every policy's execute now rejects it
// with INVALID_OPTION naming the parameter, before anything runs or is counted.
import { describe, expect, it } from 'vitest'
import { circuitBreaker, pipeline, timeout } from '../../src/index.js'
import { type Executes, everyPolicy } from './every-policy.js'

const policies: ReadonlyArray<readonly [string, string, () => Executes]> = [
  ...everyPolicy,
  ['a hard timeout', 'timeout', () => timeout(1000, { mode: 'hard' })],
  ['an empty pipeline', 'pipeline', () => pipeline()],
]

describe('policies refuse a fn that is not a function', () => {
  for (const [test, name, make] of policies) {
    it(`${test}: execute(fn)`, async () => {
      const policy = make()
      for (const fn of [undefined, null, 42, 'fn', {}, Promise.resolve('value')]) {
        const call = policy.execute(fn as unknown as () => unknown)
        await expect(call).rejects.toMatchObject({
          code: 'INVALID_OPTION',
          option: `${name}.execute(fn)`,
          expected: 'a function',
        })
      }
      await expect(policy.execute(undefined as unknown as () => unknown)).rejects.toThrow(
        `${name}.execute(fn): expected a function, got undefined`,
      )
      // A function is still run.
      await expect(policy.execute(() => 'ok')).resolves.toBe('ok')
    })
  }

  it('a circuit breaker does not count the refusal as a downstream failure', async () => {
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 3 } })
    for (let i = 0; i < 3; i++) {
      await expect(breaker.execute(undefined as unknown as () => unknown)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
      })
    }
    expect(breaker.state).toBe('closed')
    breaker.dispose()
  })
})
