// The proxy's upstream timeouts when the wall clock steps back (an NTP correction). An
// attempt's due times and its call's deadline are wall-clock times, but its timer counts
// elapsed time (Node's timers are monotonic), and when it fired it compared them with the
// stepped clock: readMs 500 with the clock stepped back 5 s 100 ms into the call ran out after
// 5.5 s. ManualClock.jump steps now() the way NTP does, its timers keeping the time they had left.
import { createServer, type ServerResponse } from 'node:http'
import { describe, expect, it } from 'vitest'
import type { ServiceConfig } from '../../../src/proxy/contracts.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'
import { forwardRequest, serviceConfig, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups, upstream } = useUpstreamTest()

const T0 = 1_000_000

// Real time for the promise jobs and sockets between clock steps (not a timeout under test).
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 5))

// A ManualClock that counts its readings: the test waits for the proxy to read it.
class CountingClock extends ManualClock {
  reads = 0
  override now(): number {
    this.reads++
    return super.now()
  }
}

async function start(config: ServiceConfig) {
  const clock = new CountingClock(T0)
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

  // A response whose head came at once and whose body stalls after one chunk: readMs (500)
  // runs from the head, then again from the chunk. A first step back (50 ms, 50 ms in) that no
  // reading shows comes before the chunk, a second (1 s) after it. The chunk's due time was
  // read between the two: moved by both, it ran out at 500, 50 ms before its time (550).
  it('does not end a body idle time read between two steps back before its time', async () => {
    let response: ServerResponse | undefined
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.flushHeaders()
      response = res
    })
    await listenOnLoopback(server)
    cleanups.push(
      () =>
        new Promise((resolve) => {
          response?.destroy()
          server.closeAllConnections()
          server.close(resolve)
        }),
    )
    const address = server.address() as { port: number }
    const { outcome, jump, runTo, clock } = await start(
      serviceConfig([`http://127.0.0.1:${address.port}`], {
        retry: undefined,
        timeouts: { connectMs: 1_000, readMs: 500, overallMs: 600_000 },
      }),
    )
    const headReads = clock.reads
    await until(() => response !== undefined, 'the request at the upstream')
    // The head reached the proxy (it read the clock): the attempt is in its body phase, due at 500.
    await until(() => clock.reads > headReads, 'the head at the proxy')
    await runTo(50)
    jump(-50)
    const before = clock.pendingTimers
    const reads = clock.reads
    response!.write('first chunk')
    // The chunk reached the proxy (it read the clock) and moved the due time on: no new timer,
    // the armed one re-arms when it fires.
    await until(() => clock.reads > reads, 'the chunk at the proxy')
    expect(clock.pendingTimers).toBe(before)
    await runTo(100)
    jump(-1_000)
    await runTo(2_000)
    expect(outcome.error).toMatchObject({ code: 'UPSTREAM_TIMEOUT' })
    // Due 550 (50 + 500); late by at most the timer's delay (500), never early.
    expect(outcome.at).toBeGreaterThanOrEqual(550)
    expect(outcome.at).toBeLessThanOrEqual(1_000)
  })
})
