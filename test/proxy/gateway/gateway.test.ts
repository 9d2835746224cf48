// The gateway end to end: real upstream servers (legacy and new), the real service runtime and
// listener, and the gateway handler between them.

import { afterEach, describe, expect, it } from 'vitest'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createRouteTable, type RouteTable } from '../../../src/proxy/inbound/routes.js'
import { createShadowRunner } from '../../../src/proxy/inbound/shadow.js'
import { sendRaw } from '../support/raw-http.js'
import { route, shadowConfig } from './fixtures.js'
import {
  type Gateway,
  gate,
  sendJson,
  startGateway,
  startUpstream,
  type Upstream,
  until,
} from './harness.js'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.()
})

async function upstream(respond: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const u = await startUpstream(respond)
  cleanups.push(() => u.close())
  return u
}

async function gateway(...args: Parameters<typeof startGateway>): Promise<Gateway> {
  const g = await startGateway(...args)
  cleanups.push(() => g.close())
  return g
}

describe('shadow mode through the gateway', () => {
  it('counts exactly the real mismatch, ignores timestamp noise, and the client gets legacy bytes', async () => {
    let legacyCalls = 0
    const legacyBodies = new Map<string, string[]>()
    const legacy = await upstream((req, res) => {
      const id = req.url.split('/')[2] ?? ''
      // A timestamp that changes on every call: noise the gateway must learn, not report.
      const text = sendJson(res, 200, { id, total: 10, servedAt: `t-${++legacyCalls}` })
      const requestId = String(req.headers['x-request-id'])
      legacyBodies.set(requestId, [...(legacyBodies.get(requestId) ?? []), text])
    })
    const newGate = gate()
    let newCalls = 0
    const fresh = await upstream(async (req, res) => {
      await newGate.promise
      const id = req.url.split('/')[2] ?? ''
      // /orders/2 has a real difference in `total`.
      sendJson(res, 200, { id, total: id === '2' ? 11 : 10, servedAt: `n-${++newCalls}` })
    })
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { keepExamples: 5 }),
      }),
    ]
    const table = createRouteTable(routes)
    const metrics = createMetricsRegistry()
    const shadow = createShadowRunner({ metrics })
    const gw = await gateway(
      { legacy: legacy.url, new: fresh.url },
      routes,
      table,
      { shadow },
      metrics,
    )

    const ids = ['1', '2', '3', '2', '1']
    const answers = []
    for (const [i, id] of ids.entries()) {
      const response = await fetch(`${gw.url}/orders/${id}`, {
        headers: { 'x-request-id': `c-${i}` },
      })
      answers.push({ requestId: `c-${i}`, status: response.status, text: await response.text() })
    }
    // Every client got its answer while the new system still held every shadow request.
    await until(() => fresh.seen.length === ids.length, 'shadow requests to reach new')
    expect(newCalls).toBe(0)
    newGate.open()
    await shadow.idle()

    for (const answer of answers) {
      expect(answer.status).toBe(200)
      // The bytes legacy sent first for this request (the second call is the noise probe).
      expect(answer.text).toBe(legacyBodies.get(answer.requestId)?.[0])
    }
    const state = table.state()[0]!
    expect(state.requestsByService).toEqual({ legacy: 5 })
    expect(state.shadow).toMatchObject({ compared: 5, mismatches: 2 })
    expect(state.shadow?.examples.map((e) => [e.target, e.differences])).toEqual([
      ['/orders/2', ['/total: 10 → 11']],
      ['/orders/2', ['/total: 10 → 11']],
    ])
    // Each request reached legacy twice (answer + noise probe) and new once.
    expect(legacy.seen).toHaveLength(10)
    expect(fresh.seen).toHaveLength(5)
    const text = await metrics.render()
    expect(text).toContain(
      'breakwater_proxy_route_requests_total{listener="gateway",route="orders",service="legacy",status="200"} 5',
    )
    expect(text).toContain(
      'breakwater_proxy_shadow_comparisons_total{route="orders",result="mismatch"} 2',
    )
    expect(text).toContain(
      'breakwater_proxy_shadow_comparisons_total{route="orders",result="match"} 3',
    )
    expect(text).toMatch(
      /breakwater_proxy_route_request_duration_seconds_count\{listener="gateway",route="orders"\} 5/,
    )
  })

  it('shadows only the methods listed: a POST reaches the primary alone unless POST is listed', async () => {
    const legacy = await upstream((_req, res) => void sendJson(res, 200, { side: 'legacy' }))
    const fresh = await upstream((_req, res) => void sendJson(res, 200, { side: 'legacy' }))
    const run = async (shadowConfigured: ReturnType<typeof shadowConfig>) => {
      const routes = [
        route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
          shadow: shadowConfigured,
        }),
      ]
      const table = createRouteTable(routes)
      const shadow = createShadowRunner()
      const gw = await gateway({ legacy: legacy.url, new: fresh.url }, routes, table, { shadow })
      for (const method of ['POST', 'GET', 'DELETE']) {
        const response = await fetch(
          `${gw.url}/orders/1`,
          method === 'GET' ? { method } : { method, body: '{}' },
        )
        expect(response.status).toBe(200)
        await response.arrayBuffer()
      }
      await shadow.idle()
      return table.state()[0]?.shadow?.compared
    }
    // The default: safe methods only, so the POST and the DELETE ran once, on legacy.
    expect(await run(shadowConfig('new', { learnNoise: false }))).toBe(1)
    expect(fresh.seen.map((h) => h.method)).toEqual(['GET'])
    // Listed explicitly (a shadow with a store of its own), POST is shadowed too.
    expect(await run(shadowConfig('new', { learnNoise: false, methods: ['GET', 'POST'] }))).toBe(2)
    // (The second run's two shadow calls run in the background, in either order.)
    expect(fresh.seen.map((h) => h.method).sort()).toEqual(['GET', 'GET', 'POST'])
    expect(legacy.seen.map((h) => h.method)).toEqual([
      'POST',
      'GET',
      'DELETE',
      'POST',
      'GET',
      'DELETE',
    ])
  })

  it('never shadows a request whose primary is the shadow service itself', async () => {
    const legacy = await upstream((_req, res) => void sendJson(res, 200, { side: 'legacy' }))
    const fresh = await upstream((_req, res) => void sendJson(res, 200, { side: 'new' }))
    const routes = [
      route('orders', '/orders', [{ service: 'new', weight: 1 }], { shadow: shadowConfig('new') }),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner()
    const gw = await gateway({ legacy: legacy.url, new: fresh.url }, routes, table, { shadow })
    const response = await fetch(`${gw.url}/orders/1`)
    expect(await response.json()).toEqual({ side: 'new' })
    await shadow.idle()
    expect(fresh.seen).toHaveLength(1)
    expect(legacy.seen).toHaveLength(0)
    expect(table.state()[0]?.shadow?.compared).toBe(0)
  })
})

describe('routing through the gateway', () => {
  it('drops every X-Forwarded-* the client sent on an untrusted listener, not only the three it sets', async () => {
    // docs/proxy.md: trustForwardedHeaders "keeps the client's X-Forwarded-*"; without it an app
    // (Spring's ForwardedHeaderFilter, Tomcat's RemoteIpValve) would believe a client's
    // X-Forwarded-Port / -Prefix / -Ssl when building redirects and absolute links.
    const app = await upstream((req, res) => void sendJson(res, 200, req.headers))
    const routes = [route('app', '/', [{ service: 'app', weight: 1 }])]
    const gw = await gateway({ app: app.url }, routes, createRouteTable(routes))
    const response = await fetch(`${gw.url}/x`, {
      headers: {
        'x-forwarded-port': '443',
        'x-forwarded-prefix': '/evil',
        'x-forwarded-ssl': 'on',
        'x-forwarded-server': 'evil.example',
        'x-forwardedness': 'kept',
      },
    })
    const seen = (await response.json()) as Record<string, string>
    expect(seen['x-forwarded-port']).toBeUndefined()
    expect(seen['x-forwarded-prefix']).toBeUndefined()
    expect(seen['x-forwarded-ssl']).toBeUndefined()
    expect(seen['x-forwarded-server']).toBeUndefined()
    expect(seen['x-forwardedness']).toBe('kept')
    expect(seen['x-forwarded-for']).toBe('127.0.0.1')
    expect(seen['x-forwarded-proto']).toBe('http')
  })

  it('answers 404 problem when no route matches, and strips the prefix it is told to', async () => {
    const app = await upstream((req, res) => void sendJson(res, 200, { url: req.url }))
    const routes = [route('api', '/api', [{ service: 'app', weight: 1 }], { stripPrefix: '/api' })]
    const gw = await gateway({ app: app.url }, routes, createRouteTable(routes))
    const miss = await fetch(`${gw.url}/apix/1`)
    expect(miss.status).toBe(404)
    expect(miss.headers.get('content-type')).toBe('application/problem+json')
    expect(await miss.json()).toMatchObject({ status: 404, code: 'ROUTE_NOT_FOUND' })
    // Normalized before matching: /x/../api/orders is /api/orders.
    const hit = await fetch(`${gw.url}/x/%2e%2e/api/orders?x=1`)
    expect(await hit.json()).toEqual({ url: '/orders?x=1' })
    expect(app.seen).toHaveLength(1)
  })

  it('refuses an Expect: 100-continue request with no route before inviting its body', async () => {
    const app = await upstream((req, res) => void sendJson(res, 200, { url: req.url }))
    const routes = [route('api', '/api', [{ service: 'app', weight: 1 }])]
    const gw = await gateway({ app: app.url }, routes, createRouteTable(routes))
    const port = Number(new URL(gw.url).port)
    // The body is never sent: a 100 Continue would leave the client waiting for an answer
    // until the timeout (the helper skips interim responses, so `raw` shows it).
    const miss = await sendRaw(
      port,
      `POST /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n`,
      { untilFirstResponse: false, timeoutMs: 3_000 },
    )
    expect(miss.raw.slice(0, 12), miss.raw.slice(0, 60)).toBe('HTTP/1.1 404')
    expect(JSON.parse(miss.body)).toMatchObject({ code: 'ROUTE_NOT_FOUND' })
    expect(miss.closed).toBe(true)
    // With a route: 100 Continue, then the body, then the answer.
    const hit = await sendRaw(
      port,
      [
        `POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
        'hello',
      ],
      { gapMs: 50, timeoutMs: 3_000 },
    )
    expect(hit.raw.startsWith('HTTP/1.1 100 Continue\r\n')).toBe(true)
    expect(hit.status).toBe(200)
    expect(app.seen.map((r) => r.body)).toEqual(['hello'])
  })

  it('answers 405 with Allow when routes take the path but not the method, and 404 naming the request otherwise', async () => {
    const app = await upstream((req, res) => void sendJson(res, 200, { url: req.url }))
    const routes = [
      route('writes', '/only', [{ service: 'app', weight: 1 }], {
        match: { prefix: '/only', methods: ['POST', 'PUT'], headers: {} },
      }),
      route('canary', '/only', [{ service: 'app', weight: 1 }], {
        match: { prefix: '/only', methods: ['GET'], headers: { 'x-canary': '1' } },
      }),
    ]
    const gw = await gateway({ app: app.url }, routes, createRouteTable(routes))
    const wrong = await fetch(`${gw.url}/only/x?secret=1`, { method: 'DELETE' })
    expect(wrong.status).toBe(405)
    expect(wrong.headers.get('allow')).toBe('POST, PUT')
    expect(await wrong.json()).toMatchObject({
      status: 405,
      code: 'METHOD_NOT_ALLOWED',
      detail: 'no route takes DELETE /only/x; use POST, PUT',
    })
    // The canary route's method counts only for requests its headers match.
    const get = await fetch(`${gw.url}/only/x`)
    expect(get.status).toBe(405)
    expect(get.headers.get('allow')).toBe('POST, PUT')
    const canary = await fetch(`${gw.url}/only/x`, {
      method: 'DELETE',
      headers: { 'x-canary': '1' },
    })
    expect(canary.headers.get('allow')).toBe('POST, PUT, GET')
    const miss = await fetch(`${gw.url}/nothing/y?secret=1`, { method: 'PATCH' })
    expect(miss.status).toBe(404)
    expect(miss.headers.get('allow')).toBeNull()
    expect(await miss.json()).toMatchObject({
      code: 'ROUTE_NOT_FOUND',
      detail: 'no route matches PATCH /nothing/y',
    })
    expect(app.seen).toHaveLength(0)
    expect(gw.logText()).toContain('"status":405')
  })

  it('answers 502 problem for a route whose target service does not exist', async () => {
    const routes = [route('ghost', '/', [{ service: 'missing', weight: 1 }])]
    const gw = await gateway({}, routes, createRouteTable(routes))
    const response = await fetch(`${gw.url}/x`)
    expect(response.status).toBe(502)
    expect(await response.json()).toMatchObject({ code: 'SERVICE_NOT_FOUND' })
    expect(gw.logText()).toContain('"status":502')
  })

  it('switches and rolls back a route without dropping a slow request in flight', async () => {
    const legacy = await upstream((_req, res) => void sendJson(res, 200, { side: 'legacy' }))
    const slow = gate()
    const fresh = await upstream(async (req, res) => {
      if (req.url === '/orders/slow') await slow.promise
      sendJson(res, 200, { side: 'new', url: req.url, pad: 'x'.repeat(100_000) })
    })
    const routes = [route('orders', '/orders', [{ service: 'legacy', weight: 1 }])]
    let table: RouteTable = createRouteTable(routes)
    const gw = await gateway({ legacy: legacy.url, new: fresh.url }, routes, () => table)

    table.override('orders', [{ service: 'new', weight: 1 }])
    const inFlight = fetch(`${gw.url}/orders/slow`).then(async (r) => ({
      status: r.status,
      body: (await r.json()) as { side: string; pad: string },
    }))
    await until(() => fresh.seen.length === 1, 'the slow request to reach new')
    // Rollback by the admin API...
    table.clearOverride('orders')
    expect(await (await fetch(`${gw.url}/orders/1`)).json()).toEqual({ side: 'legacy' })
    // ...and a reload that swaps the whole table, both while the slow request waits.
    table = createRouteTable(routes, { previous: table })
    expect(await (await fetch(`${gw.url}/orders/2`)).json()).toEqual({ side: 'legacy' })
    slow.open()
    const done = await inFlight
    expect(done.status).toBe(200)
    expect(done.body.side).toBe('new')
    expect(done.body.pad).toHaveLength(100_000)
    // The slow request finished on the table it started with, whose counters the reloaded
    // table shares.
    expect(table.state()[0]?.requestsByService).toEqual({ legacy: 2, new: 1 })
    expect(table.state()[0]?.overridden).toBe(false)
  })

  it('splits sticky users by weight and keeps each user on one side', async () => {
    const legacy = await upstream((_req, res) => void sendJson(res, 200, { side: 'legacy' }))
    const fresh = await upstream((_req, res) => void sendJson(res, 200, { side: 'new' }))
    const routes = [
      route(
        'orders',
        '/orders',
        [
          { service: 'legacy', weight: 70 },
          { service: 'new', weight: 30 },
        ],
        { sticky: { cookie: 'uid' } },
      ),
    ]
    const table = createRouteTable(routes)
    const gw = await gateway({ legacy: legacy.url, new: fresh.url }, routes, table)
    const sides = new Map<string, string>()
    for (let round = 0; round < 2; round++) {
      for (let user = 0; user < 100; user++) {
        const response = await fetch(`${gw.url}/orders/1`, {
          headers: { cookie: `theme=dark; uid=user-${user}` },
        })
        const { side } = (await response.json()) as { side: string }
        if (round === 0) sides.set(`user-${user}`, side)
        else expect(side).toBe(sides.get(`user-${user}`))
      }
    }
    const onNew = [...sides.values()].filter((s) => s === 'new').length
    expect(onNew).toBeGreaterThan(15)
    expect(onNew).toBeLessThan(45)
    expect(table.state()[0]?.requestsByService).toEqual({
      legacy: 2 * (100 - onNew),
      new: 2 * onNew,
    })
  })
})
