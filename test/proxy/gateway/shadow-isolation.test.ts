// Shadow traffic never touches the client's answer: a shadow that hangs or resets leaves the
// primary's responses as they are and on time, the shadow gets its own copy of the body, and
// the sample rate is respected. Real upstreams, runtime and listener.

import { afterEach, describe, expect, it } from 'vitest'
import { systemClock } from '../../../src/core/clock.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { createShadowRunner } from '../../../src/proxy/inbound/shadow.js'
import { createServiceRuntime, type UpstreamService } from '../../../src/proxy/upstream/index.js'
import { serviceConfig as upstreamServiceConfig } from '../upstream/helpers.js'
import { route, seededRandom, shadowConfig } from './fixtures.js'
import {
  gate,
  sendJson,
  serveGateway,
  serviceConfig,
  startGateway,
  startUpstream,
  until,
} from './harness.js'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.()
})

describe('shadow traffic isolation', () => {
  it('a hanging, then resetting shadow changes nothing of the primary answers', async () => {
    const legacy = await startUpstream((req, res) => void sendJson(res, 201, { echo: req.body }))
    cleanups.push(() => legacy.close())
    const held = gate()
    let mode: 'hang' | 'reset' = 'hang'
    const fresh = await startUpstream(async (_req, res) => {
      if (mode === 'reset') {
        res.socket?.destroy()
        return
      }
      await held.promise
      sendJson(res, 500, { broken: true })
    })
    cleanups.push(async () => {
      held.open()
      await fresh.close()
    })
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { learnNoise: false, methods: ['POST'] }),
      }),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner({ maxInFlight: 2 })
    const gw = await startGateway({ legacy: legacy.url, new: fresh.url }, routes, table, { shadow })
    cleanups.push(() => gw.close())
    for (let i = 0; i < 4; i++) {
      const body = JSON.stringify({ n: i, pad: 'x'.repeat(1000) })
      const response = await fetch(`${gw.url}/orders`, { method: 'POST', body })
      expect(response.status).toBe(201)
      expect(await response.json()).toEqual({ echo: body })
    }
    await until(() => fresh.seen.length === 2, 'two shadow calls held')
    // The shadow got the same bytes, each its own request.
    expect(fresh.seen.map((r) => JSON.parse(r.body).n)).toEqual([0, 1])
    expect(table.state()[0]?.shadow?.skipped).toBe(2)
    mode = 'reset'
    held.open()
    await shadow.idle()
    const body = JSON.stringify({ n: 9 })
    const response = await fetch(`${gw.url}/orders`, { method: 'POST', body })
    expect(await response.json()).toEqual({ echo: body })
    await shadow.idle()
    expect(table.state()[0]?.shadow).toMatchObject({ compared: 2, mismatches: 2, errors: 1 })
    expect(legacy.seen).toHaveLength(5)
  })

  it('shadows about sampleRate of the requests', async () => {
    const legacy = await startUpstream((_req, res) => void sendJson(res, 200, {}))
    const fresh = await startUpstream((_req, res) => void sendJson(res, 200, {}))
    cleanups.push(
      () => legacy.close(),
      () => fresh.close(),
    )
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { learnNoise: false, sampleRate: 0.25 }),
      }),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner()
    const gw = await startGateway({ legacy: legacy.url, new: fresh.url }, routes, table, {
      shadow,
      random: seededRandom(7),
    })
    cleanups.push(() => gw.close())
    for (let i = 0; i < 400; i++) await (await fetch(`${gw.url}/orders/${i}`)).arrayBuffer()
    await shadow.idle()
    expect(fresh.seen.length).toBeGreaterThan(60)
    expect(fresh.seen.length).toBeLessThan(140)
    expect(table.state()[0]?.shadow?.compared).toBe(fresh.seen.length)
  })

  // docs/proxy.md's own example shadows to the service the strangler split also sends to:
  // failing shadows opened that service's breaker and filled its bulkhead, and the clients
  // routed there got 503 BROKEN_CIRCUIT / BULKHEAD_FULL (found by exploratory testing).
  it('failing shadows leave the shadow service’s breaker and bulkhead to its real clients', async () => {
    const legacy = await startUpstream((_req, res) => void sendJson(res, 200, { from: 'legacy' }))
    let failing = true
    const fresh = await startUpstream((_req, res) =>
      failing ? void sendJson(res, 503, { down: true }) : void sendJson(res, 200, { from: 'new' }),
    )
    cleanups.push(
      () => legacy.close(),
      () => fresh.close(),
    )
    const logger = createJsonLogger({ output: { write() {} }, level: 'error' })
    const deps = { clock: systemClock, logger, metrics: createMetricsRegistry() }
    const services = new Map<string, UpstreamService>([
      ['legacy', createServiceRuntime(serviceConfig('legacy', legacy.url), deps)],
      [
        'new',
        createServiceRuntime(
          upstreamServiceConfig([fresh.url], {
            name: 'new',
            retry: undefined,
            breaker: { failureThreshold: 2, cooldownMs: 60_000, halfOpenProbes: 1 },
            bulkhead: { maxConcurrent: 1, maxQueue: 0, connectionsPerEndpoint: 4 },
          }),
          deps,
        ),
      ],
    ])
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { learnNoise: false }),
      }),
      route('fresh', '/fresh', [{ service: 'new', weight: 1 }]),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner()
    const gw = await serveGateway(deps, services, routes, table, { shadow }, false)
    cleanups.push(() => gw.close())
    for (let i = 0; i < 4; i++) {
      expect((await fetch(`${gw.url}/orders/${i}`)).status).toBe(200)
    }
    await shadow.idle()
    expect(table.state()[0]?.shadow?.compared).toBe(4)
    expect(services.get('new')?.state().breaker).toBe('closed')
    failing = false
    const direct = await fetch(`${gw.url}/fresh/1`)
    expect(direct.status).toBe(200)
    expect(await direct.json()).toEqual({ from: 'new' })
  })
})
