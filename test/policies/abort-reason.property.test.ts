import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryEvent, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

// A retry under a deadline with a caller's signal runs its attempts in a scope with two
// parents: the caller's signal and the deadline. The attempt's signal must abort with the
// reason of whichever aborted first, as AbortSignal.any([caller, deadline]) made at the start
// would, whenever fn happens to look at it: fn passes the reason on (fetch rejects with it), and
// the policies around fn treat the two differently (a caller's abort is neutral for a breaker
// and ends a retry as 'aborted'; a deadline is a failure of the call and ends it as 'deadline').

/** A policy breakwater does not know: in front of a pipeline it keeps the whole chain unfused. */
class Opaque implements Policy {
  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
  }
}

function codeOf(error: unknown): string {
  return BreakwaterError.is(error) ? error.code : String(error)
}

interface Scenario {
  readonly deadlineMs: number
  readonly abortAtMs: number
  // When fn first looks at its signal: at once (linking the scope), or only after both ran out.
  readonly readsEarly: boolean
  readonly shape: 'retry' | 'retry+breaker' | 'timeout+retry+breaker' | 'retry+timeout'
  // Fused (pipeline's own path) or through the promise-based chain (an unknown policy first).
  readonly fused?: boolean
}

async function run(s: Scenario) {
  const clock = new ManualClock()
  const controller = new AbortController()
  const retrying = retry({ clock, maxAttempts: 3, baseDelayMs: 1, jitter: 'none' })
  const giveUps: string[] = []
  retrying.events.on((event: RetryEvent) => {
    if (event.type === 'giveUp') giveUps.push(event.reason)
  })
  const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
  const policies: Policy[] =
    s.shape === 'retry'
      ? [retrying]
      : s.shape === 'retry+breaker'
        ? [retrying, breaker]
        : s.shape === 'timeout+retry+breaker'
          ? [timeout(10_000, { clock }), retrying, breaker]
          : [retrying, timeout(10_000, { clock })]
  const chain = s.fused === false ? pipeline(new Opaque(), ...policies) : pipeline(...policies)
  let seen: string | undefined
  const fn = async (context: PolicyContext): Promise<string> => {
    if (s.readsEarly) void context.signal
    // Works on past both the deadline and the caller's abort, then passes its signal on.
    await sleep(clock, 100)
    const signal = context.signal
    seen = signal.aborted ? codeOf(signal.reason) : 'not aborted'
    throw signal.aborted ? signal.reason : new Error('unreachable')
  }
  clock.setTimeout(
    () => controller.abort(new BreakwaterError('ABORTED', 'caller left')),
    s.abortAtMs,
  )
  let outcome: string | undefined
  void withDeadline(s.deadlineMs, () => chain.execute(fn, controller.signal), { clock }).then(
    () => {
      outcome = 'ok'
    },
    (error: unknown) => {
      outcome = codeOf(error)
    },
  )
  await clock.advance(1_000)
  const state = breaker.state
  breaker.dispose()
  return { seen, outcome, giveUps, state, pendingTimers: clock.pendingTimers }
}

const scenarioArb = fc.record({
  deadlineMs: fc.integer({ min: 1, max: 99 }),
  abortAtMs: fc.integer({ min: 1, max: 99 }),
  readsEarly: fc.boolean(),
  shape: fc.constantFrom<Scenario['shape']>(
    'retry',
    'retry+breaker',
    'timeout+retry+breaker',
    'retry+timeout',
  ),
})

describe('abort reason under a deadline and a caller signal', () => {
  it('is that of whichever aborted first, whether or not fn read its signal at once', async () => {
    await fc.assert(
      fc.asyncProperty(
        scenarioArb.filter((s) => s.deadlineMs !== s.abortAtMs),
        async (s) => {
          const early = await run({ ...s, readsEarly: true })
          const late = await run({ ...s, readsEarly: false })
          expect(late).toEqual(early)
          expect(await run({ ...s, readsEarly: s.readsEarly, fused: false })).toEqual(early)
          const deadlineFirst = s.deadlineMs < s.abortAtMs
          if (s.shape !== 'retry+timeout') {
            expect(early.seen).toBe(deadlineFirst ? 'DEADLINE_EXCEEDED' : 'ABORTED')
          }
          // With a timeout outside, the retry runs in the timeout's scope, which the deadline
          // (by the timeout's own timer, clamped to the deadline) or the caller aborts: a scope
          // cut off by the deadline is the budget running out, not a cancellation.
          expect(early.giveUps).toEqual([deadlineFirst ? 'deadline' : 'aborted'])
          expect(early.outcome).toBe(deadlineFirst ? 'DEADLINE_EXCEEDED' : 'ABORTED')
          expect(early.pendingTimers).toBe(0)
        },
      ),
      { numRuns: 200 },
    )
  })

  it('reports the deadline that passed before the caller left, for fn that looks late', async () => {
    // The deadline passes at 10 ms, the caller aborts at 50 ms, fn looks at its signal at
    // 100 ms: the deadline came first. The scope used to answer with the caller's reason (its
    // first parent), and the retry gave up as 'aborted' with AbortedError (it asked the
    // caller's signal first), although fn reading its signal at once got the deadline.
    const late = await run({
      deadlineMs: 10,
      abortAtMs: 50,
      readsEarly: false,
      shape: 'retry+breaker',
    })
    expect(late.seen).toBe('DEADLINE_EXCEEDED')
    expect(late.giveUps).toEqual(['deadline'])
    expect(late.outcome).toBe('DEADLINE_EXCEEDED')
  })

  it('reports the deadline, not an abort, when it ends a retry inside a timeout', async () => {
    // timeout(10 s) outside, the deadline at 10 ms: the timeout clamps itself to the deadline,
    // and its scope (the retry's parent) aborts with DeadlineExceededError at 10 ms. The retry
    // took that for a caller's abort: it gave up as 'aborted' and threw AbortedError, so the
    // metric and the event said somebody cancelled the call when its budget had run out.
    for (const fused of [true, false]) {
      const late = await run({
        deadlineMs: 10,
        abortAtMs: 50,
        readsEarly: false,
        shape: 'timeout+retry+breaker',
        fused,
      })
      expect(late.giveUps).toEqual(['deadline'])
      expect(late.outcome).toBe('DEADLINE_EXCEEDED')
    }
  })
})
