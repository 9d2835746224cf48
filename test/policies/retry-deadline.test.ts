import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { DeadlineExceededError } from '../../src/policies/errors.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryEvent, retry, retryWithDeadlineReserve } from '../../src/policies/retry.js'
import { createRetryBudget } from '../../src/policies/retry-budget.js'
import { timeout } from '../../src/policies/timeout.js'
import { neverAbortedSignal, type Policy, type PolicyFunction } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

/** A policy breakwater does not know: in front of a pipeline it keeps the whole chain unfused. */
class Opaque implements Policy {
  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
  }
}

function describeError(error: unknown): string {
  if (!BreakwaterError.is(error)) return String(error)
  const started = error instanceof DeadlineExceededError ? `(started ${error.started})` : ''
  const cause = error.cause === undefined ? '' : ` <- ${describeError(error.cause)}`
  return `${error.code}${started}${cause}`
}

const transient = () => Object.assign(new Error('reset'), { code: 'ECONNRESET' })

describe('retry under a deadline that has already passed', () => {
  it('starts no attempt: it rejects at once with DeadlineExceededError (started: false)', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock })
    const policy = retry({ clock, budget })
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    let calls = 0
    const error = await withDeadline(
      0,
      () =>
        policy.execute(() => {
          calls++
          return 'ran'
        }),
      { clock },
    ).catch((e: unknown) => e)
    expect(calls).toBe(0)
    expect(error).toBeInstanceOf(DeadlineExceededError)
    expect((error as DeadlineExceededError).started).toBe(false)
    expect(events).toEqual([{ type: 'giveUp', attempt: 0, reason: 'deadline', error }])
    expect(clock.pendingTimers).toBe(0)
  })

  it('also when the deadline ran out while the caller was busy before calling it', async () => {
    const clock = new ManualClock()
    let calls = 0
    const run = withDeadline(
      50,
      async () => {
        await sleep(clock, 50)
        return retry({ clock }).execute(() => {
          calls++
          return 'ran'
        }, new AbortController().signal)
      },
      { clock },
    ).catch((e: unknown) => e)
    await clock.advance(50)
    expect(describeError(await run)).toBe('DEADLINE_EXCEEDED(started false)')
    expect(calls).toBe(0)
  })

  it('a breaker around it does not record the refusal', async () => {
    const clock = new ManualClock()
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
    const chain = pipeline(breaker, retry({ clock }))
    await expect(withDeadline(0, () => chain.execute(() => 'ran'), { clock })).rejects.toThrow(
      DeadlineExceededError,
    )
    expect(breaker.state).toBe('closed')
    breaker.dispose()
  })

  // Fused and promise-based pipelines, with or without a caller's signal, and whatever sits
  // around the retry: fn never runs, the caller gets the deadline refusal, and both agree.
  it('in any pipeline, fused or not (property)', async () => {
    type Shape =
      | 'retry'
      | 'breaker+retry'
      | 'retry+breaker'
      | 'retry+timeout'
      | 'timeout+retry'
      | 'breaker+opaque+retry'
    const observe = async (s: {
      shape: Shape
      lateMs: number
      signal: boolean
      fused: boolean
    }) => {
      const clock = new ManualClock()
      const retrying = retry({ clock, maxAttempts: 3, baseDelayMs: 1, jitter: 'none' })
      const events: string[] = []
      retrying.events.on((event) => events.push(`${event.type} ${event.attempt}`))
      const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
      const perTry = timeout(1_000, { clock })
      const policies: Policy[] = {
        retry: [retrying],
        'breaker+retry': [breaker, retrying],
        'retry+breaker': [retrying, breaker],
        'retry+timeout': [retrying, perTry],
        'timeout+retry': [perTry, retrying],
        // The fused part (the breaker) reads no deadline: it stays fused, the retry is chained.
        'breaker+opaque+retry': [breaker, new Opaque(), retrying],
      }[s.shape]
      const chain = s.fused ? pipeline(...policies) : pipeline(new Opaque(), ...policies)
      let calls = 0
      let outcome = 'pending'
      void withDeadline(
        10,
        async () => {
          await sleep(clock, 10 + s.lateMs)
          return chain.execute(
            () => {
              calls++
              throw transient()
            },
            s.signal ? new AbortController().signal : undefined,
          )
        },
        { clock },
      ).then(
        () => {
          outcome = 'ok'
        },
        (error: unknown) => {
          outcome = describeError(error)
        },
      )
      await clock.advance(100)
      const state = breaker.state
      breaker.dispose()
      return { calls, outcome, events, state, pendingTimers: clock.pendingTimers }
    }
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          shape: fc.constantFrom<Shape>(
            'retry',
            'breaker+retry',
            'retry+breaker',
            'retry+timeout',
            'timeout+retry',
            'breaker+opaque+retry',
          ),
          lateMs: fc.integer({ min: 0, max: 20 }),
          signal: fc.boolean(),
        }),
        async (s) => {
          const fused = await observe({ ...s, fused: true })
          const chained = await observe({ ...s, fused: false })
          expect(fused).toEqual(chained)
          expect(fused.calls).toBe(0)
          expect(fused.outcome).toBe('DEADLINE_EXCEEDED(started false)')
          expect(fused.state).toBe('closed')
          expect(fused.pendingTimers).toBe(0)
        },
      ),
      { numRuns: 100 },
    )
  })
})

describe('retry cut off by a deadline through its caller', () => {
  it('inside a timeout clamped to the deadline, it gives up as deadline with DeadlineExceededError', async () => {
    for (const mode of ['cooperative', 'hard'] as const) {
      const clock = new ManualClock()
      const retrying = retry({ clock, maxAttempts: 5, baseDelayMs: 1, jitter: 'none' })
      const events: RetryEvent[] = []
      retrying.events.on((event) => events.push(event))
      // The inner retry's own outcome, as the timeout outside it receives it.
      let retryOutcome: unknown
      const inner: Policy = {
        execute: (fn, signal) =>
          retrying.execute(fn, signal).catch((error: unknown) => {
            retryOutcome = error
            throw error
          }),
      }
      const chain = pipeline(timeout(10_000, { clock, mode }), inner)
      let outcome: unknown
      void withDeadline(
        25,
        () =>
          chain.execute(async () => {
            await sleep(clock, 30)
            throw transient()
          }),
        { clock },
      ).catch((error: unknown) => {
        outcome = error
      })
      await clock.advance(100)
      expect(describeError(outcome).startsWith('DEADLINE_EXCEEDED')).toBe(true)
      expect(describeError(retryOutcome)).toBe('DEADLINE_EXCEEDED(started true) <- Error: reset')
      expect(events.map((e) => e.type === 'giveUp' && e.reason)).toEqual(['deadline'])
      expect(clock.pendingTimers).toBe(0)
    }
  })

  it('a caller signal aborting with DeadlineExceededError during the backoff is the deadline', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const policy = retry({ clock, baseDelayMs: 100, jitter: 'none' })
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    let calls = 0
    const run = policy
      .execute(() => {
        calls++
        throw transient()
      }, controller.signal)
      .catch((error: unknown) => error)
    await clock.advance(50)
    // An upstream budget that ran out (an adopted deadline's signal) is not a cancellation.
    controller.abort(new DeadlineExceededError(clock.now()))
    expect(describeError(await run)).toBe('DEADLINE_EXCEEDED(started true) <- Error: reset')
    expect(events.at(-1)).toMatchObject({ type: 'giveUp', reason: 'deadline', attempt: 1 })
    expect(calls).toBe(1)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('retry with a deadline reserve (the HTTP client: its attempts need the margin)', () => {
  // A 300 ms deadline and a 200 ms backoff: the sleep ends with 100 ms left.
  async function attemptsWith(policy: Policy, clock: ManualClock) {
    let calls = 0
    const outcome = withDeadline(
      300,
      () =>
        policy.execute(() => {
          calls++
          throw transient()
        }),
      { clock },
    ).catch((e: unknown) => e)
    await clock.advance(300)
    return { error: await outcome, calls }
  }

  it('sleeps into the last 100 ms without one, as retry() always has', async () => {
    const clock = new ManualClock()
    const { calls } = await attemptsWith(
      retry({ clock, maxAttempts: 2, baseDelayMs: 200, jitter: 'none' }),
      clock,
    )
    expect(calls).toBe(2)
  })

  it('gives up at once with the last failure when the sleep would leave less than the reserve', async () => {
    const clock = new ManualClock()
    const policy = retryWithDeadlineReserve(
      { clock, maxAttempts: 2, baseDelayMs: 200, jitter: 'none' },
      101,
    )
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    const { error, calls } = await attemptsWith(policy, clock)
    expect(calls).toBe(1)
    expect(describeError(error)).toBe('Error: reset')
    expect(events.map((e) => e.type === 'giveUp' && e.reason)).toEqual(['deadline'])
    // Exactly the reserve left after the sleep is enough.
    const exact = new ManualClock()
    const enough = await attemptsWith(
      retryWithDeadlineReserve(
        { clock: exact, maxAttempts: 2, baseDelayMs: 200, jitter: 'none' },
        100,
      ),
      exact,
    )
    expect(enough.calls).toBe(2)
  })
})
