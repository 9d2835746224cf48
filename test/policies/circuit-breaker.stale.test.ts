import { describe, expect, it } from 'vitest'
import {
  type CircuitBreakerEvent,
  type CircuitBreakerOptions,
  circuitBreaker,
  type Policy,
  pipeline,
  timeout,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

// A call admitted in an earlier breaker epoch (before a state change or reset()) is not
// recorded when it ends. Its event must say so: an observer that counts `success` and
// `failure` events must count exactly what the breaker counted.

interface Deferred {
  promise: Promise<string>
  resolve(value: string): void
  reject(error: unknown): void
}

function deferred(): Deferred {
  let resolve!: (value: string) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<string>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

const boom = () => Promise.reject(new Error('boom'))

function setup(
  options: Omit<CircuitBreakerOptions, 'clock'> = {},
  wrap: (breaker: Policy, clock: ManualClock) => Policy = (b) => b,
) {
  const clock = new ManualClock(1_000)
  const breaker = circuitBreaker({
    window: { kind: 'consecutive', failures: 1 },
    cooldownMs: 10_000,
    ...options,
    clock,
  })
  const events: CircuitBreakerEvent[] = []
  breaker.events.on((e) => events.push(e))
  // The outcome events only: what a metrics exporter would count.
  const outcomes = () => events.filter((e) => e.type !== 'stateChange' && e.type !== 'rejected')
  return { clock, breaker, policy: wrap(breaker, clock), events, outcomes }
}

const compositions = [
  ['alone', undefined],
  [
    'in a fused pipeline',
    (breaker: Policy, clock: ManualClock) => pipeline(breaker, timeout(60_000, { clock })),
  ],
] as const

describe('circuitBreaker: outcomes of calls from an earlier epoch', () => {
  for (const [name, wrap] of compositions) {
    it(`a call started while closed that fails after the circuit opened is no failure event (${name})`, async () => {
      const { breaker, policy, outcomes } = setup({}, wrap)
      const late = deferred()
      const lateCall = policy.execute(() => late.promise).catch((e: unknown) => e)
      await policy.execute(boom).catch(() => {})
      expect(breaker.state).toBe('open')
      const lateError = new Error('late boom')
      late.reject(lateError)
      expect(await lateCall).toBe(lateError)
      expect(outcomes()).toEqual([
        { type: 'failure', reason: 'error', error: expect.any(Error) },
        { type: 'ignored', error: lateError, stale: true },
      ])
    })

    it(`a call started while closed that succeeds after the circuit opened is no success event (${name})`, async () => {
      const { clock, breaker, policy, outcomes } = setup({}, wrap)
      const late = deferred()
      const lateCall = policy.execute(() => late.promise)
      await policy.execute(boom).catch(() => {})
      await clock.advance(10_000)
      expect(breaker.state).toBe('half-open')
      late.resolve('late')
      await expect(lateCall).resolves.toBe('late')
      expect(breaker.state).toBe('half-open')
      expect(outcomes().slice(1)).toEqual([{ type: 'ignored', error: undefined, stale: true }])
    })

    it(`a slow call from an earlier epoch is no slow failure (${name})`, async () => {
      const { clock, breaker, policy, outcomes } = setup({ slowCallMs: 500 }, wrap)
      const late = deferred()
      const lateCall = policy.execute(() => late.promise)
      await policy.execute(boom).catch(() => {})
      await clock.advance(1_000)
      late.resolve('late')
      await expect(lateCall).resolves.toBe('late')
      expect(breaker.state).toBe('open')
      expect(outcomes().slice(1)).toEqual([{ type: 'ignored', error: undefined, stale: true }])
    })
  }

  it('a half-open probe superseded by a failed sibling probe is neither success nor failure', async () => {
    const { clock, breaker, outcomes } = setup({ halfOpenProbes: 2 })
    await breaker.execute(boom).catch(() => {})
    await clock.advance(10_000)
    expect(breaker.state).toBe('half-open')
    const first = deferred()
    const second = deferred()
    const firstCall = breaker.execute(() => first.promise).catch((e: unknown) => e)
    const secondCall = breaker.execute(() => second.promise)
    first.reject(new Error('probe failed'))
    await firstCall
    expect(breaker.state).toBe('open')
    second.resolve('fine')
    await expect(secondCall).resolves.toBe('fine')
    expect(outcomes().slice(1)).toEqual([
      { type: 'failure', reason: 'error', error: expect.any(Error) },
      { type: 'ignored', error: undefined, stale: true },
    ])
  })

  it('a probe superseded by reset() is neither success nor failure, and isFailure is not asked', async () => {
    const asked: unknown[] = []
    const { clock, breaker, outcomes } = setup({
      isFailure: (error) => {
        asked.push(error)
        return true
      },
    })
    await breaker.execute(boom).catch(() => {})
    await clock.advance(10_000)
    const probe = deferred()
    const probeCall = breaker.execute(() => probe.promise).catch((e: unknown) => e)
    breaker.reset()
    const probeError = new Error('probe failed')
    probe.reject(probeError)
    expect(await probeCall).toBe(probeError)
    expect(breaker.state).toBe('closed')
    expect(asked).toHaveLength(1) // the first failure only
    expect(outcomes().slice(1)).toEqual([{ type: 'ignored', error: probeError, stale: true }])
  })

  it('a call of the current epoch still reports success and failure without the flag', async () => {
    const { breaker, outcomes } = setup({ window: { kind: 'consecutive', failures: 3 } })
    await breaker.execute(() => Promise.resolve('ok'))
    await breaker.execute(boom).catch(() => {})
    const caller = new AbortController()
    const aborted = breaker.execute(() => {
      caller.abort()
      return Promise.reject(new Error('cut off'))
    }, caller.signal)
    await aborted.catch(() => {})
    expect(outcomes()).toEqual([
      { type: 'success' },
      { type: 'failure', reason: 'error', error: expect.any(Error) },
      { type: 'ignored', error: expect.any(Error) },
    ])
  })
})
