// Every hardening point of the inbound side, sent as raw bytes to a real ambassador listener.
// Each refused request must get its status and must never reach a service.

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { sendRaw } from '../support/raw-http.js'
import { refusedByNode, refusedByProxy } from './cases.js'
import {
  type CapturedLog,
  contextWith,
  defaultLimits,
  listenAmbassador,
  listenerConfig,
  type RecordingService,
  recordingService,
  registryOf,
} from './harness.js'

let server: ListenerServer
let port: number
let host: string
let orders: RecordingService
let admin: RecordingService
let log: CapturedLog

beforeAll(async () => {
  orders = recordingService('orders')
  admin = recordingService('admin')
  ;({ server, port, log } = await listenAmbassador([orders, admin], {
    listener: listenerConfig({ limits: { ...defaultLimits, maxHeaders: 20 } }),
  }))
  host = `127.0.0.1:${port}`
})

afterAll(async () => {
  await server.close()
})

beforeEach(() => {
  orders.forwarded.length = 0
  admin.forwarded.length = 0
})

function forwardedCount(): number {
  return orders.forwarded.length + admin.forwarded.length
}

function get(target: string, extra = ''): string {
  return `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`
}

describe('a well-formed request', () => {
  it('is forwarded to the named service with /<rest> and the raw query', async () => {
    const response = await sendRaw(port, get('/orders/v1/items?id=7&x=%20'))
    expect(response.status).toBe(200)
    expect(orders.forwarded).toHaveLength(1)
    expect(orders.forwarded[0]?.target).toBe('/v1/items?id=7&x=%20')
    expect(orders.forwarded[0]?.route).toBe('ambassador')
  })

  it('accepts absolute-form only when it names the Host', async () => {
    const response = await sendRaw(port, get(`http://${host}/orders/a`))
    expect(response.status).toBe(200)
    expect(orders.forwarded[0]?.target).toBe('/a')
    const upper = await sendRaw(
      port,
      `GET HTTP://LOCALHOST:${port}/orders/b HTTP/1.1\r\nHost: localhost:${port}\r\n\r\n`,
    )
    expect(upper.status).toBe(200)
    expect(orders.forwarded[1]?.target).toBe('/b')
  })

  it('treats a default port as equal to no port when comparing absolute-form and Host', async () => {
    const response = await sendRaw(
      port,
      'GET http://app.internal/orders/c HTTP/1.1\r\nHost: app.internal:80\r\n\r\n',
    )
    expect(response.status).toBe(200)
    expect(orders.forwarded[0]?.host).toBe('app.internal:80')
  })

  it('accepts exactly maxHeaders header fields', async () => {
    const extra = Array.from({ length: 19 }, (_, i) => `x-h${i}: v\r\n`).join('')
    const response = await sendRaw(port, get('/orders/x', extra))
    expect(response.status).toBe(200)
  })

  it('accepts a Content-Length and a chunked body within the limit', async () => {
    const fixed = await sendRaw(
      port,
      `POST /orders/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5\r\n\r\nhello`,
    )
    expect(fixed.status).toBe(200)
    const chunked = await sendRaw(
      port,
      `POST /orders/y HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n`,
    )
    expect(chunked.status).toBe(200)
    expect(orders.forwarded.map((f) => f.body?.toString())).toEqual(['hello', 'abcde'])
    expect(orders.forwarded[1]?.headers['transfer-encoding']).toBeUndefined()
  })

  it('accepts HTTP/1.0 without Host', async () => {
    const response = await sendRaw(port, 'GET /orders/x HTTP/1.0\r\n\r\n')
    expect(response.status).toBe(200)
    expect(orders.forwarded).toHaveLength(1)
  })
})

describe('requests Node accepts but the proxy refuses', () => {
  for (const [name, template, status] of refusedByProxy) {
    it(`answers ${status} to ${name} and forwards nothing`, async () => {
      const bytes = template.replaceAll('HOST', host)
      const response = await sendRaw(port, bytes)
      expect(response.status).toBe(status)
      if (status !== 405) {
        expect(response.headers['content-type']).toBe('application/problem+json')
        expect(JSON.parse(response.body)).toMatchObject({
          status,
          code: expect.stringMatching(/^REQUEST_/),
        })
      }
      expect(forwardedCount()).toBe(0)
    })
  }

  it('answers HTTP/0.9 request lines with 400 and forwards nothing', async () => {
    const response = await sendRaw(port, 'GET /orders/x\r\n\r\n')
    // Node answers a 0.9 request with an HTTP/1.x status line; what matters is the refusal.
    expect(response.status).toBe(400)
    expect(forwardedCount()).toBe(0)
  })

  it('closes the connection after refusing a body it did not read', async () => {
    const response = await sendRaw(
      port,
      `POST /orders/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5000\r\n\r\n${'a'.repeat(5000)}GET /orders/smuggled HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      { untilFirstResponse: false, timeoutMs: 3_000 },
    )
    expect(response.status).toBe(413)
    expect(response.headers.connection).toBe('close')
    expect(response.closed).toBe(true)
    expect(forwardedCount()).toBe(0)
  })

  it('logs refusals without the Host or auth headers', async () => {
    await sendRaw(
      port,
      `GET /orders/x HTTP/1.1\r\nHost: ${host}\r\nHost: b\r\nAuthorization: Bearer s3cr3t-token\r\n\r\n`,
    )
    expect(log.text()).toContain('"request refused"')
    expect(log.text()).not.toContain('s3cr3t-token')
  })
})

describe('requests the strict parser refuses (the insecure parser is off)', () => {
  for (const [name, template, status] of refusedByNode) {
    it(`answers ${status} to ${name} and forwards nothing`, async () => {
      const response = await sendRaw(port, template.replaceAll('HOST', host), {
        untilFirstResponse: false,
      })
      expect(response.status).toBe(status)
      expect(response.closed).toBe(true)
      expect(forwardedCount()).toBe(0)
    })
  }

  it('runs with insecureHTTPParser off', () => {
    expect((server.server as unknown as { insecureHTTPParser?: boolean }).insecureHTTPParser).toBe(
      false,
    )
  })
})

describe('never an open proxy', () => {
  const attempts: readonly [string, string, number][] = [
    [
      'absolute-form to another host',
      'GET http://evil.example/ HTTP/1.1\r\nHost: HOST\r\n\r\n',
      400,
    ],
    [
      'absolute-form agreeing with a foreign Host',
      'GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n',
      404,
    ],
    ['a protocol-relative path', 'GET //evil.example/x HTTP/1.1\r\nHost: HOST\r\n\r\n', 404],
    [
      'an encoded protocol-relative path',
      'GET /%2F%2Fevil.example/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
      400,
    ],
    ['a foreign Host alone', 'GET /evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n', 404],
    [
      'a URL as the first segment',
      'GET /http:%2F%2Fevil.example/x HTTP/1.1\r\nHost: HOST\r\n\r\n',
      400,
    ],
    ['a port-like first segment', 'GET /evil.example:80/x HTTP/1.1\r\nHost: HOST\r\n\r\n', 404],
    ['an unknown service', 'GET /payments/x HTTP/1.1\r\nHost: HOST\r\n\r\n', 404],
    ['no service at all', 'GET / HTTP/1.1\r\nHost: HOST\r\n\r\n', 404],
  ]
  for (const [name, template, status] of attempts) {
    it(`refuses ${name} (${status})`, async () => {
      const response = await sendRaw(port, template.replaceAll('HOST', host))
      expect(response.status).toBe(status)
      expect(forwardedCount()).toBe(0)
    })
  }

  it('reaches only the service named by the normalized path, whatever Host says', async () => {
    const response = await sendRaw(
      port,
      'GET http://evil.example/orders/%2e%2e/admin/x HTTP/1.1\r\nHost: evil.example\r\n\r\n',
    )
    expect(response.status).toBe(200)
    expect(orders.forwarded).toHaveLength(0)
    expect(admin.forwarded.map((f) => f.target)).toEqual(['/x'])
  })

  it('does not expose services missing from listener.services', async () => {
    const listener = listenerConfig({ name: 'limited', services: ['orders'] })
    const setup = contextWith(() => registryOf([orders, admin]))
    const limited = createListenerServer(
      listener,
      createAmbassadorHandler(listener, setup.ctx),
      setup.ctx,
    )
    const { port: limitedPort } = await limited.listen()
    try {
      const hostHeader = `Host: 127.0.0.1:${limitedPort}\r\n`
      const denied = await sendRaw(limitedPort, `GET /admin/x HTTP/1.1\r\n${hostHeader}\r\n`)
      expect(denied.status).toBe(404)
      const allowed = await sendRaw(limitedPort, `GET /orders/x HTTP/1.1\r\n${hostHeader}\r\n`)
      expect(allowed.status).toBe(200)
      expect(admin.forwarded).toHaveLength(0)
      expect(orders.forwarded).toHaveLength(1)
    } finally {
      await limited.close()
    }
  })
})
