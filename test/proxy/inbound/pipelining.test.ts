// Pipelined requests on one connection are put through to the service one at a time, in the
// order they came (RFC 9112 §9.3.2), on both of a listener's paths: the fast path serialises
// them itself, and node:http (which emits 'request' for every request of a buffer at once)
// must not start the next before the one before it has been answered. A POST that changes
// state followed by a GET that reads it must see the POST's effect; one client pipelining
// twenty requests must not take twenty slots of a service's bulkhead.

import { afterEach, describe, expect, it } from 'vitest'
import type { RequestHandler, ServiceRuntime } from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { sendRaw } from '../support/raw-http.js'
import { contextWith, listenerConfig, recordingService, registryOf } from './harness.js'

/** A service that answers each forward after `delayMs`, noting starts, ends and concurrency. */
function slowService(delayMs: number) {
  const events: string[] = []
  let inFlight = 0
  let maxInFlight = 0
  let value = 'old'
  const service: ServiceRuntime = {
    ...recordingService('orders'),
    forward(req, res) {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      events.push(`start ${req.method} ${req.target}`)
      return new Promise((resolve) => {
        setTimeout(() => {
          if (req.method === 'POST') value = req.body?.toString('latin1') ?? ''
          const body = req.method === 'POST' ? 'set' : value
          events.push(`end ${req.method} ${req.target}`)
          inFlight--
          res.writeHead(200, { 'content-length': String(body.length) })
          res.end(body)
          const answered = { status: 200, attempts: 1, written: true } as const
          resolve({ ...answered, endpoint: undefined, error: undefined, captured: undefined })
        }, delayMs)
      })
    },
  }
  return { service, events, maxInFlight: () => maxInFlight }
}

const servers: ListenerServer[] = []
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close()
})

async function listen(service: ServiceRuntime, fast: boolean): Promise<number> {
  const { ctx } = contextWith(() => registryOf([service]), { accessLog: false })
  const listener = listenerConfig()
  const handler = createAmbassadorHandler(listener, ctx)
  const server = createListenerServer(
    listener,
    fast ? handler : (((req, res) => handler(req, res)) as RequestHandler),
    ctx,
  )
  servers.push(server)
  return (await server.listen()).port
}

const post = (framing: 'length' | 'chunked') =>
  framing === 'length'
    ? 'POST /orders/set HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nnew'
    : 'POST /orders/set HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnew\r\n0\r\n\r\n'

describe.each([
  ['the fast path', true, 'length'],
  ['node:http', false, 'length'],
  // Chunked: the fast path hands the connection to node:http at the first request.
  ['the fast path handing over to node:http', true, 'chunked'],
] as const)('pipelined requests on %s', (_name, fast, framing) => {
  it('go to the service one at a time, in order', async () => {
    const { service, events, maxInFlight } = slowService(30)
    const port = await listen(service, fast)
    const response = await sendRaw(
      port,
      `${post(framing)}GET /orders/get HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
      { untilFirstResponse: false },
    )
    expect(events).toEqual(['start POST /set', 'end POST /set', 'start GET /get', 'end GET /get'])
    expect(maxInFlight()).toBe(1)
    // The GET reads what the POST stored.
    expect(response.raw).toMatch(/\r\n\r\nset[\s\S]*\r\n\r\nnew$/)
  })

  it('take one request of the service at a time however many are pipelined', async () => {
    const { service, events, maxInFlight } = slowService(2)
    const port = await listen(service, fast)
    let bytes = post(framing)
    for (let i = 0; i < 8; i++) bytes += `GET /orders/${i} HTTP/1.1\r\nHost: a\r\n\r\n`
    bytes += 'GET /orders/8 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'
    const response = await sendRaw(port, bytes, { untilFirstResponse: false })
    expect(maxInFlight()).toBe(1)
    expect(events.filter((e) => e.startsWith('start'))).toEqual([
      'start POST /set',
      ...Array.from({ length: 9 }, (_, i) => `start GET /${i}`),
    ])
    expect(response.raw.match(/HTTP\/1\.1 200/g)).toHaveLength(10)
  })
})
