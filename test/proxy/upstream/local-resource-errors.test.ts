// A connect that fails because the proxy itself is out of resources (EMFILE: no file
// descriptor left for the socket, ENFILE, ENOBUFS, ENOMEM) says nothing of the upstream's
// health: the breaker and outlier ejection do not count it, it is not retried (a retry would
// spend the upstream's retry budget on local trouble), and the client gets 503
// UPSTREAM_POOL_REFUSED naming the code, logged at most every 10 s. Both pools: the proxy's own
// (http://) and undici's (https://). The failure is injected where node creates the socket.

import { Socket } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { createServiceRuntime, UpstreamError } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { createTestCerts, type TestCerts } from '../support/certs.js'
import {
  eventually,
  forwardRequest,
  recordingClient,
  serviceConfig,
  testDeps,
  useUpstreamTest,
} from './helpers.js'

const { cleanups, upstream } = useUpstreamTest()

let certs: TestCerts
beforeAll(() => {
  certs = createTestCerts()
})
afterAll(() => certs.cleanup())
afterEach(() => {
  vi.restoreAllMocks()
})

/** Makes every socket connect fail with `code`, as node reports a socket() that failed. */
function failConnects(code: string) {
  return vi.spyOn(Socket.prototype, 'connect').mockImplementation(function (this: Socket) {
    const error = Object.assign(new Error(`connect ${code}`), { code, syscall: 'connect' })
    process.nextTick(() => this.destroy(error))
    return this
  })
}

const kinds = [
  { name: 'http (Http1Pool)', tls: false },
  { name: 'https (undici)', tls: true },
]

for (const kind of kinds) {
  describe(`a connect that fails for want of the proxy's own resources, ${kind.name}`, () => {
    async function start(websocket = false) {
      const up = await upstream(
        kind.tls ? { tls: { cert: certs.server.cert, key: certs.server.key } } : {},
      )
      const clock = new ManualClock(1_000_000)
      const deps = testDeps(clock)
      const orders = createServiceRuntime(
        serviceConfig([up.url], {
          breaker: { failureThreshold: 1, cooldownMs: 10_000, halfOpenProbes: 1 },
          outlierEjection: {
            consecutiveFailures: 1,
            baseEjectionMs: 30_000,
            maxEjectedPercent: 100,
          },
          tls: {
            caFile: kind.tls ? certs.ca.certFile : undefined,
            certFile: undefined,
            keyFile: undefined,
            serverName: undefined,
            verify: true,
          },
          ...(websocket ? { websocket: { idleTimeoutMs: 1_000 } } : {}),
        }),
        deps,
        { random: () => 0.5 },
      )
      cleanups.push(() => orders.close())
      return { up, orders, deps }
    }

    it('is not an upstream failure: 503 UPSTREAM_POOL_REFUSED naming EMFILE, not retried, breaker closed', async () => {
      const { up, orders, deps } = await start()
      const connects = failConnects('EMFILE')
      let refused: unknown = 'pending'
      void orders.exchange(forwardRequest(), 1024).then(
        () => {
          refused = undefined
        },
        (error: unknown) => {
          refused = error
        },
      )
      // Retries are configured (3 attempts) but none is made: no backoff to wait out.
      await eventually(() => refused !== 'pending')
      expect(connects).toHaveBeenCalledTimes(1)
      expect(refused).toBeInstanceOf(UpstreamError)
      expect(refused).toMatchObject({ code: 'UPSTREAM_POOL_REFUSED', status: 503 })
      expect((refused as Error).message).toContain('out of file descriptors (EMFILE)')
      const state = orders.state()
      expect(state.breaker).toBe('closed')
      expect(state.endpoints.map((e) => [e.ejections, e.consecutiveFailures])).toEqual([[0, 0]])
      const warnings = deps.logs.filter((line) => line.includes('out of resources'))
      expect(warnings).toHaveLength(1)
      expect(JSON.parse(warnings[0] as string)).toMatchObject({ code: 'EMFILE', service: 'orders' })
      // Once descriptors are free again, the next request goes through at once.
      vi.restoreAllMocks()
      expect((await orders.exchange(forwardRequest(), 1024)).status).toBe(200)
      expect(up.requests).toHaveLength(1)
    })

    it('logs a burst of such failures once, with how many were not', async () => {
      const { orders, deps } = await start()
      failConnects('ENFILE')
      for (let i = 0; i < 3; i++)
        await expect(orders.exchange(forwardRequest(), 1024)).rejects.toMatchObject({
          code: 'UPSTREAM_POOL_REFUSED',
        })
      expect(deps.logs.filter((line) => line.includes('out of resources'))).toHaveLength(1)
      await (deps.clock as ManualClock).advance(10_000)
      await expect(orders.exchange(forwardRequest(), 1024)).rejects.toMatchObject({
        message: expect.stringContaining('ENFILE'),
      })
      const warnings = deps.logs.filter((line) => line.includes('out of resources'))
      expect(warnings).toHaveLength(2)
      expect(JSON.parse(warnings[1] as string)).toMatchObject({ code: 'ENFILE', suppressed: 2 })
      expect(orders.state().breaker).toBe('closed')
    })

    it('fails a WebSocket handshake the same way: 503 UPSTREAM_POOL_REFUSED naming EMFILE, breaker closed', async () => {
      const { up, orders, deps } = await start(true)
      failConnects('EMFILE')
      const { client, written } = recordingClient(cleanups)
      const outcome = await orders.tunnel(
        { target: '/chat', headers: {}, host: 'front', requestId: 'ws-1', idleTimeoutMs: 1_000 },
        client,
        Buffer.alloc(0),
      )
      expect(outcome).toMatchObject({ status: 503, error: 'UPSTREAM_POOL_REFUSED' })
      expect(Buffer.concat(written).toString('latin1')).toContain(
        'the proxy is out of file descriptors (EMFILE)',
      )
      expect(up.requests).toHaveLength(0)
      const state = orders.state()
      expect(state.breaker).toBe('closed')
      expect(state.endpoints.map((e) => [e.inFlight, e.consecutiveFailures])).toEqual([[0, 0]])
      expect(deps.logs.filter((line) => line.includes('out of resources'))).toHaveLength(1)
    })
  })
}
