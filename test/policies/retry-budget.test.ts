import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import { RetryBudgetExhaustedError } from '../../src/policies/errors.js'
import { retry } from '../../src/policies/retry.js'
import { createRetryBudget } from '../../src/policies/retry-budget.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

function drain(budget: { tryWithdraw(): boolean }, limit = 100_000): number {
  let taken = 0
  while (taken < limit && budget.tryWithdraw()) taken++
  return taken
}

describe('createRetryBudget', () => {
  it('starts with the floor of minRetriesPerSecond * ttl tokens', () => {
    const clock = new ManualClock()
    expect(createRetryBudget({ clock }).available()).toBe(100) // 10/s over 10 s
    expect(createRetryBudget({ clock, minRetriesPerSecond: 2, ttlMs: 5_000 }).available()).toBe(10)
    expect(drain(createRetryBudget({ clock, minRetriesPerSecond: 3, ttlMs: 1_000 }))).toBe(3)
  })

  it('lets retries add at most `ratio` of the requests (five deposits of 0.2 make one token)', () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0 })
    expect(budget.tryWithdraw()).toBe(false)
    for (let i = 0; i < 4; i++) budget.recordRequest()
    expect(budget.available()).toBeCloseTo(0.8)
    expect(budget.tryWithdraw()).toBe(false)
    budget.recordRequest()
    expect(budget.available()).toBe(1)
    expect(budget.tryWithdraw()).toBe(true)
    expect(budget.tryWithdraw()).toBe(false)
    for (let i = 0; i < 1_000; i++) budget.recordRequest()
    expect(drain(budget)).toBe(200)
  })

  it('forgets deposits after ttlMs, driven by the clock', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0, ratio: 1, ttlMs: 1_000 })
    for (let i = 0; i < 10; i++) budget.recordRequest()
    await clock.advance(500)
    for (let i = 0; i < 5; i++) budget.recordRequest()
    expect(budget.available()).toBe(15)
    await clock.advance(499) // t = 999: everything still counts
    expect(budget.available()).toBe(15)
    await clock.advance(1) // t = 1000: the first ten expire
    expect(budget.available()).toBe(5)
    await clock.advance(500)
    expect(budget.available()).toBe(0)
  })

  it('refills the floor as withdrawals age out of the window', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 5, ttlMs: 2_000 })
    expect(drain(budget)).toBe(10)
    await clock.advance(1_000)
    expect(budget.tryWithdraw()).toBe(false)
    await clock.advance(1_000)
    expect(drain(budget)).toBe(10)
  })

  it('a withdrawal that outlives the deposits it used leaves the budget at zero, not below', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0, ratio: 1, ttlMs: 1_000 })
    budget.recordRequest()
    await clock.advance(950)
    expect(budget.tryWithdraw()).toBe(true)
    await clock.advance(100) // the deposit expired, the withdrawal has not
    expect(budget.available()).toBe(0)
    budget.recordRequest()
    expect(budget.tryWithdraw()).toBe(false) // the debt is paid first
  })

  it.each([
    [{ ratio: -0.1 }, 'retryBudget.ratio'],
    [{ ratio: 'lots' }, 'retryBudget.ratio'],
    // Kept in thousandths of a token: this would silently deposit nothing at all.
    [{ ratio: 0.0004 }, 'retryBudget.ratio'],
    [{ minRetriesPerSecond: 0.00001 }, 'retryBudget.minRetriesPerSecond'],
    [{ minRetriesPerSecond: -1 }, 'retryBudget.minRetriesPerSecond'],
    [{ ttlMs: 0 }, 'retryBudget.ttlMs'],
    [{ ttlMs: 1.5 }, 'retryBudget.ttlMs'],
  ])('rejects invalid option %o naming %s', (options, name) => {
    const create = () => createRetryBudget(options as never)
    expect(create).toThrow(InvalidOptionError)
    expect(create).toThrow(new RegExp(`^${name.replace('.', '\\.')}: expected`))
  })
})

describe('retry with a budget', () => {
  it('fails with RetryBudgetExhaustedError (cause: the last failure) when no token is left', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0, ratio: 0 })
    const policy = retry({ clock, budget, maxAttempts: 5 })
    const outage = Object.assign(new Error('unavailable'), { status: 503 })
    let calls = 0
    const error = await policy
      .execute(() => {
        calls++
        throw outage
      })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(RetryBudgetExhaustedError)
    expect((error as BreakwaterError).code).toBe('RETRY_BUDGET_EXHAUSTED')
    expect((error as BreakwaterError).cause).toBe(outage)
    expect(BreakwaterError.is(error) && error.retryable).toBe(false)
    expect(calls).toBe(1)
  })

  it('caps the retry storm of many callers during an outage at ratio plus the floor', async () => {
    const clock = new ManualClock()
    const ratio = 0.1
    const minRetriesPerSecond = 2
    const ttlMs = 10_000
    const budget = createRetryBudget({ clock, ratio, minRetriesPerSecond, ttlMs })
    const policy = retry({ clock, budget, maxAttempts: 4, baseDelayMs: 10, jitter: 'none' })
    let firstCalls = 0
    let retries = 0
    const outcomes: Record<string, number> = {}
    const callers = 500
    const runs: Promise<void>[] = []
    // 500 callers arrive over 5 seconds (one every 10 ms) while the downstream is down.
    for (let i = 0; i < callers; i++) {
      runs.push(
        policy
          .execute(({ attempt }) => {
            if (attempt === 1) firstCalls++
            else retries++
            throw Object.assign(new Error('down'), { status: 503 })
          })
          .catch((error: BreakwaterError) => {
            const code = error.code ?? 'HTTP'
            outcomes[code] = (outcomes[code] ?? 0) + 1
          }),
      )
      await clock.advance(10)
    }
    await clock.runAll()
    await Promise.all(runs)
    expect(firstCalls).toBe(callers)
    // Without a budget every caller would retry 3 times: 1,500 retries.
    const allowed = Math.floor(callers * ratio + (minRetriesPerSecond * ttlMs) / 1_000)
    expect(retries).toBeLessThanOrEqual(allowed)
    expect(retries).toBeGreaterThanOrEqual(allowed - 1)
    expect(outcomes.RETRY_BUDGET_EXHAUSTED).toBeGreaterThan(callers / 2)
    expect((outcomes.RETRY_BUDGET_EXHAUSTED ?? 0) + (outcomes.HTTP ?? 0)).toBe(callers)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('retry with a budget: a retry that never ran', () => {
  it('gives its token back when the backoff sleep is aborted before the attempt', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0, ratio: 1 })
    budget.recordRequest() // one token, taken by the retry below unless it is given back
    const policy = retry({ clock, budget, maxAttempts: 3, baseDelayMs: 100, jitter: 'none' })
    const controller = new AbortController()
    let calls = 0
    const outcome = policy
      .execute(() => {
        calls++
        throw Object.assign(new Error('down'), { status: 503 })
      }, controller.signal)
      .catch((e: unknown) => e)
    await clock.advance(50) // into the backoff: the retry has taken its token
    expect(budget.available()).toBe(1) // the call's own deposit, minus the token, plus 0
    controller.abort()
    expect(await outcome).toMatchObject({ code: 'ABORTED' })
    expect(calls).toBe(1)
    // Two deposits (this call's first attempt and the one above), no retry made.
    expect(budget.available()).toBe(2)
  })

  it('gives back only a withdrawal still in the window, once', async () => {
    const clock = new ManualClock()
    const budget = createRetryBudget({ clock, minRetriesPerSecond: 0, ratio: 1, ttlMs: 1_000 })
    budget.recordRequest()
    expect(budget.tryWithdraw()).toBe(true)
    expect(budget.available()).toBe(0)
    budget.refund!()
    expect(budget.available()).toBe(1)
    // A second refund has no withdrawal left to undo.
    budget.refund!()
    expect(budget.available()).toBe(1)

    // A withdrawal that has left the window has already been given back by time.
    expect(budget.tryWithdraw()).toBe(true)
    await clock.advance(1_000)
    expect(budget.available()).toBe(0)
    budget.refund!()
    expect(budget.available()).toBe(0)
  })
})

describe('retry with a budget: only retries made are paid for', () => {
  it('leaves the budget short of exactly the retries that ran, whoever aborted when', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            startMs: fc.integer({ min: 0, max: 50 }),
            abortAtMs: fc.option(fc.integer({ min: 0, max: 400 }), { nil: undefined }),
            failures: fc.integer({ min: 0, max: 4 }),
          }),
          { minLength: 1, maxLength: 10 },
        ),
        async (calls) => {
          const clock = new ManualClock()
          // No deposits and a window longer than the test: the balance only moves by retries.
          const budget = createRetryBudget({
            clock,
            ratio: 0,
            minRetriesPerSecond: 1,
            ttlMs: 20_000,
          })
          const policy = retry({ clock, budget, maxAttempts: 4, baseDelayMs: 40, jitter: 'none' })
          let retriesMade = 0
          const runs: Promise<unknown>[] = []
          for (const [index, call] of calls.entries()) {
            const controller = new AbortController()
            if (call.abortAtMs !== undefined)
              clock.setTimeout(() => controller.abort('left'), call.abortAtMs + index / 64)
            clock.setTimeout(
              () => {
                runs.push(
                  policy
                    .execute(async ({ attempt, signal }) => {
                      if (attempt > 1) retriesMade++
                      await sleep(clock, 5, signal)
                      if (attempt <= call.failures)
                        throw Object.assign(new Error('down'), { code: 'ECONNRESET' })
                      return 'ok'
                    }, controller.signal)
                    .catch(() => undefined),
                )
              },
              call.startMs + index / 128,
            )
          }
          await clock.advance(2_000)
          await Promise.all(runs)
          expect(budget.available()).toBe(20 - retriesMade)
        },
      ),
      { numRuns: 200 },
    )
  })
})
