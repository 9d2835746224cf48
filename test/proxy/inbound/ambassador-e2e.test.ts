// The ambassador end to end: raw bytes into a real listener, the real upstream runtime
// (createServiceRuntime on undici) and real node:http upstreams that count what reaches them.

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import type { ServiceRuntime } from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { type CountingUpstream, startCountingUpstream } from '../support/counting-upstream.js'
import { sendRaw } from '../support/raw-http.js'
import { serviceConfig } from '../upstream/helpers.js'
import { refusedByNode, refusedByProxy } from './cases.js'
import {
  type CapturedLog,
  contextWith,
  defaultLimits,
  listenerConfig,
  registryOf,
} from './harness.js'

let ordersUpstream: CountingUpstream
let adminUpstream: CountingUpstream
// Stands for any host the proxy must never be talked into reaching: it is not configured.
let outsider: CountingUpstream
let services: ServiceRuntime[]
let server: ListenerServer
let port: number
let host: string
let log: CapturedLog

beforeAll(async () => {
  ordersUpstream = await startCountingUpstream()
  adminUpstream = await startCountingUpstream()
  outsider = await startCountingUpstream()
  const setup = contextWith(() => registryOf(services))
  log = setup.log
  services = [
    createServiceRuntime(serviceConfig([ordersUpstream.url], { name: 'orders' }), setup.ctx),
    createServiceRuntime(serviceConfig([adminUpstream.url], { name: 'admin' }), setup.ctx),
  ]
  const listener = listenerConfig({
    name: 'outbound',
    limits: { ...defaultLimits, maxHeaders: 20 },
  })
  server = createListenerServer(listener, createAmbassadorHandler(listener, setup.ctx), setup.ctx)
  port = (await server.listen()).port
  host = `127.0.0.1:${port}`
})

afterAll(async () => {
  await server.close()
  await Promise.all(services.map((service) => service.close()))
  await Promise.all([ordersUpstream.close(), adminUpstream.close(), outsider.close()])
})

beforeEach(() => {
  ordersUpstream.requests.length = 0
  adminUpstream.requests.length = 0
  outsider.requests.length = 0
})

function seen(): number {
  return ordersUpstream.requests.length + adminUpstream.requests.length + outsider.requests.length
}

describe('ambassador through the real upstream runtime', () => {
  it('forwards /<service>/<rest>?query with the request id, deadline and no hop-by-hop headers', async () => {
    const response = await sendRaw(
      port,
      `POST /orders/v1/items?id=7 HTTP/1.1\r\nHost: ${host}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret-hop\r\nKeep-Alive: timeout=5\r\nX-Request-Id: req-42\r\nX-Breakwater-Deadline-Ms: 5000\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello`,
    )
    expect(response.status).toBe(200)
    expect(ordersUpstream.requests).toHaveLength(1)
    const request = ordersUpstream.requests[0]!
    expect(request.method).toBe('POST')
    expect(request.url).toBe('/v1/items?id=7')
    expect(request.body).toBe('hello')
    expect(request.headers['x-request-id']).toBe('req-42')
    expect(request.headers['x-hop']).toBeUndefined()
    expect(request.headers['keep-alive']).toBeUndefined()
    expect(request.headers['content-type']).toBe('text/plain')
    const deadline = Number(request.headers['x-breakwater-deadline-ms'])
    expect(deadline).toBeGreaterThan(4_000)
    expect(deadline).toBeLessThanOrEqual(5_000)
    // rewriteHost: the upstream sees its own host, not the one the client sent.
    expect(request.headers.host).toBe(new URL(ordersUpstream.url).host)
    expect(request.rawHeaders.filter((name) => name.toLowerCase() === 'host')).toHaveLength(1)

    const line = log.lines().find((entry) => entry.msg === 'access' && entry.service === 'orders')
    expect(line).toMatchObject({
      method: 'POST',
      path: '/orders/v1/items',
      route: 'ambassador',
      status: 200,
      attempts: 1,
      requestId: 'req-42',
      bytesIn: 5,
    })
    expect(log.text()).not.toContain('id=7')
  })

  it('forwards the normalized path, not the one sent', async () => {
    const response = await sendRaw(
      port,
      `GET /orders/a/%2e%2e/b//c/./d%7e HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
    )
    expect(response.status).toBe(200)
    expect(ordersUpstream.requests.map((r) => r.url)).toEqual(['/b/c/d~'])
  })

  for (const [name, template, status] of [...refusedByProxy, ...refusedByNode]) {
    it(`refuses ${name} (${status}) and no upstream sees it`, async () => {
      const response = await sendRaw(port, template.replaceAll('HOST', host), {
        untilFirstResponse: false,
        timeoutMs: 3_000,
      })
      expect(response.status).toBe(status)
      // Every refusal ends the connection.
      expect(response.closed).toBe(true)
      expect(seen()).toBe(0)
    })
  }
})

describe('never an open proxy, end to end', () => {
  const attempts = (): [string, string, number][] => {
    const other = `127.0.0.1:${outsider.port}`
    return [
      [
        'absolute-form to the outsider',
        `GET http://${other}/ HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
        400,
      ],
      [
        'absolute-form to the outsider with a matching Host',
        `GET http://${other}/x HTTP/1.1\r\nHost: ${other}\r\n\r\n`,
        404,
      ],
      ['a Host naming the outsider', `GET /x HTTP/1.1\r\nHost: ${other}\r\n\r\n`, 404],
      ['a protocol-relative path', `GET //${other}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 404],
      [
        'an encoded protocol-relative path',
        `GET /%2F%2F${other}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
        400,
      ],
      ['a URL in the path', `GET /http://${other}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 404],
      [
        'a URL after a service',
        `GET /orders/http://${other}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
        200,
      ],
      ['a backslash path', `GET /\\\\${other}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 400],
      ['CONNECT to the outsider', `CONNECT ${other} HTTP/1.1\r\nHost: ${other}\r\n\r\n`, 405],
    ]
  }

  it('never reaches an unconfigured host, whatever Host, target or path say', async () => {
    for (const [name, bytes, status] of attempts()) {
      const response = await sendRaw(port, bytes)
      expect({ name, status: response.status }).toEqual({ name, status })
      expect({ name, outsider: outsider.requests.length }).toEqual({ name, outsider: 0 })
    }
    // The one accepted attempt went to the configured orders upstream, with the URL as a path.
    expect(ordersUpstream.requests.map((r) => r.url)).toEqual([
      `/http:/127.0.0.1:${outsider.port}/x`,
    ])
    expect(adminUpstream.requests).toHaveLength(0)
  })
})
