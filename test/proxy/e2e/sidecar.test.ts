// The sidecar, complete, through the real `breakwater proxy` process: TLS termination with a
// certificate reloaded when its files change, Idempotency-Key enforcement on a route with the
// SQLite store (the app counts its executions), the deadline header set for the app and
// reduced by time spent, JSON access log lines, Prometheus /metrics per route and service,
// /healthz, /readyz and the graceful drain on SIGTERM.
import { X509Certificate } from 'node:crypto'
import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { request } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listenOnLoopback } from '../../support/loopback.js'
import { eventually, http } from '../runtime/helpers.js'
import { createTestCerts, issueCert, type TestCerts } from '../support/certs.js'
import { refusedUrl } from '../support/faulty-upstream.js'
import { sendRaw } from '../support/raw-http.js'
import {
  ensureBuilt,
  freePort,
  type ProxyProcess,
  spawnProxy,
  waitForReady,
} from './proxy-process.js'

const adminToken = 'sidecar-admin-token-0c6f2a94e1'
const auth = { authorization: `Bearer ${adminToken}` }
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-sidecar-'))

// The local app: counts executions per path, records what it saw, can hold a response open,
// and fails the first attempt of `/flaky/*` (slowly) so the proxy retries it.
interface Seen {
  readonly method: string
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly body: string
  readonly at: number
}
const seen: Seen[] = []
const executions = new Map<string, number>()
const flakyTried = new Set<string>()
const held: (() => void)[] = []
let app: Server
let appUrl: string

async function startApp(): Promise<void> {
  app = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const url = req.url ?? ''
      const entry = {
        method: req.method ?? '',
        url,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
      }
      seen.push(entry)
      const count = (executions.get(url) ?? 0) + 1
      executions.set(url, count)
      const answer = (status = 201): void => {
        const body = JSON.stringify({ url, execution: count, body: entry.body })
        res.writeHead(status, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        })
        res.end(body)
      }
      const id = String(req.headers['x-request-id'])
      if (url.startsWith('/flaky') && !flakyTried.has(id)) {
        flakyTried.add(id)
        setTimeout(() => answer(503), 300)
        return
      }
      if (url.includes('/break')) {
        // The answer breaks off mid-body.
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 100 })
        res.write('0123456789')
        setTimeout(() => res.socket?.destroy(), 50)
        return
      }
      if (url.includes('/hold')) {
        held.push(() => answer(200))
        return
      }
      answer(req.method === 'POST' ? 201 : 200)
    })
  })
  appUrl = `http://127.0.0.1:${await listenOnLoopback(app)}`
}

let certs: TestCerts
let proxy: ProxyProcess
let port: number
let admin: number
let deadEndpoint: string

const overallMs = 8_000

function yaml(): string {
  return `# written by sidecar.test.ts
services:
  app:
    endpoints: [${appUrl}, ${deadEndpoint}]
    timeouts: { connectMs: 500, readMs: 5000, overallMs: ${overallMs} }
    retry: { attempts: 4, baseDelayMs: 1, maxDelayMs: 5, budget: { ratio: 1, minPerSecond: 100 } }
    circuitBreaker: { failureThreshold: 50, cooldownMs: 1000 }
    bulkhead: { maxConcurrent: 8, maxQueue: 8, connectionsPerEndpoint: 4 }
    outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 600000, maxEjectedPercent: 50 }
listeners:
  - name: sidecar
    role: gateway
    port: ${port}
    tls: { certFile: ${join(dir, 'server.pem')}, keyFile: ${join(dir, 'server-key.pem')} }
    limits: { headersTimeoutMs: 1000, requestTimeoutMs: 5000 }
    routes:
      - name: payments
        match: { prefix: /payments }
        targets: [{ service: app }]
        idempotency: { methods: [POST] }
      - { name: app, match: { prefix: / }, targets: [{ service: app }] }
admin: { port: ${admin}, token: { env: SIDECAR_ADMIN_TOKEN } }
idempotency: { url: "sqlite:${join(dir, 'idempotency.db')}" }
drainTimeoutMs: 10000
`
}

beforeAll(async () => {
  ensureBuilt()
  certs = createTestCerts()
  copyFileSync(certs.server.certFile, join(dir, 'server.pem'))
  copyFileSync(certs.server.keyFile, join(dir, 'server-key.pem'))
  await startApp()
  deadEndpoint = await refusedUrl()
  port = await freePort()
  admin = await freePort()
  const file = join(dir, 'sidecar.yaml')
  writeFileSync(file, yaml())
  proxy = spawnProxy(['proxy', '--config', file], { SIDECAR_ADMIN_TOKEN: adminToken })
  await waitForReady(proxy, admin)
}, 180_000)

afterAll(async () => {
  proxy?.kill()
  for (const release of held.splice(0)) release()
  await new Promise<void>((resolve) => {
    app?.closeAllConnections()
    app?.close(() => resolve())
  })
  certs?.cleanup()
})

interface Answer {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly text: string
}

// One HTTPS request on a fresh connection, trusting the test CA.
function https(
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: options.method ?? 'GET',
        headers: {
          connection: 'close',
          ...(options.body === undefined
            ? {}
            : { 'content-length': String(Buffer.byteLength(options.body)) }),
          ...options.headers,
        },
        agent: false,
        ca: certs.ca.cert,
        servername: 'localhost',
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        )
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(options.body)
  })
}

// The fingerprint of the certificate a new TLS connection is served.
function servedFingerprint(): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      ca: certs.ca.cert,
      servername: 'localhost',
    })
    socket.once('secureConnect', () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256
      socket.destroy()
      resolve(fingerprint)
    })
    socket.once('error', reject)
  })
}

function fingerprintOf(pem: string): string {
  return new X509Certificate(pem).fingerprint256
}

describe('the sidecar through the process', () => {
  it('terminates TLS, and a new connection sees a certificate replaced on disk', async () => {
    const warm = await https('/warm')
    expect(warm.status).toBe(200)
    expect(await servedFingerprint()).toBe(fingerprintOf(certs.server.cert))

    const next = issueCert(certs.dir, certs.ca, 'server-2', 'server', { commonName: 'rotated' })
    writeFileSync(join(dir, 'server-key.pem'), next.key)
    writeFileSync(join(dir, 'server.pem'), next.cert)
    await proxy.waitForLine((l) => l.msg === 'tls certificate reloaded', 'the certificate reload')
    await eventually(
      async () => (await servedFingerprint()) === fingerprintOf(next.cert),
      'the new certificate on a new connection',
    )
    expect((await https('/after-reload')).status).toBe(200)

    // A broken pair is refused and the running certificate stays.
    writeFileSync(join(dir, 'server.pem'), certs.server.cert)
    await proxy.waitForLine(
      (l) => l.msg === 'tls reload failed; keeping the previous certificate',
      'the refused reload',
    )
    expect(await servedFingerprint()).toBe(fingerprintOf(next.cert))
    writeFileSync(join(dir, 'server-key.pem'), next.key)
    writeFileSync(join(dir, 'server.pem'), next.cert)
  })

  it('closes a connection that never finishes its TLS handshake after headersTimeoutMs', async () => {
    const started = Date.now()
    // A TCP connection that sends nothing, and one that stops halfway through a ClientHello.
    const silent = await sendRaw(port, [], { timeoutMs: 8_000, untilFirstResponse: false })
    const partial = await sendRaw(port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), {
      timeoutMs: 8_000,
      untilFirstResponse: false,
    })
    expect(silent.closed).toBe(true)
    expect(partial.closed).toBe(true)
    expect(Date.now() - started).toBeLessThan(5_000)
  })

  it('enforces Idempotency-Key on the route with the SQLite store: a duplicate never reaches the app', async () => {
    const body = '{"amount":42}'
    const headers = { 'content-type': 'application/json', 'idempotency-key': 'pay-1' }
    const first = await https('/payments/charge', { method: 'POST', headers, body })
    expect(first.status).toBe(201)
    expect(executions.get('/payments/charge')).toBe(1)

    const again = await https('/payments/charge', { method: 'POST', headers, body })
    expect(again.status).toBe(201)
    expect(again.text).toBe(first.text)
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(executions.get('/payments/charge')).toBe(1)

    // Another spelling of the same path is the same request.
    const spelled = await https('/payments/./%63harge', { method: 'POST', headers, body })
    expect(spelled.status).toBe(201)
    expect(executions.get('/payments/charge')).toBe(1)

    // The same key with another body is refused; no key at all is refused; neither runs.
    const reused = await https('/payments/charge', {
      method: 'POST',
      headers,
      body: '{"amount":1}',
    })
    expect(reused.status).toBe(422)
    const missing = await https('/payments/charge', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    })
    expect(missing.status).toBe(400)
    expect(executions.get('/payments/charge')).toBe(1)

    // Routes without idempotency are not guarded.
    await https('/other', { method: 'POST', body })
    await https('/other', { method: 'POST', body })
    expect(executions.get('/other')).toBe(2)
  })

  it('a client that goes away mid-request does not get the app to run its key twice', async () => {
    // The lost-reply case Idempotency-Key exists for: the app got the request, the client's
    // connection dropped before the answer, the client retries with the same key.
    const body = '{"amount":7}'
    const request = `POST /payments/hold/lost HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nIdempotency-Key: lost-1\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      ca: certs.ca.cert,
      servername: 'localhost',
    })
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve)
      socket.once('error', reject)
    })
    socket.write(request)
    await eventually(() => held.length === 1, 'the request at the app')
    socket.destroy()
    await new Promise((resolve) => setTimeout(resolve, 200))
    for (const release of held.splice(0)) release()
    expect(executions.get('/payments/hold/lost')).toBe(1)

    // The retry: the recorded answer (or 409 while it is being recorded), never a second run.
    let retry: Answer | undefined
    await eventually(async () => {
      retry = await https('/payments/hold/lost', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'lost-1' },
        body,
      })
      for (const release of held.splice(0)) release()
      return retry.status !== 409
    }, 'an answer other than 409')
    expect(executions.get('/payments/hold/lost')).toBe(1)
    expect(retry?.status).toBe(200)
    expect(retry?.headers['idempotent-replayed']).toBe('true')
  })

  it('an app answer that breaks off mid-body reaches the client broken, and holds the key', async () => {
    const body = '{"amount":9}'
    const send = () =>
      sendRaw(
        port,
        `POST /payments/break HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nIdempotency-Key: break-1\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        {
          tls: { ca: certs.ca.cert, servername: 'localhost' },
          untilFirstResponse: false,
          timeoutMs: 5_000,
        },
      )
    const first = await send()
    expect(first.timedOut).toBe(false)
    expect(first.closed).toBe(true)
    // Never a response that looks complete: nothing at all (the head was still held), a cut
    // body, or the proxy's own 5xx.
    if (first.status === 200) expect(first.body.length).toBeLessThan(100)
    else if (first.status !== undefined) expect(first.status).toBeGreaterThanOrEqual(500)
    // The app ran but its answer is unknown: the key stays held until its lease expires, so
    // an immediate retry is told to come back later instead of charging again.
    const retry = await send()
    expect(retry.status).toBe(409)
    expect(executions.get('/payments/break')).toBe(1)
  })

  it('sets the deadline header for the app, reduced by the time already spent', async () => {
    // Eject the dead endpoint first, so every attempt below goes to the app.
    for (let i = 0; i < 4; i++) expect((await https(`/warmup/${i}`)).status).toBe(200)

    const started = Date.now()
    const res = await https('/flaky/1', { headers: { 'x-breakwater-deadline-ms': '5000' } })
    expect(res.status).toBe(200)
    const attempts = seen.filter((s) => s.url === '/flaky/1')
    expect(attempts).toHaveLength(2)
    const [first, second] = attempts.map((a) => Number(a.headers['x-breakwater-deadline-ms']))
    expect(first).toBeLessThanOrEqual(5_000)
    expect(first).toBeGreaterThan(4_000)
    // The retry came after the 300 ms the first attempt took (less a little timer and
    // rounding slack).
    expect(second).toBeLessThanOrEqual((first as number) - 290)
    expect(second).toBeGreaterThan(5_000 - (Date.now() - started) - 50)

    // Without an inbound deadline the app sees the service's overall timeout.
    await https('/no-deadline')
    const plain = Number(
      seen.find((s) => s.url === '/no-deadline')?.headers['x-breakwater-deadline-ms'],
    )
    expect(plain).toBeLessThanOrEqual(overallMs)
    expect(plain).toBeGreaterThan(overallMs - 1_000)
  })

  it('writes one JSON access log line per request, without header values', async () => {
    const res = await https('/logged/7?secret=q', {
      headers: { 'x-request-id': 'req-sidecar-1', cookie: 'session=cookie-value-9f' },
    })
    expect(res.status).toBe(200)
    const line = await proxy.waitForLine(
      (l) => l.msg === 'access' && l.requestId === 'req-sidecar-1',
      'the access line',
    )
    expect(line).toMatchObject({
      listener: 'sidecar',
      method: 'GET',
      path: '/logged/7',
      route: 'app',
      service: 'app',
      status: 200,
      attempts: 1,
    })
    expect(typeof line.durationMs).toBe('number')
    // What the app was told about the client: TLS terminated here, from 127.0.0.1.
    const atApp = seen.find((s) => s.url === '/logged/7?secret=q')?.headers ?? {}
    expect(atApp['x-forwarded-proto']).toBe('https')
    expect(atApp['x-forwarded-for']).toBe('127.0.0.1')
    expect(atApp['x-forwarded-host']).toBe(`127.0.0.1:${port}`)
    expect(typeof line.bytesOut).toBe('number')
    expect(proxy.stdout()).not.toContain('cookie-value-9f')
    expect(proxy.stdout()).not.toContain('secret=q')
    // Every stdout line is JSON.
    for (const text of proxy
      .stdout()
      .split('\n')
      .filter((t) => t !== '')) {
      expect(() => JSON.parse(text), text).not.toThrow()
    }
  })

  it('serves /metrics per route and service: requests, status, latency, retries, breaker, bulkhead, ejections', async () => {
    const pending = https('/hold/1')
    await eventually(() => held.length === 1, 'the held request at the app')
    const text = (await http(admin, '/metrics')).text
    for (const release of held.splice(0)) release()
    expect((await pending).status).toBe(200)

    const families: [string, RegExp][] = [
      [
        'route requests by status',
        /^breakwater_proxy_route_requests_total\{[^}]*route="payments"[^}]*status="201"[^}]*\} \d+/m,
      ],
      [
        'route latency histogram',
        /^breakwater_proxy_route_request_duration_seconds_bucket\{[^}]*route="app"[^}]*\} \d+/m,
      ],
      [
        'service requests by status',
        /^breakwater_proxy_upstream_requests_total\{[^}]*service="app"[^}]*status="200"[^}]*\} \d+/m,
      ],
      [
        'service latency histogram',
        /^breakwater_proxy_upstream_request_duration_seconds_bucket\{[^}]*service="app"[^}]*\} \d+/m,
      ],
      [
        'service retries',
        /^breakwater_proxy_upstream_retries_total\{[^}]*service="app"[^}]*\} [1-9]/m,
      ],
      [
        'breaker state',
        /^breakwater_proxy_upstream_breaker_state\{[^}]*service="app"[^}]*state="closed"[^}]*\} 1/m,
      ],
      [
        'bulkhead occupancy',
        /^breakwater_proxy_upstream_bulkhead_running\{[^}]*service="app"[^}]*\} 1/m,
      ],
      [
        'bulkhead queue',
        /^breakwater_proxy_upstream_bulkhead_queued\{[^}]*service="app"[^}]*\} 0/m,
      ],
      ['ejections', /^breakwater_proxy_upstream_ejections_total\{[^}]*service="app"[^}]*\} [1-9]/m],
      [
        'endpoints ejected now',
        /^breakwater_proxy_upstream_endpoints_ejected\{[^}]*service="app"[^}]*\} 1/m,
      ],
    ]
    const missing = families.filter(([, pattern]) => !pattern.test(text)).map(([name]) => name)
    expect(missing, text).toEqual([])
  })

  it('answers /healthz and /readyz, and refuses the admin API without the token', async () => {
    expect((await http(admin, '/healthz')).status).toBe(200)
    expect((await http(admin, '/readyz')).status).toBe(200)
    expect((await http(admin, '/admin/services')).status).toBe(401)
    const services = await http(admin, '/admin/services', { headers: auth })
    expect(services.status).toBe(200)
    expect(services.text).toContain('"app"')
  })

  it('drains on SIGTERM: readyz 503, the request in flight finishes over TLS, exit 0', async () => {
    const inFlight = https('/hold/drain')
    await eventually(() => held.length === 1, 'the held request at the app')
    proxy.child.kill('SIGTERM')
    await proxy.waitForLine((l) => l.msg === 'draining: readiness is now false', 'the drain')
    expect((await http(admin, '/readyz')).status).toBe(503)
    await expect(https('/after-sigterm')).rejects.toThrow()
    for (const release of held.splice(0)) release()
    const res = await inFlight
    expect(res.status).toBe(200)
    expect(res.headers.connection).toBe('close')
    expect(await proxy.exited).toEqual({ code: 0, signal: null })
    expect(seen.some((s) => s.url === '/after-sigterm')).toBe(false)
  })
})
