// The Via header (RFC 9110 §7.6.3): the proxy names itself on every request it forwards and
// every response it passes back, after the Via entries already there, through the whole
// runtime started from YAML, against real upstream servers on loopback.
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, request } from 'node:http'
import type { Socket } from 'node:net'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ConfigInvalidError } from '../../../src/proxy/config/index.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { startUpstream, type Upstream } from '../gateway/harness.js'
import { http } from './helpers.js'
import { rawHandshake, startWsUpstream } from './websocket-helpers.js'

let upstream: Upstream
let proxy: RunningProxy | undefined
const quiet = createJsonLogger({ level: 'silent' })

beforeEach(async () => {
  // An upstream that is itself behind a proxy: its answer already carries a Via.
  upstream = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', via: '1.1 app-cache', 'content-length': 2 })
    res.end('ok')
  })
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await upstream.close()
})

function yaml(extra = ''): string {
  return `
services:
  app: { endpoints: [${upstream.url}] }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: all, match: { prefix: / }, targets: [{ service: app }] }
${extra}
`
}

const clientVia = '1.0 fred, 1.1 p.example.net'

describe('Via', () => {
  it('appends "1.1 breakwater" to the request and the response on the ambassador and the gateway', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    for (const [port, path] of [
      [proxy.address('out').port, '/app/x'],
      [proxy.address('in').port, '/x'],
    ] as const) {
      const res = await http(port, path, { headers: { via: clientVia } })
      expect(res.status).toBe(200)
      expect(res.headers.via).toBe('1.1 app-cache, 1.1 breakwater')
      expect(upstream.seen.at(-1)?.headers.via).toBe(`${clientVia}, 1.1 breakwater`)
      // Without a Via from the client, ours is the only entry.
      await http(port, path)
      expect(upstream.seen.at(-1)?.headers.via).toBe('1.1 breakwater')
    }
  })

  it('uses the pseudonym the YAML sets, and adds nothing with via: false', async () => {
    proxy = await startProxy({ config: yaml('via: edge-7.example'), logger: quiet })
    let res = await http(proxy.address('in').port, '/x', { headers: { via: clientVia } })
    expect(res.headers.via).toBe('1.1 app-cache, 1.1 edge-7.example')
    expect(upstream.seen.at(-1)?.headers.via).toBe(`${clientVia}, 1.1 edge-7.example`)

    await proxy.reload(yaml('via: false'))
    res = await http(proxy.address('in').port, '/x', { headers: { via: clientVia } })
    expect(res.headers.via).toBe('1.1 app-cache')
    expect(upstream.seen.at(-1)?.headers.via).toBe(clientVia)
  })

  it('refuses a pseudonym that is not a token, naming the field', async () => {
    for (const bad of ['"two words"', '""', 'true', '"a,b"', '"x(y)"']) {
      const error = await startProxy({ config: yaml(`via: ${bad}`), logger: quiet }).then(
        (p) => p.close(0),
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(ConfigInvalidError)
      expect((error as Error).message).toContain('via: expected false or a pseudonym')
    }
  })

  it('names the proxy on WebSocket handshakes: the request, the 101 and a refusal', async () => {
    const ws = await startWsUpstream('chat')
    const refusing = await startWsUpstream('closed', { refuse: 403 })
    try {
      proxy = await startProxy({
        config: `
services:
  chat: { endpoints: [${ws.url}], websocket: {} }
  closed: { endpoints: [${refusing.url}], websocket: {} }
listeners:
  - { name: out, role: ambassador, port: 0 }
`,
        logger: quiet,
      })
      const port = proxy.address('out').port
      const switched = await upgrade(port, '/chat/room', clientVia)
      expect(switched.headers.via).toBe('1.1 breakwater')
      expect(ws.seen[0]?.headers.via).toBe(`${clientVia}, 1.1 breakwater`)
      const refused = await rawHandshake(port, '/closed/room')
      expect(refused.status).toBe(403)
      expect(refused.headers.via).toBe('1.1 breakwater')
    } finally {
      await proxy?.close(0)
      proxy = undefined
      await ws.close()
      await refusing.close()
    }
  })

  it('drops Via lines the upstream names in Connection, on plain answers and handshakes alike', async () => {
    // RFC 9110 §7.6.1: a header named in Connection is hop-by-hop, Via included; the proxy
    // then adds its own entry, which starts a new chain.
    const named = createServer((_req, res) => {
      res.writeHead(200, { connection: 'via', via: '1.1 app-cache', 'content-length': 2 })
      res.end('ok')
    })
    const sockets = new Set<Socket>()
    named.on('connection', (socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
    })
    named.on('upgrade', (req: IncomingMessage, socket: Socket) => {
      socket.end(
        req.url === '/refuse'
          ? 'HTTP/1.1 403 Forbidden\r\nConnection: close, via\r\nVia: 1.1 app-cache\r\nContent-Length: 0\r\n\r\n'
          : 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, Via\r\nVia: 1.1 app-cache\r\n\r\n',
      )
    })
    const port = await listenOnLoopback(named)
    try {
      proxy = await startProxy({
        config: `
services:
  app: { endpoints: ['http://127.0.0.1:${port}'], websocket: {} }
listeners:
  - { name: out, role: ambassador, port: 0 }
`,
        logger: quiet,
      })
      const out = proxy.address('out').port
      const plain = await http(out, '/app/x')
      expect(plain.status).toBe(200)
      expect(plain.headers.via).toBe('1.1 breakwater')
      const switched = await upgrade(out, '/app/switch', clientVia)
      expect(switched.headers.via).toBe('1.1 breakwater')
      const refused = await rawHandshake(out, '/app/refuse')
      expect(refused.status).toBe(403)
      expect(refused.headers.via).toBe('1.1 breakwater')
    } finally {
      await proxy?.close(0)
      proxy = undefined
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => named.close(resolve))
    }
  })
})

/** A WebSocket handshake that must be switched; resolves with the 101 (socket closed). */
function upgrade(port: number, path: string, via: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      path,
      agent: false,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        via,
        'sec-websocket-key': randomBytes(16).toString('base64'),
        'sec-websocket-version': '13',
      },
    })
    req.on('upgrade', (res, socket) => {
      socket.destroy()
      resolve(res)
    })
    req.on('response', (res) => reject(new Error(`${path} answered ${res.statusCode}`)))
    req.on('error', reject)
    req.end()
  })
}
