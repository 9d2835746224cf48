import type { ServerResponse } from 'node:http'
import { afterEach, describe, expect, it, vi } from 'vitest'
import type {
  ForwardOutcome,
  ForwardRequest,
  ServiceRuntime,
} from '../../../src/proxy/contracts.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { sendProblem, toForwardRequest } from '../../../src/proxy/inbound/request.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { openSocket, sendRaw } from '../support/raw-http.js'
import {
  type CapturedLog,
  contextWith,
  listenAmbassador,
  listenerConfig,
  type RecordingService,
  recordingService,
  registryOf,
} from './harness.js'

const started: ListenerServer[] = []
afterEach(async () => {
  await Promise.all(started.splice(0).map((server) => server.close()))
})

async function ambassador(
  services: ServiceRuntime[],
  options: { clock?: ManualClock; accessLog?: boolean } = {},
): Promise<{ port: number; log: CapturedLog }> {
  const { server, port, log } = await listenAmbassador(services, options)
  started.push(server)
  return { port, log }
}

function request(port: number, head: string, body = ''): string {
  return `${head.replace('HOST', `127.0.0.1:${port}`)}\r\n\r\n${body}`
}

async function forwardOf(
  service: RecordingService,
  port: number,
  head: string,
  body = '',
): Promise<ForwardRequest> {
  const response = await sendRaw(port, request(port, head, body))
  expect(response.status).toBe(200)
  const forwarded = service.forwarded.at(-1)
  if (forwarded === undefined) throw new Error('nothing forwarded')
  return forwarded
}

describe('deadline', () => {
  it('reads the deadline header as remaining ms on the context clock', async () => {
    const clock = new ManualClock(1_000_000)
    const orders = recordingService('orders')
    const { port } = await ambassador([orders], { clock })
    const forwarded = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Breakwater-Deadline-Ms: 250',
    )
    expect(forwarded.deadlineAt).toBe(1_000_250)
    // The deadline travels as deadlineAt; the service writes the reduced header.
    expect(forwarded.headers['x-breakwater-deadline-ms']).toBeUndefined()
  })

  it('takes the sooner of the deadline header and grpc-timeout', async () => {
    const clock = new ManualClock(5_000)
    const orders = recordingService('orders')
    const { port } = await ambassador([orders], { clock })
    const both = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Breakwater-Deadline-Ms: 250\r\nGrpc-Timeout: 100m',
    )
    expect(both.deadlineAt).toBe(5_100)
    const grpcOnly = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nGrpc-Timeout: 2S',
    )
    expect(grpcOnly.deadlineAt).toBe(7_000)
    const headerSooner = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Breakwater-Deadline-Ms: 40\r\nGrpc-Timeout: 1S',
    )
    expect(headerSooner.deadlineAt).toBe(5_040)
  })

  it('ignores malformed deadline values and has no deadline without headers', async () => {
    const orders = recordingService('orders')
    const { port } = await ambassador([orders], { clock: new ManualClock(0) })
    const malformed = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Breakwater-Deadline-Ms: soon\r\nGrpc-Timeout: 1x',
    )
    expect(malformed.deadlineAt).toBeUndefined()
    const none = await forwardOf(orders, port, 'GET /orders/x HTTP/1.1\r\nHost: HOST')
    expect(none.deadlineAt).toBeUndefined()
  })
})

describe('request id and headers', () => {
  it('passes a well-formed x-request-id and generates one otherwise', async () => {
    const orders = recordingService('orders')
    const { port } = await ambassador([orders])
    const passed = await forwardOf(
      orders,
      port,
      'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Request-Id: abc-123',
    )
    expect(passed.requestId).toBe('abc-123')
    expect(passed.headers['x-request-id']).toBe('abc-123')
    const generated = await forwardOf(orders, port, 'GET /orders/x HTTP/1.1\r\nHost: HOST')
    expect(generated.requestId).toMatch(/^[0-9a-f-]{36}$/)
    const tooLong = await forwardOf(
      orders,
      port,
      `GET /orders/x HTTP/1.1\r\nHost: HOST\r\nX-Request-Id: ${'a'.repeat(201)}`,
    )
    expect(tooLong.requestId).toMatch(/^[0-9a-f-]{36}$/)
    expect(tooLong.requestId).not.toBe(generated.requestId)
  })

  it('drops host, expect, hop-by-hop and Connection-named headers, keeps the rest', async () => {
    const orders = recordingService('orders')
    const { port } = await ambassador([orders])
    const forwarded = await forwardOf(
      orders,
      port,
      'POST /orders/x?a=1&b=%2F HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive, X-Private\r\nX-Private: hop\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nExpect: 100-continue\r\nX-Multi: 1\r\nX-Multi: 2\r\nAuthorization: Bearer app-token\r\nContent-Length: 2',
      'hi',
    )
    expect(forwarded.method).toBe('POST')
    expect(forwarded.target).toBe('/x?a=1&b=%2F')
    expect(forwarded.host).toBe(`127.0.0.1:${port}`)
    expect(forwarded.body?.toString()).toBe('hi')
    const names = Object.keys(forwarded.headers).sort()
    expect(names).toEqual(['authorization', 'content-length', 'x-multi', 'x-request-id'])
    expect(forwarded.headers['x-multi']).toEqual(['1', '2'])
  })

  it('uses the local address as Host for HTTP/1.0 without one', async () => {
    const orders = recordingService('orders')
    const { port } = await ambassador([orders])
    const response = await sendRaw(port, 'GET /orders/x HTTP/1.0\r\n\r\n')
    expect(response.status).toBe(200)
    expect(orders.forwarded[0]?.host).toBe(`127.0.0.1:${port}`)
  })
})

describe('access log', () => {
  it('writes one JSON line per request with no headers, cookies, tokens or query', async () => {
    const clock = new ManualClock(10_000)
    const slow: ServiceRuntime = {
      ...recordingService('orders'),
      async forward(_req: ForwardRequest, res: ServerResponse): Promise<ForwardOutcome> {
        await clock.advance(37)
        res.writeHead(201, { 'content-length': 3 })
        res.end('yes')
        return {
          status: 201,
          attempts: 2,
          written: true,
          endpoint: 'http://e:1',
          error: undefined,
          captured: undefined,
        }
      },
    }
    const { port, log } = await ambassador([slow], { clock })
    const response = await sendRaw(
      port,
      request(
        port,
        'PUT /orders/items/9?token=query-secret HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer header-secret\r\nCookie: session=cookie-secret\r\nX-Api-Key: key-secret\r\nX-Request-Id: rid-1\r\nContent-Length: 4',
        'body',
      ),
    )
    expect(response.status).toBe(201)
    const lines = log.lines().filter((line) => line.msg === 'access')
    expect(lines).toHaveLength(1)
    const line = lines[0]!
    expect(line).toMatchObject({
      level: 'info',
      listener: 'test',
      method: 'PUT',
      path: '/orders/items/9',
      route: 'ambassador',
      service: 'orders',
      status: 201,
      attempts: 2,
      endpoint: 'http://e:1',
      requestId: 'rid-1',
      durationMs: 37,
      bytesIn: 4,
    })
    expect(line.bytesOut).toBeGreaterThan(3)
    for (const secret of ['query-secret', 'header-secret', 'cookie-secret', 'key-secret']) {
      expect(log.text()).not.toContain(secret)
    }
  })

  it('logs a 404 for an unknown service and nothing when access logs are off', async () => {
    const orders = recordingService('orders')
    const on = await ambassador([orders])
    expect(
      (await sendRaw(on.port, request(on.port, 'GET /billing/x HTTP/1.1\r\nHost: HOST'))).status,
    ).toBe(404)
    expect(on.log.lines().find((line) => line.msg === 'access')).toMatchObject({
      status: 404,
      error: 'SERVICE_NOT_FOUND',
      path: '/billing/x',
    })
    const off = await ambassador([orders], { accessLog: false })
    await sendRaw(off.port, request(off.port, 'GET /orders/x HTTP/1.1\r\nHost: HOST'))
    await sendRaw(off.port, request(off.port, 'GET /orders/x HTTP/1.1\r\nHost: HOST\r\nHost: x'))
    expect(off.log.text()).toBe('')
  })
})

describe('client disconnect', () => {
  it('aborts the forward signal when the client goes away', async () => {
    let signal: AbortSignal | undefined
    const waiting: ServiceRuntime = {
      ...recordingService('orders'),
      forward(req: ForwardRequest): Promise<ForwardOutcome> {
        signal = req.signal
        return new Promise((resolve) => {
          req.signal.addEventListener('abort', () =>
            resolve({
              status: 499,
              attempts: 1,
              written: true,
              endpoint: undefined,
              error: 'ABORTED',
              captured: undefined,
            }),
          )
        })
      },
    }
    const { port } = await ambassador([waiting])
    const socket = await openSocket(port)
    socket.write(request(port, 'GET /orders/x HTTP/1.1\r\nHost: HOST'))
    await vi.waitFor(() => expect(signal).toBeDefined(), { timeout: 5_000 })
    expect(signal?.aborted).toBe(false)
    socket.destroy()
    await vi.waitFor(() => expect(signal?.aborted).toBe(true), { timeout: 5_000 })
  })
})

describe('sendProblem and toForwardRequest', () => {
  it('answers application/problem+json with the status, code and detail', async () => {
    const { ctx } = contextWith(() => registryOf([]))
    const listener = listenerConfig()
    const server = createListenerServer(
      listener,
      (_req, res) => sendProblem(res, 503, 'BULKHEAD_FULL', 'too busy'),
      ctx,
    )
    started.push(server)
    const { port } = await server.listen()
    const response = await sendRaw(port, request(port, 'GET / HTTP/1.1\r\nHost: HOST'))
    expect(response.status).toBe(503)
    expect(response.headers['content-type']).toBe('application/problem+json')
    expect(JSON.parse(response.body)).toEqual({
      type: 'about:blank',
      title: 'Service Unavailable',
      status: 503,
      code: 'BULKHEAD_FULL',
      detail: 'too busy',
    })
    // The request was read to the end: the connection stays open for the next one.
    expect(response.headers.connection).toBe('keep-alive')
  })

  it('destroys the socket when the response head is already out', async () => {
    const { ctx } = contextWith(() => registryOf([]))
    const listener = listenerConfig()
    const server = createListenerServer(
      listener,
      (_req, res) => {
        res.writeHead(200, { 'content-length': 10 })
        // Once the head and a first chunk are on the wire, as with a streamed upstream body.
        res.write('part', () => sendProblem(res, 502, 'UPSTREAM_RESET', 'cut'))
      },
      ctx,
    )
    started.push(server)
    const { port } = await server.listen()
    const response = await sendRaw(port, request(port, 'GET / HTTP/1.1\r\nHost: HOST'), {
      untilFirstResponse: false,
    })
    expect(response.status).toBe(200)
    expect(response.closed).toBe(true)
    expect(response.raw.endsWith('part')).toBe(true)
  })

  it('maps every field of the inbound request', () => {
    const signal = new AbortController().signal
    const forward = toForwardRequest(
      {
        method: 'PATCH',
        path: '/a/b',
        query: '?q=1',
        headers: { 'x-a': '1' },
        host: 'h:1',
        requestId: 'r',
        deadlineAt: 99,
        body: Buffer.from('x'),
        signal,
        startedAt: 5,
      },
      'orders-route',
      '/b?q=1',
    )
    expect(forward).toEqual({
      method: 'PATCH',
      target: '/b?q=1',
      headers: { 'x-a': '1' },
      host: 'h:1',
      body: Buffer.from('x'),
      deadlineAt: 99,
      route: 'orders-route',
      requestId: 'r',
      signal,
    })
  })
})
