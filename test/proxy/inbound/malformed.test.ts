// Requests node:http's strict parser refuses before the proxy's handler sees them (and a
// request without Host) are answered as every other refusal is: an application/problem+json
// body with a stable code, and the connection closed.

import type { Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { openSocket, parseResponse, sendRaw } from '../support/raw-http.js'
import { refusedByNode } from './cases.js'
import { listenAmbassador, type RecordingService, recordingService } from './harness.js'

let server: ListenerServer
let port: number
let orders: RecordingService

beforeAll(async () => {
  orders = recordingService('orders')
  ;({ server, port } = await listenAmbassador([orders]))
})

afterAll(async () => {
  await server.close()
})

const codes: Record<number, string> = {
  400: 'REQUEST_INVALID',
  431: 'REQUEST_HEADERS_TOO_MANY',
}

describe('a request the parser refuses', () => {
  for (const [name, template, status] of refusedByNode) {
    it(`${name}: ${status} as problem+json, connection closed`, async () => {
      const response = await sendRaw(port, template.replaceAll('HOST', `127.0.0.1:${port}`), {
        untilFirstResponse: false,
      })
      expect(response.status).toBe(status)
      expect(response.closed).toBe(true)
      expect(response.headers['content-type']).toBe('application/problem+json')
      const code = name === 'HTTP/1.1 without Host' ? 'REQUEST_HOST_INVALID' : codes[status]
      expect(JSON.parse(response.body)).toMatchObject({ status, code })
      expect(orders.forwarded).toHaveLength(0)
    })
  }
})

describe('a request the listener times out', () => {
  it('is answered 408 as problem+json with code TIMEOUT', async () => {
    // node:http's own timers raise ERR_HTTP_REQUEST_TIMEOUT through 'clientError'; raised here
    // by hand, so the test waits for no timer.
    const accepted = new Promise<Socket>((resolve) => server.server.once('connection', resolve))
    const client = await openSocket(port)
    const serverSide = await accepted
    const received: Buffer[] = []
    client.on('data', (chunk: Buffer) => received.push(chunk))
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
    client.write('GET /orders/x HTTP/1.1\r\nHost: a\r\nX-Slow: aa')
    const timeout = Object.assign(new Error('Request timeout'), {
      code: 'ERR_HTTP_REQUEST_TIMEOUT',
    })
    server.server.emit('clientError', timeout, serverSide)
    await closed
    const response = parseResponse(Buffer.concat(received))
    expect(response.status).toBe(408)
    expect(response.headers['content-type']).toBe('application/problem+json')
    expect(JSON.parse(response.body)).toMatchObject({ status: 408, code: 'TIMEOUT' })
  })
})

describe('a request of another HTTP major version', () => {
  it('is answered 505 and never forwarded (node parses "HTTP/2.0" as a request line)', async () => {
    const response = await sendRaw(
      port,
      `GET /orders/x HTTP/2.0\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
      {
        untilFirstResponse: false,
      },
    )
    expect(response.status).toBe(505)
    expect(response.closed).toBe(true)
    expect(JSON.parse(response.body)).toMatchObject({ status: 505, code: 'REQUEST_INVALID' })
    expect(orders.forwarded).toHaveLength(0)
  })
})
