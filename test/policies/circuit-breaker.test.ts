import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import {
  AbortedError,
  BreakwaterError,
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  type CircuitBreakerEvent,
  type CircuitBreakerOptions,
  circuitBreaker,
  currentDeadline,
  InvalidOptionError,
  IsolatedCircuitError,
  type Policy,
  pipeline,
  retry,
  timeout,
  withDeadline,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { recordOtelCounters } from '../support/otel-counters.js'

// Records what the breaker adds to its transitions counter. Registered before any breaker in
// this file changes state, because the counter is created on the first transition.
const counted = recordOtelCounters()

interface Deferred<T> {
  promise: Promise<T>
  resolve(value: T): void
  reject(error: unknown): void
}

function deferred<T = string>(): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

const boom = (): Promise<never> => Promise.reject(new Error('boom'))
const ok = (): Promise<string> => Promise.resolve('ok')
const notFound = (): Promise<never> =>
  Promise.reject(Object.assign(new Error('not found'), { status: 404 }))

function setup(options: Omit<CircuitBreakerOptions, 'clock'> = {}) {
  const clock = new ManualClock(1_000)
  const breaker = circuitBreaker({ cooldownMs: 10_000, ...options, clock })
  const events: CircuitBreakerEvent[] = []
  breaker.events.on((e) => events.push(e))
  const transitions = () =>
    events.flatMap((e) => (e.type === 'stateChange' ? [`${e.from}->${e.to}`] : []))
  return { clock, breaker, events, transitions }
}

async function failTimes(
  breaker: { execute: (fn: () => Promise<never>) => Promise<unknown> },
  n: number,
) {
  for (let i = 0; i < n; i++) await expect(breaker.execute(boom)).rejects.toThrow('boom')
}

describe('circuitBreaker: closed -> open', () => {
  it('opens after `failures` consecutive failures; a success starts the count again', async () => {
    const { breaker, transitions } = setup({ window: { kind: 'consecutive', failures: 3 } })
    await failTimes(breaker, 2)
    await breaker.execute(ok)
    await failTimes(breaker, 2)
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('open')
    expect(transitions()).toEqual(['closed->open'])
  })

  it('count window: opens when the failure rate over the last `size` calls reaches the threshold, after minimumCalls', async () => {
    const { breaker } = setup({
      window: { kind: 'count', size: 4, failureRateThreshold: 0.5, minimumCalls: 3 },
    })
    await failTimes(breaker, 1)
    await breaker.execute(ok)
    expect(breaker.state).toBe('closed') // 1 of 2, below minimumCalls
    await breaker.execute(ok)
    expect(breaker.state).toBe('closed') // 1 of 3 = 0.33
    await breaker.execute(ok)
    await breaker.execute(ok) // window now holds ok ok ok ok
    await failTimes(breaker, 1) // ok ok ok F = 0.25
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1) // ok ok F F = 0.5
    expect(breaker.state).toBe('open')
  })

  it('count window: old outcomes slide out of the window', async () => {
    const { breaker } = setup({
      window: { kind: 'count', size: 3, failureRateThreshold: 1, minimumCalls: 3 },
    })
    await failTimes(breaker, 2)
    await breaker.execute(ok)
    await failTimes(breaker, 2) // F ok F F -> last three: ok F F
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1) // F F F
    expect(breaker.state).toBe('open')
  })

  it('time window: failures older than durationMs expire', async () => {
    const { clock, breaker } = setup({
      window: {
        kind: 'time',
        durationMs: 10_000,
        buckets: 10,
        failureRateThreshold: 0.5,
        minimumCalls: 4,
      },
    })
    await failTimes(breaker, 3)
    await clock.advance(10_000) // the three failures leave the window
    await breaker.execute(ok)
    await breaker.execute(ok)
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('closed') // 1 of 3 counted calls, below minimumCalls
    await clock.advance(5_000)
    await failTimes(breaker, 1) // 2 of 4 within the last 10 s
    expect(breaker.state).toBe('open')
  })

  it('time window: a long gap clears every bucket', async () => {
    const { clock, breaker } = setup({
      window: {
        kind: 'time',
        durationMs: 1_000,
        buckets: 4,
        failureRateThreshold: 1,
        minimumCalls: 2,
      },
    })
    await failTimes(breaker, 1)
    await clock.advance(1_000_000)
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('open')
  })

  it('counts a slow success as a failure when slowCallMs is set', async () => {
    const { clock, breaker, events } = setup({
      window: { kind: 'consecutive', failures: 2 },
      slowCallMs: 100,
    })
    for (let i = 0; i < 2; i++) {
      const call = breaker.execute(
        () => new Promise((resolve) => clock.setTimeout(() => resolve('late'), 100)),
      )
      await clock.advance(100)
      await expect(call).resolves.toBe('late')
    }
    expect(breaker.state).toBe('open')
    expect(events.filter((e) => e.type === 'failure' && e.reason === 'slow')).toHaveLength(2)
  })

  it('counts a permanent (client) error as a success: the downstream answered', async () => {
    const { breaker, events } = setup({ window: { kind: 'consecutive', failures: 2 } })
    await failTimes(breaker, 1)
    await expect(breaker.execute(notFound)).rejects.toThrow('not found')
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('closed')
    expect(events.some((e) => e.type === 'success' && e.error !== undefined)).toBe(true)
  })

  it('does not hold a full inner bulkhead or a caller abort against the downstream', async () => {
    const { breaker, events } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await expect(
      breaker.execute(() => Promise.reject(new BulkheadRejectedError('full', 1, 0))),
    ).rejects.toThrow(BulkheadRejectedError)
    const controller = new AbortController()
    await expect(
      breaker.execute(() => {
        controller.abort()
        return Promise.reject(new AbortedError('gone'))
      }, controller.signal),
    ).rejects.toThrow(AbortedError)
    expect(breaker.state).toBe('closed')
    expect(events.filter((e) => e.type === 'ignored')).toHaveLength(2)
  })

  it('honours a custom isFailure', async () => {
    const { breaker } = setup({
      window: { kind: 'consecutive', failures: 1 },
      isFailure: (error) => (error as { status?: number }).status === 404,
    })
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('closed')
    await expect(breaker.execute(notFound)).rejects.toThrow()
    expect(breaker.state).toBe('open')
  })

  // A promise is truthy: an async isFailure (a JavaScript caller's, or one cast past the types)
  // counted every error as a failure, the 404s it meant to count as answers included, and
  // opened the circuit on them.
  it.each([
    ['directly', (breaker: Policy, fn: () => Promise<never>) => breaker.execute(fn)],
    [
      'fused',
      (breaker: Policy, fn: () => Promise<never>) =>
        pipeline(breaker, bulkhead({ maxConcurrent: 1 })).execute(fn),
    ],
  ] as const)(
    'refuses an isFailure that returns a promise, naming it, and records the call as ignored (%s)',
    async (_, run) => {
      const failure = Object.assign(new Error('not found'), { status: 404 })
      const answers = [
        async () => false,
        async () => {
          // Rejected: left unobserved, it would be an unhandled rejection.
          throw new Error('isFailure broke')
        },
      ]
      for (const answer of answers) {
        const { breaker, events } = setup({
          window: { kind: 'consecutive', failures: 1 },
          isFailure: answer as unknown as CircuitBreakerOptions['isFailure'],
        })
        const refused = run(breaker, () => Promise.reject(failure))
        await expect(refused).rejects.toBeInstanceOf(InvalidOptionError)
        await expect(refused).rejects.toMatchObject({
          code: 'INVALID_OPTION',
          option: 'circuitBreaker.isFailure',
        })
        expect(breaker.state).toBe('closed')
        expect(events).toEqual([{ type: 'ignored', error: failure }])
      }
    },
  )

  it('rejects an already aborted call without running it or counting it', async () => {
    const { breaker } = setup({ window: { kind: 'consecutive', failures: 1 } })
    let ran = false
    await expect(
      breaker.execute(() => {
        ran = true
        return 'x'
      }, AbortSignal.abort('no')),
    ).rejects.toThrow(AbortedError)
    expect(ran).toBe(false)
    expect(breaker.state).toBe('closed')
  })
  it.each([
    ['open', (b: ReturnType<typeof setup>) => failTimes(b.breaker, 1)],
    ['isolated', async (b: ReturnType<typeof setup>) => b.breaker.isolate()],
  ])('rejects an already aborted call as aborted while %s, not as a refusal', async (_, close) => {
    const b = setup({ window: { kind: 'consecutive', failures: 1 } })
    await close(b)
    const before = b.events.length
    const error = await b.breaker
      .execute(() => 'x', AbortSignal.abort('caller left'))
      .catch((e: unknown) => e)
    // Every policy answers a caller who already left with AbortedError, whatever its state;
    // a BROKEN_CIRCUIT here would also be counted as a rejection in events and metrics.
    expect(error).toBeInstanceOf(AbortedError)
    expect(b.events.slice(before)).toEqual([])
  })
})

describe('circuitBreaker: open', () => {
  it('fails fast with BrokenCircuitError carrying the cooldown left, without calling fn', async () => {
    const { clock, breaker, events } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    await clock.advance(4_000)
    let calls = 0
    const error = await breaker
      .execute(() => {
        calls++
        return 'x'
      })
      .catch((e: unknown) => e)
    expect(calls).toBe(0)
    expect(error).toBeInstanceOf(BrokenCircuitError)
    expect((error as BrokenCircuitError).code).toBe('BROKEN_CIRCUIT')
    expect((error as BrokenCircuitError).retryAfterMs).toBe(6_000)
    expect((error as BrokenCircuitError).retryable).toBe(false)
    expect(events.at(-1)).toEqual({ type: 'rejected', state: 'open', retryAfterMs: 6_000 })
  })

  it('moves to half-open by timer when the cooldown ends, with no call needed', async () => {
    const { clock, breaker, transitions } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    expect(clock.pendingTimers).toBe(1)
    await clock.advance(9_999)
    expect(breaker.state).toBe('open')
    await clock.advance(1)
    expect(breaker.state).toBe('half-open')
    expect(transitions()).toEqual(['closed->open', 'open->half-open'])
    expect(clock.pendingTimers).toBe(0)
  })

  it('dispose() clears the timer; the next call after the cooldown moves it on', async () => {
    const { clock, breaker } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    breaker.dispose()
    expect(clock.pendingTimers).toBe(0)
    await clock.advance(20_000)
    expect(breaker.state).toBe('open')
    await expect(breaker.execute(ok)).resolves.toBe('ok')
    expect(breaker.state).toBe('closed')
  })

  it('ignores outcomes of calls admitted before the circuit opened', async () => {
    const { clock, breaker } = setup({ window: { kind: 'consecutive', failures: 1 } })
    const late = deferred()
    const lateCall = breaker.execute(() => late.promise)
    await failTimes(breaker, 1)
    await clock.advance(10_000)
    expect(breaker.state).toBe('half-open')
    late.resolve('stale')
    await expect(lateCall).resolves.toBe('stale')
    // A success from before the cooldown is not a probe: the circuit stays half-open.
    expect(breaker.state).toBe('half-open')
  })
})

describe('circuitBreaker: half-open', () => {
  async function toHalfOpen(options: Omit<CircuitBreakerOptions, 'clock'> = {}, failures = 1) {
    const s = setup({ window: { kind: 'consecutive', failures: 1 }, ...options })
    await failTimes(s.breaker, failures)
    await s.clock.advance(s.clock.nextTimerAt()! - s.clock.now())
    expect(s.breaker.state).toBe('half-open')
    return s
  }

  it('admits halfOpenProbes concurrent probes and fails every other caller fast', async () => {
    const { breaker, transitions } = await toHalfOpen({ halfOpenProbes: 2 })
    const probes = [deferred(), deferred()]
    const calls = probes.map((p) => breaker.execute(() => p.promise))
    const rejected = await breaker.execute(ok).catch((e: unknown) => e)
    expect(rejected).toBeInstanceOf(BrokenCircuitError)
    expect((rejected as BrokenCircuitError).retryAfterMs).toBe(0)
    probes[0]!.resolve('a')
    await calls[0]
    expect(breaker.state).toBe('half-open') // one of two probes so far
    // The finished probe's slot is not reopened: two trial calls per half-open period.
    await expect(breaker.execute(ok)).rejects.toThrow(BrokenCircuitError)
    probes[1]!.resolve('b')
    await calls[1]
    expect(breaker.state).toBe('closed')
    expect(transitions()).toEqual(['closed->open', 'open->half-open', 'half-open->closed'])
  })

  it('closes with a fresh window after the probes succeed', async () => {
    const { breaker } = await toHalfOpen(
      {
        window: { kind: 'count', size: 4, failureRateThreshold: 0.5, minimumCalls: 2 },
      },
      2,
    )
    await breaker.execute(ok)
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1) // would be 3 of 4 with the old window; fresh: 1 of 1
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1) // 2 of 2
    expect(breaker.state).toBe('open')
  })

  it('a failed probe reopens with the cooldown restarted and grown up to maxCooldownMs', async () => {
    const { clock, breaker } = await toHalfOpen({
      cooldownMultiplier: 2,
      maxCooldownMs: 30_000,
    })
    const expected = [20_000, 30_000, 30_000]
    for (const cooldown of expected) {
      await failTimes(breaker, 1)
      expect(breaker.state).toBe('open')
      const error = (await breaker.execute(ok).catch((e: unknown) => e)) as BrokenCircuitError
      expect(error.retryAfterMs).toBe(cooldown)
      await clock.advance(cooldown)
      expect(breaker.state).toBe('half-open')
    }
    await breaker.execute(ok)
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1)
    const error = (await breaker.execute(ok).catch((e: unknown) => e)) as BrokenCircuitError
    expect(error.retryAfterMs).toBe(10_000) // closing restored the base cooldown
  })

  it('a zero cooldown stays 0 with an infinite cooldownMultiplier (0 * Infinity is not NaN)', async () => {
    const clock = new ManualClock(1_000)
    const breaker = circuitBreaker({
      clock,
      cooldownMs: 0,
      cooldownMultiplier: Number.POSITIVE_INFINITY,
      window: { kind: 'consecutive', failures: 1 },
    })
    const rejected: number[] = []
    breaker.events.on((event) => {
      if (event.type === 'rejected') rejected.push(event.retryAfterMs)
    })
    const gate = deferred()
    await breaker.execute(boom).catch(() => {})
    // Half-open on the next call (cooldown 0); the probe holds its slot while another is refused.
    const probe = breaker.execute(() => gate.promise)
    expect(breaker.state).toBe('half-open')
    gate.reject(new Error('boom'))
    await probe.catch(() => {})
    expect(breaker.state).toBe('open')
    // The grown cooldown is still 0: the next call is a probe again, not refused with NaN.
    await expect(breaker.execute(ok)).resolves.toBe('ok')
    expect(breaker.state).toBe('closed')
    expect(rejected.every((ms) => Number.isFinite(ms))).toBe(true)
  })

  it('a probe answered with a permanent error closes the circuit', async () => {
    const { breaker } = await toHalfOpen()
    await expect(breaker.execute(notFound)).rejects.toThrow('not found')
    expect(breaker.state).toBe('closed')
  })

  it('a probe aborted by its caller frees the slot for another probe', async () => {
    const { breaker } = await toHalfOpen()
    const controller = new AbortController()
    const aborted = breaker.execute(
      ({ signal }) =>
        new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
      controller.signal,
    )
    await expect(breaker.execute(ok)).rejects.toThrow(BrokenCircuitError)
    controller.abort(new Error('caller gave up'))
    await expect(aborted).rejects.toThrow('caller gave up')
    expect(breaker.state).toBe('half-open')
    await expect(breaker.execute(ok)).resolves.toBe('ok')
    expect(breaker.state).toBe('closed')
  })

  // A probe whose fn ignores its signal never settles: the breaker must not wait for it to give
  // the slot back, or every later call is refused for good. Direct, fused (a pipeline without a
  // timeout keeps a caller's signal on the fused path), under an outer timeout that runs out
  // (the probe's own time limit) and under a deadline that passes.
  const never = (): Promise<never> => new Promise<never>(() => {})
  it.each([
    [
      'direct',
      (_clock: ManualClock, breaker: Policy, signal: AbortSignal) => breaker.execute(never, signal),
    ],
    [
      'fused',
      (_clock: ManualClock, breaker: Policy, signal: AbortSignal) =>
        pipeline(breaker).execute(never, signal),
    ],
    [
      'under a timeout',
      (clock: ManualClock, breaker: Policy) =>
        pipeline(timeout(100, { clock }), breaker).execute(never),
    ],
    [
      'under a deadline',
      (clock: ManualClock, breaker: Policy) =>
        withDeadline(100, () => breaker.execute(never), { clock }),
    ],
  ] as const)(
    'a probe cut off by its caller (%s) gives its slot back although fn never settles',
    async (_, run) => {
      const { clock, breaker, events } = await toHalfOpen()
      const controller = new AbortController()
      void run(clock, breaker, controller.signal)
      await expect(breaker.execute(ok)).rejects.toThrow(BrokenCircuitError)
      events.length = 0
      controller.abort(new Error('caller gave up'))
      await clock.advance(100)
      expect(events).toMatchObject([{ type: 'ignored' }])
      expect(breaker.state).toBe('half-open')
      await expect(breaker.execute(ok)).resolves.toBe('ok')
      expect(breaker.state).toBe('closed')
    },
  )

  // The recommended stack puts the per-try timeout inside the breaker; a cooperative one waits
  // for fn, so a probe whose fn ignores its signal used to hold the slot for good there too.
  // Its timeout running out is the downstream's slowness: a failure, at once.
  it.each([
    ['a cooperative timeout', (clock: ManualClock) => [timeout(100, { clock })]],
    [
      'a cooperative timeout and a bulkhead',
      (clock: ManualClock) => [timeout(100, { clock }), bulkhead({ maxConcurrent: 1 })],
    ],
    ['a hard timeout', (clock: ManualClock) => [timeout(100, { clock, mode: 'hard' })]],
  ] as const)(
    'a probe whose own timeout (%s) runs out counts as a failure although fn never settles',
    async (_, inner) => {
      const { clock, breaker, events } = await toHalfOpen()
      void pipeline(breaker, ...inner(clock))
        .execute(never)
        .catch(() => {})
      events.length = 0
      await clock.advance(100)
      expect(events).toMatchObject([
        { type: 'failure', reason: 'error', error: { code: 'TIMEOUT' } },
        { type: 'stateChange', from: 'half-open', to: 'open' },
      ])
    },
  )

  it('a probe whose timeout runs out and whose isFailure throws rejects with that error and frees its slot', async () => {
    let throwing = false
    const { clock, breaker } = await toHalfOpen({
      isFailure: () => {
        if (throwing) throw new Error('isFailure broke')
        return true
      },
    })
    throwing = true
    const call = pipeline(breaker, timeout(100, { clock, mode: 'hard' })).execute(never)
    const settled = call.catch((error: unknown) => error)
    await clock.advance(100)
    expect(await settled).toMatchObject({ message: 'isFailure broke' })
    expect(breaker.state).toBe('half-open')
    throwing = false
    await expect(breaker.execute(ok)).resolves.toBe('ok')
  })

  it('a never-settling probe cut off after slowCallMs counts as slow at the abort', async () => {
    const { clock, breaker, events } = await toHalfOpen({ slowCallMs: 50 })
    const controller = new AbortController()
    void breaker.execute(never, controller.signal)
    await clock.advance(50)
    events.length = 0
    controller.abort()
    expect(events).toMatchObject([
      { type: 'failure', reason: 'slow' },
      { type: 'stateChange', from: 'half-open', to: 'open' },
    ])
  })

  it('a probe is reported once, at the abort, when fn settles after it', async () => {
    const { breaker, events } = await toHalfOpen()
    const controller = new AbortController()
    const gate = deferred()
    const call = breaker.execute(() => gate.promise, controller.signal)
    events.length = 0
    controller.abort(new Error('caller gave up'))
    expect(events).toEqual([{ type: 'ignored', error: new Error('caller gave up') }])
    gate.resolve('late')
    await expect(call).resolves.toBe('late')
    expect(events).toHaveLength(1)
    expect(breaker.state).toBe('half-open')
  })

  it('a probe aborted by its caller after slowCallMs counts as a slow failure', async () => {
    const { clock, breaker } = await toHalfOpen({ slowCallMs: 50 })
    const controller = new AbortController()
    const aborted = breaker.execute(
      ({ signal }) =>
        new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
      controller.signal,
    )
    await clock.advance(50)
    controller.abort()
    await expect(aborted).rejects.toThrow()
    expect(breaker.state).toBe('open')
  })

  it('a probe whose isFailure throws rejects with that error and frees its slot', async () => {
    let throwing = false
    const { breaker, clock } = await toHalfOpen({
      isFailure: () => {
        if (throwing) throw new Error('isFailure broke')
        return true
      },
    })
    // Fused (inside a pipeline) and direct: neither may keep the probe slot forever.
    const fused = pipeline(breaker, timeout(1_000, { clock }))
    throwing = true
    await expect(breaker.execute(boom)).rejects.toThrow('isFailure broke')
    await expect(fused.execute(boom)).rejects.toThrow('isFailure broke')
    expect(breaker.state).toBe('half-open')
    throwing = false
    await expect(breaker.execute(ok)).resolves.toBe('ok')
    expect(breaker.state).toBe('closed')
  })

  it('a slow probe reopens the circuit', async () => {
    const { clock, breaker } = await toHalfOpen({ slowCallMs: 50 })
    const call = breaker.execute(
      () => new Promise((resolve) => clock.setTimeout(() => resolve('slow'), 60)),
    )
    await clock.advance(60)
    await expect(call).resolves.toBe('slow')
    expect(breaker.state).toBe('open')
  })
})

describe('circuitBreaker: isolate and reset', () => {
  it('isolate() fails every call with IsolatedCircuitError until reset()', async () => {
    const { clock, breaker, transitions } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    breaker.isolate()
    expect(clock.pendingTimers).toBe(0) // no cooldown ends an isolation
    await clock.advance(60_000)
    const error = await breaker.execute(ok).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(IsolatedCircuitError)
    expect(BreakwaterError.is(error) && error.code).toBe('ISOLATED_CIRCUIT')
    breaker.isolate()
    breaker.reset()
    expect(breaker.state).toBe('closed')
    await expect(breaker.execute(ok)).resolves.toBe('ok')
    expect(transitions()).toEqual(['closed->open', 'open->isolated', 'isolated->closed'])
  })

  it('reset() from an outcome listener is not undone by the call that was reported', async () => {
    // The call was admitted before the listener's state change: it must not count afterwards.
    const { breaker, transitions } = setup({ window: { kind: 'consecutive', failures: 1 } })
    const off = breaker.events.on((e) => {
      if (e.type === 'failure') breaker.reset()
    })
    await failTimes(breaker, 1)
    off()
    expect(breaker.state).toBe('closed')
    expect(transitions()).toEqual([])

    // A failed half-open probe whose listener resets the circuit: the reset stands.
    const probe = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(probe.breaker, 1)
    await probe.clock.advance(10_000)
    expect(probe.breaker.state).toBe('half-open')
    probe.breaker.events.on((e) => {
      if (e.type === 'failure') probe.breaker.reset()
    })
    await failTimes(probe.breaker, 1)
    expect(probe.breaker.state).toBe('closed')
    expect(probe.transitions()).toEqual(['closed->open', 'open->half-open', 'half-open->closed'])
  })

  it('reset() from a rejected listener frees the next call, not the one already refused', async () => {
    // The refusal was decided before the listener ran (its event says so): the call that
    // triggered it still fails, with the refusal's own retryAfterMs, and never runs.
    const { breaker, events, transitions } = setup({ window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    const off = breaker.events.on((e) => {
      if (e.type === 'rejected') breaker.reset()
    })
    let ran = 0
    const refused = await breaker.execute(async () => ran++).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(BrokenCircuitError)
    expect((refused as BrokenCircuitError).retryAfterMs).toBe(10_000)
    expect(ran).toBe(0)
    expect(events.find((e) => e.type === 'rejected')).toEqual({
      type: 'rejected',
      state: 'open',
      retryAfterMs: 10_000,
    })
    expect(breaker.state).toBe('closed')
    off()
    await breaker.execute(async () => ran++)
    expect(ran).toBe(1)
    expect(transitions()).toEqual(['closed->open', 'open->closed'])

    // Isolated: the same, with the isolated refusal.
    const isolated = setup()
    isolated.breaker.isolate()
    isolated.breaker.events.on((e) => {
      if (e.type === 'rejected') isolated.breaker.reset()
    })
    await expect(isolated.breaker.execute(ok)).rejects.toBeInstanceOf(IsolatedCircuitError)
    expect(isolated.breaker.state).toBe('closed')
    await isolated.breaker.execute(ok)
  })

  it('reset() while closed forgets the window', async () => {
    const { breaker } = setup({ window: { kind: 'consecutive', failures: 2 } })
    await failTimes(breaker, 1)
    breaker.reset()
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('closed')
  })
})

describe('circuitBreaker: observability', () => {
  it('publishes state changes on breakwater:breaker:state-change', async () => {
    const messages: unknown[] = []
    const onMessage = (message: unknown) => messages.push(message)
    subscribe('breakwater:breaker:state-change', onMessage)
    try {
      const { breaker } = setup({ name: 'inventory', window: { kind: 'consecutive', failures: 1 } })
      await failTimes(breaker, 1)
      expect(messages).toEqual([
        expect.objectContaining({ name: 'inventory', from: 'closed', to: 'open' }),
      ])
    } finally {
      unsubscribe('breakwater:breaker:state-change', onMessage)
    }
  })

  it('counts transitions in the breakwater.breaker.transitions OpenTelemetry counter', async () => {
    counted.length = 0
    const { breaker } = setup({ name: 'orders', window: { kind: 'consecutive', failures: 1 } })
    await failTimes(breaker, 1)
    breaker.reset()
    expect(counted).toEqual([
      {
        name: 'breakwater.breaker.transitions',
        value: 1,
        attributes: { from: 'closed', to: 'open', breaker: 'orders' },
      },
      {
        name: 'breakwater.breaker.transitions',
        value: 1,
        attributes: { from: 'open', to: 'closed', breaker: 'orders' },
      },
    ])
  })

  it('emits success and failure events with the error', async () => {
    const { breaker, events } = setup()
    await breaker.execute(ok)
    await failTimes(breaker, 1)
    expect(events).toEqual([
      { type: 'success' },
      { type: 'failure', reason: 'error', error: new Error('boom') },
    ])
  })
})

describe('circuitBreaker: options', () => {
  const cases: Array<[string, CircuitBreakerOptions]> = [
    ['circuitBreaker.window.kind', { window: { kind: 'sliding' } as never }],
    ['circuitBreaker.window.failures', { window: { kind: 'consecutive', failures: 0 } }],
    ['circuitBreaker.window.size', { window: { kind: 'count', size: 0 } }],
    [
      'circuitBreaker.window.minimumCalls',
      { window: { kind: 'count', size: 10, minimumCalls: 11 } },
    ],
    [
      'circuitBreaker.window.failureRateThreshold',
      { window: { kind: 'count', size: 10, failureRateThreshold: 0 } },
    ],
    [
      'circuitBreaker.window.failureRateThreshold',
      { window: { kind: 'time', failureRateThreshold: 1.5 } },
    ],
    ['circuitBreaker.window.durationMs', { window: { kind: 'time', durationMs: -1 } }],
    ['circuitBreaker.window.buckets', { window: { kind: 'time', durationMs: 100, buckets: 101 } }],
    ['circuitBreaker.cooldownMs', { cooldownMs: Number.NaN }],
    ['circuitBreaker.cooldownMultiplier', { cooldownMultiplier: 0.5 }],
    ['circuitBreaker.maxCooldownMs', { cooldownMs: 1_000, maxCooldownMs: 999 }],
    ['circuitBreaker.halfOpenProbes', { halfOpenProbes: 1.5 }],
    ['circuitBreaker.slowCallMs', { slowCallMs: 0 }],
    ['circuitBreaker.isFailure', { isFailure: 'yes' as never }],
    ['circuitBreaker.clock', { clock: {} as never }],
  ]
  it.each(cases)('rejects a bad %s with InvalidOptionError naming it', (option, options) => {
    const error = (() => {
      try {
        circuitBreaker(options)
      } catch (e) {
        return e
      }
    })()
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
    expect((error as InvalidOptionError).message).toContain(option)
  })

  it('defaults: consecutive window of 5, 30 s cooldown, one probe', async () => {
    const clock = new ManualClock()
    const breaker = circuitBreaker({ clock })
    await failTimes(breaker, 4)
    expect(breaker.state).toBe('closed')
    await failTimes(breaker, 1)
    expect(breaker.state).toBe('open')
    await clock.advance(29_999)
    expect(breaker.state).toBe('open')
    await clock.advance(1)
    expect(breaker.state).toBe('half-open')
  })
})

describe('circuitBreaker: a call refused because its deadline was spent before it began', () => {
  it('is not held against the downstream: it neither opens the circuit nor closes a half-open one', async () => {
    const clock = new ManualClock(0)
    const breaker = circuitBreaker({
      window: { kind: 'consecutive', failures: 1 },
      cooldownMs: 1_000,
      clock,
    })
    const policy = pipeline(breaker, timeout(100, { clock }))
    let calls = 0
    const late = () =>
      withDeadline(
        10,
        async () => {
          // The caller spends its whole deadline elsewhere (a queue, a backoff) first.
          await clock.advance(10)
          return policy.execute(async () => {
            calls++
          })
        },
        { clock },
      )
    const refused = await late().catch((e: unknown) => e)
    expect(refused).toMatchObject({ code: 'DEADLINE_EXCEEDED', started: false })
    expect(calls).toBe(0)
    expect(breaker.state).toBe('closed')

    // Half-open: the refused probe gives its slot back, and the circuit still waits for a real
    // answer to close.
    await expect(policy.execute(() => Promise.reject(new Error('down')))).rejects.toThrow('down')
    expect(breaker.state).toBe('open')
    await clock.advance(1_000)
    expect(breaker.state).toBe('half-open')
    await expect(late()).rejects.toMatchObject({ started: false })
    expect(breaker.state).toBe('half-open')
    await policy.execute(async () => {
      calls++
    })
    expect(calls).toBe(1)
    expect(breaker.state).toBe('closed')
  })

  // Deliberately changed: this used to open the circuit in pipeline(breaker, timeout) although
  // pipeline(retry, breaker, timeout) ignored the same attempt. The caller's deadline ending an
  // attempt says nothing about the downstream, whatever the composition.
  it.each([
    ['breaker, timeout', (b: Policy, clock: ManualClock) => pipeline(b, timeout(100, { clock }))],
    [
      'retry, breaker, timeout',
      (b: Policy, clock: ManualClock) =>
        pipeline(retry({ maxAttempts: 1, clock }), b, timeout(100, { clock })),
    ],
    ['breaker alone (fused), fn honouring the deadline', (b: Policy) => pipeline(b)],
    ['breaker alone, unfused', (b: Policy) => b],
  ])("does not count an attempt cut off by the caller's deadline (%s)", async (_, compose) => {
    const clock = new ManualClock(0)
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
    const events: string[] = []
    breaker.events.on((e) => events.push(e.type))
    const policy = compose(breaker, clock)
    const call = withDeadline(
      10,
      () =>
        policy.execute(({ signal }) =>
          sleep(clock, 5_000, AbortSignal.any([signal, currentDeadline()!.signal])),
        ),
      { clock },
    )
    const outcome = call.catch((e: unknown) => e)
    await clock.advance(10)
    expect(await outcome).toBeInstanceOf(BreakwaterError)
    expect(events).toEqual(['ignored'])
    expect(breaker.state).toBe('closed')
  })

  it("neither closes nor opens a half-open circuit with a probe the caller's deadline cut off", async () => {
    const clock = new ManualClock(0)
    const breaker = circuitBreaker({
      window: { kind: 'consecutive', failures: 1 },
      cooldownMs: 1_000,
      clock,
    })
    const policy = pipeline(breaker)
    await expect(policy.execute(() => Promise.reject(new Error('down')))).rejects.toThrow('down')
    await clock.advance(1_000)
    expect(breaker.state).toBe('half-open')
    // fn honours the deadline and rejects with AbortedError, which alone would read as an
    // answer (a permanent failure) and close the circuit.
    const probe = withDeadline(
      10,
      () => policy.execute(() => sleep(clock, 5_000, currentDeadline()!.signal)),
      { clock },
    ).catch((e: unknown) => e)
    await clock.advance(10)
    expect(await probe).toMatchObject({ code: 'ABORTED' })
    expect(breaker.state).toBe('half-open')
    // The probe slot is free again: the next call is the probe that decides.
    await expect(policy.execute(() => Promise.reject(new Error('still down')))).rejects.toThrow()
    expect(breaker.state).toBe('open')
  })

  it('still counts an attempt cut off by its own timeout under a longer deadline', async () => {
    const clock = new ManualClock(0)
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
    const policy = pipeline(retry({ maxAttempts: 1, clock }), breaker, timeout(100, { clock }))
    const call = withDeadline(
      1_000,
      () => policy.execute(({ signal }) => sleep(clock, 5_000, signal)),
      { clock },
    )
    const outcome = call.catch((e: unknown) => e)
    await clock.advance(100)
    expect(await outcome).toMatchObject({ code: 'TIMEOUT' })
    expect(breaker.state).toBe('open')
  })
})
