import { mkdtempSync, writeFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { mergeMetricsText } from '../../../src/proxy/admin/cluster.js'
import { tokenMatches } from '../../../src/proxy/admin/index.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

const adminToken = 'admin-token-0123456789abcdef'
const upstreamToken = 'upstream-bearer-secret-value-42'
const dir = mkdtempSync(join(tmpdir(), 'bw-admin-'))
const file = join(dir, 'proxy.yaml')
const log = captureLog()
let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: ProxyInternals
let admin: number

function yaml(split = '[{ service: legacy, weight: 1 }]'): string {
  return `
services:
  legacy: { endpoints: [${legacy.url}] }
  modern:
    endpoints: [${modern.url}]
    auth: { bearer: { env: MODERN_TOKEN } }
    circuitBreaker: { failureThreshold: 2 }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - name: in
    role: gateway
    port: 0
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: ${split}
        shadow: { service: modern, learnNoise: false }
admin: { port: 0, token: { env: BW_ADMIN_TOKEN }, maxConnections: 4 }
idempotency: { url: "postgres://proxy@127.0.0.1:1/x" }
`
}

const auth = { authorization: `Bearer ${adminToken}` }

beforeAll(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
  writeFileSync(file, yaml())
  // Services read their credentials from the process environment.
  process.env.MODERN_TOKEN = upstreamToken
  proxy = await startProxyRuntime({
    config: { file },
    watch: false,
    logger: createJsonLogger({ output: log, level: 'debug' }),
    env: { BW_ADMIN_TOKEN: adminToken, MODERN_TOKEN: upstreamToken },
  })
  admin = proxy.adminAddress()?.port ?? 0
})

afterAll(async () => {
  await proxy.close(0)
  delete process.env.MODERN_TOKEN
  await legacy.close()
  await modern.close()
})

describe('admin API authentication', () => {
  it.each([
    ['no header', {}],
    [
      'a wrong token of the same length',
      { authorization: `Bearer ${'x'.repeat(adminToken.length)}` },
    ],
    ['a shorter token', { authorization: 'Bearer admin' }],
    ['a longer token', { authorization: `Bearer ${adminToken}-and-more` }],
    ['the token as Basic', { authorization: `Basic ${adminToken}` }],
    ['an empty bearer', { authorization: 'Bearer ' }],
  ])('refuses %s with 401', async (_what, headers) => {
    for (const [method, path] of [
      ['GET', '/admin/config'],
      ['POST', '/admin/reload'],
      ['POST', '/admin/routes/orders'],
      ['DELETE', '/admin/routes/orders/override'],
    ] as const) {
      const res = await http(admin, path, { method, headers })
      expect(res.status).toBe(401)
      expect(res.headers['www-authenticate']).toContain('Bearer')
      expect(res.json()).toMatchObject({ code: 'UNAUTHORIZED' })
    }
  })

  it('serves the probes and metrics without a token', async () => {
    expect((await http(admin, '/healthz')).status).toBe(200)
    expect((await http(admin, '/readyz')).json()).toEqual({ status: 'ready' })
    const metrics = await http(admin, '/metrics')
    expect(metrics.status).toBe(200)
    expect(metrics.headers['content-type']).toContain('text/plain')
    expect(metrics.text).toContain('breakwater_proxy_config_reload_failures_total')
  })

  it('compares tokens by digest', () => {
    expect(tokenMatches(adminToken, adminToken)).toBe(true)
    expect(tokenMatches(adminToken.slice(0, -1), adminToken)).toBe(false)
    expect(tokenMatches('', adminToken)).toBe(false)
  })
})

describe('admin API', () => {
  it('shows the config with secrets as references only', async () => {
    const res = await http(admin, '/admin/config', { headers: auth })
    expect(res.status).toBe(200)
    const body = res.json<{
      services: Record<string, { auth: unknown }>
      admin: unknown
      idempotency: { url: string }
    }>()
    expect(body.services.modern?.auth).toEqual({ kind: 'bearer', token: { env: 'MODERN_TOKEN' } })
    expect(body.admin).toMatchObject({ token: { env: 'BW_ADMIN_TOKEN' } })
    // User-only userinfo is masked too (it may be a token).
    expect(body.idempotency.url).toBe('postgres://***@127.0.0.1:1/x')
  })

  it('shows services and routes, switches a route and rolls it back', async () => {
    const gateway = proxy.address('in').port
    const services = (await http(admin, '/admin/services', { headers: auth })).json<{
      workers: { pid: number; services: { name: string; breaker: string }[] }[]
    }>()
    expect(services.workers[0]?.pid).toBe(process.pid)
    expect(services.workers[0]?.services.map((s) => s.name).sort()).toEqual(['legacy', 'modern'])

    const switched = await http(admin, '/admin/routes/orders', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ targets: [{ service: 'modern', weight: 1 }] }),
    })
    expect(switched.status).toBe(200)
    expect((await http(gateway, '/orders/1')).json()).toMatchObject({ service: 'modern' })
    const routes = (await http(admin, '/admin/routes', { headers: auth })).json<{
      routes: { name: string; overridden: boolean; targets: unknown }[]
    }>()
    expect(routes.routes[0]).toMatchObject({
      name: 'orders',
      overridden: true,
      targets: [{ service: 'modern', weight: 1 }],
    })

    const rolledBack = await http(admin, '/admin/routes/orders/override', {
      method: 'DELETE',
      headers: auth,
    })
    expect(rolledBack.status).toBe(200)
    expect((await http(gateway, '/orders/1')).json()).toMatchObject({ service: 'legacy' })
  })

  it('answers bad bodies with 400 naming the field', async () => {
    const post = (body: string) =>
      http(admin, '/admin/routes/orders', {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body,
      })
    const cases: [string, string][] = [
      ['{', '(body)'],
      ['[]', '(body)'],
      ['{"targets":[]}', 'targets'],
      ['{"targets":[{"service":"modern","weight":-1}]}', 'targets[0].weight'],
      ['{"targets":[{"service":"modern","weight":"x"}]}', 'targets[0].weight'],
      ['{"targets":[{"service":"modern","weight":1e308}]}', 'targets[0].weight'],
      ['{"targets":[{"weight":1}]}', 'targets[0].service'],
      ['{"targets":[{"service":"ghost","weight":1}]}', 'targets[0].service'],
      ['{"targets":[{"service":"modern","weight":0}]}', 'targets'],
      ['{"targets":[{"service":"modern"}],"extra":1}', 'extra'],
    ]
    for (const [body, field] of cases) {
      const res = await post(body)
      expect(res.status, body).toBe(400)
      expect(res.headers['content-type']).toBe('application/problem+json')
      expect(res.json(), body).toMatchObject({ status: 400, field })
    }
    expect(
      (await http(admin, '/admin/routes/nope', { method: 'POST', headers: auth, body: '{}' }))
        .status,
    ).toBe(404)
    expect(
      (await http(admin, '/admin/routes/orders', { method: 'GET', headers: auth })).status,
    ).toBe(405)
    expect((await http(admin, '/admin/nothing', { headers: auth })).status).toBe(404)
  })

  it('isolates and resets a service breaker', async () => {
    const out = proxy.address('out').port
    expect(
      (await http(admin, '/admin/services/modern/isolate', { method: 'POST', headers: auth }))
        .status,
    ).toBe(200)
    expect((await http(out, '/modern/x')).status).toBe(503)
    expect(
      (await http(admin, '/admin/services/modern/reset', { method: 'POST', headers: auth })).status,
    ).toBe(200)
    expect((await http(out, '/modern/x')).status).toBe(200)
    expect(
      (await http(admin, '/admin/services/ghost/isolate', { method: 'POST', headers: auth }))
        .status,
    ).toBe(404)
  })

  it('shows shadow mismatches of a route', async () => {
    const gateway = proxy.address('in').port
    await http(gateway, '/orders/shadowed')
    let body:
      | { compared: number; mismatches: number; examples: { differences: string[] }[] }
      | undefined
    await eventually(async () => {
      const res = await http(admin, '/admin/routes/orders/mismatches', { headers: auth })
      body = res.json()
      return res.status === 200 && (body?.compared ?? 0) > 0
    }, 'a shadow comparison')
    // legacy and modern answer different `service` fields.
    expect(body?.mismatches).toBeGreaterThan(0)
    expect(body?.examples[0]?.differences.join(' ')).toContain('/service')
  })

  it('reloads through the admin API and refuses an invalid file, keeping the routes', async () => {
    const gateway = proxy.address('in').port
    writeFileSync(file, yaml('[{ service: nowhere, weight: 1 }]'))
    const refused = await http(admin, '/admin/reload', { method: 'POST', headers: auth })
    expect(refused.status).toBe(422)
    expect(refused.json()).toMatchObject({
      code: 'CONFIG_INVALID',
      problems: [{ path: 'listeners[1].routes[0].targets[0].service' }],
    })
    expect((await http(gateway, '/orders/1')).json()).toMatchObject({ service: 'legacy' })

    writeFileSync(file, yaml('[{ service: modern, weight: 1 }]'))
    const applied = await http(admin, '/admin/reload', { method: 'POST', headers: auth })
    expect(applied.status).toBe(200)
    expect((await http(gateway, '/orders/1')).json()).toMatchObject({ service: 'modern' })
    const metrics = (await http(admin, '/metrics')).text
    expect(metrics).toContain('breakwater_proxy_config_reload_failures_total 1')
    expect(metrics).toContain('breakwater_proxy_config_reloads_total 1')
  })

  it('never shows a secret in a response or a log line', async () => {
    const responses: string[] = []
    for (const path of ['/admin/config', '/admin/services', '/admin/routes', '/metrics'])
      responses.push((await http(admin, path, { headers: auth })).text)
    const all = `${responses.join('\n')}\n${log.text()}`
    expect(all).not.toContain(adminToken)
    expect(all).not.toContain(upstreamToken)
    // The upstream did get its credential: the secret is used, just never shown.
    expect(modern.seen.some((s) => s.headers.authorization === `Bearer ${upstreamToken}`)).toBe(
      true,
    )
  })

  it('keeps at most admin.maxConnections connections open, closing the ones over it', async () => {
    const open = (): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const socket = connect(admin, '127.0.0.1', () => resolve(socket))
        socket.once('error', reject)
      })
    const closed = (socket: Socket): Promise<boolean> =>
      new Promise((resolve) => {
        if (socket.destroyed) resolve(true)
        socket.once('close', () => resolve(true))
        socket.resume()
        setTimeout(() => resolve(false), 1_000)
      })
    const held = [await open(), await open(), await open(), await open()]
    // Each connection is counted once the server has accepted it: the fifth is closed at once.
    await eventually(async () => closed(await open()), 'a connection over the cap to be closed')
    held[0]!.destroy()
    // A place freed, an operator gets in again.
    await eventually(
      async () => (await http(admin, '/healthz').catch(() => undefined))?.status === 200,
      'the admin API to answer once a connection closed',
    )
    for (const socket of held) socket.destroy()
  })

  it('turns readiness false when draining', async () => {
    proxy.beginDrain()
    const res = await http(admin, '/readyz')
    expect(res.status).toBe(503)
  })
})

describe('mergeMetricsText', () => {
  it('labels worker samples and keeps one HELP/TYPE per family', () => {
    const worker =
      '# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# HELP b B.\n# TYPE b gauge\nb{route="x"} 2\n'
    const merged = mergeMetricsText('# HELP p_total P.\n# TYPE p_total counter\np_total 0\n', [
      { pid: 11, text: worker },
      { pid: 12, text: worker },
    ])
    expect(merged).toBe(
      [
        '# HELP p_total P.',
        '# TYPE p_total counter',
        'p_total 0',
        '# HELP a_total A.',
        '# TYPE a_total counter',
        'a_total{worker="11"} 1',
        'a_total{worker="12"} 1',
        '# HELP b B.',
        '# TYPE b gauge',
        'b{worker="11",route="x"} 2',
        'b{worker="12",route="x"} 2',
        '',
      ].join('\n'),
    )
  })
})
