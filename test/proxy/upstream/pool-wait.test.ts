// A request that waits for one of the proxy's own connections (every socket of the endpoint's
// pool connected and busy) is local congestion, not a slow upstream: connectMs does not run out
// on it, the breaker and outlier ejection do not count it, and only the deadline bounds the
// wait (504 DEADLINE_EXCEEDED, like the bulkhead's queue). Both pools: the proxy's own
// (http://) and undici's (https://).

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ServiceConfig } from '../../../src/proxy/contracts.js'
import { createTestCerts, type TestCerts } from '../support/certs.js'
import type { FaultyUpstream } from '../support/faulty-upstream.js'
import { eventually, forwardRequest, serviceConfig, useUpstreamTest } from './helpers.js'

const { cleanups, upstream, service } = useUpstreamTest()

let certs: TestCerts
beforeAll(() => {
  certs = createTestCerts()
})
afterAll(() => certs.cleanup())

const tripAtOnce = {
  breaker: { failureThreshold: 1, cooldownMs: 10_000, halfOpenProbes: 1 },
  outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 30_000, maxEjectedPercent: 100 },
} as const

function config(url: string): ServiceConfig {
  const tls = url.startsWith('https:')
  return serviceConfig([url], {
    retry: undefined,
    ...tripAtOnce,
    timeouts: { connectMs: 100, readMs: 5_000, overallMs: 10_000 },
    bulkhead: { maxConcurrent: 64, maxQueue: 64, connectionsPerEndpoint: 1 },
    tls: {
      caFile: tls ? certs.ca.certFile : undefined,
      certFile: undefined,
      keyFile: undefined,
      serverName: undefined,
      verify: true,
    },
  })
}

/**
 * A service on `up` whose calls all end before it closes, even when an assertion failed
 * midway (close waits for running calls): held answers are released, the deadlines passed.
 */
function start(up: FaultyUpstream) {
  const started = service(config(up.url))
  cleanups.push(async () => {
    up.fallback = { kind: 'respond' }
    up.release()
    await started.clock.advance(60_000)
  })
  return started
}

/** The held first request has the pool's only socket: the next one waits for it. */
async function busyPool(up: FaultyUpstream): Promise<void> {
  await up.waitForRequests(1)
  await eventually(() => up.held === 1)
}

const kinds = [
  { name: 'http (Http1Pool)', start: () => upstream({ fallback: { kind: 'hold' } }) },
  {
    name: 'https (undici)',
    start: () =>
      upstream({
        fallback: { kind: 'hold' },
        tls: { cert: certs.server.cert, key: certs.server.key },
      }),
  },
]

for (const kind of kinds) {
  describe(`waiting for a busy socket of the proxy's pool, ${kind.name}`, () => {
    it('is not a connect timeout: the request is served once the socket frees, nothing is counted', async () => {
      const up = await kind.start()
      const { service: orders, clock } = start(up)
      const first = orders.exchange(forwardRequest({ target: '/first' }), 1024)
      await busyPool(up)
      const second = orders.exchange(forwardRequest({ target: '/second' }), 1024).then(
        (r) => r.status,
        (error: { code?: string }) => error.code,
      )
      // Well past connectMs (100) while the only socket is busy.
      for (let i = 0; i < 5; i++) await clock.advance(100)
      expect(orders.state().breaker).toBe('closed')
      expect(up.requests).toHaveLength(1)
      up.release()
      expect((await first).status).toBe(200)
      await up.waitForRequests(2)
      await eventually(() => up.held === 1)
      up.release()
      expect(await second).toBe(200)
      const state = orders.state()
      expect(state.breaker).toBe('closed')
      expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
    })

    it('ends at the deadline with 504 DEADLINE_EXCEEDED that names the pool, uncounted', async () => {
      const up = await kind.start()
      const { service: orders, clock } = start(up)
      const first = orders
        .exchange(forwardRequest({ target: '/first' }), 1024)
        .catch((error: { code?: string }) => error.code)
      await busyPool(up)
      const second = orders
        .exchange(forwardRequest({ target: '/second', deadlineAt: clock.now() + 500 }), 1024)
        .catch((error: unknown) => error)
      // Its deadline (the client's 500 ms) passes, well after connectMs (100).
      for (let i = 0; i < 5; i++) await clock.advance(100)
      const error = (await second) as { code?: string; status?: number; message?: string }
      expect(error).toMatchObject({ code: 'DEADLINE_EXCEEDED', status: 504 })
      expect(error.message).toMatch(/connection/)
      expect(up.requests).toHaveLength(1)
      const state = orders.state()
      expect(state.breaker).toBe('closed')
      expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
      up.release()
      await first
    })
  })
}
