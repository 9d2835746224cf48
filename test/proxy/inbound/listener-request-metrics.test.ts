// Every request a listener answers is counted per listener, with the status its client was
// sent, whether the proxy forwarded it or answered it itself: the gateway had its route
// counter, but the ambassador counted nothing per listener (only its forwards, in the upstream
// counter), so an ambassador's 404 SERVICE_NOT_FOUND, a body the drain cut or any refusal was
// in no metric; and neither role counted what the listener refused before routing (request
// validation, node's parser, CONNECT). Counted in breakwater_proxy_route_requests_total and in
// the OpenTelemetry counter breakwater.proxy.requests, with the same labels.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { InboundContext } from '../../../src/proxy/contracts.js'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { recordOtelCounters } from '../../support/otel-counters.js'
import { route } from '../gateway/fixtures.js'
import { sendRaw } from '../support/raw-http.js'
import { type CapturedLog, listenRole } from './harness.js'

// Registered before any request: the proxy creates its counter on first use.
const counted = recordOtelCounters()

const routes = [
  route('orders', '/orders', [{ service: 'orders', weight: 1 }]),
  // A target the registry lacks (the listener's only service is orders), tunnelling too.
  route('ghost', '/ghost', [{ service: 'missing', weight: 1 }], {
    websocket: { idleTimeoutMs: 60_000 },
  }),
]

const running: Partial<
  Record<
    'ambassador' | 'gateway',
    { server: ListenerServer; port: number; ctx: InboundContext; log: CapturedLog }
  >
> = {}
beforeAll(async () => {
  running.ambassador = await listenRole('ambassador', routes)
  running.gateway = await listenRole('gateway', routes)
})
afterAll(async () => {
  await running.ambassador?.server.close()
  await running.gateway?.server.close()
})

const series = (labels: string) => `breakwater_proxy_route_requests_total{${labels}}`

/** Sends `request` to the `role` listener and returns its status and the counter's text. */
async function send(role: 'ambassador' | 'gateway', request: string) {
  const { port, ctx } = running[role] ?? {}
  if (port === undefined || ctx === undefined) throw new Error(`${role} not started`)
  const response = await sendRaw(port, request.replaceAll('HOST', `127.0.0.1:${port}`))
  return { status: response.status, metrics: await ctx.metrics.render() }
}

/** The OpenTelemetry additions made for `listener` with `status`. */
const otelFor = (listener: string, status: number) =>
  counted.filter(
    (c) =>
      c.name === 'breakwater.proxy.requests' &&
      c.attributes?.listener === listener &&
      c.attributes?.status === status,
  )

describe('ambassador', () => {
  it('counts a forwarded request under its service', async () => {
    const { status, metrics } = await send(
      'ambassador',
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    )
    expect(status).toBe(200)
    expect(metrics).toContain(
      `${series('listener="ambassador",route="ambassador",service="orders",status="200"')} 1`,
    )
    expect(metrics).toMatch(
      /breakwater_proxy_route_request_duration_seconds_count\{listener="ambassador",route="ambassador"\} [1-9]/,
    )
    expect(otelFor('ambassador', 200)).toEqual([
      {
        name: 'breakwater.proxy.requests',
        value: 1,
        attributes: { listener: 'ambassador', route: 'ambassador', service: 'orders', status: 200 },
      },
    ])
  })

  it('counts a 404 SERVICE_NOT_FOUND it answers itself, without a service', async () => {
    const { status, metrics } = await send(
      'ambassador',
      'GET /billing/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
    )
    expect(status).toBe(404)
    expect(metrics).toContain(
      `${series('listener="ambassador",route="ambassador",service="",status="404"')} 1`,
    )
    expect(otelFor('ambassador', 404)).toHaveLength(1)
  })

  it('counts a WebSocket handshake to an unknown service it refuses', async () => {
    const { status, metrics } = await send(
      'ambassador',
      'GET /billing/ws HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    expect(status).toBe(404)
    expect(metrics).toContain(
      `${series('listener="ambassador",route="ambassador",service="",status="404"')} 2`,
    )
  })
})

const handshake = (path: string) =>
  `GET ${path} HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`

describe('gateway', () => {
  // A route's target the config lacks is the only name of the missing service (docs/proxy.md,
  // Metrics): a request's 502 SERVICE_NOT_FOUND was counted and logged under it, but the same
  // answer to a WebSocket handshake was counted with service="" and logged with no service.
  it('counts and logs a 502 SERVICE_NOT_FOUND under the missing service, for a request and a handshake alike', async () => {
    const log = running.gateway?.log
    const plain = await send('gateway', 'GET /ghost/x HTTP/1.1\r\nHost: HOST\r\n\r\n')
    expect(plain.status).toBe(502)
    const upgrade = await send('gateway', handshake('/ghost/ws'))
    expect(upgrade.status).toBe(502)

    expect(upgrade.metrics).toContain(
      `${series('listener="gateway",route="ghost",service="missing",status="502"')} 2`,
    )
    expect(upgrade.metrics).not.toContain('route="ghost",service="",status="502"')
    expect(otelFor('gateway', 502).map((c) => c.attributes?.service)).toEqual([
      'missing',
      'missing',
    ])
    const lines = (log?.lines() ?? []).filter((line) => line.status === 502)
    expect(lines).toMatchObject([
      { msg: 'access', route: 'ghost', service: 'missing' },
      { msg: 'request refused', route: 'ghost', service: 'missing', code: 'SERVICE_NOT_FOUND' },
    ])
  })
})

describe.each(['ambassador', 'gateway'] as const)('%s', (role) => {
  it('counts a request its validation refuses (TRACE), with no route', async () => {
    const { status, metrics } = await send(role, 'TRACE /orders/x HTTP/1.1\r\nHost: HOST\r\n\r\n')
    expect(status).toBe(405)
    expect(metrics).toContain(`${series(`listener="${role}",route="",service="",status="405"`)} 1`)
    expect(otelFor(role, 405)).toHaveLength(1)
  })

  it("counts a request node's parser refuses", async () => {
    const { status, metrics } = await send(role, 'GET /orders/x HTTP/1.1\nHost: HOST\n\n')
    expect(status).toBe(400)
    expect(metrics).toContain(`${series(`listener="${role}",route="",service="",status="400"`)} 1`)
  })

  it('counts a CONNECT it answers 405', async () => {
    const { status, metrics } = await send(
      role,
      'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
    )
    expect(status).toBe(405)
    expect(metrics).toContain(`${series(`listener="${role}",route="",service="",status="405"`)} 2`)
  })
})
