// What a reload does to the admin API's route switches. A switch is kept when the file did not
// touch the route's targets and every service it names is still configured: in a strangler
// migration an edit of another service's timeout, a comment or an `x-` block must not send the
// switched route back to legacy. It is dropped (and the drop logged with the reason) when the
// route is gone, its targets were edited in the file (the file wins), or a service it names is
// gone. Real loopback upstreams and listeners.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { captureLog, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: ProxyInternals | undefined
let log: ReturnType<typeof captureLog>

beforeEach(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
  log = captureLog()
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await legacy.close()
  await modern.close()
})

interface Shape {
  /** The orders route's targets. */
  orders?: string
  /** The legacy service's overallMs. */
  overallMs?: number
  /** Whether the modern service is configured. */
  modern?: boolean
  /** Whether the orders route is configured. */
  ordersRoute?: boolean
  /** Anything appended at the top level (comments, `x-` blocks, admin). */
  extra?: string
}

function yaml(shape: Shape = {}): string {
  const orders =
    shape.ordersRoute === false
      ? ''
      : `      - name: orders
        match: { prefix: /orders }
        targets: ${shape.orders ?? '[{ service: legacy, weight: 1 }]'}
`
  return `services:
  legacy:
    endpoints: [${legacy.url}]
    timeouts: { overallMs: ${shape.overallMs ?? 30000} }
${shape.modern === false ? '' : `  modern: { endpoints: [${modern.url}] }\n`}listeners:
  - name: in
    role: gateway
    port: 0
    routes:
${orders}      - { name: rest, match: { prefix: / }, targets: [{ service: legacy }] }
${shape.extra ?? ''}`
}

async function start(
  config: string | { file: string } = yaml(),
  env: Record<string, string> = {},
): Promise<ProxyInternals> {
  proxy = await startProxyRuntime({
    config,
    watch: false,
    env,
    clock: new ManualClock(),
    logger: createJsonLogger({ output: log, level: 'debug' }),
  })
  return proxy
}

async function serviceOf(p: ProxyInternals, path: string): Promise<string> {
  const res = await http(p.address('in').port, path)
  expect(res.status).toBe(200)
  return res.json<{ service: string }>().service
}

const orders = (p: ProxyInternals) => p.routes().find((r) => r.name === 'orders')
const toModern = [{ service: 'modern', weight: 1 }]
const overriddenMetric = (value: 0 | 1) =>
  `breakwater_proxy_route_overridden{route="orders"} ${value}`
const logged = (msg: string) => log.lines().filter((l) => l.msg === msg)

describe('a reload and the route switches', () => {
  it.each([
    ["another service's timeout", () => yaml({ overallMs: 5000 })],
    ['a comment', () => `${yaml()}# moved orders to modern on Tuesday\n`],
    ['an x- extension block', () => yaml({ extra: 'x-notes: { owner: team-orders }\n' })],
    ['the same targets written another way', () => yaml({ orders: '[{ service: legacy }]' })],
  ])('keeps a switch when the edit is %s', async (_what, next) => {
    const p = await start()
    p.switchRoute('orders', toModern)
    await p.reload(next())
    expect(await serviceOf(p, '/orders/1')).toBe('modern')
    expect(await serviceOf(p, '/other')).toBe('legacy')
    expect(orders(p)).toMatchObject({ overridden: true, targets: toModern })
    expect(await p.metricsText()).toContain(overriddenMetric(1))
    expect(logged('route override kept by reload')).toEqual([
      expect.objectContaining({ route: 'orders', targets: toModern }),
    ])
    expect(logged('route override dropped by reload')).toEqual([])
    // The rollback still puts the route on the file's targets.
    p.resetRoute('orders')
    expect(await serviceOf(p, '/orders/1')).toBe('legacy')
    expect(orders(p)?.overridden).toBe(false)
    expect(await p.metricsText()).toContain(overriddenMetric(0))
  })

  it("drops a switch when the file edits the route's targets: the file wins", async () => {
    const p = await start(yaml({ orders: '[{ service: legacy, weight: 9 }, { service: modern }]' }))
    p.switchRoute('orders', toModern)
    await p.reload(yaml({ orders: '[{ service: legacy, weight: 1 }, { service: modern }]' }))
    expect(orders(p)).toMatchObject({
      overridden: false,
      targets: [
        { service: 'legacy', weight: 1 },
        { service: 'modern', weight: 1 },
      ],
    })
    expect(await p.metricsText()).toContain(overriddenMetric(0))
    expect(logged('route override dropped by reload')).toEqual([
      expect.objectContaining({ route: 'orders', reason: 'targets changed' }),
    ])
    expect(logged('route override kept by reload')).toEqual([])
  })

  it('drops a switch when the file removes the route', async () => {
    const p = await start()
    p.switchRoute('orders', toModern)
    await p.reload(yaml({ ordersRoute: false }))
    expect(p.routes().map((r) => r.name)).toEqual(['rest'])
    expect(await p.metricsText()).not.toContain('route_overridden{route="orders"}')
    expect(logged('route override dropped by reload')).toEqual([
      expect.objectContaining({ route: 'orders', reason: 'route removed' }),
    ])
  })

  it('drops a switch to a service the file removes, and keeps one the removal does not touch', async () => {
    const p = await start()
    p.switchRoute('orders', toModern)
    const heavier = [{ service: 'legacy', weight: 3 }]
    p.switchRoute('rest', heavier)
    await p.reload(yaml({ modern: false }))
    expect(await serviceOf(p, '/orders/1')).toBe('legacy')
    expect(orders(p)?.overridden).toBe(false)
    expect(p.routes().find((r) => r.name === 'rest')).toMatchObject({
      overridden: true,
      targets: heavier,
    })
    const metrics = await p.metricsText()
    expect(metrics).toContain(overriddenMetric(0))
    expect(metrics).toContain('breakwater_proxy_route_overridden{route="rest"} 1')
    expect(logged('route override dropped by reload')).toEqual([
      expect.objectContaining({ route: 'orders', reason: 'service removed', services: ['modern'] }),
    ])
    expect(logged('route override kept by reload')).toEqual([
      expect.objectContaining({ route: 'rest', targets: heavier }),
    ])
  })

  it('keeps a switch through POST /admin/reload after an unrelated edit of the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bw-reload-overrides-'))
    const file = join(dir, 'proxy.yaml')
    const token = 'admin-token-0123456789abcdef'
    const admin = `admin: { port: 0, token: { env: BW_TEST_ADMIN_TOKEN } }\n`
    writeFileSync(file, yaml({ extra: admin }))
    const p = await start({ file }, { BW_TEST_ADMIN_TOKEN: token })
    const port = p.adminAddress()?.port ?? 0
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
    const switched = await http(port, '/admin/routes/orders', {
      method: 'POST',
      headers,
      body: JSON.stringify({ targets: toModern }),
    })
    expect(switched.status).toBe(200)
    writeFileSync(file, yaml({ overallMs: 5000, extra: admin }))
    expect((await http(port, '/admin/reload', { method: 'POST', headers })).status).toBe(200)
    const routes = (await http(port, '/admin/routes', { headers })).json<{
      routes: { name: string; overridden: boolean; targets: unknown }[]
    }>()
    expect(routes.routes.find((r) => r.name === 'orders')).toMatchObject({
      overridden: true,
      targets: toModern,
    })
    expect(await serviceOf(p, '/orders/1')).toBe('modern')
    const rolledBack = await http(port, '/admin/routes/orders/override', {
      method: 'DELETE',
      headers,
    })
    expect(rolledBack.status).toBe(200)
    expect(await serviceOf(p, '/orders/1')).toBe('legacy')
  })
})
