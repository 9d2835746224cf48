import { copyFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ConfigInvalidError } from '../../../src/proxy/config/index.js'
import {
  type Proxy as RunningProxy,
  startProxy,
  startProxyRuntime,
} from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { freeLoopbackPort, listenOnLoopback } from '../../support/loopback.js'
import { createTestCerts } from '../support/certs.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: RunningProxy | undefined
const quiet = createJsonLogger({ level: 'silent' })

beforeEach(async () => {
  legacy = await startNamedUpstream('legacy', { hold: (url) => url.includes('slow') })
  modern = await startNamedUpstream('modern')
})

afterEach(async () => {
  legacy.release()
  await proxy?.close(0)
  proxy = undefined
  await legacy.close()
  await modern.close()
})

function yaml(options: { split?: string; extra?: string } = {}): string {
  return `
services:
  legacy: { endpoints: [${legacy.url}] }
  modern: { endpoints: [${modern.url}] }
listeners:
  - { name: out, role: ambassador, port: 0 }
  - name: in
    role: gateway
    port: 0
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: ${options.split ?? '[{ service: legacy, weight: 1 }]'}
      - { name: rest, match: { prefix: / }, targets: [{ service: legacy }] }
drainTimeoutMs: 2000
${options.extra ?? ''}
`
}

async function serviceOf(port: number, path: string): Promise<string> {
  const res = await http(port, path)
  expect(res.status).toBe(200)
  return res.json<{ service: string }>().service
}

describe('startProxy', () => {
  it('serves the ambassador and the gateway from YAML text', async () => {
    const log = captureLog()
    proxy = await startProxy({ config: yaml(), logger: createJsonLogger({ output: log }) })
    const out = proxy.address('out').port
    const res = await http(out, '/modern/items/1?x=2')
    expect(res.status).toBe(200)
    expect(res.json()).toMatchObject({ service: 'modern', url: '/items/1?x=2' })
    expect(await serviceOf(proxy.address('in').port, '/orders/7')).toBe('legacy')
    expect(log.lines().some((l) => l.msg === 'proxy started')).toBe(true)
    expect(() => proxy?.address('nope')).toThrow('listener')
  })

  it('switches a route and rolls it back without a reload', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const port = proxy.address('in').port
    proxy.switchRoute('orders', [{ service: 'modern', weight: 1 }])
    expect(await serviceOf(port, '/orders/1')).toBe('modern')
    expect(await serviceOf(port, '/other')).toBe('legacy')
    const state = proxy.routes().find((r) => r.name === 'orders')
    expect(state).toMatchObject({ overridden: true, targets: [{ service: 'modern', weight: 1 }] })
    expect(state?.requestsByService.modern).toBe(1)
    proxy.resetRoute('orders')
    expect(await serviceOf(port, '/orders/1')).toBe('legacy')
    expect(() => proxy?.switchRoute('orders', [{ service: 'ghost', weight: 1 }])).toThrow(
      'targets[0].service',
    )
    expect(() => proxy?.switchRoute('nope', [{ service: 'modern', weight: 1 }])).toThrow('route')
    expect(await proxy.metricsText()).toContain(
      'breakwater_proxy_route_overridden{route="orders"} 0',
    )
  })

  it('keeps a retried key on its first side through a switch and a reload, and counts it in /metrics', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const port = proxy.address('in').port
    const post = async (key: string): Promise<string> => {
      const res = await http(port, '/orders', {
        method: 'POST',
        headers: { 'idempotency-key': key },
        body: '{}',
      })
      expect(res.status).toBe(200)
      return res.json<{ service: string }>().service
    }
    expect(await post('k1')).toBe('legacy')
    proxy.switchRoute('orders', [{ service: 'modern', weight: 1 }])
    expect(await post('k1')).toBe('legacy')
    expect(await post('k2')).toBe('modern')
    // A reload that edits the route's targets drops the switch (the file wins: here modern)
    // and keeps the pins.
    await proxy.reload(
      yaml({ split: '[{ service: modern, weight: 1 }, { service: legacy, weight: 0 }]' }),
    )
    expect(await post('k1')).toBe('legacy')
    expect(proxy.routes().find((r) => r.name === 'orders')?.retryAffinity).toEqual({
      pinnedKeys: 2,
      repeatsFollowed: 2,
    })
    const metrics = await proxy.metricsText()
    expect(metrics).toContain('breakwater_proxy_route_retry_pins{route="orders"} 2')
    expect(metrics).toContain('breakwater_proxy_route_retry_pins_followed_total{route="orders"} 2')
  })

  it('drops the route_overridden series of a route that a reload removes', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    proxy.switchRoute('orders', [{ service: 'modern', weight: 1 }])
    expect(await proxy.metricsText()).toContain(
      'breakwater_proxy_route_overridden{route="orders"} 1',
    )
    // The file no longer has the route: no series may say it is still switched.
    await proxy.reload(yaml().replace(/ {6}- name: orders\n(?: {8}.*\n)+/, ''))
    expect(proxy.routes().map((r) => r.name)).toEqual(['rest'])
    const metrics = await proxy.metricsText()
    expect(metrics).not.toContain('route_overridden{route="orders"}')
    expect(metrics).toContain('breakwater_proxy_route_overridden{route="rest"} 0')
  })

  it('drops the retry_pins series of a route a reload removes or turns retry affinity off on', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const port = proxy.address('in').port
    for (const path of ['/orders', '/other']) {
      const res = await http(port, path, {
        method: 'POST',
        headers: { 'idempotency-key': 'k1' },
        body: '{}',
      })
      expect(res.status).toBe(200)
    }
    let metrics = await proxy.metricsText()
    expect(metrics).toContain('breakwater_proxy_route_retry_pins{route="orders"} 1')
    expect(metrics).toContain('breakwater_proxy_route_retry_pins{route="rest"} 1')
    // orders is gone from the file, rest holds no pins any more.
    await proxy.reload(
      yaml()
        .replace(/ {6}- name: orders\n(?: {8}.*\n)+/, '')
        .replace(
          'targets: [{ service: legacy }] }',
          'targets: [{ service: legacy }], retryAffinity: false }',
        ),
    )
    metrics = await proxy.metricsText()
    expect(metrics).not.toContain('breakwater_proxy_route_retry_pins{')
  })

  it('drops the breaker, bulkhead and ejection series of a service a reload removes', async () => {
    const spare = yaml().replace(
      `modern: { endpoints: [${modern.url}] }`,
      `modern: { endpoints: [${modern.url}] }\n  spare: { endpoints: [${modern.url}] }`,
    )
    proxy = await startProxy({ config: spare, logger: quiet })
    proxy.isolate('spare')
    let metrics = await proxy.metricsText()
    expect(metrics).toContain(
      'breakwater_proxy_upstream_breaker_state{service="spare",state="isolated"} 1',
    )
    await proxy.reload(yaml())
    await eventually(() => !proxy?.services().some((s) => s.name === 'spare'), 'spare removed')
    metrics = await proxy.metricsText()
    // The service is gone: no gauge may still say it is isolated (or anything else about it).
    expect(metrics).not.toMatch(
      /_(breaker_state|bulkhead_running|bulkhead_queued|endpoints_ejected)\{service="spare"/,
    )
    expect(metrics).toContain(
      'breakwater_proxy_upstream_breaker_state{service="modern",state="closed"} 1',
    )
  })

  it('keeps the running config when a reload is invalid, and applies a valid one', async () => {
    const log = captureLog()
    proxy = await startProxy({ config: yaml(), logger: createJsonLogger({ output: log }) })
    const port = proxy.address('in').port
    const error = await proxy.reload(yaml({ split: '[{ service: ghost, weight: 1 }]' })).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect((error as Error).message).toContain(
      'listeners[1].routes[0].targets[0].service: expected a service defined under services (legacy, modern), got "ghost"',
    )
    expect(await serviceOf(port, '/orders/1')).toBe('legacy')
    expect(await proxy.metricsText()).toContain('breakwater_proxy_config_reload_failures_total 1')
    expect(
      log.lines().some((l) => l.msg === 'config reload refused; the running config stays in force'),
    ).toBe(true)

    await proxy.reload(yaml({ split: '[{ service: modern, weight: 1 }]' }))
    // Same listener socket: the port did not change.
    expect(proxy.address('in').port).toBe(port)
    expect(await serviceOf(port, '/orders/1')).toBe('modern')
    expect(await proxy.metricsText()).toContain('breakwater_proxy_config_reloads_total 1')
  })

  it('finishes a request in flight on the old generation across a reload', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const port = proxy.address('in').port
    const slow = http(port, '/orders/slow')
    await eventually(
      () => legacy.seen.some((s) => s.url.includes('slow')),
      'the slow request upstream',
    )
    // The reload swaps every service (legacy's endpoint list changes), so the old legacy
    // runtime is closed while the request is still in it.
    const second = await startNamedUpstream('legacy-2')
    try {
      await proxy.reload(
        yaml({ split: '[{ service: modern, weight: 1 }]' }).replace(
          `legacy: { endpoints: [${legacy.url}] }`,
          `legacy: { endpoints: [${second.url}] }`,
        ),
      )
      expect(await serviceOf(port, '/orders/1')).toBe('modern')
      legacy.release()
      const res = await slow
      expect(res.status).toBe(200)
      expect(res.json()).toMatchObject({ service: 'legacy', url: '/orders/slow' })
    } finally {
      await second.close()
    }
  })

  it('rebinds a listener whose port changed, and refuses a reload whose port is taken', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const blocker = await startNamedUpstream('blocker')
    try {
      const text = yaml().replace(
        '{ name: out, role: ambassador, port: 0 }',
        `{ name: out, role: ambassador, port: ${blocker.port} }`,
      )
      await expect(proxy.reload(text)).rejects.toThrow('EADDRINUSE')
      // Still serving on the old sockets.
      expect(await serviceOf(proxy.address('out').port, '/modern/x')).toBe('modern')
      expect(await serviceOf(proxy.address('in').port, '/orders/x')).toBe('legacy')
    } finally {
      await blocker.close()
    }
  })

  it('rebinds a listener on its own port when its limits change, and restores it when the reload fails', async () => {
    const fixed = await freePort()
    const base = yaml().replace(
      'name: in\n    role: gateway\n    port: 0',
      `name: in\n    role: gateway\n    port: ${fixed}`,
    )
    proxy = await startProxy({ config: base, logger: quiet })
    // Host first: Node keeps only the first maxHeaders + 1 header lines.
    const headers: Record<string, string> = { host: `127.0.0.1:${fixed}` }
    for (let i = 0; i < 20; i++) headers[`x-h${i}`] = 'v'
    expect((await http(fixed, '/orders/1', { headers })).status).toBe(200)

    const strict = base.replace(`port: ${fixed}`, `port: ${fixed}\n    limits: { maxHeaders: 10 }`)
    await proxy.reload(strict)
    expect(proxy.address('in').port).toBe(fixed)
    expect((await http(fixed, '/orders/1', { headers })).status).toBe(431)
    expect(await serviceOf(fixed, '/orders/1')).toBe('legacy')

    // The same change plus a new listener on a taken port: the reload fails after the
    // gateway let go of its port, and the gateway is bound again with its running settings.
    const blocker = createServer()
    const taken = await listenOnLoopback(blocker)
    try {
      const failing = `${base.replace('listeners:\n', `listeners:\n  - { name: extra, role: ambassador, port: ${taken} }\n`)}`
      await expect(proxy.reload(failing)).rejects.toThrow('EADDRINUSE')
      expect(proxy.address('in').port).toBe(fixed)
      // Still the strict limits of the running config.
      expect((await http(fixed, '/orders/1', { headers })).status).toBe(431)
      expect(await serviceOf(fixed, '/orders/1')).toBe('legacy')
      expect(() => proxy?.address('extra')).toThrow('listener')
    } finally {
      blocker.close()
    }
  })

  /**
   * A gateway on a fixed port whose certificate lives in copies the test can delete, so that its
   * rebind after a failed reload fails (deterministically, as a port taken meanwhile would), and
   * restore. `running` is its config; `rotated` the same gateway on the original files;
   * `failing` that plus a listener on a port in use, a reload that fails after the gateway let
   * go of its port.
   */
  async function vanishingCertGateway(
    certs: ReturnType<typeof createTestCerts>,
    taken: number,
    extra = '',
  ) {
    const oldCert = join(certs.dir, 'old.pem')
    const oldKey = join(certs.dir, 'old-key.pem')
    const restore = (): void => {
      copyFileSync(certs.server.certFile, oldCert)
      copyFileSync(certs.server.keyFile, oldKey)
    }
    restore()
    const fixed = await freePort()
    const config = (cert: string, key: string): string =>
      `${yaml().replace(
        'name: in\n    role: gateway\n    port: 0',
        `name: in\n    role: gateway\n    port: ${fixed}\n    tls: { certFile: ${cert}, keyFile: ${key} }`,
      )}${extra}`
    const rotated = config(certs.server.certFile, certs.server.keyFile)
    return {
      fixed,
      running: config(oldCert, oldKey),
      rotated,
      failing: rotated.replace(
        'listeners:\n',
        `listeners:\n  - { name: extra, role: ambassador, port: ${taken} }\n`,
      ),
      remove: (): void => {
        rmSync(oldCert)
        rmSync(oldKey)
      },
      restore,
    }
  }

  it('answers /readyz 503 naming a listener a failed reload could not bind again, until one does', async () => {
    const certs = createTestCerts()
    const blocker = createServer()
    const taken = await listenOnLoopback(blocker)
    try {
      const gateway = await vanishingCertGateway(
        certs,
        taken,
        'admin: { port: 0, token: { env: BW_TEST_ADMIN_TOKEN } }\n',
      )
      const { fixed } = gateway
      const runtime = await startProxyRuntime({
        config: gateway.running,
        logger: quiet,
        env: { BW_TEST_ADMIN_TOKEN: 'admin-token-0123456789abcdef' },
      })
      proxy = runtime
      const admin = runtime.adminAddress()?.port ?? 0
      expect((await http(admin, '/readyz')).status).toBe(200)

      gateway.remove()
      // New certificate files for the gateway (it must let go of its port to rebind), and a
      // new listener on a port in use: the reload fails after the gateway let go.
      await expect(runtime.reload(gateway.failing)).rejects.toThrow('EADDRINUSE')
      expect(() => runtime.address('in')).toThrow('listener')
      const down = await http(admin, '/readyz')
      expect(down.status).toBe(503)
      expect(down.json()).toMatchObject({ status: 'not ready', listenersDown: ['in'] })
      expect(down.text).toContain('listener in is not listening')

      // A reload that binds it again makes the proxy ready again.
      await runtime.reload(gateway.rotated)
      expect(runtime.address('in').port).toBe(fixed)
      expect((await http(admin, '/readyz')).json()).toEqual({ status: 'ready' })
    } finally {
      blocker.close()
      certs.cleanup()
    }
  })

  it('binds a listener a failed reload let go of again on its own once the cause is gone, backing off', async () => {
    const certs = createTestCerts()
    const blocker = createServer()
    const taken = await listenOnLoopback(blocker)
    try {
      const gateway = await vanishingCertGateway(certs, taken)
      const { fixed } = gateway
      const clock = new ManualClock(0)
      const log = captureLog()
      const runtime = await startProxyRuntime({
        config: gateway.running,
        logger: createJsonLogger({ output: log, level: 'debug', clock }),
        clock,
      })
      proxy = runtime
      let changes = 0
      runtime.onListenersChanged(() => changes++)
      gateway.remove()
      await expect(runtime.reload(gateway.failing)).rejects.toThrow('EADDRINUSE')
      expect(runtime.listenersDown()).toEqual(['in'])

      // The certificate files are still gone: the first try fails, and the next waits longer.
      await clock.advance(1_000)
      await eventually(
        () => log.lines().some((r) => r.msg === 'could not bind a listener again'),
        'the first try to bind it again',
      )
      expect(runtime.listenersDown()).toEqual(['in'])
      expect(log.lines().find((r) => r.msg === 'could not bind a listener again')).toMatchObject({
        listener: 'in',
        retryInMs: 2_000,
      })
      // They are back: the second try, 2 s later, binds the listener on its port again.
      gateway.restore()
      await clock.advance(1_999)
      expect(runtime.listenersDown()).toEqual(['in'])
      await clock.advance(1)
      await eventually(() => runtime.listenersDown().length === 0, 'the listener bound again')
      expect(runtime.address('in').port).toBe(fixed)
      expect(changes).toBe(1)
      expect(runtime.ready()).toBe(true)
      // Nothing is left to try.
      expect(clock.pendingTimers).toBe(0)
    } finally {
      blocker.close()
      certs.cleanup()
    }
  })

  it("refuses configOverrides that are not an object, and checks their values as the file's", async () => {
    await expect(
      startProxyRuntime({ config: yaml(), configOverrides: 'workers=2' as never, logger: quiet }),
    ).rejects.toThrow(/configOverrides: expected/)
    await expect(
      startProxyRuntime({ config: yaml(), configOverrides: { workers: 0 }, logger: quiet }),
    ).rejects.toMatchObject({ code: 'CONFIG_INVALID' })
  })

  it('refuses a config file that is not a non-empty path with INVALID_OPTION naming config.file', async () => {
    for (const file of ['', undefined, 42]) {
      await expect(
        startProxyRuntime({ config: { file } as never, logger: quiet }),
      ).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        message: expect.stringContaining('config.file'),
      })
    }
  })

  it('enforces Idempotency-Key on a configured route through the store it opens', async () => {
    const text = yaml().replace(
      'targets: [{ service: legacy, weight: 1 }]\n',
      'targets: [{ service: legacy, weight: 1 }]\n        idempotency: { methods: [POST] }\n',
    )
    proxy = await startProxy({ config: `${text}idempotency: { url: memory }\n`, logger: quiet })
    const port = proxy.address('in').port
    const missing = await http(port, '/orders', {
      method: 'POST',
      body: '{"n":1}',
      headers: { 'content-type': 'application/json' },
    })
    expect(missing.status).toBeGreaterThanOrEqual(400)
    expect(missing.text).toContain('IDEMPOTENCY_KEY_MISSING')
    expect(legacy.seen.filter((s) => s.method === 'POST')).toHaveLength(0)
    const send = () =>
      http(port, '/orders', {
        method: 'POST',
        body: '{"n":1}',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'key-1' },
      })
    const first = await send()
    const second = await send()
    expect(first.status).toBe(200)
    expect(second.status).toBe(200)
    expect(second.text).toBe(first.text)
    expect(legacy.seen.filter((s) => s.method === 'POST')).toHaveLength(1)
  })

  it('isolates and resets a service breaker', async () => {
    proxy = await startProxy({
      config: yaml().replace(
        `modern: { endpoints: [${modern.url}] }`,
        `modern: { endpoints: [${modern.url}], circuitBreaker: { failureThreshold: 3 } }`,
      ),
      logger: quiet,
    })
    const out = proxy.address('out').port
    proxy.isolate('modern')
    expect(proxy.services().find((s) => s.name === 'modern')?.breaker).toBe('isolated')
    const refused = await http(out, '/modern/x')
    expect(refused.status).toBe(503)
    expect(modern.seen).toHaveLength(0)
    proxy.reset('modern')
    expect(await serviceOf(out, '/modern/x')).toBe('modern')
    expect(() => proxy?.isolate('ghost')).toThrow('service')
  })

  it('cuts shadow calls still running when the drain time is up, instead of waiting for them', async () => {
    const stuck = await startNamedUpstream('stuck', { hold: () => true })
    try {
      const clock = new ManualClock(1_000_000)
      proxy = await startProxy({
        config: yaml()
          .replace(
            `modern: { endpoints: [${modern.url}] }`,
            `modern: { endpoints: [${modern.url}] }\n  stuck: { endpoints: [${stuck.url}], timeouts: { overallMs: 600000, readMs: 600000 } }`,
          )
          .replace(
            '        targets: [{ service: legacy, weight: 1 }]',
            '        targets: [{ service: legacy, weight: 1 }]\n        shadow: { service: stuck, learnNoise: false }',
          ),
        logger: quiet,
        clock,
      })
      const res = await http(proxy.address('in').port, '/orders/1')
      expect(res.json()).toMatchObject({ service: 'legacy' })
      await eventually(() => stuck.seen.length === 1, 'the shadow call upstream')
      // Nothing is in flight but the shadow call, which would hang for 10 minutes: close(0)
      // cuts it rather than waiting.
      await proxy.close(0)
      proxy = undefined
    } finally {
      stuck.release()
      await stuck.close()
    }
  })

  it('close(drainMs) also bounds the drain of a listener a reload replaced', async () => {
    // The old server of a rebuilt listener drains for drainTimeoutMs (10 minutes here): a stop
    // with close(0) must not wait for it, nor leave its connection open.
    const long = (text: string): string =>
      text.replace('drainTimeoutMs: 2000', 'drainTimeoutMs: 600000')
    proxy = await startProxy({ config: long(yaml()), logger: quiet })
    const port = proxy.address('in').port
    const slow = http(port, '/orders/slow').then(
      (res) => res.status,
      () => 'cut',
    )
    await eventually(() => legacy.seen.length > 0, 'the slow request upstream')
    // New limits: the gateway gets a new server, on a new port (it asks for any free one).
    await proxy.reload(
      long(yaml()).replace(
        'name: in\n    role: gateway\n    port: 0',
        'name: in\n    role: gateway\n    port: 0\n    limits: { maxHeaders: 50 }',
      ),
    )
    expect(proxy.address('in').port).not.toBe(port)
    await proxy.close(0)
    proxy = undefined
    expect(await slow).toBe('cut')
  })

  it('reports readiness and drains on close', async () => {
    proxy = await startProxy({ config: yaml(), logger: quiet })
    const port = proxy.address('in').port
    const slow = http(port, '/orders/slow')
    await eventually(() => legacy.seen.length > 0, 'the slow request upstream')
    const closing = proxy.close(5_000)
    setTimeout(() => legacy.release(), 100)
    const res = await slow
    expect(res.status).toBe(200)
    await closing
    await expect(http(port, '/orders/1')).rejects.toThrow()
    proxy = undefined
  })
})

function freePort(): Promise<number> {
  return freeLoopbackPort()
}
