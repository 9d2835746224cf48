// A health check that never settles (one that awaits a stuck dependency) must still get the
// probe an answer: 503 once healthTimeoutMs has passed, rather than a request held open (and
// its handler kept in memory) until the prober gives up.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createMetricsRegistry, startMetricsServer } from '../../src/observability/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { get, serversClosedAfterEach } from './metrics-http.js'

const servers = serversClosedAfterEach()

describe('metrics server: a health check that does not settle', () => {
  it('answers 503 after healthTimeoutMs and reports a TIMEOUT', async () => {
    const clock = new ManualClock()
    const errors: unknown[] = []
    const server = await startMetricsServer({
      port: 0,
      registry: createMetricsRegistry(),
      health: () => new Promise<boolean>(() => {}),
      healthTimeoutMs: 2_000,
      clock,
      onError: (e) => errors.push(e),
    })
    servers.push(server)
    const answer = get(`${server.url}/healthz`)
    // Wait (on I/O turns, not time) until the request reached the check.
    for (let turn = 0; turn < 1_000 && clock.pendingTimers === 0; turn++) await flushJobs()
    await clock.advance(2_000)
    expect(await answer).toEqual({ status: 503, body: 'unhealthy\n' })
    expect(errors).toHaveLength(1)
    expect((errors[0] as { code?: unknown }).code).toBe('TIMEOUT')
  })

  it('shares one unsettled check among the probes that arrive meanwhile, then asks afresh', async () => {
    const clock = new ManualClock()
    let calls = 0
    let answer: (ok: boolean) => void = () => {}
    const server = await startMetricsServer({
      port: 0,
      registry: createMetricsRegistry(),
      health: () => {
        calls++
        return new Promise<boolean>((resolve) => {
          answer = resolve
        })
      },
      clock,
    })
    servers.push(server)
    // A prober that keeps asking while a dependency hangs must not start a check per probe.
    const probes = [1, 2, 3].map(() => get(`${server.url}/healthz`))
    for (let turn = 0; turn < 1_000 && clock.pendingTimers < 3; turn++) await flushJobs()
    expect(clock.pendingTimers).toBe(3)
    expect(calls).toBe(1)
    answer(true)
    for (const probe of probes) expect(await probe).toEqual({ status: 200, body: 'ok\n' })
    // Settled: the next probe runs the check again.
    const next = get(`${server.url}/healthz`)
    for (let turn = 0; turn < 1_000 && calls < 2; turn++) await flushJobs()
    expect(calls).toBe(2)
    answer(false)
    expect(await next).toEqual({ status: 503, body: 'unhealthy\n' })
  })

  it('leaves no timer behind when the check answers in time', async () => {
    const clock = new ManualClock()
    const server = await startMetricsServer({
      port: 0,
      registry: createMetricsRegistry(),
      health: async () => true,
      clock,
    })
    servers.push(server)
    expect(await get(`${server.url}/healthz`)).toEqual({ status: 200, body: 'ok\n' })
    expect(clock.pendingTimers).toBe(0)
  })

  it('refuses a healthTimeoutMs that is not a positive integer', async () => {
    for (const healthTimeoutMs of [0, -5, 2.5, '1000'])
      await expect(
        startMetricsServer({
          port: 0,
          registry: createMetricsRegistry(),
          healthTimeoutMs,
        } as never),
      ).rejects.toThrow(InvalidOptionError)
  })
})
