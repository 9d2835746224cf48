// Shadow calls (exchange with shadow: true) are outside the service's accounting: the shadow
// service is often also a target of the route (docs/proxy.md's own example shadows to the new
// service its strangler split sends 10% to), and failing or slow shadows opened its breaker,
// ejected its endpoints and filled its bulkhead, so the real clients routed there got 503s
// (found by exploratory testing).

import { describe, expect, it } from 'vitest'
import { forwardRequest, serviceConfig, useUpstreamTest } from './helpers.js'

const { upstream, service } = useUpstreamTest()

const strict = {
  breaker: { failureThreshold: 1, cooldownMs: 10_000, halfOpenProbes: 1 },
  outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 30_000, maxEjectedPercent: 100 },
  bulkhead: { maxConcurrent: 1, maxQueue: 0, connectionsPerEndpoint: 4 },
} as const

const shadow = { shadow: true } as const

describe('a shadow call', () => {
  it('neither opens the breaker nor ejects an endpoint, and is made once', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { service: fresh } = service(serviceConfig([up.url], strict))
    for (let i = 0; i < 3; i++) {
      expect((await fresh.exchange(forwardRequest(), 1024, shadow)).status).toBe(502)
    }
    // One request each: a shadow is not retried (the retry policy retries 502 three times).
    expect(up.requests).toHaveLength(3)
    const state = fresh.state()
    expect(state.breaker).toBe('closed')
    expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
    // A real client's request through the same service counts as ever.
    up.fallback = { kind: 'respond' }
    expect((await fresh.exchange(forwardRequest(), 1024)).status).toBe(200)
  })

  it('takes no bulkhead slot from the real requests', async () => {
    const up = await upstream({ fallback: { kind: 'hold' } })
    const { service: fresh } = service(serviceConfig([up.url], { ...strict, retry: undefined }))
    const held = fresh.exchange(forwardRequest(), 1024, shadow)
    await up.waitForRequests(1)
    expect(fresh.state().bulkhead.running).toBe(0)
    up.fallback = { kind: 'respond' }
    // The only slot (maxConcurrent 1, no queue) is free for the client.
    expect((await fresh.exchange(forwardRequest(), 1024)).status).toBe(200)
    up.release()
    expect((await held).status).toBe(200)
  })

  it('is not sent while the breaker is open or half-open, and takes no probe', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { service: fresh, clock } = service(
      serviceConfig([up.url], { ...strict, retry: undefined }),
    )
    expect((await fresh.exchange(forwardRequest(), 1024)).status).toBe(502)
    expect(fresh.state().breaker).toBe('open')
    await expect(fresh.exchange(forwardRequest(), 1024, shadow)).rejects.toMatchObject({
      code: 'BROKEN_CIRCUIT',
    })
    await clock.advance(10_000)
    expect(fresh.state().breaker).toBe('half-open')
    await expect(fresh.exchange(forwardRequest(), 1024, shadow)).rejects.toMatchObject({
      code: 'BROKEN_CIRCUIT',
    })
    expect(up.requests).toHaveLength(1)
    // The probe is still there for a real request, which closes the breaker.
    up.fallback = { kind: 'respond' }
    expect((await fresh.exchange(forwardRequest(), 1024)).status).toBe(200)
    expect(fresh.state().breaker).toBe('closed')
  })
})
