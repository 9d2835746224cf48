// A request node:http's parser (or its header and request timers) refuses is answered by the
// listener before the proxy's handler sees it. Such a refusal left no log line at all, while
// every refusal the handler makes is logged (`request refused`, or the access line): a flood of
// malformed requests or of 431s (a client sending oversized cookies) was invisible. It is now
// logged as `request refused` when access logs are on, once: a request the handler already has
// (its body was being read) keeps its access line with the listener's answer instead.

import type { Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { startProxy } from '../../../src/proxy/runtime.js'
import { captureLog as captureLines } from '../runtime/helpers.js'
import { openSocket, sendRaw } from '../support/raw-http.js'
import { refusedByNode } from './cases.js'
import { type CapturedLog, listenAmbassador, recordingService } from './harness.js'

let server: ListenerServer
let port: number
let log: CapturedLog

beforeAll(async () => {
  ;({ server, port, log } = await listenAmbassador([recordingService('orders')]))
})

afterAll(async () => {
  await server.close()
})

/** The log lines about `status` written since `from` lines: access or request refused. */
const linesAbout = (from: number, status: number) =>
  log
    .lines()
    .slice(from)
    .filter((l) => (l.msg === 'access' || l.msg === 'request refused') && l.status === status)

describe('a request the parser refuses, access logs on', () => {
  for (const [name, template, status] of refusedByNode) {
    it(`${name}: one log line with its status`, async () => {
      const from = log.lines().length
      const response = await sendRaw(port, template.replaceAll('HOST', `127.0.0.1:${port}`), {
        untilFirstResponse: false,
      })
      expect(response.status).toBe(status)
      const lines = linesAbout(from, status)
      expect(lines, log.text()).toHaveLength(1)
      if (lines[0]?.msg === 'request refused')
        expect(lines[0]).toMatchObject({
          level: 'warn',
          listener: 'test',
          code: JSON.parse(response.body).code,
          remote: '127.0.0.1',
        })
    })
  }

  it('an oversized header section: 431 logged as request refused', async () => {
    const from = log.lines().length
    const response = await sendRaw(
      port,
      `GET /orders/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${'c'.repeat(70_000)}\r\n\r\n`,
      { untilFirstResponse: false },
    )
    expect(response.status).toBe(431)
    expect(linesAbout(from, 431)).toMatchObject([
      { msg: 'request refused', code: 'REQUEST_HEADERS_TOO_MANY', listener: 'test' },
    ])
  })

  it('a head that did not arrive in time: 408 logged as request refused', async () => {
    const from = log.lines().length
    const accepted = new Promise<Socket>((resolve) => server.server.once('connection', resolve))
    const client = await openSocket(port)
    const serverSide = await accepted
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
    client.resume()
    client.write('GET /orders/x HTTP/1.1\r\nHost: a\r\nX-Slow: aa')
    // node:http's own timer raises this through 'clientError'; raised here by hand.
    const timeout = Object.assign(new Error('Request timeout'), {
      code: 'ERR_HTTP_REQUEST_TIMEOUT',
    })
    server.server.emit('clientError', timeout, serverSide)
    await closed
    expect(linesAbout(from, 408)).toMatchObject([{ msg: 'request refused', code: 'TIMEOUT' }])
  })
})

describe('through the running proxy (a reload may replace the handler)', () => {
  for (const [accessLog, expected] of [
    [true, 1],
    [false, 0],
  ] as const) {
    it(`accessLog ${accessLog}: ${expected} request refused line per listener`, async () => {
      const lines = captureLines()
      const proxy = await startProxy({
        config: `services: { app: { endpoints: ['http://127.0.0.1:1'] } }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - { name: in, role: gateway, port: 0, routes: [{ name: all, match: { prefix: / }, targets: [{ service: app }] }] }
accessLog: ${accessLog}
`,
        logger: createJsonLogger({ output: lines }),
      })
      try {
        for (const name of ['out', 'in']) {
          const { port: at } = proxy.address(name)
          const response = await sendRaw(at, 'GET /app/x HTTP/1.1\nHost: a\n\n', {
            untilFirstResponse: false,
          })
          expect(response.status).toBe(400)
        }
        const refused = lines.lines().filter((l) => l.msg === 'request refused')
        expect(refused).toHaveLength(expected * 2)
        if (expected === 1)
          expect(refused).toMatchObject([
            { listener: 'out', status: 400, code: 'REQUEST_INVALID' },
            { listener: 'in', status: 400, code: 'REQUEST_INVALID' },
          ])
      } finally {
        await proxy.close(0)
      }
    })
  }
})
