// A connect to an https endpoint (undici's pool) that never completes: it must end on the
// service's clock at connectMs, its socket closed, not run on for up to a second on undici's
// coarse connect timer while it holds a slot of the endpoint's pool. The upstream is a real
// listener that accepts nothing (its SYNs unanswered, as a blackholed host's); time is a
// ManualClock, so only the test moves it.

import { afterEach, describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { track } from '../../support/track.js'
import { connectsUnderWay, unacceptingListener } from '../../support/unaccepting-listener.js'
import { eventually, forwardRequest, serviceConfig, testDeps } from './helpers.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/**
 * An exchange with an https service (connectMs `connectMs`) whose one endpoint never completes
 * a handshake, once the proxy's connect to it is under way (its SYN unanswered).
 */
async function hangingConnect(connectMs: number, deadlineMs?: number) {
  const listener = await unacceptingListener()
  cleanups.push(() => listener.stop())
  const clock = new ManualClock(1_000_000)
  const service = createServiceRuntime(
    serviceConfig([`https://127.0.0.1:${listener.port}`], {
      timeouts: { connectMs, readMs: 10_000, overallMs: 30_000 },
      retry: undefined,
    }),
    testDeps(clock),
  )
  cleanups.push(() => service.close())
  // Some of the connects that filled the listener's queue hang too: only new ones count.
  const fillers = new Set(connectsUnderWay(listener.port))
  const proxyConnects = () => connectsUnderWay(listener.port).filter((p) => !fillers.has(p))
  const deadlineAt = deadlineMs === undefined ? undefined : clock.now() + deadlineMs
  const call = track(service.exchange(forwardRequest({ deadlineAt }), 10))
  await eventually(() => proxyConnects().length === 1)
  return { clock, service, call, proxyConnects }
}

describe('a connect to an https endpoint that hangs', () => {
  it("ends at connectMs on the service's clock, its socket closed with the attempt's 504", async () => {
    const { clock, call, proxyConnects } = await hangingConnect(300)
    await clock.advance(299)
    expect(call.settled).toBe(false)
    expect(proxyConnects()).toHaveLength(1)
    await clock.advance(1)
    expect(call.settled).toBe(true)
    expect(call.error).toMatchObject({ code: 'UPSTREAM_TIMEOUT', status: 504 })
    // Gone at once, not on undici's timer (up to a second later on real time).
    expect(proxyConnects()).toHaveLength(0)
    expect(clock.pendingTimers).toBe(0)
  })

  it('is ended by close() once the call has stopped waiting for it: its socket closed, its timer cleared', async () => {
    const { clock, service, call, proxyConnects } = await hangingConnect(10_000, 100)
    await clock.advance(100)
    expect(call.error).toMatchObject({ code: 'DEADLINE_EXCEEDED', status: 504 })
    expect(proxyConnects()).toHaveLength(1)
    // The clock stands still from here: only close() can end the connect.
    await service.close()
    expect(proxyConnects()).toHaveLength(0)
    expect(clock.pendingTimers).toBe(0)
  })
})
