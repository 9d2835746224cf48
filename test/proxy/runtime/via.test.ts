// The Via header (RFC 9110 §7.6.3): the proxy names itself on every request it forwards and
// every response it passes back, after the Via entries already there, through the whole
// runtime started from YAML, against real upstream servers on loopback.
import { randomBytes } from 'node:crypto'
import { type IncomingMessage, request } from 'node:http'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ConfigInvalidError } from '../../../src/proxy/config/index.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
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
