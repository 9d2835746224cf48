// What the circuit breaker and outlier ejection count as a failure of the upstream: not a
// refusal of the proxy's own connection pool (nothing reached the upstream), and not a 408 or
// 429 answer (the upstream is shedding load or the client was slow, it is not broken).

import { describe, expect, it } from 'vitest'
import { UpstreamError } from '../../../src/proxy/upstream/index.js'
import {
  eventually,
  forwardRequest,
  recordingClient,
  serviceConfig,
  useUpstreamTest,
} from './helpers.js'

const { cleanups, upstream, service } = useUpstreamTest()

const tripAtOnce = {
  breaker: { failureThreshold: 1, cooldownMs: 10_000, halfOpenProbes: 1 },
  outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 30_000, maxEjectedPercent: 100 },
} as const

describe('a request the pool refuses before writing anything', () => {
  it('is not an upstream failure: the breaker stays closed, no endpoint is ejected, 503 UPSTREAM_POOL_REFUSED', async () => {
    const up = await upstream()
    const { service: orders } = service(
      serviceConfig([up.url], { retry: undefined, ...tripAtOnce }),
    )
    // A header value with a NUL: the pool refuses to build the request, nothing is sent.
    const refused = await orders
      .exchange(forwardRequest({ headers: { 'x-bad': 'a\u0000b' } }), 1024)
      .then(
        () => undefined,
        (error: unknown) => error,
      )
    expect(refused).toBeInstanceOf(UpstreamError)
    expect(refused).toMatchObject({ code: 'UPSTREAM_POOL_REFUSED', status: 503 })
    expect(up.requests).toHaveLength(0)
    const state = orders.state()
    expect(state.breaker).toBe('closed')
    expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
    // And the next request goes through.
    expect((await orders.exchange(forwardRequest(), 1024)).status).toBe(200)
  })

  it('gives a half-open probe slot back instead of opening the breaker again', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 502 } })
    const { service: orders, clock } = service(
      serviceConfig([up.url], { retry: undefined, breaker: tripAtOnce.breaker }),
    )
    expect((await orders.exchange(forwardRequest(), 1024)).status).toBe(502)
    expect(orders.state().breaker).toBe('open')
    await clock.advance(10_000)
    expect(orders.state().breaker).toBe('half-open')
    await expect(
      orders.exchange(forwardRequest({ headers: { 'x-bad': 'a\u0000b' } }), 1024),
    ).rejects.toMatchObject({ code: 'UPSTREAM_POOL_REFUSED' })
    expect(orders.state().breaker).toBe('half-open')
    up.fallback = { kind: 'respond' }
    expect((await orders.exchange(forwardRequest(), 1024)).status).toBe(200)
    expect(orders.state().breaker).toBe('closed')
  })
})

describe('a WebSocket handshake node refuses to send', () => {
  it('is not an upstream failure either: 503 UPSTREAM_POOL_REFUSED, the breaker stays closed', async () => {
    const up = await upstream()
    const { service: orders } = service(
      serviceConfig([up.url], {
        retry: undefined,
        websocket: { idleTimeoutMs: 1_000 },
        ...tripAtOnce,
      }),
    )
    const { client, written } = recordingClient(cleanups)
    const outcome = await orders.tunnel(
      {
        target: '/chat',
        headers: { 'x-bad': 'a\u0000b' },
        host: 'front',
        requestId: 'ws-1',
        idleTimeoutMs: 1_000,
      },
      client,
      Buffer.alloc(0),
    )
    expect(outcome).toMatchObject({ status: 503, error: 'UPSTREAM_POOL_REFUSED' })
    expect(Buffer.concat(written).toString('latin1')).toMatch(/^HTTP\/1\.1 503 /)
    expect(up.requests).toHaveLength(0)
    const state = orders.state()
    expect(state.breaker).toBe('closed')
    expect(state.endpoints.map((e) => [e.inFlight, e.consecutiveFailures])).toEqual([[0, 0]])
  })
})

describe('408 and 429 answers', () => {
  for (const status of [408, 429]) {
    it(`a ${status} without retry configured reaches the client and does not count against the breaker or ejection`, async () => {
      const up = await upstream({ fallback: { kind: 'respond', status } })
      const { service: orders } = service(
        serviceConfig([up.url], { retry: undefined, ...tripAtOnce }),
      )
      for (let i = 0; i < 3; i++)
        expect((await orders.exchange(forwardRequest(), 1024)).status).toBe(status)
      const state = orders.state()
      expect(state.breaker).toBe('closed')
      expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
      expect(up.requests).toHaveLength(3)
    })

    it(`a ${status} listed in retry.retryOnStatus is retried but does not count against the breaker`, async () => {
      const up = await upstream({ fallback: { kind: 'respond', status } })
      const { service: orders, clock } = service(
        serviceConfig([up.url], {
          breaker: tripAtOnce.breaker,
          retry: {
            attempts: 2,
            baseDelayMs: 100,
            maxDelayMs: 100,
            retryOnStatus: [status, 503],
            budgetRatio: 1,
            budgetMinPerSecond: 10,
            addIdempotencyKey: false,
          },
        }),
      )
      const answer = orders.exchange(forwardRequest(), 1024)
      // Settled before the clock moves (a refusal would otherwise be unhandled meanwhile).
      const settled = answer.then(
        (response) => response.status,
        (error: unknown) => error,
      )
      await up.waitForRequests(1)
      await eventually(() => clock.nextTimerAt() !== undefined)
      await clock.advance(100)
      expect(await settled).toBe(status)
      expect(up.requests).toHaveLength(2)
      expect(orders.state().breaker).toBe('closed')
    })
  }

  it('a 503 without retry configured still counts against the breaker', async () => {
    const up = await upstream({ fallback: { kind: 'respond', status: 503 } })
    const { service: orders } = service(
      serviceConfig([up.url], { retry: undefined, ...tripAtOnce }),
    )
    await expect(orders.exchange(forwardRequest(), 1024)).resolves.toMatchObject({ status: 503 })
    expect(orders.state().breaker).toBe('open')
  })
})

describe("a client's deadline that ends an attempt", () => {
  it("is not an upstream failure while the service's own timeouts had not run out; readMs running out is", async () => {
    // The deadline header comes from the client (on a gateway, from the internet): counted,
    // a client sending a deadline shorter than the upstream's usual latency opened the circuit
    // (and ejected endpoints) for every client.
    const up = await upstream({ fallback: { kind: 'hang' } })
    const { service: orders, clock } = service(
      serviceConfig([up.url], { retry: undefined, ...tripAtOnce }),
    )
    for (let i = 1; i <= 3; i++) {
      const call = orders
        .exchange(forwardRequest({ deadlineAt: clock.now() + 50 }), 1024)
        .catch((error: { code?: string }) => error.code)
      await up.waitForRequests(i)
      await clock.advance(50)
      expect(await call).toBe('DEADLINE_EXCEEDED')
      expect(orders.state().breaker).toBe('closed')
    }
    let state = orders.state()
    expect(state.breaker).toBe('closed')
    expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
    // The service's own readMs (2000) running out is the upstream being slow.
    const slow = orders
      .exchange(forwardRequest(), 1024)
      .catch((error: { code?: string }) => error.code)
    await up.waitForRequests(4)
    await clock.advance(2_000)
    expect(await slow).toBe('UPSTREAM_TIMEOUT')
    state = orders.state()
    expect(state.breaker).toBe('open')
  })
})
