import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { type Bulkhead, bulkhead } from '../../src/policies/bulkhead.js'
import { type CircuitBreaker, circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { fallback } from '../../src/policies/fallback.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { type TimeoutMode, timeout } from '../../src/policies/timeout.js'
import type { Policy, PolicyContext } from '../../src/policies/types.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { Opaque } from './opaque-policy.js'

// A pipeline of breakwater's own policies runs fused (one reaction per call, see fused.ts) and
// leaves for the promise-based chain only where it must; the same policies behind a policy
// breakwater does not know run the chain all the way. Both must behave the same: the same
// attempts at the same times with the same attempt numbers, the same outcomes at the same times,
// the same bulkhead and breaker states, and nothing left behind (timers, bulkhead slots, calls
// that never settle). Every timer the scenario sets sits at a fractional offset from the
// policies' whole-millisecond timers, so that no two fire at the same instant: which of two
// tied timers runs first is the clock's creation order, not something the two paths promise
// (the fused path reaches a timer in fewer promise jobs).
// Found by this test: a retry inside a retry slept past an enclosing timeout on the chain only.

type PolicySpec =
  | { readonly kind: 'timeout'; readonly ms: number; readonly mode: TimeoutMode }
  | { readonly kind: 'retry'; readonly max: number; readonly base: number }
  | { readonly kind: 'breaker'; readonly failures: number; readonly cooldown: number }
  | {
      readonly kind: 'bulkhead'
      readonly conc: number
      readonly queued: number
      readonly qt: number | undefined
    }
  | { readonly kind: 'fallback'; readonly fn: boolean; readonly async: boolean }

interface AttemptSpec {
  readonly kind: 'ok' | 'transient' | 'plain' | 'hang' | 'syncThrow' | 'syncValue'
  readonly d: number
  readonly readSignal: boolean
  readonly honour: boolean
}

type Step =
  | {
      readonly t: 'call'
      readonly attempts: readonly AttemptSpec[]
      readonly withSignal: boolean
      readonly abortAfter: number | undefined
    }
  | { readonly t: 'advance'; readonly ms: number }

const timeoutArb = (maxMs: number): fc.Arbitrary<PolicySpec> =>
  fc.record({
    kind: fc.constant('timeout' as const),
    ms: fc.integer({ min: 1, max: maxMs }),
    // A hard timeout is never fused: it stops fusing where it stands.
    mode: fc.constantFrom<TimeoutMode>('cooperative', 'cooperative', 'hard'),
  })
const retryArb = (minAttempts: number): fc.Arbitrary<PolicySpec> =>
  fc.record({
    kind: fc.constant('retry' as const),
    max: fc.integer({ min: minAttempts, max: 3 }),
    base: fc.integer({ min: 1, max: 10 }),
  })
const policyArb: fc.Arbitrary<PolicySpec> = fc.oneof(
  timeoutArb(40),
  retryArb(1),
  fc.record({
    kind: fc.constant('breaker' as const),
    failures: fc.integer({ min: 1, max: 3 }),
    cooldown: fc.integer({ min: 1, max: 50 }),
  }),
  fc.record({
    kind: fc.constant('bulkhead' as const),
    conc: fc.integer({ min: 1, max: 2 }),
    queued: fc.integer({ min: 0, max: 2 }),
    qt: fc.option(fc.integer({ min: 1, max: 30 }), { nil: undefined }),
  }),
  fc.record({ kind: fc.constant('fallback' as const), fn: fc.boolean(), async: fc.boolean() }),
)

const attemptArb = (
  kinds: ReadonlyArray<AttemptSpec['kind']>,
  maxMs: number,
): fc.Arbitrary<AttemptSpec> =>
  fc.record({
    kind: fc.constantFrom(...kinds),
    d: fc.integer({ min: 0, max: maxMs }),
    readSignal: fc.boolean(),
    honour: fc.boolean(),
  })

const callArb = (attempt: fc.Arbitrary<AttemptSpec>, withSignal: fc.Arbitrary<boolean>) =>
  fc.record({
    t: fc.constant('call' as const),
    attempts: fc.array(attempt, { minLength: 3, maxLength: 3 }),
    withSignal,
    abortAfter: fc.option(fc.integer({ min: 0, max: 40 }), { nil: undefined }),
  })

const advanceArb = fc.record({
  t: fc.constant('advance' as const),
  ms: fc.integer({ min: 0, max: 25 }),
})

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  callArb(
    attemptArb(['ok', 'transient', 'plain', 'hang', 'syncThrow', 'syncValue'], 30),
    fc.boolean(),
  ),
  advanceArb,
)

// For retries nested in timeouts: mostly failures worth retrying, quick ones (a backoff sleep
// then has to fit what is left of a timeout), and mostly no caller's signal (with one, a
// pipeline with a timeout is not fused at all).
const nestedStepArb: fc.Arbitrary<Step> = fc.oneof(
  callArb(
    attemptArb(['transient', 'transient', 'syncThrow', 'ok', 'hang', 'plain'], 8),
    fc.constantFrom(false, false, true),
  ),
  advanceArb,
)

interface Built {
  readonly policies: Policy[]
  readonly bulkheads: Bulkhead[]
  readonly breakers: CircuitBreaker[]
}

function build(spec: readonly PolicySpec[], clock: ManualClock): Built {
  const bulkheads: Bulkhead[] = []
  const breakers: CircuitBreaker[] = []
  const policies = spec.map((p, index): Policy => {
    switch (p.kind) {
      case 'timeout':
        // Fractional and different per position: no two timeouts, and no timeout and another
        // timer, end at the same instant.
        return timeout(p.ms + (index + 1) / 37 + 1 / 1031, { mode: p.mode, clock })
      case 'retry':
        return retry({ maxAttempts: p.max, baseDelayMs: p.base, jitter: 'none', clock })
      case 'breaker': {
        const breaker = circuitBreaker({
          window: { kind: 'consecutive', failures: p.failures },
          cooldownMs: p.cooldown,
          halfOpenProbes: 1,
          clock,
        })
        breakers.push(breaker)
        return breaker
      }
      case 'bulkhead': {
        const b = bulkhead({
          maxConcurrent: p.conc,
          maxQueued: p.queued,
          // A queue timeout needs a queue (refused with maxQueued 0, where it could never apply).
          ...(p.qt === undefined || p.queued === 0 ? {} : { queueTimeoutMs: p.qt }),
          clock,
        })
        bulkheads.push(b)
        return b
      }
      default: {
        // Anywhere in the pipeline, not only outermost: its type says less than it does.
        if (!p.fn) return fallback('fbv') as unknown as Policy
        const text = (e: unknown) =>
          `fb:${(e as { code?: string } | undefined)?.code ?? (e as Error | undefined)?.message}`
        return fallback((e: unknown) =>
          p.async ? Promise.resolve(text(e)) : text(e),
        ) as unknown as Policy
      }
    }
  })
  return { policies, bulkheads, breakers }
}

function describeError(e: unknown): string {
  if (e === undefined) return 'undefined'
  const error = e as { constructor?: { name?: string }; code?: string; message?: string } & {
    cause?: unknown
  }
  const cause = error?.cause === undefined ? '' : ` <- ${describeError(error.cause)}`
  return `${error?.constructor?.name}:${error?.code ?? ''}:${error?.message}${cause}`
}

function fail(code: string | undefined, message: string, extra?: object): Error {
  return Object.assign(new Error(message), code === undefined ? {} : { code }, extra)
}

/** Runs the scenario through the pipeline, fused or not, and returns what was seen. */
async function run(
  spec: readonly PolicySpec[],
  steps: readonly Step[],
  fused: boolean,
): Promise<string[]> {
  const clock = new ManualClock(0)
  const { policies, bulkheads, breakers } = build(spec, clock)
  const policy = fused ? pipeline(...policies) : pipeline(new Opaque(), ...policies)
  const log: string[] = []
  const state = () =>
    `bh=${bulkheads.map((b) => `${b.running}/${b.queued}`)} br=${breakers.map((b) => b.state)}`
  const pending: Promise<number>[] = []
  let id = 0
  for (const step of steps) {
    if (step.t === 'advance') {
      await clock.advance(step.ms + 0.5)
      log.push(`t=${clock.now()} ${state()}`)
      continue
    }
    const me = id++
    // Calls never start at the same instant: two calls' timers from the same policy would tie,
    // and which of them then runs first depends on how many promise jobs each path took.
    await clock.advance(1 / 4099)
    const controller = step.withSignal ? new AbortController() : undefined
    if (controller !== undefined && step.abortAfter !== undefined) {
      clock.setTimeout(() => controller.abort(new Error('caller-abort')), step.abortAfter + 0.25)
    }
    let n = 0
    const fn = (ctx: PolicyContext): Promise<string> | string => {
      const a = step.attempts[Math.min(n, 2)]!
      n++
      const att = n
      log.push(`call${me} fn#${att} attempt=${ctx.attempt} t=${clock.now()}`)
      const signal = a.readSignal || a.kind === 'hang' ? ctx.signal : undefined
      if (a.kind === 'syncThrow') throw fail('ECONNRESET', `sync${me}.${att}`)
      if (a.kind === 'syncValue') return `v${me}.${att}`
      return new Promise<string>((resolve, reject) => {
        const settle = () => {
          if (a.kind === 'ok' || a.kind === 'hang') resolve(`v${me}.${att}`)
          else if (a.kind === 'transient') reject(fail('ECONNRESET', `tr${me}.${att}`))
          else reject(fail(undefined, `pl${me}.${att}`))
        }
        const handle = clock.setTimeout(settle, (a.kind === 'hang' ? 300 : 0) + a.d + 0.125)
        if (signal !== undefined && (a.honour || a.kind === 'hang')) {
          const onAbort = () => {
            clock.clearTimeout(handle)
            reject(
              fail(undefined, `aborted${me}.${att}`, {
                name: 'AbortError',
                reason: describeError(signal.reason),
              }),
            )
          }
          if (signal.aborted) onAbort()
          else signal.addEventListener('abort', onAbort, { once: true })
        }
      })
    }
    let settled = 0
    pending.push(
      policy.execute(fn, controller?.signal).then(
        (v) => {
          settled++
          log.push(`call${me} value ${v} t=${clock.now()} calls=${n}`)
          return settled
        },
        (e: unknown) => {
          settled++
          log.push(`call${me} error ${describeError(e)} t=${clock.now()} calls=${n}`)
          return settled
        },
      ),
    )
    await flushJobs()
  }
  // Long enough for every hanging attempt, sleep, queue wait and cooldown to be over: a second
  // at least, and on while timers are pending (four nested retries make up to 81 attempts and
  // their sleeps, more than a second; 100 s of clock is far past any).
  for (let i = 0; i < 20 || (clock.pendingTimers > 0 && i < 2_000); i++) await clock.advance(50)
  log.push(`end ${state()}`)
  let timer: NodeJS.Timeout | undefined
  const counts = await Promise.race([
    Promise.all(pending),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('HUNG'), 200)
    }),
  ])
  clearTimeout(timer)
  log.push(`settled=${JSON.stringify(counts)}`)
  for (const breaker of breakers) breaker.dispose()
  log.push(`pendingTimers=${clock.pendingTimers}`)
  return log
}

// Calls interleave differently only in the order of their own lines; each call's lines (and
// the shared state lines) keep their order.
function byCall(log: readonly string[]): string[] {
  const key = (line: string) => line.split(' ')[0]!
  return [...log].sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0))
}

// The same runs compared, and what both must leave behind.
async function sameBothWays(spec: readonly PolicySpec[], steps: readonly Step[]): Promise<void> {
  const fused = byCall(await run(spec, steps, true))
  const unfused = byCall(await run(spec, steps, false))
  expect(unfused).toEqual(fused)
  expect(fused).toContain('pendingTimers=0')
  expect(fused.find((l) => l.startsWith('settled'))).not.toContain('HUNG')
  const end = fused.find((l) => l.startsWith('end'))!
  // Every slot given back, nobody left queued.
  expect(end).not.toMatch(/bh=[^ ]*[1-9]/)
  for (const line of fused) expect(line).not.toMatch(/bh=[^ ]*-/)
}

describe('a fused pipeline and the same policies unfused', () => {
  it('make the same attempts, settle alike and leave nothing behind', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(policyArb, { minLength: 1, maxLength: 5 }),
        fc.array(stepArb, { minLength: 1, maxLength: 12 }),
        sameBothWays,
      ),
      { numRuns: 120 },
    )
  })

  // Timeouts and retries nested in each other, where what a retry must know of the timeouts
  // around it passes through the contexts of the policies in between (another retry, another
  // timeout); mixed with the other policies such shapes are rare.
  it('agree on retries and timeouts nested in each other', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(timeoutArb(10), retryArb(2)), { minLength: 2, maxLength: 4 }),
        fc.array(nestedStepArb, { minLength: 1, maxLength: 4 }),
        sameBothWays,
      ),
      { numRuns: 400 },
    )
  })

  it('agree on four nested retries whose attempts outlast a second (a counterexample)', async () => {
    // Found by a CI run (seed -1913532928): the runs were stopped after 1 s of clock with
    // attempts still scheduled, so the pendingTimers check failed though both paths agreed.
    await sameBothWays(
      [
        { kind: 'retry', max: 3, base: 1 },
        { kind: 'retry', max: 3, base: 1 },
        { kind: 'retry', max: 3, base: 7 },
        { kind: 'retry', max: 3, base: 5 },
      ] as PolicySpec[],
      [
        {
          t: 'call',
          attempts: [
            { kind: 'transient', d: 0, readSignal: false, honour: false },
            { kind: 'transient', d: 0, readSignal: false, honour: false },
            { kind: 'transient', d: 5, readSignal: false, honour: false },
          ],
          withSignal: false,
          abortAfter: undefined,
        },
      ] as Step[],
    )
  })
})
