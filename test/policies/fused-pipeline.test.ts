import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { sleep } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { fallback } from '../../src/policies/fallback.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import {
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
} from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

// pipeline() runs a chain of breakwater policies as one fused call (src/policies/fused.ts).
// These tests run the same random pipelines and workloads twice, fused and through the
// promise-based chain of each policy (a policy breakwater does not know, put in front, keeps
// the whole chain there), and require everything observable to agree: each call's outcome and
// when it settled, every attempt of fn, every event of every policy with its time, and the
// final state of breakers, bulkheads and timers.
//
// Fused calls need fewer promise ticks, so two things happening at the same instant could be
// ordered differently without either being wrong. The generated times avoid such ties: call i
// starts at a fraction i/256 of a millisecond, each fn takes a whole number of milliseconds
// plus 1/8, every policy's duration is whole (breaker cooldowns and queue timeouts: plus 1/2),
// and a caller's signal, when a call has one, aborts a whole number of milliseconds plus 1/4
// after the call starts. All are binary fractions, so the clock's arithmetic stays exact. One tie is inherent: a
// bulkhead hands its slot to a queued call at the instant another call finishes, so whatever
// the queued call does without waiting (a synchronous throw, a refusal by a policy inside the
// bulkhead) happens in that same instant; two such calls record their outcomes in an order
// that depends on promise depth, which neither path defines. Pipelines whose bulkhead queues
// therefore keep it innermost and their fn never throws synchronously.

/** A policy breakwater does not know; it passes calls straight through. */
class Opaque implements Policy {
  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
  }
}

type Kind =
  | 'ok'
  | 'transient'
  | 'permanent'
  | 'abortable'
  | 'watchful'
  | 'throw'
  | 'hang'
  | 'deadline'
interface Attempt {
  readonly kind: Kind
  readonly ms: number
}
interface CallSpec {
  readonly startMs: number
  readonly attempts: readonly Attempt[]
  /** The caller's deadline (withDeadline), from the call's start; none when undefined. */
  readonly deadlineMs?: number | undefined
  /** When the caller's signal aborts, from the call's start (plus 1/4); no signal when undefined. */
  readonly abortMs?: number | undefined
}
interface PolicySpec {
  readonly kind: 'overall' | 'retry' | 'breaker' | 'perTry' | 'bulkhead' | 'fallback'
  readonly ms: number
  readonly n: number
  readonly m: number
  readonly flag: boolean
}
interface Scenario {
  readonly policies: readonly PolicySpec[]
  readonly calls: readonly CallSpec[]
}

const attemptArb = fc.record({
  kind: fc.constantFrom<Kind>(
    'ok',
    'ok',
    'transient',
    'transient',
    'permanent',
    'abortable',
    'watchful',
    'throw',
    'hang',
    'deadline',
  ),
  ms: fc.integer({ min: 1, max: 60 }),
})
const callArb = fc.record({
  startMs: fc.integer({ min: 0, max: 120 }),
  attempts: fc.array(attemptArb, { minLength: 3, maxLength: 3 }),
  deadlineMs: fc.option(fc.integer({ min: 1, max: 100 }), { nil: undefined }),
  abortMs: fc.option(fc.integer({ min: 0, max: 100 }), { nil: undefined }),
})
const policyArb = (kind: PolicySpec['kind']) =>
  fc.record({
    kind: fc.constant(kind),
    ms: fc.integer({ min: 1, max: 4 }),
    n: fc.integer({ min: 1, max: 3 }),
    m: fc.integer({ min: 0, max: 2 }),
    flag: fc.boolean(),
  })
// Policies in the recommended order, some left out, and now and then in a shuffled order.
const policiesArb = fc
  .tuple(
    fc.subarray(['fallback', 'overall', 'retry', 'breaker', 'perTry', 'bulkhead'] as const, {
      minLength: 1,
    }),
    fc.boolean(),
  )
  .chain(([kinds, shuffle]) =>
    (shuffle ? fc.shuffledSubarray([...kinds], { minLength: kinds.length }) : fc.constant(kinds))
      .chain((ordered) => fc.tuple(...ordered.map((kind) => policyArb(kind))))
      .map((policies) =>
        // See the inherent tie above: only an innermost bulkhead may queue.
        policies.map((p, i) =>
          p.kind === 'bulkhead' && i !== policies.length - 1 ? { ...p, m: 0 } : p,
        ),
      ),
  )
const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    policies: policiesArb,
    calls: fc.array(callArb, { minLength: 1, maxLength: 12 }),
  })
  .map(({ policies, calls }) =>
    policies.some((p) => p.kind === 'bulkhead' && p.m > 0)
      ? {
          policies,
          calls: calls.map((call) => ({
            ...call,
            attempts: call.attempts.map(
              (a): Attempt => (a.kind === 'throw' ? { kind: 'transient', ms: a.ms } : a),
            ),
          })),
        }
      : { policies, calls },
  )

interface Observed {
  readonly outcomes: string[]
  readonly attempts: string[]
  readonly events: Record<string, string[]>
  readonly final: Record<string, unknown>
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return `non-error ${String(error)}`
  const code = BreakwaterError.is(error) ? error.code : (error as { code?: string }).code
  const cause = error.cause === undefined ? '' : ` <- ${describeError(error.cause)}`
  return `${error.name}/${code ?? '-'}/${error.message}${cause}`
}

function describeEvent(event: object): string {
  return Object.entries(event)
    .map(
      ([key, value]) => `${key}=${value instanceof Error ? describeError(value) : String(value)}`,
    )
    .join(',')
}

async function observe(scenario: Scenario, fused: boolean): Promise<Observed> {
  const clock = new ManualClock()
  const events: Record<string, string[]> = {}
  const final: Record<string, unknown> = {}
  const finals: Array<() => void> = []
  const policies = scenario.policies.map((spec, index): Policy => {
    const log: string[] = []
    const name = `${index}:${spec.kind}`
    events[name] = log
    const record = (event: object) => log.push(`${clock.now()} ${describeEvent(event)}`)
    switch (spec.kind) {
      case 'overall':
      case 'perTry': {
        const policy = timeout(spec.kind === 'overall' ? 60 * spec.ms : 15 * spec.ms, { clock })
        policy.events.on(record)
        return policy
      }
      case 'retry': {
        const policy = retry({
          maxAttempts: spec.n,
          baseDelayMs: 2 * spec.ms,
          jitter: 'none',
          clock,
        })
        policy.events.on(record)
        return policy
      }
      case 'breaker': {
        const policy = circuitBreaker({
          window: { kind: 'consecutive', failures: spec.n },
          cooldownMs: 20 * spec.ms + 0.5,
          halfOpenProbes: spec.m + 1,
          ...(spec.flag ? { slowCallMs: 10 * spec.ms } : {}),
          clock,
        })
        policy.events.on(record)
        finals.push(() => {
          final[`${name} state`] = policy.state
          policy.dispose()
        })
        return policy
      }
      case 'bulkhead': {
        const policy = bulkhead({
          maxConcurrent: spec.n,
          maxQueued: spec.m,
          // A queue timeout needs a queue (refused with maxQueued 0, where it could never apply).
          ...(spec.flag && spec.m > 0 ? { queueTimeoutMs: 8 * spec.ms + 0.5 } : {}),
          clock,
        })
        policy.events.on(record)
        finals.push(() => {
          final[`${name} running`] = policy.running
          final[`${name} queued`] = policy.queued
        })
        return policy
      }
      default: {
        const policy = fallback(
          spec.flag
            ? (error: unknown, context: PolicyContext) =>
                Promise.resolve(`fallback for ${describeError(error)} at ${context.attempt}`)
            : 'fallback',
          spec.m === 0 ? {} : { shouldFallback: (error) => !BreakwaterError.is(error) },
        )
        policy.events.on(record)
        return policy as unknown as Policy
      }
    }
  })
  const chain = fused ? pipeline(...policies) : pipeline(new Opaque(), ...policies)
  const outcomes: string[] = scenario.calls.map(() => 'pending')
  const attempts: string[] = []
  // Signals fn was handed, looked at again once everything has settled.
  const signals: Array<[string, AbortSignal]> = []
  scenario.calls.forEach((call, index) => {
    let made = 0
    const fn = async (context: PolicyContext): Promise<string> => {
      const attempt = call.attempts[Math.min(made++, call.attempts.length - 1)]!
      attempts.push(`${index} #${context.attempt} ${attempt.kind} at ${clock.now()}`)
      const ms = attempt.ms + 0.125
      switch (attempt.kind) {
        case 'ok':
          await sleep(clock, ms)
          return `value ${index}`
        case 'transient':
          await sleep(clock, ms)
          throw Object.assign(new Error(`reset ${index}`), { code: 'ECONNRESET' })
        case 'permanent':
          await sleep(clock, ms)
          throw Object.assign(new Error(`bad request ${index}`), { status: 400 })
        case 'abortable':
          signals.push([`${index} #${made}`, context.signal])
          await sleep(clock, ms, context.signal)
          return `value ${index}`
        case 'watchful':
          // Honours its signal, but fails for its own reason first.
          signals.push([`${index} #${made}`, context.signal])
          await sleep(clock, ms, context.signal)
          throw Object.assign(new Error(`reset ${index}`), { code: 'ECONNRESET' })
        case 'throw':
          throw Object.assign(new Error(`sync ${index}`), { code: 'ECONNREFUSED' })
        case 'hang':
          // Ignores its signal for long, then answers.
          await sleep(clock, 1_000 + ms)
          return `late ${index}`
        case 'deadline': {
          // Honours the caller's deadline itself (as an HTTP client does), then fails.
          const deadline = currentDeadline()?.signal
          const signal =
            deadline === undefined ? context.signal : AbortSignal.any([context.signal, deadline])
          signals.push([`${index} #${made}`, context.signal])
          await sleep(clock, ms, signal)
          throw Object.assign(new Error(`reset ${index}`), { code: 'ECONNRESET' })
        }
      }
    }
    // The synchronous throw must reach the policies as a throw, not as a rejection.
    const run = (context: PolicyContext) =>
      call.attempts[Math.min(made, call.attempts.length - 1)]!.kind === 'throw'
        ? (() => {
            made++
            attempts.push(`${index} #${context.attempt} throw at ${clock.now()}`)
            throw Object.assign(new Error(`sync ${index}`), { code: 'ECONNREFUSED' })
          })()
        : fn(context)
    clock.setTimeout(
      () => {
        const deadlineMs = call.deadlineMs
        let signal: AbortSignal | undefined
        if (call.abortMs !== undefined) {
          const controller = new AbortController()
          signal = controller.signal
          clock.setTimeout(
            () => controller.abort(new Error(`caller ${index} left`)),
            call.abortMs + 0.25,
          )
        }
        const execution =
          deadlineMs === undefined
            ? chain.execute(run, signal)
            : withDeadline(deadlineMs, () => chain.execute(run, signal), { clock })
        execution.then(
          (value) => {
            outcomes[index] = `${clock.now()} ok ${String(value)}`
          },
          (error: unknown) => {
            outcomes[index] = `${clock.now()} failed ${describeError(error)}`
          },
        )
      },
      call.startMs + (index + 1) / 256,
    )
  })
  await clock.advance(3_000)
  for (const f of finals) f()
  final.pendingTimers = clock.pendingTimers
  for (const [name, signal] of signals)
    final[`signal ${name}`] = signal.aborted ? describeError(signal.reason) : 'not aborted'
  return { outcomes, attempts, events, final }
}

describe('fused pipeline', () => {
  it('behaves exactly as the promise-based chain of the same policies', async () => {
    await fc.assert(
      fc.asyncProperty(scenarioArb, async (scenario) => {
        const reference = await observe(scenario, false)
        const fused = await observe(scenario, true)
        expect(fused).toEqual(reference)
      }),
      { numRuns: 150 },
    )
  }, 120_000)

  it('gives a retry inside two timeouts the abort reason the promise-based chain gives', async () => {
    // The per-try timeout outside runs out first, the overall one inside later; nothing asked
    // the inner scope in between, yet it aborted with the outer reason, which came first
    // (found by the property).
    const scenario: Scenario = {
      policies: [
        { kind: 'bulkhead', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'perTry', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'fallback', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'breaker', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'overall', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'retry', ms: 3, n: 2, m: 0, flag: false },
      ],
      calls: [
        {
          startMs: 0,
          attempts: [
            { kind: 'throw', ms: 1 },
            { kind: 'transient', ms: 54 },
            { kind: 'ok', ms: 1 },
          ],
        },
      ],
    }
    const reference = await observe(scenario, false)
    // The retry gives up as 'timeout' with fn's own failure (the timeouts around it ran out: no
    // AbortedError blaming a caller), which each timeout outside wraps.
    expect(reference.outcomes[0]).toMatch(
      /after 15 ms <- TimeoutError.*after 60 ms <- Error\/ECONNRESET\/reset 0$/,
    )
    expect(await observe(scenario, true)).toEqual(reference)
  })

  it('gives a scope whose outer timeout ran out first the outer reason, whoever linked it', async () => {
    // The per-try timeout outside runs out at 15 ms, the overall one inside at 60 ms; fn fails
    // after both without looking at its signal. The retry inside asks its scope, which has been
    // aborted since 15 ms: an AbortSignal chain would say so, and the lazy scopes must not
    // answer differently because somebody read a signal on the way in (the promise-based
    // fallback did; the fused one did not). Found by the property above. (The scope's reason, a
    // TimeoutError, now makes the retry give up as 'timeout' with fn's own failure.)
    const scenario: Scenario = {
      policies: [
        { kind: 'perTry', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'overall', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'retry', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'fallback', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'bulkhead', ms: 1, n: 1, m: 0, flag: false },
      ],
      calls: [
        {
          startMs: 0,
          attempts: [
            { kind: 'transient', ms: 60 },
            { kind: 'ok', ms: 1 },
            { kind: 'ok', ms: 1 },
          ],
        },
        {
          startMs: 0,
          attempts: [
            { kind: 'ok', ms: 1 },
            { kind: 'ok', ms: 1 },
            { kind: 'ok', ms: 1 },
          ],
        },
      ],
    }
    const reference = await observe(scenario, false)
    // The retry gives up as 'timeout' with fn's own failure (the timeouts around it ran out: no
    // AbortedError blaming a caller), which each timeout outside wraps.
    expect(reference.outcomes[0]).toMatch(
      /after 15 ms <- TimeoutError.*after 60 ms <- Error\/ECONNRESET\/reset 0$/,
    )
    expect(await observe(scenario, true)).toEqual(reference)
  })

  it("leaves a finished attempt's signal alone when a timeout outside it runs out later", async () => {
    const scenario: Scenario = {
      policies: [
        { kind: 'overall', ms: 1, n: 1, m: 0, flag: false },
        { kind: 'retry', ms: 1, n: 2, m: 0, flag: false },
        { kind: 'perTry', ms: 2, n: 1, m: 0, flag: false },
      ],
      calls: [
        {
          startMs: 0,
          attempts: [
            { kind: 'watchful', ms: 5 },
            { kind: 'hang', ms: 1 },
            { kind: 'ok', ms: 1 },
          ],
        },
      ],
    }
    const reference = await observe(scenario, false)
    expect(reference.final['signal 0 #1']).toBe('not aborted')
    expect(await observe(scenario, true)).toEqual(reference)
  })

  it('settles every call of a busy recommended pipeline as the promise-based chain does', async () => {
    const scenario: Scenario = {
      policies: [
        { kind: 'overall', ms: 2, n: 1, m: 0, flag: false },
        { kind: 'retry', ms: 2, n: 3, m: 0, flag: false },
        { kind: 'breaker', ms: 1, n: 3, m: 1, flag: true },
        { kind: 'perTry', ms: 2, n: 1, m: 0, flag: false },
        { kind: 'bulkhead', ms: 1, n: 2, m: 2, flag: true },
      ],
      calls: Array.from({ length: 30 }, (_, i) => ({
        startMs: (i * 7) % 90,
        attempts: [
          { kind: (['ok', 'transient', 'abortable', 'hang'] as const)[i % 4]!, ms: 5 + i },
          { kind: 'transient', ms: 3 },
          { kind: 'ok', ms: 4 },
        ],
      })),
    }
    const reference = await observe(scenario, false)
    const fused = await observe(scenario, true)
    expect(fused).toEqual(reference)
    expect(reference.outcomes.filter((o) => o.includes(' ok ')).length).toBeGreaterThan(0)
    expect(reference.outcomes.filter((o) => o.includes('failed')).length).toBeGreaterThan(0)
  })
})
