import { describe, expect, expectTypeOf, it } from 'vitest'
import {
  BrokenCircuitError,
  bulkhead,
  circuitBreaker,
  type FallbackEvent,
  type FallbackOptions,
  type FallbackPolicy,
  fallback,
  InvalidOptionError,
  pipeline,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

describe('fallback', () => {
  it("resolves to fn's value when fn succeeds, without calling the fallback", async () => {
    let called = false
    const policy = fallback(() => {
      called = true
      return 'substitute'
    })
    await expect(policy.execute(() => 'real')).resolves.toBe('real')
    expect(called).toBe(false)
  })

  it('replaces a failure with a value', async () => {
    const policy = fallback('cached')
    await expect(policy.execute(() => Promise.reject(new Error('down')))).resolves.toBe('cached')
    await expect(
      policy.execute(() => {
        throw new Error('sync')
      }),
    ).resolves.toBe('cached')
  })

  it('calls a fallback function with the error and context, and awaits it', async () => {
    const controller = new AbortController()
    const policy = fallback(async (error, context) => {
      await Promise.resolve()
      return `${(error as Error).message} @${context.attempt} ${context.signal === controller.signal}`
    })
    await expect(
      policy.execute(() => Promise.reject(new Error('down')), controller.signal),
    ).resolves.toBe('down @1 true')
  })

  it('rethrows errors shouldFallback rejects', async () => {
    const policy = fallback('x', {
      shouldFallback: (error) => (error as { status?: number }).status === 503,
    })
    await expect(
      policy.execute(() =>
        Promise.reject(Object.assign(new Error('unavailable'), { status: 503 })),
      ),
    ).resolves.toBe('x')
    await expect(
      policy.execute(() => Promise.reject(Object.assign(new Error('bad'), { status: 400 }))),
    ).rejects.toThrow('bad')
  })

  it("never hides the caller's own abort", async () => {
    const controller = new AbortController()
    const policy = fallback('x')
    const call = policy.execute(
      ({ signal }) =>
        new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
      controller.signal,
    )
    controller.abort(new Error('cancelled'))
    await expect(call).rejects.toThrow('cancelled')
  })

  it('refuses an already-aborted call with AbortedError without running fn, as every policy does', async () => {
    const controller = new AbortController()
    controller.abort(new Error('gone'))
    let ran = false
    const run = () => {
      ran = true
      return 'real'
    }
    await expect(fallback('x').execute(run, controller.signal)).rejects.toMatchObject({
      code: 'ABORTED',
    })
    await expect(
      pipeline(fallback('x'), circuitBreaker()).execute(run, controller.signal),
    ).rejects.toMatchObject({ code: 'ABORTED' })
    expect(ran).toBe(false)
  })

  it("rejects with the fallback function's own error when it fails too", async () => {
    const policy = fallback(() => {
      throw new Error('no cache either')
    })
    await expect(policy.execute(() => Promise.reject(new Error('down')))).rejects.toThrow(
      'no cache either',
    )
  })

  it('emits a fallback event with the replaced error', async () => {
    const policy = fallback(0)
    const events: FallbackEvent[] = []
    policy.events.on((e) => events.push(e))
    await policy.execute(() => 1)
    await policy.execute(() => Promise.reject(new Error('down')))
    expect(events).toEqual([{ type: 'fallback', error: new Error('down') }])
  })

  it('answers for an open circuit when placed outermost, with the union type', async () => {
    const clock = new ManualClock()
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
    const seen: unknown[] = []
    const policy = pipeline(
      fallback((error) => {
        seen.push(error)
        return [] as string[]
      }),
      breaker,
    )
    const result = policy.execute(async () => {
      throw new Error('down')
    })
    expectTypeOf(result).toEqualTypeOf<Promise<string[]>>()
    await expect(result).resolves.toEqual([])
    const mixed = policy.execute(async () => 42)
    expectTypeOf(mixed).toEqualTypeOf<Promise<number | string[]>>()
    await expect(mixed).resolves.toEqual([])
    expect(seen[1]).toBeInstanceOf(BrokenCircuitError)
  })

  // A promise is truthy: an async shouldFallback (a JavaScript caller's, or one cast past the
  // types) made every failure fall back, the 400s it meant to let through included.
  it.each([
    ['directly', (policy: FallbackPolicy<string>, fn: () => Promise<never>) => policy.execute(fn)],
    [
      'fused',
      (policy: FallbackPolicy<string>, fn: () => Promise<never>) =>
        pipeline(policy, bulkhead({ maxConcurrent: 1 })).execute(fn),
    ],
  ] as const)('refuses a shouldFallback that returns a promise, naming it (%s)', async (_, run) => {
    const policy = fallback('x', {
      shouldFallback: (async () => false) as unknown as FallbackOptions['shouldFallback'],
    })
    const events: FallbackEvent[] = []
    policy.events.on((e) => events.push(e))
    await expect(run(policy, () => Promise.reject(new Error('bad request')))).rejects.toMatchObject(
      {
        code: 'INVALID_OPTION',
        option: 'fallback.shouldFallback',
      },
    )
    expect(events).toEqual([])
  })

  it('rejects a shouldFallback that is not a function', () => {
    let error: unknown
    try {
      fallback('x', { shouldFallback: true } as unknown as FallbackOptions)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('fallback.shouldFallback')
  })
})
