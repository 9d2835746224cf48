// Method-override headers on routes whose features judge the method (shadow, idempotency)
// without the route matching on it: the app must run the method those features judged. A GET
// with `X-HTTP-Method-Override: DELETE` was shadowed (and repeated to learn noise) as a safe
// read, and passed an idempotency guard on DELETE unguarded, while an app honouring the header
// deleted.

import { afterEach, describe, expect, it } from 'vitest'
import type { RouteConfig } from '../../../src/proxy/contracts.js'
import { dropsMethodOverrides } from '../../../src/proxy/inbound/forwarded-headers.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { route, shadowConfig } from './fixtures.js'
import { sendJson, startGateway, startUpstream, type UpstreamRequest, until } from './harness.js'
import { startSqliteGuardedGateway } from './sqlite-guard.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.()
})

const overrides = {
  'x-http-method-override': 'DELETE',
  'x-http-method': 'DELETE',
  'x-method-override': 'DELETE',
}

function overridesSeen(request: UpstreamRequest): string[] {
  return Object.keys(overrides).filter((name) => request.headers[name] !== undefined)
}

async function upstream() {
  const u = await startUpstream((_req, res) => {
    sendJson(res, 200, { ok: true })
  })
  cleanups.push(() => u.close())
  return u
}

describe('method-override headers on the gateway', () => {
  it('never reach the primary or the shadow of a shadowed route without match.methods', async () => {
    const legacy = await upstream()
    const modern = await upstream()
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('modern'),
      }),
    ]
    const gw = await startGateway(
      { legacy: legacy.url, modern: modern.url },
      routes,
      createRouteTable(routes),
    )
    cleanups.push(() => gw.close())
    const res = await fetch(`${gw.url}/orders/7`, { headers: overrides })
    expect(res.status).toBe(200)
    await res.arrayBuffer()
    await until(() => modern.seen.length === 1 && legacy.seen.length === 2, 'shadow comparison')
    for (const request of [...legacy.seen, ...modern.seen]) {
      expect(request.method).toBe('GET')
      expect(overridesSeen(request)).toEqual([])
    }
  })

  it('never reach the app of a route guarded by idempotency without match.methods', async () => {
    const app = await upstream()
    const routes = [
      route('orders', '/orders', [{ service: 'app', weight: 1 }], {
        idempotency: { methods: ['POST', 'DELETE'], ttlMs: 3_600_000 },
      }),
    ]
    const gw = await startSqliteGuardedGateway({ app: app.url }, routes, cleanups)
    const res = await fetch(`${gw.url}/orders/7`, { headers: overrides })
    expect(res.status).toBe(200)
    await res.arrayBuffer()
    expect(app.seen).toHaveLength(1)
    expect(overridesSeen(app.seen[0]!)).toEqual([])
  })

  it('pass on a route that neither matches on methods nor shadows nor guards', async () => {
    const app = await upstream()
    const routes = [route('plain', '/', [{ service: 'app', weight: 1 }])]
    const gw = await startGateway({ app: app.url }, routes, createRouteTable(routes))
    cleanups.push(() => gw.close())
    const res = await fetch(`${gw.url}/x`, { headers: overrides })
    await res.arrayBuffer()
    expect(overridesSeen(app.seen[0]!)).toEqual(Object.keys(overrides))
  })
})

describe('dropsMethodOverrides', () => {
  const plain: RouteConfig = route('r', '/', [{ service: 'app', weight: 1 }])
  const cases: { what: string; config: RouteConfig; expected: boolean }[] = [
    { what: 'a plain route', config: plain, expected: false },
    {
      what: 'a route matching on methods',
      config: { ...plain, match: { ...plain.match, methods: ['GET'] } },
      expected: true,
    },
    {
      what: 'a shadowed route',
      config: { ...plain, shadow: shadowConfig('modern') },
      expected: true,
    },
    {
      what: 'a guarded route',
      config: { ...plain, idempotency: { methods: ['POST'], ttlMs: 1_000 } },
      expected: true,
    },
  ]
  it.each(cases)('$what: $expected', ({ config, expected }) => {
    expect(dropsMethodOverrides(config)).toBe(expected)
  })
})
