import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { DeadlineExceededError } from '../../src/policies/errors.js'
import { fallback } from '../../src/policies/fallback.js'
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

// A caller's signal aborted with a DeadlineExceededError (the caller's own deadline ran out,
// passed on as the reason, as a deadline's signal or a deadline-clamped timeout does) is the
// budget running out, not a cancellation: every policy must surface it as DEADLINE_EXCEEDED, as
// retry does, not as ABORTED. Refused before the call started: `started: false`, so a breaker
// outside does not count it.
type Kind = 'timeout' | 'timeout-hard' | 'bulkhead' | 'breaker' | 'fallback' | 'retry'

interface CallerAbort {
  readonly kind: Kind
  // Policies around the one under test (outermost first), in the same pipeline.
  readonly around?: readonly Kind[]
  readonly fused: boolean
  // 'before': the signal is already aborted at the call; 'during': it aborts at abortAtMs.
  readonly when: 'before' | 'during'
  readonly deadlineReason: boolean
  readonly deadlineAtMs: number
  readonly abortAtMs: number
}

async function runCallerAbort(s: CallerAbort) {
  const clock = new ManualClock()
  const controller = new AbortController()
  const reason: unknown = s.deadlineReason
    ? new DeadlineExceededError(s.deadlineAtMs)
    : new BreakwaterError('ABORTED', 'caller left')
  const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
  const slots = bulkhead({ maxConcurrent: 1, maxQueued: 1, clock })
  let fallbacks = 0
  const make = (kind: Kind): Policy =>
    kind === 'timeout'
      ? timeout(10_000, { clock })
      : kind === 'timeout-hard'
        ? timeout(10_000, { clock, mode: 'hard' })
        : kind === 'bulkhead'
          ? slots
          : kind === 'retry'
            ? retry({ clock, maxAttempts: 3, baseDelayMs: 1, jitter: 'none' })
            : kind === 'breaker'
              ? breaker
              : // fn returns a string, so the fallback's own string keeps the call's type.
                (fallback(() => {
                  fallbacks++
                  return 'fallback'
                }) as unknown as Policy)
  const policies = [...(s.around ?? []).map(make), make(s.kind)]
  const chain = s.fused ? pipeline(...policies) : pipeline(new Opaque(), ...policies)
  let calls = 0
  // Works for 100 ms, then passes its signal's reason on (as fetch does) if it aborted.
  const fn = async (context: PolicyContext): Promise<string> => {
    calls++
    await sleep(clock, 100)
    if (context.signal.aborted) throw context.signal.reason
    return 'ok'
  }
  // The bulkhead's only slot is taken, so the call under test waits in its queue.
  const blocker = s.kind === 'bulkhead' ? slots.execute(() => sleep(clock, 100)) : undefined
  if (s.when === 'before') controller.abort(reason)
  else clock.setTimeout(() => controller.abort(reason), s.abortAtMs)
  let outcome: unknown
  void chain.execute(fn, controller.signal).then(
    (value) => {
      outcome = value
    },
    (error: unknown) => {
      outcome = error
    },
  )
  await clock.advance(1_000)
  await blocker
  const state = breaker.state
  breaker.dispose()
  return { outcome, calls, fallbacks, state, pendingTimers: clock.pendingTimers }
}

const callerAbortArb = fc.record({
  kind: fc.constantFrom<Kind>(
    'timeout',
    'timeout-hard',
    'bulkhead',
    'breaker',
    'fallback',
    'retry',
  ),
  fused: fc.boolean(),
  when: fc.constantFrom<'before' | 'during'>('before', 'during'),
  deadlineReason: fc.boolean(),
  deadlineAtMs: fc.integer({ min: 0, max: 1_000_000 }),
  abortAtMs: fc.integer({ min: 1, max: 99 }),
})

describe("a caller's signal aborted with a DeadlineExceededError", () => {
  it('surfaces as DEADLINE_EXCEEDED from every policy, fused or not', async () => {
    await fc.assert(
      fc.asyncProperty(callerAbortArb, async (s) => {
        const r = await runCallerAbort(s)
        expect(r.pendingTimers).toBe(0)
        expect(r.fallbacks).toBe(0)
        // Neither a refusal nor a call the caller's side cut off counts against the downstream.
        expect(r.state).toBe('closed')
        expect(r.calls).toBe(s.when === 'before' || s.kind === 'bulkhead' ? 0 : 1)
        expect(codeOf(r.outcome)).toBe(s.deadlineReason ? 'DEADLINE_EXCEEDED' : 'ABORTED')
        if (!s.deadlineReason) return
        const error = r.outcome as DeadlineExceededError
        expect(error.deadlineAtMs).toBe(s.deadlineAtMs)
        // Nothing reached the downstream before the call started, or while it waited for a
        // bulkhead slot; a timeout that gave up on a running call, or fn passing the reason
        // on, had started it.
        expect(error.started).toBe(s.when === 'during' && s.kind !== 'bulkhead')
      }),
      { numRuns: 300 },
    )
  })

  it('surfaces as DEADLINE_EXCEEDED from a pipeline of several policies, fused or not', async () => {
    const kinds = fc.constantFrom<Kind>('timeout', 'timeout-hard', 'breaker', 'fallback', 'retry')
    await fc.assert(
      fc.asyncProperty(
        callerAbortArb,
        fc.uniqueArray(kinds, { minLength: 1, maxLength: 3 }),
        async (base, around) => {
          const s = { ...base, around: around.filter((k) => k !== base.kind) }
          const r = await runCallerAbort(s)
          expect(r.pendingTimers).toBe(0)
          expect(r.fallbacks).toBe(0)
          expect(r.state).toBe('closed')
          expect(codeOf(r.outcome)).toBe(s.deadlineReason ? 'DEADLINE_EXCEEDED' : 'ABORTED')
          if (s.deadlineReason && s.when === 'before') {
            expect((r.outcome as DeadlineExceededError).started).toBe(false)
          }
        },
      ),
      { numRuns: 300 },
    )
  })

  it('is refused as DEADLINE_EXCEEDED (started: false) by each policy before it runs fn', async () => {
    const kinds = ['timeout', 'timeout-hard', 'bulkhead', 'breaker', 'fallback', 'retry'] as const
    for (const kind of kinds) {
      for (const fused of [true, false]) {
        const r = await runCallerAbort({
          kind,
          fused,
          when: 'before',
          deadlineReason: true,
          deadlineAtMs: 5,
          abortAtMs: 1,
        })
        expect({ kind, fused, code: codeOf(r.outcome) }).toEqual({
          kind,
          fused,
          code: 'DEADLINE_EXCEEDED',
        })
        expect((r.outcome as DeadlineExceededError).started).toBe(false)
      }
    }
  })

  it("keeps a half-open breaker's probe for the next call after refusing one", async () => {
    for (const fused of [true, false]) {
      const clock = new ManualClock()
      const breaker = circuitBreaker({
        window: { kind: 'consecutive', failures: 1 },
        cooldownMs: 10,
        clock,
      })
      const chain = fused ? pipeline(breaker) : pipeline(new Opaque(), breaker)
      await chain.execute(() => Promise.reject(new Error('down'))).catch(() => {})
      await clock.advance(10)
      expect(breaker.state).toBe('half-open')
      const controller = new AbortController()
      controller.abort(new DeadlineExceededError(clock.now()))
      const refused = await chain.execute(async () => 'ran', controller.signal).catch((e) => e)
      expect(codeOf(refused)).toBe('DEADLINE_EXCEEDED')
      expect((refused as DeadlineExceededError).started).toBe(false)
      // Not counted: the circuit is still half-open and its one probe slot is free.
      expect(breaker.state).toBe('half-open')
      expect(await chain.execute(async () => 'probe')).toBe('probe')
      expect(breaker.state).toBe('closed')
      breaker.dispose()
    }
  })
})
