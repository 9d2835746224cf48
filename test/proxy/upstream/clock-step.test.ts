// The proxy's upstream timeouts when the wall clock steps back (an NTP correction). An
// attempt's due times and its call's deadline are wall-clock times, but its timer counts
// elapsed time (Node's timers are monotonic), and when it fired it compared them with the
// stepped clock: readMs 500 with the clock stepped back 5 s 100 ms into the call ran out after
// 5.5 s. ManualClock.jump steps now() the way NTP does, its timers keeping the time they had left.
import { describe, expect, it } from 'vitest'
import type { ServiceConfig } from '../../../src/proxy/contracts.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { forwardRequest, serviceConfig, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups, upstream } = useUpstreamTest()

const T0 = 1_000_000

// Real time for the promise jobs and sockets between clock steps (not a timeout under test).
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 5))

async function start(config: ServiceConfig) {
  const clock = new ManualClock(T0)
  let jumpedMs = 0
  const service = createServiceRuntime(config, testDeps(clock), { random: () => 0.5 })
  cleanups.push(() => service.close())
  // Elapsed time on the clock (what advance() added up), jumps left out.
  const elapsed = () => clock.now() - T0 - jumpedMs
  const outcome: { at?: number; error?: unknown } = {}
  const pending = service.exchange(forwardRequest(), 10).then(
    () => Object.assign(outcome, { at: elapsed() }),
    (error: unknown) => Object.assign(outcome, { at: elapsed(), error }),
  )
  const jump = (ms: number) => {
    jumpedMs += ms
    clock.jump(ms)
  }
  // Advances in steps of 10 ms, giving the sockets time between them, until `untilMs` elapsed.
  const runTo = async (untilMs: number) => {
    while (elapsed() < untilMs && outcome.at === undefined) {
      await clock.advance(Math.min(10, untilMs - elapsed()))
      await settle()
    }
  }
  return { clock, outcome, pending, jump, runTo, elapsed }
}

describe('upstream timeouts across a wall-clock step back', () => {
  it.each([
    [
      'an attempt after readMs',
      { connectMs: 1_000, readMs: 500, overallMs: 600_000 },
      500,
      'UPSTREAM_TIMEOUT',
    ],
    [
      'the call at its overall deadline',
      { connectMs: 1_000, readMs: 60_000, overallMs: 1_000 },
      1_000,
      'DEADLINE_EXCEEDED',
    ],
  ] as const)('ends %s, not after that and the step', async (_, timeouts, endsAt, code) => {
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { outcome, jump, runTo } = await start(
      serviceConfig([up.url], { retry: undefined, timeouts }),
    )
    await up.waitForRequests(1)
    await runTo(100)
    jump(-5_000)
    await runTo(endsAt + 500)
    expect(outcome.at).toBe(endsAt)
    expect(outcome.error).toMatchObject({ code })
  })

  it('keeps the deadline of a call whose clock stepped back between two attempts', async () => {
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { outcome, jump, runTo } = await start(
      serviceConfig([up.url], {
        timeouts: { connectMs: 1_000, readMs: 800, overallMs: 2_000 },
      }),
    )
    await up.waitForRequests(1)
    // The first attempt runs out at 800; the step comes during the backoff before the second.
    await runTo(810)
    expect(up.requests).toHaveLength(1)
    jump(-5_000)
    await runTo(2_500)
    expect(up.requests.length).toBeGreaterThan(1)
    expect(outcome.at).toBe(2_000)
    expect(outcome.error).toMatchObject({ code: 'DEADLINE_EXCEEDED' })
  })
})
