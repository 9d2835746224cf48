import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { AbortedError } from '../../src/core/errors.js'
import { withDeadline } from '../../src/policies/deadline.js'
import { pipeline } from '../../src/policies/pipeline.js'
import { type RetryEvent, retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

const unavailable = () => Object.assign(new Error('unavailable'), { status: 503 })

// A caller abort at any moment of a retrying call (during an attempt, a backoff sleep, or from
// user code the retry runs: shouldRetry and its event listeners) ends the call at once, with
// AbortedError carrying the reason, no further attempt, one give-up and no timer left behind.
describe('retry: a caller abort at any moment', () => {
  it('settles at once, stops attempting, reports one give-up and leaves no timer', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          abortAtMs: fc.integer({ min: 0, max: 2_000 }),
          abortFrom: fc.constantFrom('clock', 'shouldRetry', 'retryEvent'),
          abortOnAttempt: fc.integer({ min: 1, max: 4 }),
          attemptMs: fc.integer({ min: 0, max: 300 }),
          honoursSignal: fc.boolean(),
          outerTimeout: fc.boolean(),
          deadlineMs: fc.option(fc.integer({ min: 1, max: 5_000 }), { nil: undefined }),
          jitter: fc.constantFrom('full', 'equal', 'decorrelated', 'none'),
          seed: fc.integer(),
        }),
        async (s) => {
          const clock = new ManualClock()
          const controller = new AbortController()
          let attempts = 0
          let abortedAtAttempt: number | undefined
          let abortedAtMs: number | undefined
          let outcome: { error: unknown; atMs: number; attempts: number } | undefined
          const abort = () => {
            if (controller.signal.aborted || outcome !== undefined) return
            abortedAtAttempt = attempts
            abortedAtMs = clock.now()
            controller.abort('caller left')
          }
          const retrying = retry({
            clock,
            maxAttempts: 5,
            baseDelayMs: 100,
            jitter: s.jitter,
            random: mulberry(s.seed),
            shouldRetry: () => {
              if (s.abortFrom === 'shouldRetry' && attempts === s.abortOnAttempt) abort()
              return true
            },
          })
          const events: RetryEvent[] = []
          retrying.events.on((event) => {
            events.push(event)
            if (
              s.abortFrom === 'retryEvent' &&
              event.type === 'retry' &&
              attempts === s.abortOnAttempt
            )
              abort()
          })
          const policy = s.outerTimeout
            ? pipeline(timeout(1_000_000, { clock }), retrying)
            : retrying
          const fn = ({ signal }: { signal: AbortSignal }) =>
            new Promise<never>((_, reject) => {
              attempts++
              if (signal.aborted && s.honoursSignal) return reject(signal.reason)
              const handle = clock.setTimeout(() => reject(unavailable()), s.attemptMs)
              if (s.honoursSignal)
                signal.addEventListener('abort', () => {
                  clock.clearTimeout(handle)
                  reject(signal.reason)
                })
            })
          const run = () =>
            policy.execute(fn, controller.signal).then(
              () => {
                throw new Error('cannot succeed')
              },
              (error: unknown) => {
                outcome = { error, atMs: clock.now(), attempts }
              },
            )
          const done =
            s.deadlineMs === undefined ? run() : withDeadline(s.deadlineMs, run, { clock })
          if (s.abortFrom === 'clock') clock.setTimeout(abort, s.abortAtMs)
          for (let i = 0; i < 100 && outcome === undefined; i++) await clock.advance(50)
          await clock.advance(0)
          expect(outcome).toBeDefined()
          await done
          const { error, atMs } = outcome!
          if (abortedAtAttempt !== undefined && s.honoursSignal) {
            // Settled in the same instant as the abort, without another attempt.
            expect(outcome!.attempts).toBe(abortedAtAttempt)
            if (s.abortFrom !== 'clock') expect(error).toBeInstanceOf(AbortedError)
          }
          if (error instanceof AbortedError) {
            expect(abortedAtAttempt).toBeDefined()
            expect(error.cause).toBe('caller left')
          }
          if (abortedAtAttempt !== undefined && s.honoursSignal) expect(atMs).toBe(abortedAtMs)
          // Only timers the test itself set may be left (the abort timer, a dishonoured attempt).
          await clock.runAll()
          await clock.advance(0)
          expect(clock.pendingTimers).toBe(0)
          // An attempt that ignores its signal may outlive a caller an outer timeout answered;
          // the retry still gives up exactly once, for the abort when that came first.
          const giveUps = events.filter((e) => e.type === 'giveUp')
          expect(giveUps).toHaveLength(1)
          if (error instanceof AbortedError && s.honoursSignal)
            expect(giveUps[0]).toMatchObject({ reason: 'aborted' })
        },
      ),
      { numRuns: 300 },
    )
  })
})

function mulberry(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) | 0
    let t = Math.imul(state ^ (state >>> 15), 1 | state)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}
