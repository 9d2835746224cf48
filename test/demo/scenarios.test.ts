// Each scenario must show its claim in its own numbers. The tests run them in virtual time: the
// services are in memory (transport: 'memory') and every wait (answers, timeouts, backoff,
// cooldowns, pacing) is a timer of a ManualClock that the test fires in order, so the numbers
// are the same on every machine, however loaded, and nothing waits in real time. One run over
// real HTTP checks that the sockets path works, and asserts no timing.
import { describe, expect, it } from 'vitest'
import {
  type BulkheadVariantResult,
  type Downstream,
  runBreakerScenario,
  runBulkheadScenario,
  runJitterScenario,
  runTimeoutScenario,
} from '../../src/demo/policies/index.js'
import type { CircuitState } from '../../src/index.js'
import { flushJobs, ManualClock } from '../../src/testing/manual-clock.js'

/**
 * Runs `scenario` on a ManualClock, firing its timers in time order whenever nothing else is
 * left to run, until it settles.
 */
async function inVirtualTime<T>(scenario: (clock: ManualClock) => Promise<T>): Promise<T> {
  const clock = new ManualClock(0)
  let settled = false
  const running = scenario(clock).finally(() => {
    settled = true
  })
  running.catch(() => {})
  while (!settled) {
    await flushJobs()
    if (settled) break
    const next = clock.nextTimerAt()
    if (next === undefined || next === Number.POSITIVE_INFINITY)
      throw new Error('the scenario waits for something no timer of its clock will bring')
    await clock.advance(next - clock.now())
  }
  return running
}

const timeScale = 0.05

function successRate(variant: BulkheadVariantResult, name: Downstream): number {
  const row = variant.byDownstream[name]
  return row.successes / row.calls
}

describe('policy scenarios (in-memory services, virtual time)', () => {
  it('jitter: full jitter lowers the peak and the requests shed after recovery', async () => {
    const result = await inVirtualTime((clock) =>
      runJitterScenario({ clients: 100, timeScale: 0.15, clock, transport: 'memory' }),
    )
    const [none, full] = result.variants
    expect(none.jitter).toBe('none')
    expect(full.jitter).toBe('full')
    for (const variant of result.variants) {
      expect(variant.calls).toBe(100)
      // Every attempt reached the service: nothing was dropped on the client side.
      expect(variant.load).toBe(variant.calls + variant.retries)
      expect(variant.successes + variant.failures).toBe(variant.calls)
    }
    expect(full.peak).toBeLessThan(none.peak)
    expect(full.shed).toBeLessThan(none.shed)
    expect(result.conclusion.holds).toBe(true)
    expect(result.conclusion.text).toContain(`peak ${none.peak} -> ${full.peak}`)
  })

  it('bulkhead: per-downstream bulkheads keep B and C healthy while D is slow', async () => {
    const result = await inVirtualTime((clock) =>
      runBulkheadScenario({ callsPerDownstream: 50, timeScale, clock, transport: 'memory' }),
    )
    const [shared, split] = result.variants
    for (const name of ['B', 'C'] as const) {
      expect(successRate(split, name)).toBeGreaterThan(successRate(shared, name))
      expect(split.byDownstream[name].p99Ms).toBeLessThan(shared.byDownstream[name].p99Ms)
      // With their own slots B and C never wait for D, so nothing of theirs is refused.
      expect(split.byDownstream[name].fastFailures).toBe(0)
      expect(split.byDownstream[name].load).toBe(split.byDownstream[name].successes)
    }
    // D's slowness is contained: its own bulkhead refuses calls instead of the others'.
    expect(split.byDownstream.D.failures).toBeGreaterThan(0)
    expect(result.conclusion.holds).toBe(true)
  })

  it('timeout: a short timeout with retries beats one long timeout at p99', async () => {
    const result = await inVirtualTime((clock) =>
      runTimeoutScenario({
        calls: 150,
        concurrency: 30,
        timeScale: 0.1,
        clock,
        transport: 'memory',
      }),
    )
    const [long, short] = result.variants
    expect(result.hangs[0]).toBeGreaterThan(1)
    // Hung calls wait out the whole long timeout (10 s x 0.1), and set the p99.
    expect(long.p99Ms).toBeGreaterThanOrEqual(1_000)
    expect(long.failures).toBe(result.hangs[0])
    expect(short.p99Ms).toBeLessThan(long.p99Ms)
    // Every hung attempt was abandoned and retried (unless it was a call's last attempt).
    expect(short.retries).toBeGreaterThan(0)
    expect(short.load).toBe(short.calls + short.retries)
    expect(result.conclusion.holds).toBe(true)
  })

  it('breaker: the breaker takes load off the down service and closes when it returns', async () => {
    const result = await inVirtualTime((clock) =>
      runBreakerScenario({ calls: 120, timeScale, clock, transport: 'memory' }),
    )
    const [plain, guarded] = result.variants
    expect(plain.transitions).toEqual([])
    expect(plain.fastFailures).toBe(0)
    expect(guarded.loadWhileDown).toBeLessThan(plain.loadWhileDown)
    expect(guarded.fastFailures).toBeGreaterThan(0)
    expect(guarded.retries).toBeLessThan(plain.retries)
    // A legal walk of the state machine: closed -> open -> (half-open -> open)* -> half-open -> closed.
    const states: CircuitState[] = [
      guarded.transitions[0]!.from,
      ...guarded.transitions.map((t) => t.to),
    ]
    expect(states.slice(0, 2)).toEqual(['closed', 'open'])
    expect(states.slice(-2)).toEqual(['half-open', 'closed'])
    const legal: Record<string, readonly CircuitState[]> = {
      closed: ['open'],
      open: ['half-open'],
      'half-open': ['open', 'closed'],
    }
    for (let i = 1; i < states.length; i++) expect(legal[states[i - 1]!]).toContain(states[i])
    // It opened while the service was down and closed only after it came back.
    expect(guarded.transitions[0]!.afterRecoveryMs).toBeLessThan(0)
    expect(guarded.transitions.at(-1)!.afterRecoveryMs).toBeGreaterThanOrEqual(0)
    expect(result.conclusion.holds).toBe(true)
  })
})

describe('policy scenarios over real HTTP', () => {
  it('jitter: every call and retry goes through real sockets and is counted', async () => {
    const result = await runJitterScenario({ clients: 20, timeScale: 0.05 })
    for (const variant of result.variants) {
      expect(variant.calls).toBe(20)
      expect(variant.load).toBe(variant.calls + variant.retries)
      expect(variant.successes + variant.failures).toBe(variant.calls)
    }
  })
})
