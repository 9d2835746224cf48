// A client that goes away while the proxy is still opening the upstream connection: the connect
// must go with it, not run on to the connect timeout. The upstream is a real listener that
// accepts nothing (its SYNs unanswered, as a blackholed host's); time is a ManualClock that
// never moves, so only the cancel can end the connect.

import { request } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { connectsUnderWay, unacceptingListener } from '../../support/unaccepting-listener.js'
import { eventually, serviceConfig, startFront, testDeps } from './helpers.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

describe('a client cancel while the upstream connect is under way', () => {
  it('drops the connect at once instead of leaving it to the connect timeout', async () => {
    const listener = await unacceptingListener()
    cleanups.push(() => listener.stop())
    const clock = new ManualClock(1_000_000)
    const service = createServiceRuntime(
      serviceConfig([`http://127.0.0.1:${listener.port}`], {
        timeouts: { connectMs: 10_000, readMs: 10_000, overallMs: 30_000 },
        retry: undefined,
      }),
      testDeps(clock),
    )
    cleanups.push(() => service.close())
    const front = await startFront(service, clock)
    cleanups.push(() => front.close())

    // Some of the connects that filled the listener's queue hang too: only new ones count.
    const fillers = new Set(connectsUnderWay(listener.port))
    const proxyConnects = () => connectsUnderWay(listener.port).filter((p) => !fillers.has(p))
    const client = request(`${front.url}/slow`)
    client.on('error', () => {})
    client.end()
    await eventually(() => proxyConnects().length === 1)
    client.destroy()
    await eventually(() => front.outcomes.length === 1)
    expect(front.outcomes[0]?.status).toBe(499)
    // The clock stands still: the 10 s connect timeout never comes, only the cancel ends it.
    await eventually(() => proxyConnects().length === 0, 2_000)
  })
})
