// The 503 LISTENER_REMOVED answer: a request that reaches a listener a reload removed. A drain
// closes idle connections and marks the responses under way `Connection: close` (so a request
// pipelined behind one is never answered there), but a TLS connection still in its handshake
// when the reload lands is neither: it is not an HTTP connection yet. Once its handshake ends,
// its request finds no handler in the generation in force, and must get the 503 (not a hang,
// not a reset), so that the client reconnects and finds the listeners in force.

import { connect as netConnect, type Socket } from 'node:net'
import { Duplex } from 'node:stream'
import { connect as tlsConnect } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { recordOtelCounters } from '../../support/otel-counters.js'
import { createTestCerts, type TestCerts } from '../support/certs.js'
import { captureLog, type NamedUpstream, startNamedUpstream } from './helpers.js'

// Registered before the proxy starts: it creates its OpenTelemetry instruments on first use.
const counted = recordOtelCounters()

let upstream: NamedUpstream
let certs: TestCerts
beforeAll(async () => {
  upstream = await startNamedUpstream('app')
  certs = createTestCerts()
})
afterAll(async () => {
  await upstream.close()
  certs.cleanup()
})

function yaml(withTls: boolean): string {
  return `
services: { app: { endpoints: [${upstream.url}] } }
listeners:
  - { name: out, role: ambassador, port: 0 }
${
  withTls
    ? `  - name: secure
    role: gateway
    port: 0
    tls: { certFile: ${certs.server.certFile}, keyFile: ${certs.server.keyFile} }
    routes: [{ name: r, match: { prefix: / }, targets: [{ service: app }] }]
`
    : ''
}drainTimeoutMs: 5000
`
}

/**
 * A duplex over `raw` that passes the client's first write (its ClientHello) and holds the
 * later ones (its Finished, then the request) until `release()`: the server has accepted the
 * connection and answered, and waits for the end of the handshake.
 */
function gatedTransport(raw: Socket): {
  duplex: Duplex
  answered: Promise<void>
  release(): void
} {
  let writes = 0
  const held: [Buffer, () => void][] = []
  let released = false
  let answered: () => void = () => {}
  const answeredPromise = new Promise<void>((resolve) => {
    answered = resolve
  })
  const duplex = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, done) {
      writes++
      if (writes === 1 || released) raw.write(chunk, () => done())
      else held.push([chunk, done])
    },
    final(done) {
      raw.end()
      done()
    },
  })
  raw.on('data', (chunk: Buffer) => {
    answered()
    duplex.push(chunk)
  })
  raw.on('end', () => duplex.push(null))
  raw.on('error', (error) => duplex.destroy(error))
  return {
    duplex,
    answered: answeredPromise,
    release() {
      released = true
      for (const [chunk, done] of held.splice(0)) raw.write(chunk, () => done())
    },
  }
}

/**
 * A TLS connection to `port` whose handshake the server has answered and the client has not
 * finished yet (see {@link gatedTransport}): `release()` lets the handshake end, then `send`
 * writes the request; `text()` is what the server wrote so far, `closed` settles when it closed.
 */
async function heldTlsConnection(port: number) {
  const raw = netConnect(port, '127.0.0.1')
  // The server closing the connection (the TLS client over the gate is not told).
  const closed = new Promise<void>((resolve) => raw.once('close', () => resolve()))
  const gate = gatedTransport(raw)
  const client = tlsConnect({ socket: gate.duplex, ca: certs.ca.cert, servername: 'localhost' })
  client.on('error', () => {})
  const received: Buffer[] = []
  client.on('data', (chunk: Buffer) => received.push(chunk))
  // The server accepted the connection and sent its part of the handshake.
  await gate.answered
  return {
    closed,
    text: () => Buffer.concat(received).toString('utf8'),
    send(request: string) {
      gate.release()
      client.write(request)
    },
  }
}

/** The problem+json body of the response `text` (its one JSON object, however it is framed). */
function problemIn(text: string): Record<string, unknown> {
  const body = text.slice(text.indexOf('\r\n\r\n'))
  return JSON.parse(body.slice(body.indexOf('{'), body.lastIndexOf('}') + 1)) as Record<
    string,
    unknown
  >
}

describe('a request on a listener a reload removed', () => {
  it('is answered 503 LISTENER_REMOVED with Connection: close', async () => {
    const proxy: RunningProxy = await startProxy({
      config: yaml(true),
      logger: createJsonLogger({ level: 'silent' }),
      watch: false,
    })
    try {
      const held = await heldTlsConnection(proxy.address('secure').port)
      await proxy.reload(yaml(false))
      held.send('GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n')
      // The answer, then the server closes the connection.
      await held.closed
      const text = held.text()
      expect(text).toMatch(/^HTTP\/1\.1 503 /)
      const head = text.slice(0, text.indexOf('\r\n\r\n')).toLowerCase()
      expect(head).toContain('connection: close')
      // Framed as the proxy's other problems (sendProblem): a length, not chunks, and never
      // cached (a shared cache would keep answering 503 for the listener's new owner).
      const body = text.slice(text.indexOf('\r\n\r\n') + 4)
      expect(head).toContain(`content-length: ${Buffer.byteLength(body)}`)
      expect(head).not.toContain('transfer-encoding')
      expect(head).toContain('cache-control: no-store')
      // A problem as the listener's other refusals are: its detail says why, as its log line
      // does (see the test below).
      expect(problemIn(text)).toEqual({
        type: 'about:blank',
        title: 'Service Unavailable',
        status: 503,
        code: 'LISTENER_REMOVED',
        detail: 'this listener was removed by a config reload',
      })
    } finally {
      await proxy.close(0)
    }
  })

  // Every other answer a listener gives is counted in its request metrics and, with access logs
  // on, logged as `request refused`; a removed listener had no handler in force to do either,
  // so its LISTENER_REMOVED answers, and its own refusals while it drains (here a handshake,
  // refused 503 PROXY_DRAINING), were in no metric and no log line.
  it("is counted and logged as a refusal before routing, as the listener's own refusals there are", async () => {
    const log = captureLog()
    const proxy: RunningProxy = await startProxy({
      config: yaml(true),
      logger: createJsonLogger({ output: log }),
      watch: false,
    })
    try {
      const port = proxy.address('secure').port
      const request = await heldTlsConnection(port)
      const handshake = await heldTlsConnection(port)
      await proxy.reload(yaml(false))
      counted.length = 0
      request.send('GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n')
      handshake.send(
        'GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      )
      await Promise.all([request.closed, handshake.closed])
      expect(request.text()).toContain('"code":"LISTENER_REMOVED"')
      expect(handshake.text()).toContain('"code":"PROXY_DRAINING"')

      expect(await proxy.metricsText()).toContain(
        'breakwater_proxy_route_requests_total{listener="secure",route="",service="",status="503"} 2',
      )
      const attributes = { listener: 'secure', route: '', service: '', status: 503 }
      expect(counted.filter((c) => c.name === 'breakwater.proxy.requests')).toEqual([
        { name: 'breakwater.proxy.requests', value: 1, attributes },
        { name: 'breakwater.proxy.requests', value: 1, attributes },
      ])
      const refusals = log.lines().filter((line) => line.msg === 'request refused')
      expect(refusals.map((line) => line.code).sort()).toEqual([
        'LISTENER_REMOVED',
        'PROXY_DRAINING',
      ])
      expect(refusals[0]).toMatchObject({ listener: 'secure', status: 503 })
      // The client is told what the operator reads.
      const removed = refusals.find((line) => line.code === 'LISTENER_REMOVED')
      expect(removed?.detail).toBe(problemIn(request.text()).detail)
    } finally {
      await proxy.close(0)
    }
  })
})
