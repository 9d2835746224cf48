// Red-team probes of the forward path (src/proxy/upstream/), through the real
// `breakwater proxy` process with raw upstream sockets. Each test states the behaviour the
// issue asks for. Failed when written and fixed since: a POST on a sidecar-guarded route was
// retried after a read timeout (the key is enforced by the proxy, the app behind does not
// dedupe, so it ran twice; now such requests are retried only when nothing was sent, and the
// key stays held after the timeout), and the deadline under the configured `deadlineHeader`. The others passed and stay as regression tests (short body, a pooled connection poisoned by extra bytes, CL + TE, no
// retry of a keyless POST, redirects not followed, TLS verified by default, spent deadline,
// bulkhead slots freed when the client goes away).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer as createTlsServer } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listenOnLoopback } from '../../support/loopback.js'
import { eventually } from '../runtime/helpers.js'
import { createTestCerts, type TestCerts } from '../support/certs.js'
import { openSocket, sendRaw } from '../support/raw-http.js'
import {
  ensureBuilt,
  freePort,
  type ProxyProcess,
  spawnProxy,
  waitForReady,
} from './proxy-process.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-upstream-findings-'))

// A raw upstream: reads one request head, records it, and writes whatever `answer` returns.
interface RawUpstream {
  readonly port: number
  readonly heads: string[]
  close(): Promise<void>
}

async function rawUpstream(answer: (head: string, socket: Socket) => void): Promise<RawUpstream> {
  const heads: string[] = []
  const sockets = new Set<Socket>()
  const server: NetServer = createNetServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let buffered = ''
    socket.on('data', (data: Buffer) => {
      buffered += data.toString('latin1')
      const end = buffered.indexOf('\r\n\r\n')
      if (end === -1) return
      const head = buffered.slice(0, end)
      buffered = buffered.slice(end + 4)
      heads.push(head)
      answer(head, socket)
    })
  })
  const serverPort = await listenOnLoopback(server)
  return {
    port: serverPort,
    heads,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}

function headerOf(head: string, name: string): string | undefined {
  const line = head.split('\r\n').find((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
  return line?.slice(line.indexOf(':') + 1).trim()
}

let echo: RawUpstream
let lying: RawUpstream
let poisoning: RawUpstream
let framing: RawUpstream
let unavailable: RawUpstream
let redirecting: RawUpstream
let hanging: RawUpstream
let certs: TestCerts
const tlsHeads: string[] = []
let tlsPort = 0
let closeTls: (() => Promise<void>) | undefined
let slowApp: RawUpstream
const slowAppPosts: string[] = []
let gw = 0
let proxy: ProxyProcess
let out: number
let admin: number

beforeAll(async () => {
  ensureBuilt()
  echo = await rawUpstream((_head, socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  })
  lying = await rawUpstream((_head, socket) => {
    // Announces 100 bytes, sends 3, then closes.
    socket.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc')
  })
  // Answers every request with its response plus a second, unasked-for one in the same write
  // (and a HEAD with a body): a pooled connection that kept it would hand `POISON` to the next
  // client.
  let served = 0
  poisoning = await rawUpstream((head, socket) => {
    served++
    const body = `fresh-${served}`
    const extra = 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON'
    if (head.startsWith('HEAD ')) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON`)
    else socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}${extra}`)
  })
  // Content-Length and Transfer-Encoding together on a response.
  framing = await rawUpstream((_head, socket) => {
    socket.write(
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    )
  })
  // Always 503: a POST without an Idempotency-Key must not be sent twice.
  unavailable = await rawUpstream((_head, socket) => {
    socket.write('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n')
  })
  // A redirect to a host outside the config: passed to the client, never followed.
  redirecting = await rawUpstream((_head, socket) => {
    socket.write(
      `HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:${echo.port}/followed\r\nContent-Length: 0\r\n\r\n`,
    )
  })
  // Never answers `/hang`; answers everything else.
  hanging = await rawUpstream((head, socket) => {
    if (!head.startsWith('GET /hang'))
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  })
  // A TLS endpoint whose certificate is signed by a CA the proxy was not told about.
  certs = createTestCerts()
  const tlsServer = createTlsServer(
    { cert: certs.server.cert, key: certs.server.key },
    (socket) => {
      socket.on('data', () => {
        tlsHeads.push('request')
        socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
      })
      socket.on('error', () => {})
    },
  )
  tlsPort = await listenOnLoopback(tlsServer)
  closeTls = () => new Promise<void>((resolve) => tlsServer.close(() => resolve()))
  // A local app behind a sidecar route with Idempotency-Key enforcement: it knows nothing of
  // keys (the point of the sidecar). Its first POST takes longer than the service's readMs.
  slowApp = await rawUpstream((head, socket) => {
    slowAppPosts.push(head.split('\r\n')[0] as string)
    const answer = () => socket.write('HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok')
    if (slowAppPosts.length === 1) setTimeout(answer, 600)
    else answer()
  })
  gw = await freePort()
  out = await freePort()
  admin = await freePort()
  const file = join(dir, 'findings.yaml')
  writeFileSync(
    file,
    `services:
  echo: { endpoints: [http://127.0.0.1:${echo.port}] }
  lying: { endpoints: [http://127.0.0.1:${lying.port}] }
  poisoning: { endpoints: [http://127.0.0.1:${poisoning.port}], bulkhead: { connectionsPerEndpoint: 1 } }
  framing: { endpoints: [http://127.0.0.1:${framing.port}] }
  unavailable:
    endpoints: [http://127.0.0.1:${unavailable.port}]
    retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 }
  redirecting: { endpoints: [http://127.0.0.1:${redirecting.port}] }
  hanging:
    endpoints: [http://127.0.0.1:${hanging.port}]
    timeouts: { readMs: 60000, overallMs: 60000 }
    bulkhead: { maxConcurrent: 2, maxQueue: 0, connectionsPerEndpoint: 4 }
  untrusted: { endpoints: [https://127.0.0.1:${tlsPort}] }
  trusted:
    endpoints: [https://127.0.0.1:${tlsPort}]
    tls: { caFile: ${certs.ca.certFile} }
  misnamed:
    endpoints: [https://127.0.0.1:${tlsPort}]
    tls: { caFile: ${certs.ca.certFile}, serverName: other.example }
  slowapp:
    endpoints: [http://127.0.0.1:${slowApp.port}]
    timeouts: { readMs: 300 }
    retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 2 }
listeners:
  - name: sidecar
    role: gateway
    port: ${gw}
    routes:
      - { name: guarded, match: { prefix: /g }, targets: [{ service: slowapp }], idempotency: { methods: [POST] } }
  - { name: outbound, role: ambassador, port: ${out} }
admin: { port: ${admin}, token: { env: FINDINGS_ADMIN_TOKEN } }
deadlineHeader: x-deadline-ms
idempotency: { url: "sqlite:${join(dir, 'findings-idempotency.db')}" }
`,
  )
  proxy = spawnProxy(['proxy', '--config', file], {
    FINDINGS_ADMIN_TOKEN: 'findings-admin-token-0123456789',
  })
  await waitForReady(proxy, admin)
}, 180_000)

afterAll(async () => {
  proxy?.kill()
  await echo?.close()
  await lying?.close()
  await poisoning?.close()
  await framing?.close()
  await unavailable?.close()
  await redirecting?.close()
  await hanging?.close()
  await slowApp?.close()
  await closeTls?.()
  certs?.cleanup()
})

describe('upstream findings', () => {
  it('passes the deadline on under the configured deadlineHeader, not the default name', async () => {
    const response = await sendRaw(
      out,
      `GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nX-Deadline-Ms: 3000\r\n\r\n`,
    )
    expect(response.status).toBe(200)
    const head = echo.heads.at(-1) ?? ''
    // The app behind speaks the configured header (the inbound side reads only that one).
    const passed = Number(headerOf(head, 'x-deadline-ms'))
    expect(passed, head).toBeGreaterThan(2_000)
    expect(passed, head).toBeLessThanOrEqual(3_000)
    expect(headerOf(head, 'x-breakwater-deadline-ms'), head).toBeUndefined()
  })

  it('a response shorter than its Content-Length reaches the client as a broken connection', async () => {
    const response = await sendRaw(out, `GET /lying/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`, {
      untilFirstResponse: false,
      timeoutMs: 5_000,
    })
    expect(response.timedOut).toBe(false)
    expect(response.closed).toBe(true)
    // Either the proxy's own 502 before any byte, or the upstream head cut short: never a
    // complete-looking response the client could take as the whole body.
    if (response.status === 200) {
      expect(response.headers['content-length']).toBe('100')
      expect(response.body.length).toBeLessThan(100)
    } else {
      expect(response.status).toBe(502)
    }
  })

  it('never hands one client the bytes an upstream sent past the response another asked for', async () => {
    const bodies: string[] = []
    for (let i = 0; i < 4; i++) {
      const method = i === 1 ? 'HEAD' : 'GET'
      const response = await sendRaw(
        out,
        `${method} /poisoning/${i} HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nConnection: close\r\n\r\n`,
        { timeoutMs: 3_000, untilFirstResponse: false },
      )
      expect(response.timedOut).toBe(false)
      if (method === 'GET') bodies.push(`${response.status} ${response.body}`)
    }
    expect(bodies).toHaveLength(3)
    for (const body of bodies) expect(body).toMatch(/^200 fresh-\d+$/)
  })

  it('refuses a response with both Content-Length and Transfer-Encoding (502)', async () => {
    const response = await sendRaw(
      out,
      `GET /framing/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`,
      {
        timeoutMs: 3_000,
      },
    )
    expect(response.status).toBe(502)
  })

  it('never retries a POST without an Idempotency-Key, retries one with a key', async () => {
    const get = (method: string, extra = ''): string =>
      `${method} /unavailable/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nContent-Length: 2\r\n${extra}\r\nhi`
    unavailable.heads.length = 0
    expect((await sendRaw(out, get('POST'))).status).toBe(503)
    expect(unavailable.heads).toHaveLength(1)
    unavailable.heads.length = 0
    expect((await sendRaw(out, get('POST', 'Idempotency-Key: k-1\r\n'))).status).toBe(503)
    expect(unavailable.heads).toHaveLength(3)
    unavailable.heads.length = 0
    expect((await sendRaw(out, get('PUT'))).status).toBe(503)
    expect(unavailable.heads).toHaveLength(3)
  })

  it('passes a redirect to the client and never follows it', async () => {
    const before = echo.heads.length
    const response = await sendRaw(
      out,
      `GET /redirecting/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`,
    )
    expect(response.status).toBe(302)
    expect(echo.heads.length).toBe(before)
  })

  it('verifies upstream TLS by default: an unknown CA or a wrong name never gets the request', async () => {
    const to = (service: string) =>
      sendRaw(out, `GET /${service}/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`, {
        timeoutMs: 5_000,
      })
    expect((await to('untrusted')).status).toBe(502)
    expect((await to('misnamed')).status).toBe(502)
    expect(tlsHeads).toHaveLength(0)
    expect((await to('trusted')).status).toBe(200)
    expect(tlsHeads).toHaveLength(1)
  })

  it('answers a spent inbound deadline at once, without calling the service', async () => {
    const before = echo.heads.length
    for (const value of ['0', '-5']) {
      const response = await sendRaw(
        out,
        `GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nX-Deadline-Ms: ${value}\r\n\r\n`,
      )
      expect(response.status, value).toBe(504)
    }
    expect(echo.heads.length).toBe(before)
  })

  it('frees the bulkhead slot of a client that went away while the service hung', async () => {
    for (let i = 0; i < 2; i++) {
      const socket = await openSocket(out)
      socket.write(`GET /hanging/hang/${i} HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)
      await eventually(() => hanging.heads.length === i + 1, 'the hung request at the service')
      socket.destroy()
    }
    // Both slots were taken by clients that are gone: a new request must still get one.
    await eventually(
      async () =>
        (await sendRaw(out, `GET /hanging/ok HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`))
          .status === 200,
      'a free bulkhead slot',
      3_000,
    )
  })

  it('does not retry a POST on a sidecar-guarded route once the app may have run it', async () => {
    // The Idempotency-Key is enforced by the proxy in front of the app, not by the app: a
    // retry after a read timeout makes the app run the request a second time.
    const response = await sendRaw(
      gw,
      `POST /g/charge HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nIdempotency-Key: g-1\r\nContent-Length: 2\r\n\r\nhi`,
      { timeoutMs: 5_000 },
    )
    expect(response.status).toBe(504)
    expect(slowAppPosts, JSON.stringify(slowAppPosts)).toHaveLength(1)
    // The app may have run it (it did, late): the client's retry must not run it again.
    const retry = await sendRaw(
      gw,
      `POST /g/charge HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nIdempotency-Key: g-1\r\nContent-Length: 2\r\n\r\nhi`,
      { timeoutMs: 5_000 },
    )
    expect(retry.status).toBe(409)
    await new Promise((resolve) => setTimeout(resolve, 400))
    expect(slowAppPosts, JSON.stringify(slowAppPosts)).toHaveLength(1)
  })
})
