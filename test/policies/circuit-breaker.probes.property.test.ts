import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { bulkhead } from '../../src/policies/bulkhead.js'
import { circuitBreaker } from '../../src/policies/circuit-breaker.js'
import { fallback } from '../../src/policies/fallback.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import type { PolicyFunction } from '../../src/policies/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

type Outcome = 'ok' | 'fail' | 'abort' | 'permanent' | 'syncThrow' | 'isFailureThrows'
const outcomes: Outcome[] = ['ok', 'fail', 'abort', 'permanent', 'syncThrow', 'isFailureThrows']
const shapes = ['alone', 'bulkhead', 'retry', 'timeout', 'fallback'] as const

// A half-open breaker admits at most halfOpenProbes calls at once, alone or fused into a
// pipeline, whatever the probes' outcomes (a caller abort and a throwing isFailure free the
// slot) and whatever order fast-check's scheduler settles them in; once every call settled,
// a breaker still half-open is not stuck: it admits the next call.
describe('circuitBreaker: half-open probes under concurrency', () => {
  it('never runs more than halfOpenProbes at once and never keeps a slot after a call settled', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 3 }),
        fc.constantFrom(...shapes),
        fc.array(fc.record({ outcome: fc.constantFrom(...outcomes), withSignal: fc.boolean() }), {
          minLength: 1,
          maxLength: 12,
        }),
        fc.scheduler(),
        async (probes, shape, calls, s) => {
          const clock = new ManualClock()
          const breaker = circuitBreaker({
            clock,
            halfOpenProbes: probes,
            cooldownMs: 100,
            window: { kind: 'consecutive', failures: 1 },
            isFailure: (error) => {
              if ((error as { weird?: boolean }).weird) throw new Error('isFailure bug')
              return (error as { status?: number }).status !== 400
            },
          })
          const policy = {
            alone: breaker,
            bulkhead: pipeline(breaker, bulkhead({ maxConcurrent: 2, maxQueued: 10, clock })),
            retry: pipeline(retry({ clock, maxAttempts: 1 }), breaker),
            timeout: pipeline(breaker, timeout(1_000_000, { clock })),
            fallback: pipeline(fallback('fallback'), breaker),
          }[shape]
          await breaker.execute(() => Promise.reject(new Error('down'))).catch(() => {})
          await clock.advance(100)
          expect(breaker.state).toBe('half-open')
          let running = 0
          let most = 0
          const settled: Array<Promise<unknown>> = []
          for (const call of calls) {
            const controller = new AbortController()
            const fn: PolicyFunction<string> = async () => {
              running++
              most = Math.max(most, running)
              if (call.outcome === 'syncThrow') {
                running--
                throw new Error('thrown at once')
              }
              try {
                await s.schedule(Promise.resolve(), 'settle')
                switch (call.outcome) {
                  case 'abort':
                    controller.abort('caller left')
                    throw new Error('aborted')
                  case 'fail':
                    throw new Error('failed')
                  case 'permanent':
                    throw Object.assign(new Error('bad request'), { status: 400 })
                  case 'isFailureThrows':
                    throw Object.assign(new Error('odd'), { weird: true })
                  default:
                    return 'ok'
                }
              } finally {
                running--
              }
            }
            const signal =
              call.withSignal || call.outcome === 'abort' ? controller.signal : undefined
            settled.push(Promise.resolve(policy.execute(fn, signal)).catch(() => {}))
          }
          // A queued call that gets its slot schedules its own settle afterwards.
          let all = false
          void Promise.all(settled).then(() => {
            all = true
          })
          for (let round = 0; round < 20 && !all; round++) {
            await s.waitAll()
            await new Promise((resolve) => setImmediate(resolve))
          }
          expect(all).toBe(true)
          expect(most).toBeLessThanOrEqual(probes)
          if (breaker.state === 'half-open')
            await expect(breaker.execute(() => 'again')).resolves.toBe('again')
        },
      ),
      { numRuns: 300 },
    )
  })
})
