// A non-idempotent request (POST, PATCH, ...) without an Idempotency-Key is retried, like
// nginx's proxy_next_upstream and Envoy's connect-failure, when its attempt failed before any
// byte of it was written to an upstream (the connect refused), and never once it may have been
// written (a reset after the upstream read it). Real sockets: a closed loopback port and a
// scripted node:http upstream.

import { describe, expect, it } from 'vitest'
import type { ServiceConfig } from '../../../src/proxy/contracts.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { refusedUrl } from '../support/faulty-upstream.js'
import { eventually, serviceConfig, startFront, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups, upstream } = useUpstreamTest()

async function front(config: ServiceConfig): Promise<{ url: string; clock: ManualClock }> {
  const clock = new ManualClock(1_000_000)
  const service = createServiceRuntime(config, testDeps(clock), { random: () => 0.5 })
  cleanups.push(() => service.close())
  const started = await startFront(service, clock)
  cleanups.push(() => started.close())
  return { url: started.url, clock }
}

/** Settles `pending`, moving the manual clock past each retry's backoff (50 ms at random 0.5). */
async function answered(pending: Promise<Response>, clock: ManualClock): Promise<Response> {
  let done = false
  const settled = (): void => {
    done = true
  }
  pending.then(settled, settled)
  for (;;) {
    await eventually(() => {
      const at = clock.nextTimerAt()
      return done || (at !== undefined && at - clock.now() <= 50)
    })
    if (done) return pending
    await clock.advance(50)
  }
}

describe('retry of a non-idempotent request that never reached an upstream', () => {
  it('sends every POST to the live endpoint once when the other refuses connections', async () => {
    const refused = await refusedUrl()
    const live = await upstream()
    const { url, clock } = await front(serviceConfig([refused, live.url]))
    for (let i = 0; i < 6; i++) {
      const response = await answered(
        fetch(`${url}/pay/${i}`, { method: 'POST', body: `p${i}` }),
        clock,
      )
      expect(response.status).toBe(200)
      expect(await response.text()).toBe(`ok /pay/${i}`)
    }
    expect(live.requests.map((r) => `${r.method} ${r.url} ${r.body}`)).toEqual(
      [0, 1, 2, 3, 4, 5].map((i) => `POST /pay/${i} p${i}`),
    )
  })

  it('does not retry a POST whose connection was reset after the upstream read it', async () => {
    const live = await upstream()
    live.script.push({ kind: 'reset' })
    const { url, clock } = await front(serviceConfig([live.url]))
    const response = await answered(fetch(`${url}/pay`, { method: 'POST', body: 'x' }), clock)
    expect(response.status).toBe(502)
    expect(await response.json()).toMatchObject({ code: 'UPSTREAM_RESET' })
    expect(live.requests.map((r) => `${r.method} ${r.url} ${r.body}`)).toEqual(['POST /pay x'])
  })
})
