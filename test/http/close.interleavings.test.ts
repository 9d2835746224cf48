import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createHttpClient, HttpClientClosedError } from '../../src/http/index.js'
import { ManualClock } from '../../src/testing/index.js'

// close() racing calls of a service's execute(), under every interleaving fast-check picks: no
// work may start after the close, every call must settle, a call whose work succeeded keeps its
// result, and nothing may stay armed on the clock. The work never touches the network (the pool
// is never used), so only the policies and the close logic are exercised.

describe('close() against concurrent calls', () => {
  it('never runs work after the close, settles every call without the clock moving, leaves no timer', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.array(fc.record({ fails: fc.array(fc.boolean(), { minLength: 1, maxLength: 3 }) }), {
          minLength: 1,
          maxLength: 5,
        }),
        fc.nat({ max: 5 }),
        async (s, calls, closeAfter) => {
          const clock = new ManualClock(0)
          const client = createHttpClient({
            clock,
            services: {
              svc: {
                baseUrl: 'http://127.0.0.1:9',
                retry: { baseDelayMs: 10, maxAttempts: 3 },
                bulkhead: { maxConcurrent: 2, maxQueued: 10 },
                circuitBreaker: false,
              },
            },
          })
          const svc = client.service('svc')
          let closed = false
          let startedAfterClose = 0
          let settledCount = 0
          const results = calls.map((call, i) =>
            svc
              .execute(
                async ({ attempt }) => {
                  if (closed) startedAfterClose++
                  await s.schedule(Promise.resolve(), `call ${i} attempt ${attempt}`)
                  if (call.fails[attempt - 1] ?? false)
                    throw Object.assign(new Error('busy'), { status: 503 })
                  return `ok ${i}`
                },
                { retry: true },
              )
              .then(
                (value) => ({ value }),
                (error: unknown) => ({ error }),
              )
              .finally(() => settledCount++),
          )
          let closing: Promise<void> | undefined
          const closeTask = s.schedule(Promise.resolve(), 'close').then(() => {
            closed = true
            closing = client.close()
          })
          // Time moves until the close has happened...
          let steps = 0
          while (!closed && steps < 200) {
            if (s.count() > 0) await s.waitOne()
            if (steps >= closeAfter || s.count() === 0) await clock.advance(10)
            steps++
          }
          await closeTask
          // ...then stands still: the attempts in flight end, and every other call must end
          // with them, none waiting for a backoff or a queue slot the clock would have to give.
          while (s.count() > 0) await s.waitOne()
          for (let i = 0; i < 20; i++) await Promise.resolve()
          expect(settledCount).toBe(calls.length)
          await clock.runAll()
          await s.waitAll()
          const settled = await Promise.all(results)
          await closing
          expect(startedAfterClose).toBe(0)
          for (const [i, r] of settled.entries()) {
            if ('value' in r) expect(r.value).toBe(`ok ${i}`)
            else
              expect(
                r.error instanceof HttpClientClosedError || (r.error as Error).message === 'busy',
              ).toBe(true)
          }
          expect(clock.pendingTimers).toBe(0)
        },
      ),
      { numRuns: 100 },
    )
  })
})
