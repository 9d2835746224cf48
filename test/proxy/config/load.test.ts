import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, expectTypeOf, it } from 'vitest'
import { BreakwaterError } from '../../../src/core/errors.js'
import {
  ConfigInvalidError,
  loadProxyConfig,
  parseProxyConfig,
  toProxyConfig,
} from '../../../src/proxy/config/index.js'
import type { ProxyConfig } from '../../../src/proxy/contracts.js'

const briefExample = `
services:
  orders:
    endpoints: [http://127.0.0.1:3001]
    loadBalancer: least-request
    timeouts: { connectMs: 1000, readMs: 5000, overallMs: 10000 }
    retry: { attempts: 3, baseDelayMs: 25, maxDelayMs: 1000, budget: { ratio: 0.2, minPerSecond: 10 }, addIdempotencyKey: true }
    circuitBreaker: { failureThreshold: 5, cooldownMs: 10000, halfOpenProbes: 1 }
    bulkhead: { maxConcurrent: 64, maxQueue: 64, connectionsPerEndpoint: 32 }
    outlierEjection: { consecutiveFailures: 5, baseEjectionMs: 30000, maxEjectedPercent: 50 }
    tls: { caFile: ca.pem, certFile: client.pem, keyFile: client-key.pem, verify: true }
    auth: { bearer: { env: ORDERS_TOKEN } }
  legacy:
    discovery: { dns: { name: legacy.internal, recordType: SRV } }
    auth: { apiKey: { header: X-Api-Key, file: /run/key } }
  app:
    discovery: { file: /etc/app-endpoints }
listeners:
  - { name: outbound, role: ambassador, port: 15001 }
  - name: inbound
    role: gateway
    port: 8080
    tls: { certFile: server.pem, keyFile: server-key.pem }
    routes:
      - name: orders
        match: { prefix: /orders, methods: [GET, POST], headers: { X-Canary: "yes" } }
        targets: [{ service: legacy, weight: 90 }, { service: orders, weight: 10 }]
        sticky: { header: X-User-Id }
        shadow: { service: orders, ignoreFields: [/createdAt] }
        idempotency: { methods: [POST] }
      - { name: app, match: { prefix: / }, targets: [{ service: app, weight: 1 }] }
admin: { port: 15000, token: { env: BREAKWATER_ADMIN_TOKEN } }
idempotency: { url: "sqlite:./proxy-idempotency.db" }
`

function problemsOf(yaml: string): string {
  try {
    parseProxyConfig(yaml, 'test.yaml')
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect(BreakwaterError.is(error) && error.code).toBe('CONFIG_INVALID')
    return (error as Error).message
  }
  throw new Error('expected the config to be rejected')
}

const minimal = `services: { app: { endpoints: [http://127.0.0.1:3000] } }
listeners: [{ name: out, role: ambassador, port: 15001 }]
`

describe('parseProxyConfig', () => {
  it('produces exactly ProxyConfig', () => {
    expectTypeOf(parseProxyConfig).returns.toEqualTypeOf<ProxyConfig>()
    expectTypeOf(toProxyConfig).returns.toEqualTypeOf<ProxyConfig>()
    expectTypeOf<ReturnType<typeof parseProxyConfig>>().toExtend<ProxyConfig>()
  })

  it('fills defaults into a minimal file', () => {
    const config = parseProxyConfig(minimal, 'minimal.yaml')
    const app = config.services.get('app')
    expect(app).toMatchObject({
      name: 'app',
      discovery: { kind: 'static', endpoints: ['http://127.0.0.1:3000'] },
      loadBalancer: 'round-robin',
      retry: undefined,
      breaker: undefined,
      outlierEjection: undefined,
      auth: undefined,
      rewriteHost: true,
      tls: { verify: true, caFile: undefined },
      bulkhead: { maxConcurrent: 64, maxQueue: 64, connectionsPerEndpoint: 32 },
    })
    expect(config.listeners[0]).toMatchObject({
      name: 'out',
      role: 'ambassador',
      host: '127.0.0.1',
      port: 15001,
      routes: [],
      services: undefined,
      limits: { maxHeaders: 100, maxHeaderBytes: 16_384 },
    })
    expect(config).toMatchObject({
      admin: undefined,
      idempotency: undefined,
      accessLog: true,
      deadlineHeader: 'x-breakwater-deadline-ms',
      workers: 1,
    })
  })

  it("reads the brief's full example", () => {
    const config = parseProxyConfig(briefExample, 'brief.yaml')
    const orders = config.services.get('orders')
    expect(orders?.retry).toEqual({
      attempts: 3,
      baseDelayMs: 25,
      maxDelayMs: 1000,
      retryOnStatus: [502, 503, 504],
      budgetRatio: 0.2,
      budgetMinPerSecond: 10,
      addIdempotencyKey: true,
    })
    expect(orders?.breaker).toEqual({ failureThreshold: 5, cooldownMs: 10000, halfOpenProbes: 1 })
    expect(orders?.auth).toEqual({ kind: 'bearer', token: { env: 'ORDERS_TOKEN' } })
    expect(orders?.tls).toEqual({
      caFile: 'ca.pem',
      certFile: 'client.pem',
      keyFile: 'client-key.pem',
      serverName: undefined,
      verify: true,
    })
    expect(config.services.get('legacy')).toMatchObject({
      discovery: { kind: 'dns', name: 'legacy.internal', recordType: 'SRV', scheme: 'http' },
      auth: { kind: 'api-key', header: 'x-api-key', key: { file: '/run/key' } },
    })
    expect(config.services.get('app')?.discovery).toEqual({
      kind: 'file',
      path: '/etc/app-endpoints',
    })
    const route = config.listeners[1]?.routes[0]
    expect(route).toMatchObject({
      name: 'orders',
      match: { prefix: '/orders', methods: ['GET', 'POST'], headers: { 'x-canary': 'yes' } },
      targets: [
        { service: 'legacy', weight: 90 },
        { service: 'orders', weight: 10 },
      ],
      sticky: { header: 'x-user-id' },
      shadow: { service: 'orders', ignoreFields: ['/createdAt'], sampleRate: 1, learnNoise: true },
      idempotency: { methods: ['POST'], ttlMs: 86_400_000 },
    })
    expect(config.listeners[1]?.tls).toEqual({
      certFile: 'server.pem',
      keyFile: 'server-key.pem',
      clientCaFile: undefined,
    })
    expect(config.admin).toEqual({
      host: '127.0.0.1',
      port: 15000,
      token: { env: 'BREAKWATER_ADMIN_TOKEN' },
      maxConnections: 64,
    })
    expect(config.idempotency).toEqual({ url: 'sqlite:./proxy-idempotency.db' })
  })

  it('names every bad path with what was expected and what was found, in one error', () => {
    const message = problemsOf(`
services:
  payments:
    endpoints: [http://127.0.0.1:3001]
    retry: { attempts: three }
    loadBalancer: random
    timeouts: { connectMs: -5 }
  legacy: { endpoints: [ftp://x] }
listeners:
  - { name: out, role: sidecar, port: 70000 }
  - name: in
    role: gateway
    port: 8080
    routes:
      - { name: r, match: { prefix: orders }, targets: [{ service: ghost, weight: 1 }] }
`)
    expect(message).toContain('test.yaml (8 problems)')
    expect(message).toContain(
      'services.payments.retry.attempts: expected integer >= 1, got "three" (line 5, column 24)',
    )
    expect(message).toContain(
      'services.payments.loadBalancer: expected one of "round-robin", "least-request", got "random"',
    )
    expect(message).toContain('services.payments.timeouts.connectMs: expected integer in [1, ')
    expect(message).toContain('got -5')
    expect(message).toContain('services.legacy.endpoints[0]: expected http:// or https:// URL')
    expect(message).toContain(
      'listeners[0].role: expected one of "ambassador", "gateway", got "sidecar"',
    )
    expect(message).toContain('listeners[0].port: expected integer in [0, 65535], got 70000')
    expect(message).toContain(
      'listeners[1].routes[0].match.prefix: expected path starting with "/", got "orders"',
    )
    expect(message).toContain(
      'listeners[1].routes[0].targets[0].service: expected a service defined under services (payments, legacy), got "ghost"',
    )
  })

  it('rejects unknown keys, naming each one', () => {
    const message = problemsOf(`services:
  app:
    endpoints: [http://127.0.0.1:1]
    retyr: { attempts: 2 }
listeners: [{ name: out, role: ambassador, port: 1, colour: blue }]
extra: 1
`)
    expect(message).toContain(
      'services.app.retyr: unknown key (not part of the proxy config) (line 4, column 5)',
    )
    expect(message).toContain('listeners[0].colour: unknown key')
    expect(message).toContain('extra: unknown key')
  })

  it('reports YAML syntax errors with line and column, and duplicate keys', () => {
    expect(problemsOf('services:\n  app: [1, 2\nlisteners: []\n')).toMatch(
      /\n {2}3:1: YAML syntax error: /,
    )
    expect(problemsOf('workers: 1\nworkers: 2\n')).toContain(
      '\n  workers: expected each key once in its mapping, got "workers" again (first at line 1, column 1) (line 2, column 1)',
    )
  })

  it('names the path of a repeated key, at any depth and in flow mappings', () => {
    // yaml's own text ("Map keys must be unique") named neither the key nor where it was
    // first written, so in a long file the operator had to find both by hand.
    const message = problemsOf(`services:
  payments:
    endpoints: [http://127.0.0.1:1]
    retry: { attempts: 2, attempts: 3 }
  payments:
    endpoints: [http://127.0.0.1:2]
listeners:
  - { name: out, name: in, role: ambassador, port: 1 }
`)
    expect(message).toContain(
      '\n  services.payments.retry.attempts: expected each key once in its mapping, got "attempts" again (first at line 4, column 14) (line 4, column 27)',
    )
    expect(message).toContain(
      '\n  services.payments: expected each key once in its mapping, got "payments" again (first at line 2, column 3) (line 5, column 3)',
    )
    expect(message).toContain(
      '\n  listeners[0].name: expected each key once in its mapping, got "name" again (first at line 8, column 7) (line 8, column 18)',
    )
    expect(message).not.toContain('Map keys must be unique')
  })

  it('lists the other problems of a file with a repeated key', () => {
    // A repeated key stopped the loader before the schema, so --check named it alone and the
    // operator found the next fault only after fixing it.
    const message = problemsOf(`services:
  a: { endpoints: [http://127.0.0.1:1] }
  a: { endpoints: [http://127.0.0.1:2] }
listeners: [{ name: out, role: ambassador, port: 1, prot: 1 }]
workers: 0
`)
    expect(message).toContain('(3 problems)')
    expect(message).toMatch(
      /\n {2}services\.a: expected each key once .*\n {2}listeners\[0\]\.prot: unknown key .*\n {2}workers: expected integer in \[1, 256\], got 0 /,
    )
    // A problem of the repeated key's value is placed at the one that was read, the last.
    expect(problemsOf(`workers: 1\nworkers: 0\n`)).toContain(
      'workers: expected integer in [1, 256], got 0 (line 2, column 10)',
    )
    // A syntax error still stops there: what follows it cannot be read.
    expect(problemsOf('workers: 1\nworkers: 2\nservices: [\n')).not.toContain('listeners')
  })

  it('checks cross-field rules', () => {
    const message = problemsOf(`
services:
  a: { endpoints: [http://127.0.0.1:1], discovery: { file: x }, tls: { certFile: c.pem } }
  b: { discovery: { dns: { name: b.local } }, auth: { apiKey: { header: x-key } } }
  c: {}
listeners:
  - { name: one, role: ambassador, port: 9000, services: [a, zz] }
  - { name: one, role: gateway, port: 9001 }
  - name: two
    role: gateway
    port: 9002
    routes:
      - name: r
        targets: [{ service: a, weight: 0 }]
        sticky: { header: x-user, cookie: uid }
        shadow: { service: nope }
        idempotency: {}
      - { name: r, match: { prefix: /x }, stripPrefix: /y, targets: [{ service: b }] }
admin: { port: 9000, token: { env: T } }
workers: 2
`)
    for (const expected of [
      'services.a: expected exactly one of endpoints, discovery.dns or discovery.file, got 2 of them',
      'services.a.tls.keyFile: expected certFile and keyFile together',
      'services.b.discovery.dns.port: expected a port for A/AAAA records, got nothing',
      'services.b.auth.apiKey: expected exactly one of env or file',
      'services.c: expected exactly one of endpoints, discovery.dns or discovery.file, got none',
      'listeners[0].services[1]: expected a service defined under services (a, b, c), got "zz"',
      'listeners[1].name: expected a name not used by listeners[0], got "one"',
      'listeners[1].routes: expected at least one route',
      'listeners[2].routes[0].targets: expected at least one target with weight > 0',
      'listeners[2].routes[0].sticky: expected exactly one of header or cookie',
      'listeners[2].routes[0].shadow.service: expected a service defined under services',
      'listeners[2].routes[1].name: expected a route name not used by listeners[2].routes[0], got "r"',
      'listeners[2].routes[1].stripPrefix: expected a prefix of match.prefix (/x)',
      'admin.port: expected a port not already used by listeners[0].port, got 9000',
      'idempotency.url: expected a shared store',
    ])
      expect(message).toContain(expected)
  })

  it('refuses a route that lists a target service twice (the route table would refuse it at start)', () => {
    const message = problemsOf(`
services:
  a: { endpoints: [http://127.0.0.1:1] }
  b: { endpoints: [http://127.0.0.1:2] }
listeners:
  - name: gw
    role: gateway
    port: 0
    routes:
      - { name: r, targets: [{ service: a, weight: 1 }, { service: b }, { service: a, weight: 2 }] }
`)
    expect(message).toContain(
      'listeners[0].routes[0].targets[2].service: expected a service not already listed in targets[0], got "a"',
    )
  })

  it('refuses a route an earlier route of its listener always takes first (first match wins)', () => {
    // Routes are tried in the order written: a catch-all `/` written before `/orders`, or a
    // route for all methods before one for POST on the same prefix, leaves the later route
    // dead, and its traffic goes to the earlier route's targets without a word.
    const withRoutes = (...routes: string[]): string =>
      `services: { a: { endpoints: [http://127.0.0.1:1] }, b: { endpoints: [http://127.0.0.1:2] } }
listeners:
  - { name: g, role: gateway, port: 9001, routes: [${routes.join(', ')}] }
  - { name: h, role: gateway, port: 9002, routes: [{ name: other, match: { prefix: /orders }, targets: [{ service: b }] }] }
`
    const message = problemsOf(
      withRoutes(
        '{ name: all, match: { prefix: /api/ }, targets: [{ service: a }] }',
        '{ name: orders, match: { prefix: /api/orders, methods: [POST] }, targets: [{ service: b }] }',
        '{ name: get, match: { prefix: /x, methods: [GET, POST] }, targets: [{ service: a }] }',
        '{ name: get2, match: { prefix: /x/y, methods: [GET], headers: { X-Canary: "1" } }, targets: [{ service: b }] }',
        '{ name: root, targets: [{ service: a }] }',
        '{ name: late, match: { prefix: /late }, targets: [{ service: b }] }',
      ),
    )
    for (const expected of [
      'listeners[0].routes[1].match: expected a match that listeners[0].routes[0] (all) does not always take first (routes are tried in order; write the narrower route first), got a route no request reaches',
      'listeners[0].routes[3].match: expected a match that listeners[0].routes[2] (get) does not always take first',
      'listeners[0].routes[5].match: expected a match that listeners[0].routes[4] (root) does not always take first',
    ])
      expect(message).toContain(expected)
    // Only those three: a route on another listener is not compared.
    expect(message.match(/does not always take first/g)).toHaveLength(3)

    // Overlaps that leave the later route some requests load as before: the narrower route
    // written first, methods or headers the earlier route does not take, a sibling prefix.
    const config = parseProxyConfig(
      withRoutes(
        '{ name: post, match: { prefix: /api/orders, methods: [POST] }, targets: [{ service: b }] }',
        '{ name: canary, match: { prefix: /api, headers: { X-Canary: "1" } }, targets: [{ service: b }] }',
        '{ name: gets, match: { prefix: /api, methods: [GET] }, targets: [{ service: a }] }',
        '{ name: api, match: { prefix: /api, methods: [GET, PUT] }, targets: [{ service: a }] }',
        '{ name: apis, match: { prefix: /apis }, targets: [{ service: a }] }',
        '{ name: root, targets: [{ service: a }] }',
      ),
      'test.yaml',
    )
    expect(config.listeners[0]?.routes.map((r) => r.name)).toEqual([
      'post',
      'canary',
      'gets',
      'api',
      'apis',
      'root',
    ])
  })

  it('refuses a match.headers value or sticky.cookie name no request can carry', () => {
    // Node hands a route header values with surrounding whitespace removed, and a cookie name
    // is a token (RFC 6265): ` yes` or `uid=` would never match, and the route would never be
    // taken or never stick, without a word.
    const message = problemsOf(`services: { a: { endpoints: [http://127.0.0.1:1] } }
listeners:
  - name: g
    role: gateway
    port: 9001
    routes:
      - { name: r1, match: { prefix: /a, headers: { X-Canary: " yes" } }, targets: [{ service: a }] }
      - { name: r2, match: { prefix: /b, headers: { X-Canary: "a\\nb" } }, targets: [{ service: a }] }
      - { name: r3, match: { prefix: /c }, sticky: { cookie: "uid=" }, targets: [{ service: a }] }
      - { name: r4, match: { prefix: /d }, sticky: { cookie: "my session" }, targets: [{ service: a }] }
`)
    for (const expected of [
      'listeners[0].routes[0].match.headers.X-Canary: expected a header value of printable ASCII, without leading or trailing whitespace',
      'listeners[0].routes[1].match.headers.X-Canary: expected a header value of printable ASCII, without leading or trailing whitespace',
      "listeners[0].routes[2].sticky.cookie: expected cookie name (letters, digits and !#$%&'*+-.^_`|~)",
      'listeners[0].routes[3].sticky.cookie: expected cookie name',
    ])
      expect(message).toContain(expected)
    const config = parseProxyConfig(
      `services: { a: { endpoints: [http://127.0.0.1:1] } }
listeners:
  - name: g
    role: gateway
    port: 9001
    routes:
      - { name: r1, match: { prefix: /a, headers: { X-Canary: "yes, no", X-Empty: "" } }, sticky: { cookie: __Host-uid }, targets: [{ service: a }] }
`,
      'test.yaml',
    )
    expect(config.listeners[0]?.routes[0]?.match.headers).toEqual({
      'x-canary': 'yes, no',
      'x-empty': '',
    })
  })

  it('refuses a route prefix that path normalization would change, since it could never match', () => {
    // Routes match the normalized path (docs/proxy.md): `/files/%c3%a9/x` arrives as
    // `/files/%C3%A9/x`, `/docs/%7euser` as `/docs/~user`; a prefix written the other way would
    // let every request fall through to the next route without a word.
    const withRoutes = (...routes: string[]): string =>
      `services: { a: { endpoints: [http://127.0.0.1:1] } }
listeners:
  - { name: g, role: gateway, port: 9001, routes: [${routes.join(', ')}] }
`
    const message = problemsOf(
      withRoutes(
        '{ name: r1, match: { prefix: /files/%c3%a9 }, targets: [{ service: a }] }',
        '{ name: r2, match: { prefix: /docs/%7euser }, stripPrefix: /docs/%7euser, targets: [{ service: a }] }',
        '{ name: r3, match: { prefix: /a//b }, targets: [{ service: a }] }',
        '{ name: r4, match: { prefix: /a/../b }, targets: [{ service: a }] }',
        "{ name: r5, match: { prefix: '/search?q=' }, targets: [{ service: a }] }",
      ),
    )
    for (const expected of [
      'listeners[0].routes[0].match.prefix: expected a normalized path (/files/%C3%A9)',
      'listeners[0].routes[1].match.prefix: expected a normalized path (/docs/~user)',
      'listeners[0].routes[1].stripPrefix: expected a normalized path (/docs/~user)',
      'listeners[0].routes[2].match.prefix: expected a normalized path (/a/b)',
      'listeners[0].routes[3].match.prefix: expected a normalized path (/b)',
      'listeners[0].routes[4].match.prefix: expected a normalized path',
    ])
      expect(message).toContain(expected)
    // Prefixes already in normalized form, with or without a trailing slash, load as before.
    const config = parseProxyConfig(
      withRoutes(
        '{ name: r1, match: { prefix: /files/%C3%A9/ }, stripPrefix: /files, targets: [{ service: a }] }',
        '{ name: r2, targets: [{ service: a }] }',
      ),
      'test.yaml',
    )
    expect(config.listeners[0]?.routes.map((r) => r.match.prefix)).toEqual(['/files/%C3%A9/', '/'])
  })

  it('names a bad shadow.methods entry, an empty list and an admin.maxConnections out of range', () => {
    const message = problemsOf(`
services:
  a: { endpoints: [http://127.0.0.1:1] }
  b: { endpoints: [http://127.0.0.1:2] }
listeners:
  - name: g
    role: gateway
    port: 9001
    routes:
      - { name: r, targets: [{ service: a }], shadow: { service: b, methods: [get] } }
      - { name: s, match: { prefix: /s }, targets: [{ service: a }], shadow: { service: b, methods: [] } }
admin: { port: 9000, token: { env: T }, maxConnections: 0 }
`)
    for (const expected of [
      'listeners[0].routes[0].shadow.methods[0]: expected upper-case HTTP method (GET, POST, ...), got "get"',
      'listeners[0].routes[1].shadow.methods: expected non-empty list of methods',
      'admin.maxConnections: expected integer in [1, 100000], got 0',
    ])
      expect(message).toContain(expected)
  })

  it('turns retry affinity on by default, off with false, and names a bad setting', () => {
    // One gateway listener in front of service a, with these route lines.
    const gateway = (...routes: string[]): string => `
services:
  a: { endpoints: [http://127.0.0.1:1] }
listeners:
  - name: g
    role: gateway
    port: 9001
    routes:
${routes.map((r) => `      - ${r}`).join('\n')}
`
    const config = parseProxyConfig(
      gateway(
        '{ name: on, match: { prefix: /on }, targets: [{ service: a }] }',
        '{ name: off, match: { prefix: /off }, targets: [{ service: a }], retryAffinity: false }',
        '{ name: own, targets: [{ service: a }], retryAffinity: { header: X-Request-Key, maxKeys: 5 } }',
      ),
      'affinity.yaml',
    )
    expect(config.listeners[0]?.routes.map((r) => r.retryAffinity)).toEqual([
      { header: 'idempotency-key', ttlMs: 600_000, maxKeys: 100_000 },
      undefined,
      { header: 'x-request-key', ttlMs: 600_000, maxKeys: 5 },
    ])
    const message = problemsOf(
      gateway(
        '{ name: r, match: { prefix: /r }, targets: [{ service: a }], retryAffinity: true }',
        '{ name: s, targets: [{ service: a }], retryAffinity: { maxKeys: 0, ttl: 5 } }',
      ),
    )
    for (const expected of [
      'listeners[0].routes[0].retryAffinity: expected false or { header, ttlMs, maxKeys }, got true',
      'listeners[0].routes[1].retryAffinity.maxKeys: expected integer in [1, 10000000], got 0',
      'listeners[0].routes[1].retryAffinity.ttl: unknown key',
    ])
      expect(message).toContain(expected)
  })

  it('never echoes a secret written inline, nor URL credentials', () => {
    const secret = 'hunter2-very-secret'
    const message = problemsOf(`
services:
  a:
    endpoints: ["http://user:${secret}@127.0.0.1:1"]
    auth: { bearer: ${secret} }
  b:
    endpoints: [http://127.0.0.1:2]
    auth: { apiKey: { header: x-key, value: ${secret} } }
  c:
    endpoints: [http://127.0.0.1:3]
    auth: { bearer: { env: ${secret}, file: x } }
listeners: [{ name: out, role: ambassador, port: 1 }]
admin: { port: 2, token: ${secret} }
idempotency: { url: "mysql://root:${secret}@db/x" }
`)
    expect(message).toContain('services.a.auth.bearer: expected { env: NAME } or { file: path }')
    expect(message).toContain('admin.token: expected { env: NAME } or { file: path }')
    expect(message).toContain('services.b.auth.apiKey.value: unknown key')
    expect(message).toContain('idempotency.url')
    expect(message).not.toContain(secret)
    expect(
      problemsOf(`${minimal}idempotency: { url: "postgres://app:${secret}@db/x" }\n`),
    ).toContain(
      'idempotency.url: expected a URL without a password (secrets are never written inline: set PGPASSWORD or use ~/.pgpass), got "postgres://app:***@db/x"',
    )
    // A syntax error on a line holding a secret quotes no source text.
    const syntax = problemsOf(`admin: { port: 2, token: ${secret} x: y: z }\n`)
    expect(syntax).toContain('YAML syntax error')
    expect(syntax).not.toContain(secret)
  })

  it('refuses an apiKey header the proxy sets or frames itself (Host, Content-Length, hop-by-hop, request id, deadline)', () => {
    // Accepted, each broke every request of the service: a second Host, a Content-Length or
    // Connection the pool refuses or drops, the request id or deadline header overwritten.
    for (const header of [
      'host',
      'Content-Length',
      'transfer-encoding',
      'connection',
      'x-request-id',
      'x-deadline',
      'idempotency-key',
      'expect',
    ]) {
      const message = problemsOf(
        `deadlineHeader: x-deadline\nservices: { app: { endpoints: [http://127.0.0.1:3000], auth: { apiKey: { header: ${header}, env: KEY } } } }\nlisteners: [{ name: out, role: ambassador, port: 15001 }]\n`,
      )
      expect(message).toContain(
        'services.app.auth.apiKey.header: expected a header the proxy does not set itself',
      )
    }
    expect(() =>
      parseProxyConfig(
        'services: { app: { endpoints: [http://127.0.0.1:3000], auth: { apiKey: { header: x-api-key, env: KEY } } } }\nlisteners: [{ name: out, role: ambassador, port: 15001 }]\n',
        'ok.yaml',
      ),
    ).not.toThrow()
  })

  it('treats an empty document as missing services and listeners', () => {
    const message = problemsOf('')
    expect(message).toContain('services: expected mapping of service name to service, got nothing')
    expect(message).toContain('listeners: expected list of listeners, got nothing')
  })
})

describe('loadProxyConfig', () => {
  it('reads a file and names it in errors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bw-config-'))
    const good = join(dir, 'good.yaml')
    writeFileSync(good, minimal)
    expect((await loadProxyConfig(good)).listeners[0]?.name).toBe('out')
    const bad = join(dir, 'bad.yaml')
    writeFileSync(bad, `${minimal}workers: 0\n`)
    await expect(loadProxyConfig(bad)).rejects.toThrow(
      `invalid proxy config ${bad} (1 problem):\n  workers: expected integer in [1, 256], got 0`,
    )
    await expect(loadProxyConfig(join(dir, 'missing.yaml'))).rejects.toThrow(
      'expected a readable YAML file, got ENOENT',
    )
  })
})
