// A gateway request whose handling fails after routing (the idempotency store is down) must
// still end as one request: the client gets a problem answer, the access log and the route
// metrics have it, and a retry-affinity pin taken for it is dropped (nothing reached the app),
// so the key's retry is routed by the weights in force then.

import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyStore,
} from '../../../src/idempotency/index.js'
import type { RouteConfig } from '../../../src/proxy/contracts.js'
import { createGatewayHandler } from '../../../src/proxy/inbound/gateway.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { retryAffinityDefaults } from '../../../src/proxy/inbound/retry-affinity.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { createSidecarIdempotency } from '../../../src/proxy/inbound/sidecar-idempotency.js'
import { sendRaw } from '../support/raw-http.js'
import { contextWith, listenerConfig, recordingService, registryOf } from './harness.js'

let server: ListenerServer | undefined

afterEach(async () => {
  await server?.close()
  server = undefined
})

function failingStore(): IdempotencyStore {
  const store = createMemoryIdempotencyStore()
  return {
    ...store,
    claim: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')),
  } as IdempotencyStore
}

describe('a gateway request whose idempotency store fails', () => {
  it('is answered 503 IDEMPOTENCY_STORE_UNAVAILABLE, logged and counted, and leaves no retry-affinity pin', async () => {
    const app = recordingService('app')
    const route: RouteConfig = {
      name: 'orders',
      match: { prefix: '/', methods: undefined, headers: {} },
      targets: [{ service: 'app', weight: 1 }],
      sticky: undefined,
      stripPrefix: undefined,
      shadow: undefined,
      idempotency: { methods: ['POST'], ttlMs: 60_000 },
      retryAffinity: { ...retryAffinityDefaults },
      websocket: undefined,
    }
    const listener = listenerConfig({ role: 'gateway', routes: [route] })
    const { ctx, log } = contextWith(() => registryOf([app]))
    const table = createRouteTable([route])
    const idempotency = createSidecarIdempotency({
      idempotency: createIdempotency({ store: failingStore() }),
    })
    server = createListenerServer(
      listener,
      createGatewayHandler(listener, ctx, table, { idempotency }),
      ctx,
    )
    const { port } = await server.listen()

    const response = await sendRaw(
      port,
      `POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\nContent-Length: 2\r\n\r\n{}`,
    )
    expect(response.status).toBe(503)
    expect(response.headers['content-type']).toBe('application/problem+json')
    expect(JSON.parse(response.body)).toMatchObject({
      status: 503,
      code: 'IDEMPOTENCY_STORE_UNAVAILABLE',
    })
    expect(app.forwarded).toHaveLength(0)
    expect(table.state()[0]?.retryAffinity).toMatchObject({ pinnedKeys: 0 })
    const access = log.lines().filter((line) => line.msg === 'access')
    expect(access).toHaveLength(1)
    expect(access[0]).toMatchObject({
      route: 'orders',
      status: 503,
      error: 'IDEMPOTENCY_STORE_UNAVAILABLE',
      attempts: 0,
    })
    const metrics = await ctx.metrics.render()
    expect(metrics).toContain(
      'breakwater_proxy_route_requests_total{listener="test",route="orders",service="",status="503"} 1',
    )
  })
})

describe('a route that reads a header named like an Object property', () => {
  it('matches and sticks on what the request sent, never on the prototype', async () => {
    const app = recordingService('app')
    const base: RouteConfig = {
      name: 'gated',
      match: { prefix: '/a', methods: undefined, headers: { constructor: 'yes' } },
      targets: [{ service: 'app', weight: 1 }],
      sticky: undefined,
      stripPrefix: undefined,
      shadow: undefined,
      idempotency: undefined,
      retryAffinity: undefined,
      websocket: undefined,
    }
    const sticky: RouteConfig = {
      ...base,
      name: 'sticky',
      match: { prefix: '/', methods: undefined, headers: {} },
      sticky: { header: 'constructor' },
      retryAffinity: { ...retryAffinityDefaults, header: 'constructor' },
    }
    const listener = listenerConfig({ role: 'gateway', routes: [base, sticky] })
    const { ctx } = contextWith(() => registryOf([app]))
    server = createListenerServer(
      listener,
      createGatewayHandler(listener, ctx, createRouteTable([base, sticky])),
      ctx,
    )
    const { port } = await server.listen()
    // Not gated (no such header), so the sticky route takes it, assigned as without a value.
    const response = await sendRaw(port, 'GET /a/x HTTP/1.1\r\nHost: x\r\n\r\n')
    expect(response.status).toBe(200)
    expect(app.forwarded.map((f) => f.route)).toEqual(['sticky'])
  })
})
