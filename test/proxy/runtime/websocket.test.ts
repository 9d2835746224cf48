// WebSocket tunnels through a gateway route, end to end: a real client (undici), the proxy as
// users run it (startProxy from YAML) and real upstream servers (ws). Timeouts run on an
// injected clock.
import { createSocket } from 'node:dgram'
import { connect, createServer, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ConfigInvalidError } from '../../../src/proxy/config/index.js'
import { lingerMs } from '../../../src/proxy/inbound/raw-response.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { freeLoopbackPort, listenOnLoopback } from '../../support/loopback.js'
import { until } from '../../support/until.js'
import { createTestCerts } from '../support/certs.js'
import { captureLog } from './helpers.js'
import { connectWs, rawHandshake, startWsUpstream, type WsUpstream } from './websocket-helpers.js'

let proxy: RunningProxy | undefined
const upstreams: WsUpstream[] = []
const cleanups: (() => Promise<void> | void)[] = []
const quiet = createJsonLogger({ level: 'silent' })

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  for (const upstream of upstreams.splice(0)) await upstream.close()
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

async function upstream(
  name: string,
  options: Parameters<typeof startWsUpstream>[1] = {},
): Promise<WsUpstream> {
  const started = await startWsUpstream(name, options)
  upstreams.push(started)
  return started
}

function yaml(
  services: Record<string, string>,
  options: { route?: string; extra?: string; service?: string } = {},
): string {
  const lines = Object.entries(services).map(
    ([name, url]) => `  ${name}: { endpoints: [${url}]${options.service ?? ''} }`,
  )
  const first = Object.keys(services)[0]
  return `
services:
${lines.join('\n')}
listeners:
  - { name: out, role: ambassador, port: 0 }
  - name: in
    role: gateway
    port: 0
    routes:
      - name: chat
        match: { prefix: /chat }
        targets: [{ service: ${first}, weight: 1 }]
        websocket: true
${options.route ?? ''}
      - { name: rest, match: { prefix: / }, targets: [{ service: ${first} }] }
drainTimeoutMs: 600000
${options.extra ?? ''}
`
}

/** A raw TCP client that keeps its side open until told (allowHalfOpen), recording what comes. */
async function rawClient(port: number): Promise<{
  socket: Socket
  text(): string
  readonly ended: boolean
}> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
  const chunks: Buffer[] = []
  const state = { ended: false }
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  socket.on('end', () => {
    state.ended = true
  })
  socket.on('error', () => {})
  cleanups.push(() => {
    socket.destroy()
  })
  await new Promise((resolve) => socket.once('connect', resolve))
  return {
    socket,
    text: () => Buffer.concat(chunks).toString('latin1'),
    get ended() {
      return state.ended
    },
  }
}

function handshakeText(path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
}

function wsUrl(path: string): string {
  return `ws://127.0.0.1:${proxy?.address('in').port}${path}`
}

describe('WebSocket tunnels', () => {
  it('carries text, binary, the subprotocol and the close frame between client and upstream', async () => {
    const legacy = await upstream('legacy')
    const log = captureLog()
    proxy = await startProxy({
      config: yaml({ legacy: legacy.url }),
      logger: createJsonLogger({ output: log }),
    })
    const client = await connectWs(wsUrl('/chat/room-1?user=7'), ['v2.chat'])
    expect(client.socket.protocol).toBe('v2.chat')
    client.socket.send('hello')
    expect(await client.next()).toBe('legacy:hello')
    const bytes = Buffer.from([0, 1, 2, 250, 255])
    client.socket.send(bytes)
    expect(await client.next()).toEqual(bytes)
    // The upstream speaks first too: the tunnel is not request-response.
    legacy.broadcast('pushed')
    expect(await client.next()).toBe('pushed')

    const seen = legacy.seen[0]
    expect(seen?.url).toBe('/chat/room-1?user=7')
    expect(seen?.headers['x-forwarded-for']).toBe('127.0.0.1')
    expect(seen?.headers['x-forwarded-proto']).toBe('http')
    expect(seen?.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/)
    expect(seen?.headers.host).toBe(new URL(legacy.url).host)

    const metrics = await proxy.metricsText()
    expect(metrics).toContain('breakwater_proxy_tunnels_open{listener="in",route="chat"} 1')
    expect(metrics).toContain(
      'breakwater_proxy_route_requests_total{listener="in",route="chat",service="legacy",status="101"} 1',
    )

    client.socket.close(4001, 'bye')
    expect(await client.closed).toBe(4001)
    await until(() => legacy.closes.length === 1, 'the close frame at the upstream')
    expect(legacy.closes[0]).toEqual({ code: 4001, reason: 'bye' })
    await until(
      () => log.lines().some((l) => l.msg === 'access' && l.status === 101),
      'the tunnel access line',
    )
    const access = log.lines().find((l) => l.msg === 'access' && l.status === 101)
    expect(access).toMatchObject({
      route: 'chat',
      service: 'legacy',
      path: '/chat/room-1',
      tunnelEnd: 'closed',
    })
    expect(access?.bytesIn).toBeGreaterThan(0)
    expect(access?.bytesOut).toBeGreaterThan(0)
    await until(async () => {
      const text = await proxy?.metricsText()
      return text?.includes('breakwater_proxy_tunnels_open{listener="in",route="chat"} 0') === true
    }, 'the open tunnel gauge back at 0')
  })

  it('routes handshakes by the current split, and a switch leaves open tunnels where they are', async () => {
    const legacy = await upstream('legacy')
    const modern = await upstream('modern')
    proxy = await startProxy({
      config: yaml(
        { legacy: legacy.url, modern: modern.url },
        { route: '        stripPrefix: /chat' },
      ),
      logger: quiet,
    })
    const first = await connectWs(wsUrl('/chat/a'))
    proxy.switchRoute('chat', [{ service: 'modern', weight: 1 }])
    const second = await connectWs(wsUrl('/chat/b'))
    first.socket.send('x')
    second.socket.send('y')
    expect(await first.next()).toBe('legacy:x')
    expect(await second.next()).toBe('modern:y')
    expect(legacy.seen.map((s) => s.url)).toEqual(['/a'])
    expect(modern.seen.map((s) => s.url)).toEqual(['/b'])
    expect(proxy.routes().find((r) => r.name === 'chat')?.requestsByService).toEqual({
      legacy: 1,
      modern: 1,
    })
    first.socket.close()
    second.socket.close()
    await Promise.all([first.closed, second.closed])
  })

  it('tunnels through the ambassador to a service that accepts WebSocket upgrades', async () => {
    const legacy = await upstream('legacy')
    const plain = await upstream('plain')
    proxy = await startProxy({
      config: yaml({ legacy: legacy.url, plain: plain.url }).replace(
        `  legacy: { endpoints: [${legacy.url}] }`,
        `  legacy: { endpoints: [${legacy.url}], websocket: { idleTimeoutMs: 60000 } }`,
      ),
      logger: quiet,
    })
    const out = proxy.address('out').port
    const client = await connectWs(`ws://127.0.0.1:${out}/legacy/feed?x=1`, ['v2.chat'])
    expect(client.socket.protocol).toBe('v2.chat')
    client.socket.send('via ambassador')
    expect(await client.next()).toBe('legacy:via ambassador')
    expect(legacy.seen[0]?.url).toBe('/feed?x=1')
    // The app is the client: nothing claims another address for it.
    expect(legacy.seen[0]?.headers['x-forwarded-for']).toBeUndefined()
    expect(await proxy.metricsText()).toContain(
      'breakwater_proxy_tunnels_open{listener="out",route="ambassador"} 1',
    )
    const refused = await rawHandshake(out, '/plain/feed')
    expect(refused.status).toBe(400)
    expect(JSON.parse(refused.body)).toMatchObject({
      code: 'REQUEST_UPGRADE_REFUSED',
      detail: 'service plain does not accept WebSocket upgrades',
    })
    const unknown = await rawHandshake(out, '/ghost/feed')
    expect(unknown.status).toBe(404)
    expect(JSON.parse(unknown.body)).toMatchObject({ code: 'SERVICE_NOT_FOUND' })
    expect(plain.seen).toEqual([])
    // Each handshake counted per listener, as a gateway route counts its handshakes.
    const counted = await proxy.metricsText()
    for (const labels of [
      'service="legacy",status="101"',
      'service="",status="400"',
      'service="",status="404"',
    ])
      expect(counted).toContain(
        `breakwater_proxy_route_requests_total{listener="out",route="ambassador",${labels}} 1`,
      )
    client.socket.close()
    await client.closed
  })

  it('refuses upgrades a route does not accept, and malformed handshakes, naming the rule', async () => {
    const legacy = await upstream('legacy')
    proxy = await startProxy({ config: yaml({ legacy: legacy.url }), logger: quiet })
    const port = proxy.address('in').port
    const off = await rawHandshake(port, '/other')
    expect(off.status).toBe(400)
    expect(off.headers.connection).toBe('close')
    expect(JSON.parse(off.body)).toMatchObject({
      code: 'REQUEST_UPGRADE_REFUSED',
      detail: 'route rest does not accept WebSocket upgrades',
    })
    const post = await rawHandshake(port, '/chat', { method: 'POST' })
    expect(JSON.parse(post.body)).toMatchObject({
      status: 400,
      code: 'REQUEST_UPGRADE_REFUSED',
      detail: 'a WebSocket handshake must be a GET request',
    })
    const h2c = await rawHandshake(port, '/chat', { headers: { upgrade: 'h2c' } })
    expect(JSON.parse(h2c.body)).toMatchObject({ code: 'REQUEST_UPGRADE_REFUSED' })
    const body = await rawHandshake(port, '/chat', { headers: { 'content-length': '5' } })
    expect(JSON.parse(body.body)).toMatchObject({
      detail: 'a WebSocket handshake must not have a body',
    })
    const keyless = await rawHandshake(port, '/chat', { headers: { 'sec-websocket-key': 'x' } })
    expect(JSON.parse(keyless.body)).toMatchObject({
      detail: 'a WebSocket handshake needs one Sec-WebSocket-Key (16 bytes in base64)',
    })
    const dotDot = await rawHandshake(port, '/chat/../../x')
    expect(JSON.parse(dotDot.body)).toMatchObject({ code: 'REQUEST_PATH_INVALID' })
    const ambassador = await rawHandshake(proxy.address('out').port, '/legacy/chat')
    expect(ambassador.status).toBe(400)
    expect(JSON.parse(ambassador.body)).toMatchObject({ code: 'REQUEST_UPGRADE_REFUSED' })
    expect(legacy.seen).toEqual([])
  })

  it('answers a handshake 405 with Allow where the routes of its path take other methods', async () => {
    const legacy = await upstream('legacy')
    const config = yaml({ legacy: legacy.url }).replace(
      'match: { prefix: / }',
      'match: { prefix: /, methods: [POST, PUT] }',
    )
    proxy = await startProxy({ config, logger: quiet })
    const port = proxy.address('in').port
    const wrong = await rawHandshake(port, '/other')
    expect(wrong.status).toBe(405)
    expect(wrong.headers.allow).toBe('POST, PUT')
    expect(JSON.parse(wrong.body)).toMatchObject({
      code: 'METHOD_NOT_ALLOWED',
      detail: 'no route takes GET /other; use POST, PUT',
    })
    expect(legacy.seen).toEqual([])
  })

  it('tunnels wss to wss: TLS on both sides, the client certificate and credentials of the service', async () => {
    const certs = createTestCerts()
    cleanups.push(() => certs.cleanup())
    const secure = await upstream('secure', {
      tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    })
    process.env.BREAKWATER_WS_TEST_TOKEN = 'upstream-secret'
    cleanups.push(() => {
      delete process.env.BREAKWATER_WS_TEST_TOKEN
    })
    const config = yaml(
      { secure: secure.url },
      {
        service: `, tls: { caFile: ${certs.ca.certFile}, certFile: ${certs.client.certFile}, keyFile: ${certs.client.keyFile} }, auth: { bearer: { env: BREAKWATER_WS_TEST_TOKEN } }`,
      },
    ).replace(
      '    role: gateway\n    port: 0\n',
      `    role: gateway\n    port: 0\n    tls: { certFile: ${certs.server.certFile}, keyFile: ${certs.server.keyFile} }\n`,
    )
    proxy = await startProxy({ config, logger: quiet })
    const client = await connectWs(
      `wss://127.0.0.1:${proxy.address('in').port}/chat`,
      [],
      certs.ca.cert,
    )
    client.socket.send('over tls')
    expect(await client.next()).toBe('secure:over tls')
    expect(secure.seen[0]?.headers.authorization).toBe('Bearer upstream-secret')
    expect(secure.seen[0]?.headers['x-forwarded-proto']).toBe('https')
    client.socket.close()
    await client.closed
  })

  it('closes a refused connection whose client keeps its side open, after the linger (clock-driven)', async () => {
    const legacy = await upstream('legacy')
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: yaml({ legacy: legacy.url }).replace(
        '    role: gateway\n    port: 0\n',
        '    role: gateway\n    port: 0\n    limits: { maxConnections: 1 }\n',
      ),
      logger: quiet,
      clock,
    })
    const port = proxy.address('in').port
    // A client that reads the answer and the proxy's end, and never ends its own side.
    const client = await rawClient(port)
    client.socket.write(handshakeText('/other'))
    await until(() => client.ended, 'the answer and the end of the connection')
    expect(client.text()).toContain('REQUEST_UPGRADE_REFUSED')
    // The one connection slot is still taken by the half-open connection...
    await expect(rawHandshake(port, '/other')).rejects.toThrow()
    await clock.advance(lingerMs)
    // ... until the linger ends it, and a new handshake is answered.
    await until(async () => {
      const answer = await rawHandshake(port, '/other').catch(() => undefined)
      return answer?.status === 400
    }, 'a second connection served')
  })

  it('refuses a handshake pipelined behind an unfinished request by closing the connection', async () => {
    const legacy = await upstream('legacy')
    proxy = await startProxy({ config: yaml({ legacy: legacy.url }), logger: quiet })
    const client = await rawClient(proxy.address('in').port)
    // The upstream never answers plain requests (a WebSocket server without a request handler).
    client.socket.write(`GET /slow HTTP/1.1\r\nHost: x\r\n\r\n${handshakeText('/chat')}`)
    await until(() => client.ended, 'the connection closed by the proxy')
    expect(client.text()).not.toContain('101')
    expect(legacy.seen).toEqual([])
  })

  it('answers 502, not a short body, when the endpoint dies in the middle of its answer', async () => {
    const sockets: Socket[] = []
    const dying = createServer((socket) => {
      sockets.push(socket)
      socket.once('data', () => {
        socket.write('HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\nshort', () =>
          socket.destroy(),
        )
      })
    })
    const chunked = createServer((socket) => {
      sockets.push(socket)
      socket.once('data', () =>
        socket.end(
          'HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nno!\r\n0\r\n\r\n',
        ),
      )
    })
    const dyingPort = await listenOnLoopback(dying)
    const chunkedPort = await listenOnLoopback(chunked)
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => dying.close(resolve))
      await new Promise((resolve) => chunked.close(resolve))
    })
    proxy = await startProxy({
      config: yaml(
        { dying: `http://127.0.0.1:${dyingPort}`, chunky: `http://127.0.0.1:${chunkedPort}` },
        {
          route:
            '      - { name: chunky, match: { prefix: /chunky }, targets: [{ service: chunky }], websocket: true }',
        },
      ),
      logger: quiet,
    })
    const port = proxy.address('in').port
    const cut = await rawHandshake(port, '/chat')
    expect(cut.status).toBe(502)
    expect(JSON.parse(cut.body)).toMatchObject({ code: 'UPSTREAM_RESET', service: 'dying' })
    const whole = await rawHandshake(port, '/chunky')
    expect(whole.status).toBe(403)
    expect(whole.headers['content-length']).toBe('3')
    expect(whole.headers['transfer-encoding']).toBeUndefined()
    expect(whole.headers.connection).toBe('close')
    expect(whole.body).toBe('no!')
  })

  it("passes an upstream's refusal on as an ordinary response", async () => {
    const legacy = await upstream('legacy', { refuse: 401 })
    proxy = await startProxy({ config: yaml({ legacy: legacy.url }), logger: quiet })
    const answer = await rawHandshake(proxy.address('in').port, '/chat')
    expect(answer.status).toBe(401)
    expect(answer.headers.connection).toBe('close')
    expect(answer.body).toBe('Refused by the upstream')
  })

  it('answers 502 for an endpoint that refuses connections, then 503 once the breaker opens', async () => {
    const dead = `http://127.0.0.1:${await freeLoopbackPort()}`
    proxy = await startProxy({
      config: yaml(
        { ghost: dead },
        { service: ', circuitBreaker: { failureThreshold: 2, cooldownMs: 60000 }' },
      ),
      logger: quiet,
    })
    const port = proxy.address('in').port
    for (let i = 0; i < 2; i++) {
      const answer = await rawHandshake(port, '/chat')
      expect(answer.status).toBe(502)
      expect(JSON.parse(answer.body)).toMatchObject({
        code: 'UPSTREAM_CONNECT_FAILED',
        service: 'ghost',
      })
    }
    const open = await rawHandshake(port, '/chat')
    expect(open.status).toBe(503)
    expect(open.headers['retry-after']).toBe('60')
    expect(JSON.parse(open.body)).toMatchObject({ code: 'BROKEN_CIRCUIT' })
    expect(proxy.services().find((s) => s.name === 'ghost')?.breaker).toBe('open')
    // Counted under the service the handshake was sent to, as its access line names it and as
    // a forward the service refuses is counted.
    const metrics = await proxy.metricsText()
    expect(metrics).toContain(
      'breakwater_proxy_route_requests_total{listener="in",route="chat",service="ghost",status="502"} 2',
    )
    expect(metrics).toContain(
      'breakwater_proxy_route_requests_total{listener="in",route="chat",service="ghost",status="503"} 1',
    )
  })

  it('answers 504 when the endpoint accepts but does not answer within readMs (clock-driven)', async () => {
    const accepted: Socket[] = []
    const silent = createServer((socket) => {
      accepted.push(socket)
    })
    const port = await listenOnLoopback(silent)
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of accepted) socket.destroy()
          silent.close(() => resolve())
        }),
    )
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: yaml(
        { mute: `http://127.0.0.1:${port}` },
        { service: ', timeouts: { connectMs: 1000, readMs: 5000 }' },
      ),
      logger: quiet,
      clock,
    })
    const answer = rawHandshake(proxy.address('in').port, '/chat')
    await until(() => accepted.length === 1, 'the connection at the silent endpoint')
    await clock.advance(4_999)
    let settled = false
    void answer.then(() => {
      settled = true
    })
    await new Promise((resolve) => setImmediate(resolve))
    expect(settled).toBe(false)
    await clock.advance(1)
    const result = await answer
    expect(result.status).toBe(504)
    expect(JSON.parse(result.body)).toMatchObject({ code: 'UPSTREAM_TIMEOUT' })
  })

  it('survives a client that resets during the handshake, and closes the upstream connection', async () => {
    const accepted: Socket[] = []
    const silent = createServer((socket) => {
      accepted.push(socket)
      socket.on('error', () => {})
      // Reads (and drops) what comes, so it sees the proxy's side close.
      socket.resume()
    })
    const port = await listenOnLoopback(silent)
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of accepted) socket.destroy()
          silent.close(() => resolve())
        }),
    )
    proxy = await startProxy({
      config: yaml({ mute: `http://127.0.0.1:${port}` }),
      logger: quiet,
    })
    const client = connect(proxy.address('in').port, '127.0.0.1')
    client.on('error', () => {})
    client.write(
      'GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    await until(() => accepted.length === 1, 'the handshake at the endpoint')
    client.resetAndDestroy()
    await until(() => accepted[0]?.destroyed === true, 'the upstream connection closed')
    // Still serving, and the reset did not count against the service.
    const answer = await rawHandshake(proxy.address('in').port, '/nothing-here', {
      headers: { upgrade: 'h2c' },
    })
    expect(answer.status).toBe(400)
    expect(proxy.services()[0]?.endpoints[0]?.consecutiveFailures).toBe(0)
  })

  it('closes a tunnel idle for idleTimeoutMs, and keeps one with traffic open (clock-driven)', async () => {
    const legacy = await upstream('legacy')
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: yaml(
        { legacy: legacy.url },
        {
          route:
            '      - { name: quiet, match: { prefix: /quiet }, targets: [{ service: legacy }], websocket: { idleTimeoutMs: 10000 } }',
        },
      ).replace('websocket: true\n', 'websocket: { idleTimeoutMs: 10000 }\n'),
      logger: quiet,
      clock,
    })
    const busy = await connectWs(wsUrl('/chat'))
    const idle = await connectWs(wsUrl('/quiet'))
    await clock.advance(6_000)
    busy.socket.send('still here')
    expect(await busy.next()).toBe('legacy:still here')
    await clock.advance(4_000)
    // 10 s without a byte on `idle`; `busy` had traffic 4 s ago.
    expect(await idle.closed).toBe(1006)
    busy.socket.send('and here')
    expect(await busy.next()).toBe('legacy:and here')
    await until(() => legacy.open() === 1, 'the idle tunnel closed at the upstream')
    busy.socket.close()
    await busy.closed
  })

  it('ends a tunnel whose client keeps its side open when the proxy drains', async () => {
    const legacy = await upstream('legacy')
    proxy = await startProxy({ config: yaml({ legacy: legacy.url }), logger: quiet })
    const client = await rawClient(proxy.address('in').port)
    client.socket.write(handshakeText('/chat'))
    await until(() => client.text().includes('\r\n\r\n'), 'the 101')
    expect(client.text()).toMatch(/^HTTP\/1\.1 101 /)
    // drainTimeoutMs is 10 minutes, and this client never ends its side by itself.
    await proxy.close()
    proxy = undefined
    await until(() => client.ended, 'the client connection closed by the proxy')
    await until(() => legacy.open() === 0, 'the tunnel closed at the upstream')
  })

  it('ends the tunnels of a service a reload changes, and keeps them when only weights move', async () => {
    const legacy = await upstream('legacy')
    const modern = await upstream('modern')
    const services = { legacy: legacy.url, modern: modern.url }
    proxy = await startProxy({ config: yaml(services), logger: quiet })
    const kept = await connectWs(wsUrl('/chat'))
    await proxy.reload(
      yaml(services).replace(
        'targets: [{ service: legacy, weight: 1 }]',
        'targets: [{ service: legacy, weight: 1 }, { service: modern, weight: 1 }]',
      ),
    )
    kept.socket.send('still')
    expect(await kept.next()).toBe('legacy:still')
    await proxy.reload(yaml(services, { service: ', rewriteHost: false' }))
    expect(await kept.closed).toBe(1006)
    await until(() => legacy.open() === 0 && modern.open() === 0, 'the tunnel closed upstream')
  })

  it('ends open tunnels when the proxy drains, without waiting for drainTimeoutMs', async () => {
    const legacy = await upstream('legacy')
    proxy = await startProxy({ config: yaml({ legacy: legacy.url }), logger: quiet })
    const client = await connectWs(wsUrl('/chat'))
    client.socket.send('x')
    expect(await client.next()).toBe('legacy:x')
    // drainTimeoutMs is 10 minutes: a drain that waited for the tunnel would time the test out.
    await proxy.close()
    proxy = undefined
    expect(await client.closed).toBe(1006)
    await until(() => legacy.open() === 0, 'the tunnel closed at the upstream')
  })

  it('refuses a websocket route that cannot match a GET, and a bad idle timeout', async () => {
    const legacy = await upstream('legacy')
    const bad = yaml(
      { legacy: legacy.url },
      {
        route:
          '      - { name: posts, match: { prefix: /posts, methods: [POST] }, targets: [{ service: legacy }], websocket: true }\n      - { name: tiny, match: { prefix: /tiny }, targets: [{ service: legacy }], websocket: { idleTimeoutMs: 10 } }\n      - { name: word, match: { prefix: /word }, targets: [{ service: legacy }], websocket: yes }',
      },
    )
    const error = await startProxy({ config: bad, logger: quiet }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(ConfigInvalidError)
    const message = (error as Error).message
    expect(message).toContain(
      'listeners[1].routes[1].websocket: expected a route whose match.methods include GET',
    )
    expect(message).toContain('listeners[1].routes[2].websocket.idleTimeoutMs: expected integer')
    expect(message).toContain(
      'listeners[1].routes[3].websocket: expected true, false or { idleTimeoutMs }',
    )
    // A mapping with a bad field names the field; a service no ambassador exposes is refused.
    const worse = yaml(
      { legacy: legacy.url },
      {
        route:
          '      - { name: text, match: { prefix: /text }, targets: [{ service: legacy }], websocket: { idleTimeoutMs: "60000" } }\n      - { name: typo, match: { prefix: /typo }, targets: [{ service: legacy }], websocket: { idle: 5 } }',
      },
    )
      .replace('  - { name: out, role: ambassador, port: 0 }\n', '')
      .replace(
        'services:\n',
        'services:\n  hidden: { endpoints: [http://127.0.0.1:9], websocket: true }\n',
      )
    const second = await startProxy({ config: worse, logger: quiet }).then(
      () => undefined,
      (e: unknown) => e as Error,
    )
    const text = second?.message ?? ''
    expect(text).toContain(
      'listeners[0].routes[1].websocket.idleTimeoutMs: expected integer in [1000, 2147483647], got "60000"',
    )
    expect(text).toContain('listeners[0].routes[2].websocket.idle: unknown key')
    expect(text).toContain(
      'services.hidden.websocket: expected an ambassador listener that exposes this service',
    )
  })
})

describe('WebSocket handshakes before the first DNS answer', () => {
  // A DNS server that takes every query and never answers (a blackholed resolver): the
  // service's first answer never comes while the test runs.
  async function silentDns(): Promise<{ address: string; queried: Promise<void> }> {
    const silent = createSocket('udp4')
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve))
    cleanups.push(() => new Promise<void>((resolve) => silent.close(() => resolve())))
    const queried = new Promise<void>((resolve) => silent.once('message', () => resolve()))
    return { address: `127.0.0.1:${silent.address().port}`, queried }
  }

  async function startWithSilentDns(log?: ReturnType<typeof captureLog>): Promise<ManualClock> {
    const dns = await silentDns()
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: `
services:
  chat:
    discovery: { dns: { name: chat.test, port: 80, servers: ["${dns.address}"] } }
    timeouts: { connectMs: 1000, readMs: 5000, overallMs: 30000 }
    websocket: true
listeners:
  - { name: out, role: ambassador, port: 0 }
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: chat, match: { prefix: /chat }, targets: [{ service: chat }], websocket: true }
`,
      logger: log === undefined ? quiet : createJsonLogger({ output: log }),
      clock,
    })
    await dns.queried
    return clock
  }

  /** Resolves once the proxy holds one more timer than `before` (the handshake's wait). */
  function waiting(clock: ManualClock, before: number): Promise<void> {
    return until(() => clock.pendingTimers > before, 'the handshake waiting for DNS')
  }

  /**
   * Sends a handshake to `listener` and checks that it is still waiting `afterMs - 1` ms after
   * it arrived (on the clock), and answered 504 DEADLINE_EXCEEDED at `afterMs`.
   */
  async function expectDeadlineAt(
    clock: ManualClock,
    listener: string,
    path: string,
    afterMs: number,
    headers: Record<string, string> = {},
  ): Promise<void> {
    const before = clock.pendingTimers
    let settled = false
    const answer = rawHandshake(proxy?.address(listener).port ?? 0, path, { headers })
    answer.then(
      () => {
        settled = true
      },
      () => {},
    )
    await waiting(clock, before)
    await clock.advance(afterMs - 1)
    await new Promise((resolve) => setImmediate(resolve))
    expect(settled).toBe(false)
    await clock.advance(1)
    const result = await answer
    expect(result.status).toBe(504)
    expect(JSON.parse(result.body)).toMatchObject({ code: 'DEADLINE_EXCEEDED', service: 'chat' })
  }

  it('answers 504 DEADLINE_EXCEEDED once connectMs has passed, on the gateway and the ambassador (clock-driven)', async () => {
    const clock = await startWithSilentDns()
    await expectDeadlineAt(clock, 'in', '/chat', 1000)
    await expectDeadlineAt(clock, 'out', '/chat/room', 1000)
  })

  it('answers 504 at the inbound deadline when it is sooner than connectMs (clock-driven)', async () => {
    const clock = await startWithSilentDns()
    await expectDeadlineAt(clock, 'in', '/chat', 300, { 'x-breakwater-deadline-ms': '300' })
  })

  it('stops waiting when the client leaves (ends its side or resets), and logs the handshake as 499', async () => {
    const log = captureLog()
    const clock = await startWithSilentDns(log)
    const before = clock.pendingTimers
    const abandoned = (): number =>
      log.lines().filter((line) => line.msg === 'access' && line.status === 499).length
    // Ends its side (FIN), as a client that gives up does: the proxy closes the connection.
    const ending = await rawClient(proxy?.address('in').port ?? 0)
    ending.socket.write(handshakeText('/chat'))
    await waiting(clock, before)
    ending.socket.end()
    await until(() => ending.ended && abandoned() === 1, 'the first handshake abandoned')
    expect(ending.text()).toBe('')
    expect(clock.pendingTimers).toBe(before)
    // Resets.
    const resetting = await rawClient(proxy?.address('in').port ?? 0)
    resetting.socket.write(handshakeText('/chat'))
    await waiting(clock, before)
    resetting.socket.resetAndDestroy()
    await until(() => abandoned() === 2, 'the second handshake abandoned')
    // The waits' timers are gone with them.
    expect(clock.pendingTimers).toBe(before)
  })
})
