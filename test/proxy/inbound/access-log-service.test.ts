// An access line's `service` and the request metric's `service` label say the same thing: the
// service the request was sent to, none when the proxy answered it without calling one. The
// gateway's access line named the service the route had chosen for a request it then refused
// itself (an Idempotency-Key missing, the idempotency store down) or replayed from the store,
// while breakwater_proxy_route_requests_total counted it with service="" (documented: the
// service was not called), so the log blamed a service that never saw the request.

import type { ServerResponse } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyStore,
} from '../../../src/idempotency/index.js'
import type {
  ForwardOutcome,
  ForwardRequest,
  InboundContext,
  RouteConfig,
} from '../../../src/proxy/contracts.js'
import { createGatewayHandler } from '../../../src/proxy/inbound/gateway.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { createSidecarIdempotency } from '../../../src/proxy/inbound/sidecar-idempotency.js'
import { route } from '../gateway/fixtures.js'
import { sendRaw } from '../support/raw-http.js'
import {
  type CapturedLog,
  contextWith,
  listenerConfig,
  recordingService,
  registryOf,
} from './harness.js'

let server: ListenerServer | undefined
afterEach(async () => {
  await server?.close()
  server = undefined
})

const guarded: RouteConfig = route('orders', '/', [{ service: 'app', weight: 1 }], {
  idempotency: { methods: ['POST'], ttlMs: 60_000 },
})

async function gatewayOver(store: IdempotencyStore) {
  const recording = recordingService('app')
  // Hands the sidecar the answer it records for the key's replays.
  const app = {
    ...recording,
    forward: async (req: ForwardRequest, res: ServerResponse): Promise<ForwardOutcome> => {
      const outcome = await recording.forward(req, res)
      const captured = { status: 200, headers: {}, body: Buffer.from('{}'), truncated: false }
      return { ...outcome, captured }
    },
  }
  const listener = listenerConfig({ role: 'gateway', routes: [guarded] })
  const { ctx, log } = contextWith(() => registryOf([app]))
  const idempotency = createSidecarIdempotency({ idempotency: createIdempotency({ store }) })
  server = createListenerServer(
    listener,
    createGatewayHandler(listener, ctx, createRouteTable([guarded]), { idempotency }),
    ctx,
  )
  const { port } = await server.listen()
  const post = (key?: string) =>
    sendRaw(
      port,
      `POST /orders HTTP/1.1\r\nHost: x\r\n${key === undefined ? '' : `Idempotency-Key: ${key}\r\n`}Content-Length: 2\r\n\r\n{}`,
    )
  return { app, ctx, log, post }
}

/** The last access line, and the metric's count for its status with `service`. */
async function lastRequest(ctx: InboundContext, log: CapturedLog, service: string) {
  const access = log.lines().filter((line) => line.msg === 'access')
  const line = access[access.length - 1]
  const metrics = await ctx.metrics.render()
  const series = `breakwater_proxy_route_requests_total{listener="test",route="orders",service="${service}",status="${line?.status}"}`
  return { line, counted: metrics.includes(series) }
}

describe('the gateway, on a route with Idempotency-Key enforcement', () => {
  it('names the service in both when it was called, and in neither for a refusal or a replay', async () => {
    const { app, ctx, log, post } = await gatewayOver(createMemoryIdempotencyStore())

    expect((await post('k-1')).status).toBe(200)
    const forwarded = await lastRequest(ctx, log, 'app')
    expect(forwarded.line).toMatchObject({ service: 'app', status: 200 })
    expect(forwarded.counted).toBe(true)

    // Answered from the store: the app is not called again.
    expect((await post('k-1')).status).toBe(200)
    expect(app.forwarded).toHaveLength(1)
    expect(log.lines().at(-1)).toMatchObject({ msg: 'access', status: 200, attempts: 0 })
    const replay = await lastRequest(ctx, log, '')
    expect(replay.line).not.toHaveProperty('service')
    expect(replay.counted).toBe(true)

    const refused = await post(undefined)
    expect(refused.status).toBe(400)
    const missing = await lastRequest(ctx, log, '')
    expect(missing.line).toMatchObject({ status: 400 })
    expect(missing.line).not.toHaveProperty('service')
    expect(missing.counted).toBe(true)
  })

  it('names no service when the idempotency store fails before the app is called', async () => {
    const store = createMemoryIdempotencyStore()
    const down = {
      ...store,
      claim: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')),
    } as IdempotencyStore
    const { ctx, log, post } = await gatewayOver(down)
    expect((await post('k-2')).status).toBe(503)
    const failed = await lastRequest(ctx, log, '')
    expect(failed.line).toMatchObject({ status: 503, error: 'IDEMPOTENCY_STORE_UNAVAILABLE' })
    expect(failed.line).not.toHaveProperty('service')
    expect(failed.counted).toBe(true)
  })
})
