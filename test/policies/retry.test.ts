import { channel } from 'node:diagnostics_channel'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { AbortedError, BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { DeadlineExceededError, TimeoutError } from '../../src/policies/errors.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { seededRandom } from '../../src/policies/random.js'
import { type RetryEvent, type RetryOptions, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { Policy } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

const httpError = (status: number, headers?: Record<string, string>) =>
  Object.assign(new Error(`HTTP ${status}`), { status, headers: headers ?? {} })

/** Starts `promise` and records when (on `clock`) it settles. */
function track<T>(clock: ManualClock, promise: Promise<T>) {
  const state: { settled: boolean; at?: number; value?: T; error?: unknown } = { settled: false }
  promise.then(
    (value) => Object.assign(state, { settled: true, at: clock.now(), value }),
    (error: unknown) => Object.assign(state, { settled: true, at: clock.now(), error }),
  )
  return state
}

/** Lets pending jobs run, then fires every timer until none is left. */
async function settle(clock: ManualClock): Promise<void> {
  await clock.advance(0)
  await clock.runAll()
}

describe('retry', () => {
  it('returns the first success without waiting, attempt 1', async () => {
    const clock = new ManualClock()
    const attempts: number[] = []
    const value = await retry({ clock }).execute(({ attempt }) => {
      attempts.push(attempt)
      return 'ok'
    })
    expect(value).toBe('ok')
    expect(attempts).toEqual([1])
    expect(clock.pendingTimers).toBe(0)
  })

  it('retries transient failures with backoff; ctx.attempt counts up; maxAttempts counts the first call', async () => {
    const clock = new ManualClock()
    const policy = retry({ clock, maxAttempts: 4, jitter: 'none' })
    const starts: Array<[number, number]> = []
    const run = track(
      clock,
      policy.execute(({ attempt }) => {
        starts.push([attempt, clock.now()])
        throw httpError(503)
      }),
    )
    await settle(clock)
    expect(starts).toEqual([
      [1, 0],
      [2, 100],
      [3, 300],
      [4, 700],
    ])
    expect(run.error).toMatchObject({ status: 503 })
    expect(run.at).toBe(700)
  })

  it('succeeds on a later attempt with the value of that attempt', async () => {
    const clock = new ManualClock()
    let calls = 0
    const run = track(
      clock,
      retry({ clock, jitter: 'none' }).execute(async () => {
        calls++
        if (calls < 3) throw Object.assign(new Error('reset'), { code: 'ECONNRESET' })
        return calls
      }),
    )
    await settle(clock)
    expect(run.value).toBe(3)
  })

  it('does not retry a 4xx, retries a 503', async () => {
    const clock = new ManualClock()
    const policy = retry({ clock, maxAttempts: 3, jitter: 'none' })
    for (const [status, expected] of [
      [400, 1],
      [404, 1],
      [409, 1],
      [503, 3],
      [429, 3],
    ] as const) {
      let calls = 0
      const run = track(
        clock,
        policy.execute(() => {
          calls++
          throw httpError(status)
        }),
      )
      await settle(clock)
      expect([status, calls]).toEqual([status, expected])
      expect(run.error).toMatchObject({ status })
    }
  })

  it('does not retry an open circuit, a full bulkhead, a deadline or unknown errors', async () => {
    const clock = new ManualClock()
    const policy = retry({ clock })
    for (const error of [
      new BreakwaterError('BROKEN_CIRCUIT', 'open'),
      new BreakwaterError('BULKHEAD_FULL', 'full'),
      new DeadlineExceededError(0),
      new Error('bug'),
    ]) {
      let calls = 0
      await expect(
        policy.execute(() => {
          calls++
          throw error
        }),
      ).rejects.toBe(error)
      expect(calls).toBe(1)
    }
  })

  it('retries a TimeoutError (retryable) and uses a custom shouldRetry when given', async () => {
    const clock = new ManualClock()
    let calls = 0
    const run = track(
      clock,
      retry({ clock }).execute(() => {
        calls++
        if (calls === 1) throw new TimeoutError(10)
        return 'second'
      }),
    )
    await settle(clock)
    expect(run.value).toBe('second')

    const seen: Array<[string, number]> = []
    const custom = retry({
      clock,
      maxAttempts: 5,
      shouldRetry: (error, attempt) => {
        seen.push([(error as Error).message, attempt])
        return attempt < 3
      },
    })
    const run2 = track(
      clock,
      custom.execute(() => {
        throw new Error('custom')
      }),
    )
    await settle(clock)
    expect(run2.error).toMatchObject({ message: 'custom' })
    expect(seen).toEqual([
      ['custom', 1],
      ['custom', 2],
      ['custom', 3],
    ])
  })

  it('honours Retry-After in seconds when longer than the backoff', async () => {
    const clock = new ManualClock()
    const starts: number[] = []
    const run = track(
      clock,
      retry({ clock, maxAttempts: 2 }).execute(() => {
        starts.push(clock.now())
        if (starts.length === 1) throw httpError(503, { 'retry-after': '3' })
        return 'ok'
      }),
    )
    await settle(clock)
    expect(run.value).toBe('ok')
    expect(starts).toEqual([0, 3_000])
  })

  it('honours Retry-After in a plain headers object whatever the case of its name', async () => {
    for (const name of ['Retry-After', 'RETRY-AFTER']) {
      const clock = new ManualClock()
      const starts: number[] = []
      const run = track(
        clock,
        retry({ clock, maxAttempts: 2 }).execute(() => {
          starts.push(clock.now())
          if (starts.length === 1) throw httpError(503, { [name]: '3' })
          return 'ok'
        }),
      )
      await settle(clock)
      expect(run.value).toBe('ok')
      expect(starts).toEqual([0, 3_000])
    }
  })

  it('honours Retry-After as an HTTP-date, through a Headers object', async () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'))
    const starts: number[] = []
    const run = track(
      clock,
      retry({ clock, maxAttempts: 2 }).execute(() => {
        starts.push(clock.now())
        if (starts.length === 1) {
          throw Object.assign(new Error('busy'), {
            status: 429,
            headers: new Headers({ 'Retry-After': 'Tue, 01 Jan 2030 00:00:05 GMT' }),
          })
        }
        return 'ok'
      }),
    )
    await settle(clock)
    expect(run.value).toBe('ok')
    expect(starts.map((t) => t - starts[0]!)).toEqual([0, 5_000])
  })

  it('takes the backoff when it is longer than Retry-After, and caps Retry-After at maxRetryAfterMs', async () => {
    const clock = new ManualClock()
    const delays: number[] = []
    const policy = retry({ clock, maxAttempts: 3, jitter: 'none', maxRetryAfterMs: 2_000 })
    policy.events.on((event) => {
      if (event.type === 'retry') delays.push(event.delayMs)
    })
    const run = track(
      clock,
      policy.execute(({ attempt }) => {
        throw attempt === 1
          ? Object.assign(httpError(503), { retryAfterMs: 0 })
          : httpError(503, { 'retry-after': '3600' })
      }),
    )
    await settle(clock)
    expect(delays).toEqual([100, 2_000])
    expect(run.at).toBe(2_100)
  })

  it('an abort during the backoff rejects promptly and clears the timer', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    let calls = 0
    const run = track(
      clock,
      retry({ clock, baseDelayMs: 10_000, jitter: 'none' }).execute(() => {
        calls++
        throw httpError(503)
      }, controller.signal),
    )
    await clock.advance(10)
    expect(clock.pendingTimers).toBe(1)
    controller.abort('user left')
    await clock.advance(0)
    expect(run.settled).toBe(true)
    expect(run.at).toBe(10)
    expect(run.error).toBeInstanceOf(AbortedError)
    expect((run.error as AbortedError).cause).toBe('user left')
    expect(clock.pendingTimers).toBe(0)
    expect(calls).toBe(1)
  })

  it('an abort from shouldRetry or a retry listener (before the sleep starts) ends the call at once, fn not called again', async () => {
    for (const where of ['shouldRetry', 'listener'] as const) {
      const clock = new ManualClock()
      const controller = new AbortController()
      const policy = retry({
        clock,
        baseDelayMs: 10_000,
        jitter: 'none',
        shouldRetry: () => {
          if (where === 'shouldRetry') controller.abort('changed my mind')
          return true
        },
      })
      const events: RetryEvent[] = []
      policy.events.on((event) => {
        events.push(event)
        if (where === 'listener' && event.type === 'retry') controller.abort('changed my mind')
      })
      let calls = 0
      const run = track(
        clock,
        policy.execute(() => {
          calls++
          throw httpError(503)
        }, controller.signal),
      )
      await clock.advance(0)
      // The abort arrived before the sleep subscribed to the signal: the sleep must still see it.
      expect(run.settled).toBe(true)
      expect(run.at).toBe(0)
      expect(run.error).toBeInstanceOf(AbortedError)
      expect((run.error as AbortedError).cause).toBe('changed my mind')
      expect(events.at(-1)).toMatchObject({ type: 'giveUp', reason: 'aborted' })
      expect(clock.pendingTimers).toBe(0)
      expect(calls).toBe(1)
    }
  })

  it('rejects at once with AbortedError when the signal is already aborted, without calling fn', async () => {
    let calls = 0
    await expect(retry().execute(() => calls++, AbortSignal.abort('gone'))).rejects.toBeInstanceOf(
      AbortedError,
    )
    expect(calls).toBe(0)
  })

  it('does not retry after the caller aborted during an attempt', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    let calls = 0
    const run = track(
      clock,
      retry({ clock }).execute(async ({ signal }) => {
        calls++
        await sleep(clock, 1_000, signal).catch(() => {})
        throw httpError(503)
      }, controller.signal),
    )
    await clock.advance(100)
    controller.abort('stop')
    await settle(clock)
    expect(run.error).toBeInstanceOf(AbortedError)
    expect(calls).toBe(1)
  })

  it('gives up at once with the last error when the next attempt could not start before the deadline', async () => {
    const clock = new ManualClock()
    const policy = retry({ clock, maxAttempts: 10, jitter: 'none' })
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    const starts: number[] = []
    let last: Error | undefined
    const run = track(
      clock,
      withDeadline(
        250,
        () =>
          policy.execute(() => {
            starts.push(clock.now())
            last = httpError(503)
            throw last
          }),
        { clock },
      ),
    )
    await settle(clock)
    // 0, 100; the next would start at 300 > 250, so the call ends at 100 with the 503.
    expect(starts).toEqual([0, 100])
    expect(run.at).toBe(100)
    expect(run.error).toBe(last)
    expect(events.at(-1)).toMatchObject({ type: 'giveUp', reason: 'deadline', attempt: 2 })
    expect(clock.pendingTimers).toBe(0)
  })

  it('fails with DeadlineExceededError when the deadline passed during an attempt', async () => {
    const clock = new ManualClock()
    const failure = httpError(503)
    const run = track(
      clock,
      withDeadline(
        100,
        () =>
          retry({ clock }).execute(async () => {
            // Work that ignores its signal and overruns the deadline.
            await sleep(clock, 150)
            throw failure
          }),
        { clock },
      ),
    )
    await settle(clock)
    expect(run.error).toBeInstanceOf(DeadlineExceededError)
    expect((run.error as DeadlineExceededError).cause).toBe(failure)
  })

  it('hands fn a signal that aborts at the deadline (and at the caller abort)', async () => {
    const clock = new ManualClock()
    const controller = new AbortController()
    const reasons: unknown[] = []
    const run = track(
      clock,
      withDeadline(
        500,
        () =>
          retry({ clock }).execute(async ({ signal }) => {
            signal.addEventListener('abort', () => reasons.push(signal.reason))
            await new Promise(() => {})
          }, controller.signal),
        { clock },
      ),
    )
    await clock.advance(499)
    expect(reasons).toEqual([])
    await clock.advance(1)
    expect(reasons).toHaveLength(1)
    expect(reasons[0]).toBeInstanceOf(DeadlineExceededError)
    expect(run.settled).toBe(false)
  })

  it('never starts an attempt after the deadline and settles no later than it (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          deadlineMs: fc.integer({ min: 1, max: 5_000 }),
          maxAttempts: fc.integer({ min: 1, max: 12 }),
          baseDelayMs: fc.integer({ min: 0, max: 1_000 }),
          jitter: fc.constantFrom('full', 'equal', 'decorrelated', 'none' as const),
          seed: fc.integer(),
          durations: fc.array(fc.integer({ min: 0, max: 2_000 }), {
            minLength: 12,
            maxLength: 12,
          }),
          retryAfterSeconds: fc.array(fc.option(fc.integer({ min: 0, max: 5 })), {
            minLength: 12,
            maxLength: 12,
          }),
          succeedAt: fc.option(fc.integer({ min: 1, max: 12 })),
        }),
        async (c) => {
          const clock = new ManualClock(1_000_000)
          const policy = retry({
            clock,
            maxAttempts: c.maxAttempts,
            baseDelayMs: c.baseDelayMs,
            jitter: c.jitter,
            random: seededRandom(c.seed),
          })
          const starts: number[] = []
          const sleepsEndAt: number[] = []
          policy.events.on((event) => {
            if (event.type === 'retry') sleepsEndAt.push(clock.now() + event.delayMs)
          })
          let atMs = 0
          const run = track(
            clock,
            withDeadline(
              c.deadlineMs,
              () => {
                atMs = currentDeadline()!.atMs
                return policy.execute(async ({ attempt, signal }) => {
                  starts.push(clock.now())
                  // Cooperative work: it stops when its signal aborts.
                  await sleep(clock, c.durations[attempt - 1]!, signal)
                  if (attempt === c.succeedAt) return 'ok'
                  const after = c.retryAfterSeconds[attempt - 1]
                  throw httpError(503, after == null ? {} : { 'retry-after': String(after) })
                })
              },
              { clock },
            ),
          )
          await settle(clock)
          expect(run.settled).toBe(true)
          expect(starts.length).toBeGreaterThanOrEqual(1)
          expect(starts.length).toBeLessThanOrEqual(c.maxAttempts)
          for (const start of starts) expect(start).toBeLessThan(atMs)
          // It never sleeps into the deadline only to be cut off: it gives up before.
          for (const end of sleepsEndAt) expect(end).toBeLessThan(atMs)
          expect(run.at!).toBeLessThanOrEqual(atMs)
          expect(clock.pendingTimers).toBe(0)
        },
      ),
      { numRuns: 300 },
    )
  })

  it('emits typed events and publishes to diagnostics_channel only while subscribed', async () => {
    const clock = new ManualClock()
    const policy = retry({ clock, maxAttempts: 2, jitter: 'none' })
    const events: RetryEvent[] = []
    const off = policy.events.on((event) => events.push(event))
    const published: unknown[] = []
    const onRetry = (message: unknown) => published.push(message)
    channel('breakwater:retry:retry').subscribe(onRetry)
    channel('breakwater:retry:give-up').subscribe(onRetry)
    const failure = httpError(503)
    const run = track(
      clock,
      policy.execute(() => {
        throw failure
      }),
    )
    await settle(clock)
    expect(run.error).toBe(failure)
    expect(events).toEqual([
      { type: 'retry', attempt: 1, delayMs: 100, error: failure },
      { type: 'giveUp', attempt: 2, reason: 'maxAttempts', error: failure },
    ])
    expect(published).toEqual(events)
    channel('breakwater:retry:retry').unsubscribe(onRetry)
    channel('breakwater:retry:give-up').unsubscribe(onRetry)
    off()
    const second = track(
      clock,
      policy.execute(() => {
        throw failure
      }),
    )
    await settle(clock)
    expect(second.error).toBe(failure)
    expect(events).toHaveLength(2)
    expect(published).toHaveLength(2)
  })

  it('reports notRetryable give-ups', async () => {
    const policy = retry()
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    await expect(
      policy.execute(() => {
        throw httpError(400)
      }),
    ).rejects.toMatchObject({ status: 400 })
    expect(events).toMatchObject([{ type: 'giveUp', reason: 'notRetryable', attempt: 1 }])
  })

  const bug = new Error('hook bug')
  const throwBug = (): never => {
    throw bug
  }
  it.each([
    ['shouldRetry', { shouldRetry: throwBug }, 'notRetryable'],
    ['random', { random: throwBug }, 'notRetryable'],
    [
      'budget.tryWithdraw',
      { budget: { recordRequest() {}, available: () => 1, tryWithdraw: throwBug } },
      'budget',
    ],
  ] as const)(
    'a %s that throws rejects with its error and still reports the give-up',
    async (_, options, reason) => {
      const policy = retry(options)
      const events: RetryEvent[] = []
      policy.events.on((event) => events.push(event))
      const failure = httpError(503)
      await expect(
        policy.execute(() => {
          throw failure
        }),
      ).rejects.toBe(bug)
      expect(events).toEqual([{ type: 'giveUp', attempt: 1, reason, error: failure }])
    },
  )

  // A promise is truthy: an async shouldRetry (a JavaScript caller's, or one cast past the
  // types) retried every failure, the 400s it meant to give up on included, until maxAttempts;
  // an async tryWithdraw of a budget of the caller's own let every retry through, spent or not.
  const asyncHooks = {
    shouldRetry: (answer: () => Promise<boolean>): RetryOptions => ({
      shouldRetry: answer as unknown as RetryOptions['shouldRetry'],
    }),
    'budget.tryWithdraw': (answer: () => Promise<boolean>): RetryOptions => ({
      budget: {
        recordRequest() {},
        available: () => 1,
        tryWithdraw: answer as unknown as () => boolean,
      },
    }),
  }
  const runs = {
    directly: (policy: Policy, fn: () => never) => policy.execute(fn),
    fused: (policy: Policy, fn: () => never) =>
      pipeline(policy, bulkhead({ maxConcurrent: 1 })).execute(fn),
  }
  it.each([
    ['shouldRetry', 'directly', 'notRetryable', httpError(400)],
    ['shouldRetry', 'fused', 'notRetryable', httpError(400)],
    ['budget.tryWithdraw', 'directly', 'budget', httpError(503)],
    ['budget.tryWithdraw', 'fused', 'budget', httpError(503)],
  ] as const)(
    'refuses a %s that returns a promise, naming it, and reports the give-up (%s)',
    async (hook, path, reason, failure) => {
      const clock = new ManualClock()
      const answers = [
        async () => false,
        async () => {
          // Rejected: left unobserved, it would be an unhandled rejection.
          throw bug
        },
      ]
      for (const answer of answers) {
        const policy = retry({ clock, ...asyncHooks[hook](answer) })
        const events: RetryEvent[] = []
        policy.events.on((event) => events.push(event))
        let attempts = 0
        const call = track(
          clock,
          runs[path](policy, () => {
            attempts++
            throw failure
          }),
        )
        await clock.advance(0)
        expect(call.settled).toBe(true)
        expect(call.error).toBeInstanceOf(InvalidOptionError)
        expect(call.error).toMatchObject({ code: 'INVALID_OPTION', option: `retry.${hook}` })
        expect(attempts).toBe(1)
        expect(clock.pendingTimers).toBe(0)
        expect(events).toEqual([{ type: 'giveUp', attempt: 1, reason, error: failure }])
      }
    },
  )

  // recordRequest runs before the first attempt, directly and as a fused pipeline's enter step:
  // a throwing one ends the call before any attempt, so it is a 'budget' give-up at attempt 0
  // whose error is what it threw (as a deadline refused before the first attempt reports its
  // own refusal).
  it.each([
    ['directly', (policy: Policy, fn: () => never) => policy.execute(fn)],
    ['fused', (policy: Policy, fn: () => never) => pipeline(policy).execute(fn)],
    [
      'fused with a timeout',
      (policy: Policy, fn: () => never) =>
        pipeline(policy, timeout(1_000, { clock: new ManualClock() })).execute(fn),
    ],
  ] as const)(
    'a budget whose recordRequest throws rejects with its error before any attempt and reports the give-up (%s)',
    async (_, run) => {
      const policy = retry({
        budget: { recordRequest: throwBug, available: () => 1, tryWithdraw: () => true },
      })
      const events: RetryEvent[] = []
      policy.events.on((event) => events.push(event))
      let attempts = 0
      await expect(
        run(policy, () => {
          attempts++
          throw httpError(503)
        }),
      ).rejects.toBe(bug)
      expect(attempts).toBe(0)
      expect(events).toEqual([{ type: 'giveUp', attempt: 0, reason: 'budget', error: bug }])
    },
  )

  it('a budget whose refund throws after an aborted sleep still reports the give-up', async () => {
    const clock = new ManualClock()
    const policy = retry({
      clock,
      jitter: 'none',
      budget: { recordRequest() {}, available: () => 1, tryWithdraw: () => true, refund: throwBug },
    })
    const events: RetryEvent[] = []
    policy.events.on((event) => events.push(event))
    const controller = new AbortController()
    const failure = httpError(503)
    const call = track(
      clock,
      policy.execute(() => {
        throw failure
      }, controller.signal),
    )
    await clock.advance(0)
    controller.abort()
    await clock.advance(0)
    expect(call).toMatchObject({ settled: true, error: bug })
    expect(events.at(-1)).toEqual({ type: 'giveUp', attempt: 1, reason: 'aborted', error: failure })
  })

  it.each([
    [{ maxAttempts: 0 }, 'retry.maxAttempts'],
    [{ maxAttempts: 2.5 }, 'retry.maxAttempts'],
    [{ baseDelayMs: -5 }, 'retry.baseDelayMs'],
    [{ factor: 0 }, 'retry.factor'],
    [{ maxDelayMs: 10, baseDelayMs: 100 }, 'retry.maxDelayMs'],
    [{ jitter: 'random' }, 'retry.jitter'],
    [{ random: 3 }, 'retry.random'],
    [{ shouldRetry: true }, 'retry.shouldRetry'],
    [{ maxRetryAfterMs: -1 }, 'retry.maxRetryAfterMs'],
    [{ budget: { recordRequest() {} } }, 'retry.budget.tryWithdraw'],
  ])('rejects invalid option %o naming %s', (options, name) => {
    const create = () => retry(options as never)
    expect(create).toThrow(InvalidOptionError)
    expect(create).toThrow(new RegExp(`^${name.replaceAll('.', '\\.')}: expected`))
  })
})
