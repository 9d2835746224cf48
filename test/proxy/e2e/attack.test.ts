// Red team: raw bytes against the real `breakwater proxy` process (dist/cli/main.js) with a
// YAML that has an ambassador, a gateway (legacy/new split, shadow, Idempotency-Key on a
// route, stripPrefix) and an admin listener whose token comes from a file. Every refused
// request must get its status and never reach an upstream; no upstream outside the config is
// ever reached; secrets never show in the process output or the admin API.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { tokenMatches } from '../../../src/proxy/admin/server.js'
import { normalizePath } from '../../../src/proxy/inbound/normalize-path.js'
import { refusedByNode, refusedByProxy } from '../inbound/cases.js'
import { eventually, http } from '../runtime/helpers.js'
import {
  type CountingUpstream,
  type SeenRequest,
  startCountingUpstream,
} from '../support/counting-upstream.js'
import { openSocket, sendRaw } from '../support/raw-http.js'
import {
  ensureBuilt,
  freePort,
  type ProxyProcess,
  runProxyCli,
  spawnProxy,
  waitForReady,
} from './proxy-process.js'

const adminToken = 'attack-admin-token-7d1e4c0b9a2f'
const legacyToken = 'attack-legacy-bearer-51c2e8f0'
const modernKey = 'attack-modern-apikey-a93b17d6'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-attack-'))
const adminTokenFile = join(dir, 'admin-token')
const modernKeyFile = join(dir, 'modern-key')

let legacy: CountingUpstream
let modern: CountingUpstream
let internal: CountingUpstream
let evil: CountingUpstream
let proxy: ProxyProcess
let out: number
let gw: number
let admin: number
let trusted: number

// The legacy upstream answers `/public/hop` with connection-specific headers the proxy must
// drop, and everything else with the counting upstream's echo.
function legacyAnswer(seen: SeenRequest, res: ServerResponse): void {
  if (seen.url.startsWith('/public/hop')) {
    res.writeHead(200, [
      ['content-type', 'text/plain'],
      ['connection', 'x-secret, keep-alive'],
      ['x-secret', '1'],
      ['keep-alive', 'timeout=5'],
      ['proxy-authenticate', 'Basic realm="up"'],
      ['proxy-connection', 'keep-alive'],
      ['x-visible', 'yes'],
      ['content-length', '2'],
    ])
    res.end('ok')
    return
  }
  if (seen.url.startsWith('/public/proto')) {
    // Header names that are also properties of every plain object.
    res.writeHead(200, [
      ['content-type', 'text/plain'],
      ['constructor', 'c'],
      ['__proto__', 'p'],
      ['tostring', 't'],
      ['content-length', '2'],
    ])
    res.end('ok')
    return
  }
  const body = JSON.stringify({ url: seen.url })
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
  res.end(body)
}

function yaml(): string {
  const limits =
    '{ maxHeaders: 20, maxBodyBytes: 1024, headersTimeoutMs: 1000, requestTimeoutMs: 2000, keepAliveTimeoutMs: 2000, maxConnections: 8 }'
  return `# written by attack.test.ts
services:
  legacy:
    endpoints: [${legacy.url}]
    auth: { bearer: { env: ATTACK_LEGACY_TOKEN } }
  modern:
    endpoints: [${modern.url}]
    auth: { apiKey: { header: x-api-key, file: ${modernKeyFile} } }
  internal:
    endpoints: [${internal.url}]
listeners:
  - { name: outbound, role: ambassador, port: ${out}, services: [legacy, modern], limits: ${limits} }
  - name: inbound
    role: gateway
    port: ${gw}
    limits: ${limits}
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: [{ service: legacy, weight: 1 }, { service: modern, weight: 1 }]
        sticky: { header: x-user-id }
        shadow: { service: modern }
      - name: pay
        match: { prefix: /pay, methods: [POST, GET] }
        targets: [{ service: legacy }]
        idempotency: { methods: [POST] }
      - { name: api, match: { prefix: /api }, stripPrefix: /api, targets: [{ service: modern }] }
      - { name: public, match: { prefix: /public }, targets: [{ service: legacy }] }
  - name: behind-balancer
    role: gateway
    port: ${trusted}
    trustForwardedHeaders: true
    routes:
      - { name: trusted-public, match: { prefix: /public }, targets: [{ service: legacy }] }
admin: { port: ${admin}, token: { file: ${adminTokenFile} } }
idempotency: { url: "sqlite:${join(dir, 'idempotency.db')}" }
drainTimeoutMs: 2000
`
}

beforeAll(async () => {
  ensureBuilt()
  legacy = await startCountingUpstream(legacyAnswer)
  modern = await startCountingUpstream()
  internal = await startCountingUpstream()
  evil = await startCountingUpstream()
  out = await freePort()
  gw = await freePort()
  admin = await freePort()
  trusted = await freePort()
  writeFileSync(adminTokenFile, `${adminToken}\n`)
  writeFileSync(modernKeyFile, `${modernKey}\n`)
  const file = join(dir, 'attack.yaml')
  writeFileSync(file, yaml())
  proxy = spawnProxy(['proxy', '--config', file], { ATTACK_LEGACY_TOKEN: legacyToken })
  await waitForReady(proxy, admin)
}, 180_000)

afterAll(async () => {
  proxy?.kill()
  await Promise.all([legacy, modern, internal, evil].map((u) => u?.close()))
})

beforeEach(() => {
  for (const upstream of [legacy, modern, internal, evil]) upstream.requests.length = 0
})

function seenAnywhere(): SeenRequest[] {
  return [...legacy.requests, ...modern.requests, ...internal.requests, ...evil.requests]
}

function raw(port: number, bytes: string | readonly string[], timeoutMs = 5_000) {
  return sendRaw(port, bytes, { timeoutMs })
}

// Decodes up to three times, as a lenient upstream might, and resolves dot segments.
function lenientView(url: string): string {
  let path = url.split('?')[0] as string
  for (let i = 0; i < 3; i++) {
    try {
      path = decodeURIComponent(path)
    } catch {
      break
    }
  }
  const out: string[] = []
  for (const segment of path.replaceAll('\\', '/').split('/')) {
    const bare = segment.split(';')[0] as string
    if (bare === '..') out.pop()
    else if (bare !== '.' && bare !== '') out.push(segment)
  }
  return `/${out.join('/')}`.toLowerCase()
}

describe('never an open proxy', () => {
  const attempts = (port: number, evilHost: string): [string, string][] => [
    [
      'absolute-form naming another host',
      `GET http://${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'absolute-form agreeing with an evil Host',
      `GET http://${evilHost}/x HTTP/1.1\r\nHost: ${evilHost}\r\n\r\n`,
    ],
    [
      'absolute-form https to another host',
      `GET https://${evilHost}/x HTTP/1.1\r\nHost: ${evilHost}\r\n\r\n`,
    ],
    ['Host naming another host', `GET /x HTTP/1.1\r\nHost: ${evilHost}\r\n\r\n`],
    [
      'X-Forwarded-Host naming another host',
      `GET /x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Forwarded-Host: ${evilHost}\r\n\r\n`,
    ],
    ['a network-path reference', `GET //${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['encoded slashes', `GET /%2F%2F${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['userinfo in the target', `GET @${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['userinfo after a slash', `GET /@${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['backslashes', `GET \\\\${evilHost}\\x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['slash-backslash', `GET /\\${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    ['authority-form', `GET ${evilHost} HTTP/1.1\r\nHost: ${evilHost}\r\n\r\n`],
    ['CONNECT', `CONNECT ${evilHost} HTTP/1.1\r\nHost: ${evilHost}\r\n\r\n`],
    [
      'an IPv6 literal Host and target',
      `GET http://[::1]:${evil.port}/x HTTP/1.1\r\nHost: [::1]:${evil.port}\r\n\r\n`,
    ],
    [
      'an IPv6 literal as a path segment',
      `GET /[::1]:${evil.port}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'an IPv4-mapped IPv6 literal',
      `GET http://[::ffff:127.0.0.1]:${evil.port}/x HTTP/1.1\r\nHost: [::ffff:127.0.0.1]:${evil.port}\r\n\r\n`,
    ],
    ['a dotted service name', `GET /${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`],
    [
      'a service name with dot-dot',
      `GET /legacy/../../${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'an encoded dot-dot service name',
      `GET /%2e%2e/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'a service name ending in a dot',
      `GET /legacy./x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'a scheme in the path',
      `GET /http://${evilHost}/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'a prototype key as service name',
      `GET /__proto__/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
    [
      'constructor as service name',
      `GET /constructor/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
    ],
  ]

  it('the ambassador reaches only configured, exposed services, whatever the target or Host', async () => {
    const evilHost = `127.0.0.1:${evil.port}`
    for (const [name, bytes] of attempts(out, evilHost)) {
      const response = await raw(out, bytes)
      expect(response.status, `${name}: ${response.statusLine}`).toBeGreaterThanOrEqual(400)
      expect(response.status, name).toBeLessThan(500)
    }
    // The one service the ambassador does not expose, by every spelling.
    for (const target of ['/internal/x', '/%69nternal/x', '/legacy/../internal/x', '/INTERNAL/x']) {
      const response = await raw(out, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)
      expect(response.status, target).toBe(404)
    }
    expect(evil.requests).toHaveLength(0)
    expect(internal.requests).toHaveLength(0)
    expect(seenAnywhere()).toHaveLength(0)
  })

  it('absolute-form agreeing with Host still goes to the named service, with its own Host', async () => {
    const response = await raw(
      out,
      `GET http://127.0.0.1:${evil.port}/legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${evil.port}\r\n\r\n`,
    )
    expect(response.status).toBe(200)
    expect(evil.requests).toHaveLength(0)
    expect(legacy.requests.map((r) => r.url)).toEqual(['/x'])
    expect(legacy.requests[0]?.headers.host).toBe(`127.0.0.1:${legacy.port}`)
  })

  it('the gateway reaches only the routes it has, whatever the target or Host', async () => {
    const evilHost = `127.0.0.1:${evil.port}`
    for (const [name, bytes] of attempts(gw, evilHost)) {
      const response = await raw(gw, bytes)
      expect(response.status, `${name}: ${response.statusLine}`).toBeGreaterThanOrEqual(400)
      expect(response.status, name).toBeLessThan(500)
    }
    expect(seenAnywhere()).toHaveLength(0)
  })
})

describe('no route bypass: matching and forwarding use one normalized path', () => {
  const bypasses = [
    '/public/%2e%2e/secret',
    '/public/%2E%2E/secret',
    '/public/.%2e/secret',
    '/public/%2e./secret',
    '/public\\..\\secret',
    '/public/..\\secret',
    '/public/%5c..%5csecret',
    '//public/../secret',
    '/public//../../secret',
    '/public/%252e%252e/secret',
    '/public/%25252e%25252e/secret',
    '/public/%252fsecret',
    '/public/%25%32%65%25%32%65/secret',
    '/public/%25%32%66secret',
    '/public/..;/secret',
    '/public;/../secret',
    '/public/.;/../secret',
    '/public/%2e%2e;x/secret',
    '/public/%c0%ae%c0%ae/secret',
    '/public/%c0%af..%c0%afsecret',
    '/public/%e0%80%ae%e0%80%ae/secret',
    '/public/%u002e%u002e/secret',
    '/public/..%00/secret',
    '/public/..%0d%0a/secret',
    '/public/%2e%2e%2fsecret',
    '/public/../secret?/public',
    '/public/..#/public',
    '/PUBLIC/../secret',
    '/public./../secret',
    '/api/%2e%2e/secret',
    '/api/../secret',
    '/api/..%2fsecret',
  ]

  it('no request reaches an upstream at a path outside its route', async () => {
    for (const target of bypasses) {
      const response = await raw(gw, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
      expect(response.status, `${target}: ${response.statusLine}`).toBeGreaterThanOrEqual(400)
      expect(response.status, target).toBeLessThan(500)
    }
    // The same paths in absolute-form (agreeing with Host) go through the same normalization.
    for (const target of bypasses.slice(0, 12)) {
      const response = await raw(
        gw,
        `GET http://127.0.0.1:${gw}${target} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`,
      )
      expect(response.status, `absolute ${target}`).toBeGreaterThanOrEqual(400)
      expect(response.status, `absolute ${target}`).toBeLessThan(500)
    }
    for (const seen of seenAnywhere()) {
      expect(lenientView(seen.url), seen.url).not.toContain('secret')
    }
    expect(seenAnywhere()).toHaveLength(0)
  })

  it('invalid UTF-8 in percent-encodings (overlong dots and slashes) is refused', async () => {
    for (const target of ['/public/%c0%ae%c0%ae/x', '/public/%c0%afx', '/public/%ff']) {
      const response = await raw(gw, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
      expect(response.status, target).toBe(400)
    }
    expect(seenAnywhere()).toHaveLength(0)
    // Well-formed UTF-8 is kept encoded, and never folded: a fullwidth full stop is no dot.
    for (const [target, expected] of [
      ['/public/%c3%a9t%C3%A9', '/public/%C3%A9t%C3%A9'],
      ['/public/%ef%bc%8e%ef%bc%8e/x', '/public/%EF%BC%8E%EF%BC%8E/x'],
    ]) {
      const ok = await raw(gw, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
      expect(ok.status, target).toBe(200)
      expect(legacy.requests.at(-1)?.url).toBe(expected)
    }
    expect(normalizePath('/a/%C0%AE%C0%AE/b')).toEqual({
      ok: false,
      reason: 'percent-encoded bytes that are not UTF-8',
    })
    expect(normalizePath('/a/%ED%A0%80')).toMatchObject({ ok: false }) // a UTF-16 surrogate
    expect(normalizePath('/a/%80')).toMatchObject({ ok: false }) // a stray continuation byte
    expect(normalizePath('/a/%25C0%25AE')).toEqual({ ok: true, path: '/a/%25C0%25AE' })
    // The caller splits the query off first; a `?` left in the path is refused, because
    // `new URL('/api?', base)` reads `/api` where the route table saw `/api?`.
    expect(normalizePath('/api?')).toEqual({ ok: false, reason: 'query separator in path' })
  })

  it('what is forwarded is the normalized path; stripPrefix cuts at the segment boundary', async () => {
    const cases: [string, CountingUpstream, string][] = [
      ['/public/a/./b/../c', legacy, '/public/a/c'],
      ['/public//a', legacy, '/public/a'],
      ['/public/%61', legacy, '/public/a'],
      ['/api/x?y=1', modern, '/x?y=1'],
      ['/api', modern, '/'],
      ['/api//evil.example/x', modern, '/evil.example/x'],
      ['/api/%2e/x', modern, '/x'],
    ]
    for (const [target, upstream, expected] of cases) {
      upstream.requests.length = 0
      const response = await raw(gw, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
      expect(response.status, target).toBe(200)
      expect(
        upstream.requests.map((r) => r.url),
        target,
      ).toEqual([expected])
    }
    // `/apix` is not under `/api`.
    expect((await raw(gw, `GET /apix HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)).status).toBe(404)
    // A method the route does not take: 405 naming the ones it takes.
    const wrongMethod = await raw(gw, `DELETE /pay/1 HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
    expect(wrongMethod.status).toBe(405)
    expect(wrongMethod.headers.allow).toBe('POST, GET')
  })
})

describe('the hardening list, as raw bytes through the process', () => {
  const withPath = (bytes: string, port: number, prefix: string): string =>
    bytes.replaceAll('/orders/', prefix).replaceAll('HOST', `127.0.0.1:${port}`)

  it.each([...refusedByProxy, ...refusedByNode])(
    'refuses %s on both listeners, reaching no upstream',
    async (_name, bytes, status) => {
      for (const [port, prefix] of [
        [out, '/legacy/'],
        [gw, '/public/'],
      ] as const) {
        const response = await raw(port, withPath(bytes, port, prefix))
        expect(response.status, `${port} ${response.statusLine}`).toBe(status)
      }
      expect(seenAnywhere()).toHaveLength(0)
    },
  )

  it('refuses an HTTP/0.9 request line without reaching an upstream', async () => {
    const response = await raw(gw, 'GET /public/x\r\n\r\n', 3_000)
    expect(response.timedOut).toBe(false)
    if (response.status !== undefined) expect(response.status).toBe(400)
    expect(seenAnywhere()).toHaveLength(0)
  })

  const smuggling: [string, string][] = [
    [
      'CL.TE',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG',
    ],
    [
      'TE.CL',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n',
    ],
    [
      'TE with a space before the colon',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n',
    ],
    [
      'TE xchunked',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n',
    ],
    [
      'TE chunked twice',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    ],
    [
      'TE identity',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc',
    ],
    ['CL with a sign', 'POST /public/a HTTP/1.1\r\nHost: H\r\nContent-Length: +3\r\n\r\nabc'],
    ['CL in hex', 'POST /public/a HTTP/1.1\r\nHost: H\r\nContent-Length: 0x3\r\n\r\nabc'],
    ['CL list', 'POST /public/a HTTP/1.1\r\nHost: H\r\nContent-Length: 3, 3\r\n\r\nabc'],
    [
      'chunk size with a sign',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n',
    ],
    [
      'chunk size overflow',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff3\r\nabc\r\n0\r\n\r\n',
    ],
    [
      'chunk data longer than its size',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n',
    ],
    [
      'bare LF in a chunk line',
      'POST /public/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n',
    ],
    ['bare CR in a header', 'GET /public/a HTTP/1.1\r\nHost: H\r\nX-A: a\rb\r\n\r\n'],
    ['a space in the header name', 'GET /public/a HTTP/1.1\r\nHost: H\r\nX A: b\r\n\r\n'],
    ['a lower-case method', 'get /public/a HTTP/1.1\r\nHost: H\r\n\r\n'],
    ['an unknown HTTP version', 'GET /public/a HTTP/1.2\r\nHost: H\r\n\r\n'],
    ['HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
    ['a space in the target', 'GET /public/a b HTTP/1.1\r\nHost: H\r\n\r\n'],
    ['a tab in the target', 'GET /public/a\tb HTTP/1.1\r\nHost: H\r\n\r\n'],
    ['a raw non-ASCII byte in the target', 'GET /public/\xe9 HTTP/1.1\r\nHost: H\r\n\r\n'],
  ]

  it.each(smuggling)(
    'refuses smuggling variant %s and the request hidden in it',
    async (name, bytes) => {
      for (const port of [out, gw]) {
        const payload = bytes
          .replaceAll('/public/', port === out ? '/legacy/public/' : '/public/')
          .replace('Host: H', `Host: 127.0.0.1:${port}`)
        const pipelined = `${payload}GET /public/SMUGGLED HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`
        const response = await sendRaw(port, Buffer.from(pipelined, 'latin1'), {
          timeoutMs: 3_000,
          untilFirstResponse: false,
        })
        expect(response.status, `${name} on ${port}: ${response.statusLine}`).toBe(400)
        expect(response.raw.match(/HTTP\/1\.1 \d{3}/g) ?? [], name).toHaveLength(1)
      }
      expect(seenAnywhere(), name).toHaveLength(0)
    },
  )

  it('never processes a request pipelined behind a refused one', async () => {
    const behind = (first: string): string =>
      `${first}GET /public/PIPELINED HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`
    const heads = [
      `GET /public/a HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nHost: evil\r\n\r\n`,
      `GET /public/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`,
      `GET /public/a HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nUpgrade: h2c\r\n\r\n`,
      `POST /public/a HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nContent-Length: 2000\r\n\r\n`,
      `POST /public/a HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n${'a'.repeat(2048)}\r\n0\r\n\r\n`,
      `GET /public/a HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n${Array.from({ length: 25 }, (_, i) => `x-${i}: v\r\n`).join('')}\r\n`,
    ]
    for (const head of heads) {
      const response = await sendRaw(gw, behind(head), {
        timeoutMs: 3_000,
        untilFirstResponse: false,
      })
      expect(response.closed, head.slice(0, 40)).toBe(true)
      expect(response.raw.match(/HTTP\/1\.1 \d{3}/g) ?? [], head.slice(0, 40)).toHaveLength(1)
    }
    expect(seenAnywhere()).toHaveLength(0)
  })

  it('serves pipelined good requests in order (the refusals above are not a blanket ban)', async () => {
    const two = `GET /public/one HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\nGET /public/two HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nConnection: close\r\n\r\n`
    const response = await sendRaw(gw, two, { untilFirstResponse: false })
    expect(response.raw.match(/HTTP\/1\.1 200/g)).toHaveLength(2)
    expect(legacy.requests.map((r) => r.url)).toEqual(['/public/one', '/public/two'])
  })

  it('cuts a slowloris head after headersTimeoutMs and a slow body after requestTimeoutMs', async () => {
    const started = Date.now()
    const slowHead = await sendRaw(
      gw,
      [
        'GET /public/slow HTTP/1.1\r\n',
        `Host: 127.0.0.1:${gw}\r\n`,
        ...Array(40).fill('X-A: b\r\n'),
      ],
      { gapMs: 100, timeoutMs: 6_000, untilFirstResponse: false },
    )
    expect(slowHead.closed).toBe(true)
    expect(Date.now() - started).toBeLessThan(3_000)
    if (slowHead.status !== undefined) expect(slowHead.status).toBe(408)

    const startedBody = Date.now()
    const slowBody = await sendRaw(
      gw,
      [
        `POST /public/slow HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nContent-Length: 100\r\n\r\n`,
        ...Array(60).fill('a'),
      ],
      { gapMs: 100, timeoutMs: 8_000, untilFirstResponse: false },
    )
    expect(slowBody.closed).toBe(true)
    expect(Date.now() - startedBody).toBeLessThan(4_500)
    expect(seenAnywhere()).toHaveLength(0)
  })

  it('answers Expect: 100-continue with 413 before the client sends a body over the limit', async () => {
    for (const [port, target] of [
      [out, '/legacy/x'],
      [gw, '/public/x'],
    ] as const) {
      const big = await sendRaw(
        port,
        `POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n`,
        { untilFirstResponse: false, timeoutMs: 3_000 },
      )
      expect(big.raw.slice(0, 12), big.raw.slice(0, 60)).toBe('HTTP/1.1 413')
      expect(big.closed).toBe(true)
      // Within the limit: 100 Continue, then the body, then the answer.
      const small = await sendRaw(
        port,
        [
          `POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
          'hello',
        ],
        { gapMs: 100, timeoutMs: 3_000 },
      )
      expect(small.raw.startsWith('HTTP/1.1 100 Continue\r\n')).toBe(true)
      expect(small.status).toBe(200)
      expect(legacy.requests.at(-1)?.body).toBe('hello')
    }
  })

  it('refuses TRACE and TRACK, which would echo the credentials the proxy injects', async () => {
    for (const [port, target] of [
      [out, '/legacy/x'],
      [gw, '/public/x'],
    ] as const) {
      const response = await raw(
        port,
        `TRACE ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
      )
      expect(response.status, `TRACE on ${port}: ${response.statusLine}`).toBe(405)
      expect(response.body).not.toContain(legacyToken)
      expect(JSON.parse(response.body).code).toBe('REQUEST_METHOD_NOT_ALLOWED')
      // Node's parser does not know TRACK at all.
      const track = await raw(port, `TRACK ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
      expect([400, 405]).toContain(track.status)
    }
    expect(seenAnywhere()).toHaveLength(0)
  })

  it('a route that matches on methods does not pass method-override headers', async () => {
    const overrides =
      'X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\n'
    expect(
      (await raw(gw, `GET /pay/1 HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n${overrides}\r\n`)).status,
    ).toBe(200)
    const seen = legacy.requests.at(-1)?.headers ?? {}
    expect(seen['x-http-method-override']).toBeUndefined()
    expect(seen['x-http-method']).toBeUndefined()
    expect(seen['x-method-override']).toBeUndefined()
    // A route with no method condition leaves them to the app.
    expect(
      (await raw(gw, `GET /public/1 HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n${overrides}\r\n`)).status,
    ).toBe(200)
    expect(legacy.requests.at(-1)?.headers['x-http-method-override']).toBe('DELETE')
  })

  it('closes a connection that sends nothing after headersTimeoutMs', async () => {
    const started = Date.now()
    const silent = await sendRaw(gw, [], { timeoutMs: 6_000, untilFirstResponse: false })
    expect(silent.closed).toBe(true)
    expect(Date.now() - started).toBeLessThan(3_000)
  })

  it('caps open connections (maxConnections: 8)', async () => {
    const sockets = await Promise.all(Array.from({ length: 8 }, () => openSocket(out)))
    try {
      const extra = await sendRaw(out, `GET /legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`, {
        timeoutMs: 2_000,
      })
      expect(extra.status).toBeUndefined()
      expect(extra.closed).toBe(true)
    } finally {
      for (const socket of sockets) socket.destroy()
    }
    await eventually(
      async () =>
        (await raw(out, `GET /legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)).status === 200,
      'a connection accepted again once the others closed',
    )
  })
})

describe('hop-by-hop headers are stripped both ways', () => {
  it('drops the request headers named in Connection and the fixed hop-by-hop list', async () => {
    for (const [port, target, upstream] of [
      [out, '/legacy/x', legacy],
      [gw, '/public/x', legacy],
    ] as const) {
      upstream.requests.length = 0
      const response = await raw(
        port,
        `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: keep-alive, X-Private, x-other\r\nConnection: x-third\r\nX-Private: 1\r\nX-Other: 2\r\nX-Third: 3\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n`,
      )
      expect(response.status).toBe(200)
      const seen = upstream.requests[0]?.headers ?? {}
      for (const name of [
        'x-private',
        'x-other',
        'x-third',
        'keep-alive',
        'te',
        'trailer',
        'proxy-authorization',
        'proxy-connection',
      ]) {
        expect(seen[name], `${port} ${name}`).toBeUndefined()
      }
      expect(seen['x-kept']).toBe('yes')
    }
  })

  it('drops the response headers the upstream named in Connection and the fixed list', async () => {
    for (const [port, target] of [
      [out, '/legacy/public/hop'],
      [gw, '/public/hop'],
    ] as const) {
      const response = await raw(port, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
      expect(response.status).toBe(200)
      expect(response.body).toBe('ok')
      expect(response.headers['x-visible']).toBe('yes')
      for (const name of ['x-secret', 'proxy-authenticate', 'proxy-connection']) {
        expect(response.headers[name], `${port} ${name}`).toBeUndefined()
      }
      // The proxy's own connection announces its own keep-alive, never the upstream's.
      expect(response.headers['keep-alive'] ?? '').not.toContain('timeout=5')
      expect(response.headers.connection ?? 'keep-alive').not.toContain('x-secret')
    }
  })
  it('passes headers named like Object.prototype properties both ways, as any other header', async () => {
    for (const [port, prefix, upstream] of [
      [out, '/legacy', legacy],
      [gw, '', legacy],
    ] as const) {
      upstream.requests.length = 0
      const request = await raw(
        port,
        `GET ${prefix}/public/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConstructor: 1\r\n__proto__: 2\r\nhasOwnProperty: 3\r\nConstructor: 4\r\n\r\n`,
      )
      expect(request.status, `${port} request`).toBe(200)
      const seen = upstream.requests[0]?.headers ?? {}
      expect(seen.constructor, `${port}`).toBe('1, 4')
      // (node:http leaves a `__proto__` header out of req.headers, so the upstream cannot show
      // it; the request carrying it must still go through.)
      expect(seen.hasownproperty, `${port}`).toBe('3')

      const response = await raw(
        port,
        `GET ${prefix}/public/proto HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
      )
      expect(response.status, `${port} response`).toBe(200)
      expect(response.body).toBe('ok')
      expect(response.headers.constructor).toBe('c')
      expect(response.headers.tostring).toBe('t')
    }
  })
})

describe('X-Forwarded-For, -Proto and -Host on what the gateway forwards', () => {
  const spoofed = (port: number): string =>
    `GET /public/xff HTTP/1.1\r\nHost: app.example:${port}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\n\r\n`

  it('replaces client-sent copies by default: the app sees the real client, scheme and Host', async () => {
    expect((await raw(gw, spoofed(gw))).status).toBe(200)
    const headers = legacy.requests.at(-1)?.headers ?? {}
    expect(headers['x-forwarded-for']).toBe('127.0.0.1')
    expect(headers['x-forwarded-proto']).toBe('http')
    expect(headers['x-forwarded-host']).toBe(`app.example:${gw}`)
    expect(headers.forwarded).toBeUndefined()
    expect(headers['x-real-ip']).toBeUndefined()

    const plain = await raw(gw, `GET /public/xff2 HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
    expect(plain.status).toBe(200)
    expect(legacy.requests.at(-1)?.headers['x-forwarded-for']).toBe('127.0.0.1')
    expect(legacy.requests.at(-1)?.headers['x-forwarded-host']).toBe(`127.0.0.1:${gw}`)
  })

  it('drops underscore spellings, which WSGI and CGI apps read as the real headers', async () => {
    const target = `GET /public/xff-underscore HTTP/1.1\r\nHost: app.example:${gw}\r\nX_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nX_Original_URL: /secret\r\nX-Real_IP: 6.6.6.6\r\nX_Custom: kept\r\n\r\n`
    for (const port of [gw, trusted]) {
      expect((await raw(port, target.replace(`:${gw}`, `:${port}`))).status, `${port}`).toBe(200)
      const headers = legacy.requests.at(-1)?.headers ?? {}
      for (const name of ['x_forwarded_for', 'x_forwarded_proto', 'x_original_url', 'x-real_ip'])
        expect(headers[name], `${port} ${name}`).toBeUndefined()
      expect(headers.x_custom, `${port}`).toBe('kept')
      expect(headers['x-forwarded-for'], `${port}`).toBe('127.0.0.1')
    }
  })

  it('appends the client to trusted copies on a listener with trustForwardedHeaders', async () => {
    expect((await raw(trusted, spoofed(trusted))).status).toBe(200)
    const headers = legacy.requests.at(-1)?.headers ?? {}
    expect(headers['x-forwarded-for']).toBe('6.6.6.6, 7.7.7.7, 127.0.0.1')
    expect(headers['x-forwarded-proto']).toBe('https')
    expect(headers['x-forwarded-host']).toBe('evil.example')
    expect(headers.forwarded).toBe('for=6.6.6.6;proto=https')

    expect((await raw(trusted, `GET /public/t HTTP/1.1\r\nHost: a.example\r\n\r\n`)).status).toBe(
      200,
    )
    const fresh = legacy.requests.at(-1)?.headers ?? {}
    expect(fresh['x-forwarded-for']).toBe('127.0.0.1')
    expect(fresh['x-forwarded-proto']).toBe('http')
    expect(fresh['x-forwarded-host']).toBe('a.example')
  })

  it('trustForwardedHeaders is refused on an ambassador by --check', async () => {
    const file = join(dir, 'ambassador-trust.yaml')
    writeFileSync(
      file,
      yaml().replace(
        'services: [legacy, modern], limits:',
        'services: [legacy, modern], trustForwardedHeaders: false, limits:',
      ),
    )
    const checked = await runProxyCli(['proxy', '--config', file, '--check'])
    expect(checked.code).toBe(1)
    expect(checked.stderr).toContain(
      'listeners[0].trustForwardedHeaders: expected no trustForwardedHeaders on an ambassador',
    )
  })

  it('the ambassador adds none (the app is the client; its calls leave as it made them)', async () => {
    expect(
      (await raw(out, `GET /legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)).status,
    ).toBe(200)
    const headers = legacy.requests.at(-1)?.headers ?? {}
    expect(headers['x-forwarded-for']).toBeUndefined()
    expect(headers['x-forwarded-proto']).toBeUndefined()
    expect(headers['x-forwarded-host']).toBeUndefined()
  })
})

describe('secrets', () => {
  async function adminGet(path: string, headers: Record<string, string> = {}) {
    return http(admin, path, { headers })
  }

  it('the admin API refuses every request without the exact token', async () => {
    const wrong: Record<string, string>[] = [
      {},
      { authorization: '' },
      { authorization: 'Bearer' },
      { authorization: `Basic ${Buffer.from(`admin:${adminToken}`).toString('base64')}` },
      { authorization: `Bearer ${adminToken}x` },
      { authorization: `Bearer ${adminToken.slice(0, -1)}` },
      { authorization: `Bearer ${adminToken.toUpperCase()}` },
      { authorization: `Bearer  ${adminToken} extra` },
      { 'x-admin-token': adminToken },
      { cookie: `token=${adminToken}` },
    ]
    for (const path of [
      '/admin/config',
      '/admin/services',
      '/admin/routes',
      '/admin/routes/orders/mismatches',
      `/admin/config?token=${adminToken}`,
      '/admin/./config',
      '/admin//config',
      '/admin/%63onfig',
      '/ADMIN/config',
    ]) {
      for (const headers of wrong) {
        const response = await adminGet(path, headers)
        expect([401, 404], `${path} ${JSON.stringify(headers)}`).toContain(response.status)
        expect(response.text).not.toContain('"services"')
      }
    }
    const mutations: [string, string][] = [
      ['POST', '/admin/reload'],
      ['POST', '/admin/routes/orders'],
      ['DELETE', '/admin/routes/orders/override'],
      ['POST', '/admin/services/legacy/isolate'],
    ]
    for (const [method, path] of mutations) {
      const body = method === 'POST' ? '{"targets":[{"service":"modern","weight":1}]}' : ''
      const response = await http(admin, path, {
        method,
        headers: {
          'content-type': 'application/json',
          'content-length': String(body.length),
          authorization: 'Bearer nope',
        },
        body,
      })
      expect(response.status, `${method} ${path}`).toBe(401)
    }
    // Nothing changed: the orders route is not overridden, legacy is not isolated.
    const routes = (
      await adminGet('/admin/routes', { authorization: `Bearer ${adminToken}` })
    ).json<{ routes: { name: string; overridden: boolean }[] }>()
    expect(routes.routes.find((r) => r.name === 'orders')?.overridden).toBe(false)
    // The admin API is not reachable through the data-plane listeners.
    for (const port of [out, gw]) {
      const response = await raw(
        port,
        `GET http://127.0.0.1:${admin}/admin/config HTTP/1.1\r\nHost: 127.0.0.1:${admin}\r\nAuthorization: Bearer ${adminToken}\r\n\r\n`,
      )
      expect(response.status).toBe(404)
      expect(response.body).not.toContain('services')
    }
  })

  it('the token is read from its file, so a rotated file applies at once', async () => {
    const rotated = `${adminToken}-rotated`
    try {
      writeFileSync(adminTokenFile, `${rotated}\n`)
      expect(
        (await adminGet('/admin/routes', { authorization: `Bearer ${adminToken}` })).status,
      ).toBe(401)
      expect((await adminGet('/admin/routes', { authorization: `Bearer ${rotated}` })).status).toBe(
        200,
      )
      writeFileSync(adminTokenFile, '\n')
      expect((await adminGet('/admin/routes', { authorization: 'Bearer ' })).status).toBe(401)
      expect((await adminGet('/admin/routes', { authorization: `Bearer ${rotated}` })).status).toBe(
        401,
      )
    } finally {
      writeFileSync(adminTokenFile, `${adminToken}\n`)
    }
    expect(
      (await adminGet('/admin/routes', { authorization: `Bearer ${adminToken}` })).status,
    ).toBe(200)
  })

  it('a reload refused for an inline secret echoes it nowhere (admin 422, file-watch log)', async () => {
    const inline = 'inline-secret-in-yaml-4f0d2c'
    const file = join(dir, 'attack.yaml')
    const good = readFileSync(file, 'utf8')
    try {
      writeFileSync(
        file,
        good.replace(
          'auth: { bearer: { env: ATTACK_LEGACY_TOKEN } }',
          `auth: { bearer: "${inline}" }`,
        ),
      )
      await proxy.waitForLine(
        (l) => l.msg === 'config reload refused; the running config stays in force',
        'the refused reload',
      )
      const refused = await http(admin, '/admin/reload', {
        method: 'POST',
        headers: { authorization: `Bearer ${adminToken}`, 'content-length': '0' },
      })
      expect(refused.status).toBe(422)
      expect(refused.text).toContain('services.legacy.auth.bearer')
      expect(refused.text).not.toContain(inline)
      expect(proxy.stdout()).not.toContain(inline)
      expect(proxy.stderr()).not.toContain(inline)
      // The running config still injects the real token.
      await raw(out, `GET /legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)
      expect(legacy.requests.at(-1)?.headers.authorization).toBe(`Bearer ${legacyToken}`)
    } finally {
      writeFileSync(file, good)
    }
    await proxy.waitForLine((l) => l.msg === 'config reloaded', 'the reload of the good file')
  })

  it('the admin token is compared in constant time (hashed, timingSafeEqual)', () => {
    const source = readFileSync(
      fileURLToPath(new URL('../../../src/proxy/admin/server.ts', import.meta.url)),
      'utf8',
    )
    const authorize = source.slice(source.indexOf('async function authorize'))
    expect(authorize.slice(0, 1200)).toContain('tokenMatches(')
    expect(source).toMatch(/function tokenMatches[\s\S]*?timingSafeEqual\(/)
    // No plain comparison against the token anywhere in the module.
    expect(source).not.toMatch(/(presented|expected)\s*(===|!==|==)\s*(presented|expected)/)
    expect(tokenMatches(adminToken, adminToken)).toBe(true)
    expect(tokenMatches(`${adminToken}x`, adminToken)).toBe(false)
    expect(tokenMatches('', adminToken)).toBe(false)
  })

  it('outbound credentials are injected upstream, never shown in logs or the admin API', async () => {
    // The credentials are used (so the test would see them if they leaked) ...
    await raw(out, `GET /legacy/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)
    await raw(out, `GET /modern/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`)
    expect(legacy.requests.at(-1)?.headers.authorization).toBe(`Bearer ${legacyToken}`)
    expect(modern.requests.at(-1)?.headers['x-api-key']).toBe(modernKey)
    // ... a client cannot override or pre-empt them ...
    await raw(
      out,
      `GET /modern/y HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nX-Api-Key: client-chosen\r\nConnection: x-api-key\r\n\r\n`,
    )
    expect(modern.requests.at(-1)?.headers['x-api-key']).toBe(modernKey)
    // ... and refused or failed requests carrying the admin token log nothing of it.
    await raw(
      gw,
      `GET /public/x HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\nHost: x\r\nAuthorization: Bearer ${adminToken}\r\n\r\n`,
    )
    await raw(gw, `GET /nowhere/${adminToken} HTTP/1.1\r\nHost: 127.0.0.1:${gw}\r\n\r\n`)
    await http(admin, `/admin/nope?${adminToken}`, {
      headers: { authorization: `Bearer ${legacyToken}` },
    })

    const auth = { authorization: `Bearer ${adminToken}` }
    const views = await Promise.all(
      ['/admin/config', '/admin/services', '/admin/routes', '/metrics', '/healthz', '/readyz'].map(
        async (path) => (await http(admin, path, { headers: auth })).text,
      ),
    )
    expect(views[0]).toContain('ATTACK_LEGACY_TOKEN')
    expect(views[0]).toContain(modernKeyFile)
    // Admin access log lines and access lines were written by now.
    await eventually(
      () => proxy.lines.some((l) => l.msg === 'access' && l.listener === 'outbound'),
      'access lines',
    )
    for (const text of [...views, proxy.stdout(), proxy.stderr()]) {
      for (const secret of [legacyToken, modernKey]) expect(text).not.toContain(secret)
    }
    // The admin token: only the one path the test itself put in a URL may show it (a path
    // is not a secret place), never a header value.
    for (const text of [...views, proxy.stderr()]) expect(text).not.toContain(adminToken)
    for (const line of proxy.lines) {
      const { path: _path, ...rest } = line
      expect(JSON.stringify(rest)).not.toContain(adminToken)
    }
  })
})
