// End to end through the real `breakwater proxy` process (dist/cli/main.js), with real
// upstream node:http servers and real YAML files.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { eventually, http, type NamedUpstream, startNamedUpstream } from '../runtime/helpers.js'
import {
  ensureBuilt,
  freePort,
  type ProxyProcess,
  runProxyCli,
  spawnProxy,
  waitForReady,
} from './proxy-process.js'

const adminToken = 'e2e-admin-token-5f1c9a7d'
const upstreamToken = 'e2e-upstream-secret-3b8e'
const env = { BW_ADMIN_TOKEN: adminToken, LEGACY_TOKEN: upstreamToken }
const auth = { authorization: `Bearer ${adminToken}` }

let legacy: NamedUpstream
let modern: NamedUpstream
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-e2e-'))
const started: ProxyProcess[] = []

beforeAll(async () => {
  ensureBuilt()
  legacy = await startNamedUpstream('legacy', { hold: (url) => url.includes('slow') })
  modern = await startNamedUpstream('modern')
}, 180_000)

afterEach(() => {
  legacy.release()
  for (const p of started.splice(0)) p.kill()
})

afterAll(async () => {
  await legacy.close()
  await modern.close()
})

interface Ports {
  out: number
  gateway: number
  admin: number
}

async function ports(): Promise<Ports> {
  return { out: await freePort(), gateway: await freePort(), admin: await freePort() }
}

function config(p: Ports, options: { split?: string; workers?: number } = {}): string {
  return `# written by proxy.e2e.test.ts
services:
  legacy:
    endpoints: [${legacy.url}]
    auth: { bearer: { env: LEGACY_TOKEN } }
  modern:
    endpoints: [${modern.url}]
    retry: { attempts: 2 }
    circuitBreaker: { failureThreshold: 5 }
listeners:
  - { name: outbound, role: ambassador, port: ${p.out} }
  - name: inbound
    role: gateway
    port: ${p.gateway}
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: ${options.split ?? '[{ service: legacy, weight: 1 }]'}
        sticky: { header: x-user-id }
      - { name: rest, match: { prefix: / }, targets: [{ service: legacy }] }
admin: { port: ${p.admin}, token: { env: BW_ADMIN_TOKEN } }
drainTimeoutMs: 10000
workers: ${options.workers ?? 1}
`
}

async function start(file: string, args: string[] = []): Promise<ProxyProcess> {
  const proxy = spawnProxy(['proxy', '--config', file, ...args], env)
  started.push(proxy)
  return proxy
}

async function serviceOf(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<string> {
  const res = await http(port, path, { headers })
  expect(res.status, res.text).toBe(200)
  return res.json<{ service: string }>().service
}

describe('breakwater proxy --check', () => {
  it('exits 0 for a valid file and 1 with every problem for an invalid one', async () => {
    const p = await ports()
    const good = join(dir, 'check-good.yaml')
    writeFileSync(good, config(p))
    const ok = await runProxyCli(['proxy', '--config', good, '--check'], env)
    expect(ok.code).toBe(0)
    expect(ok.stdout).toContain('valid (2 services, 2 listeners, 1 worker)')

    const bad = join(dir, 'check-bad.yaml')
    const broken = config(p, { split: '[{ service: ghost, weight: 1 }]' }).replace(
      'retry: { attempts: 2 }',
      'retry: { attempts: three }',
    )
    writeFileSync(bad, `${broken}extra: { token: ${upstreamToken} }\n`)
    const refused = await runProxyCli(['proxy', '--config', bad, '--check'], env)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(`invalid proxy config ${bad} (3 problems)`)
    expect(refused.stderr).toContain(
      'services.modern.retry.attempts: expected integer >= 1, got "three"',
    )
    expect(refused.stderr).toContain(
      'listeners[1].routes[0].targets[0].service: expected a service defined under services (legacy, modern), got "ghost"',
    )
    expect(refused.stderr).toContain('extra: unknown key')
    expect(refused.stderr).not.toContain(upstreamToken)

    // Without --check an invalid file stops the start (exit 2, the usage-error code).
    const startRefused = await runProxyCli(['proxy', '--config', bad], env)
    expect(startRefused.code).toBe(2)
    expect(startRefused.stderr).toContain('services.modern.retry.attempts')
  })
})

describe('breakwater proxy (one process)', () => {
  it('serves ambassador and gateway, switches and rolls back, reloads on file change', async () => {
    const p = await ports()
    const file = join(dir, 'single.yaml')
    writeFileSync(file, config(p))
    const proxy = await start(file)
    await waitForReady(proxy, p.admin)

    // Ambassador: /<service>/<path>, credential injected from the environment.
    const res = await http(p.out, '/legacy/items/1?q=2')
    expect(res.json()).toMatchObject({ service: 'legacy', url: '/items/1?q=2' })
    expect(legacy.seen.at(-1)?.headers.authorization).toBe(`Bearer ${upstreamToken}`)
    expect(await serviceOf(p.out, '/modern/x')).toBe('modern')
    expect((await http(p.out, '/nope/x')).status).toBe(404)

    // Gateway: everything on legacy; an admin switch moves /orders to modern, rollback back.
    expect(await serviceOf(p.gateway, '/orders/1')).toBe('legacy')
    const switched = await http(p.admin, '/admin/routes/orders', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: '{"targets":[{"service":"modern","weight":1}]}',
    })
    expect(switched.status).toBe(200)
    expect(await serviceOf(p.gateway, '/orders/1')).toBe('modern')
    expect(await serviceOf(p.gateway, '/other')).toBe('legacy')
    expect(
      (await http(p.admin, '/admin/routes/orders/override', { method: 'DELETE', headers: auth }))
        .status,
    ).toBe(200)
    expect(await serviceOf(p.gateway, '/orders/1')).toBe('legacy')

    // A 50/50 split by file change: sticky users stay put, and both sides get users.
    writeFileSync(
      file,
      config(p, { split: '[{ service: legacy, weight: 1 }, { service: modern, weight: 1 }]' }),
    )
    await proxy.waitForLine((l) => l.msg === 'config reloaded', 'the reload after the file change')
    const sides = new Set<string>()
    for (let user = 0; user < 40; user++) {
      const first = await serviceOf(p.gateway, '/orders/1', { 'x-user-id': `user-${user}` })
      expect(await serviceOf(p.gateway, '/orders/2', { 'x-user-id': `user-${user}` })).toBe(first)
      sides.add(first)
    }
    expect([...sides].sort()).toEqual(['legacy', 'modern'])

    // An invalid file keeps the running split and counts the failure.
    writeFileSync(file, config(p, { split: '[{ service: ghost, weight: 1 }]' }))
    await proxy.waitForLine(
      (l) => l.msg === 'config reload refused; the running config stays in force',
      'the refused reload',
    )
    expect(await serviceOf(p.gateway, '/orders/1', { 'x-user-id': 'user-0' })).toBe(
      await serviceOf(p.gateway, '/orders/1', { 'x-user-id': 'user-0' }),
    )
    const seenBoth = new Set<string>()
    for (let user = 0; user < 40; user++)
      seenBoth.add(await serviceOf(p.gateway, '/orders/1', { 'x-user-id': `user-${user}` }))
    expect(seenBoth.size).toBe(2)
    const metrics = (await http(p.admin, '/metrics')).text
    expect(metrics).toContain('breakwater_proxy_config_reload_failures_total 1')
    expect(metrics).toContain('breakwater_proxy_config_reloads_total 1')

    // Secrets never reach the output or the admin API.
    const config_ = (await http(p.admin, '/admin/config', { headers: auth })).text
    expect(config_).toContain('LEGACY_TOKEN')
    for (const text of [config_, proxy.stdout(), proxy.stderr()]) {
      expect(text).not.toContain(upstreamToken)
      expect(text).not.toContain(adminToken)
    }
  })

  it('drains on SIGTERM: readyz 503 at once, the request in flight finishes, exit 0', async () => {
    const p = await ports()
    const file = join(dir, 'drain.yaml')
    writeFileSync(file, config(p))
    const proxy = await start(file)
    await waitForReady(proxy, p.admin)
    const inFlight = http(p.gateway, '/orders/slow')
    await eventually(
      () => legacy.seen.some((s) => s.url === '/orders/slow'),
      'the slow request at the upstream',
    )
    proxy.child.kill('SIGTERM')
    await proxy.waitForLine((l) => l.msg === 'draining: readiness is now false', 'the drain')
    expect((await http(p.admin, '/readyz')).status).toBe(503)
    // New connections are refused while the old request is still being served.
    await expect(http(p.gateway, '/orders/1')).rejects.toThrow()
    legacy.release()
    const res = await inFlight
    expect(res.status).toBe(200)
    expect(res.json()).toMatchObject({ service: 'legacy', url: '/orders/slow' })
    expect(await proxy.exited).toEqual({ code: 0, signal: null })
    expect(proxy.lines.at(-1)).toMatchObject({ msg: 'proxy exited', drain: 'complete' })
  })
})

describe('breakwater proxy --workers 2', () => {
  it('serves from both workers, forwards admin commands to each, restarts a crashed one, drains all', async () => {
    const p = await ports()
    const file = join(dir, 'workers.yaml')
    writeFileSync(file, config(p))
    const proxy = await start(file, ['--workers', '2'])
    await waitForReady(proxy, p.admin)
    const primaryPid = proxy.child.pid

    // Many short connections: the primary hands them to the workers in turn.
    for (let i = 0; i < 30; i++) expect(await serviceOf(p.gateway, `/orders/${i}`)).toBe('legacy')
    await eventually(() => workerPidsOf(proxy).size === 2, 'access logs from two worker pids')
    expect(workerPidsOf(proxy).has(primaryPid ?? -1)).toBe(false)

    // The switch reaches every worker.
    const switched = await http(p.admin, '/admin/routes/orders', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: '{"targets":[{"service":"modern","weight":1}]}',
    })
    expect(switched.status).toBe(200)
    for (let i = 0; i < 20; i++) expect(await serviceOf(p.gateway, `/orders/${i}`)).toBe('modern')
    const services = (await http(p.admin, '/admin/services', { headers: auth })).json<{
      workers: { pid: number }[]
    }>()
    expect(services.workers).toHaveLength(2)
    const routes = (await http(p.admin, '/admin/routes', { headers: auth })).json<{
      workers: number
      routes: { name: string; requestsByService: Record<string, number> }[]
    }>()
    expect(routes.workers).toBe(2)
    expect(routes.routes.find((r) => r.name === 'orders')?.requestsByService).toEqual({
      legacy: 30,
      modern: 20,
    })
    const metrics = (await http(p.admin, '/metrics')).text
    for (const pid of workerPidsOf(proxy)) expect(metrics).toContain(`worker="${pid}"`)

    // A crashed worker is replaced, and the replacement gets the live switch.
    const victim = [...workerPidsOf(proxy)][0] as number
    process.kill(victim, 'SIGKILL')
    await proxy.waitForLine(
      (l) => l.msg === 'worker exited unexpectedly; starting a new one',
      'the restart',
    )
    // Readiness holds while one worker serves.
    expect((await http(p.admin, '/readyz')).status).toBe(200)
    // Once the replacement answers admin commands, the replayed switch (sent before them on
    // the same IPC channel) has been applied.
    await eventually(
      async () => {
        const res = await http(p.admin, '/admin/services', { headers: auth })
        const pids = res.json<{ workers: { pid: number }[] }>().workers.map((w) => w.pid)
        return pids.length === 2 && !pids.includes(victim)
      },
      'the replacement worker',
      30_000,
    )
    for (let i = 0; i < 20; i++) expect(await serviceOf(p.gateway, `/orders/${i}`)).toBe('modern')

    // Reload by file change reaches every worker. It edits only the rest route, so the orders
    // switch stays, in every worker and in what the primary gives a restarted one.
    writeFileSync(
      file,
      config(p, { split: '[{ service: legacy, weight: 1 }]' }).replace(
        'rest, match: { prefix: / }, targets: [{ service: legacy }]',
        'rest, match: { prefix: / }, targets: [{ service: modern }]',
      ),
    )
    await proxy.waitForLine(
      (l) => l.msg === 'config reloaded in every worker',
      'the cluster reload',
    )
    for (let i = 0; i < 10; i++) expect(await serviceOf(p.gateway, `/other/${i}`)).toBe('modern')
    for (let i = 0; i < 10; i++) expect(await serviceOf(p.gateway, `/orders/${i}`)).toBe('modern')
    const second = (await http(p.admin, '/admin/services', { headers: auth })).json<{
      workers: { pid: number }[]
    }>().workers[0]?.pid as number
    process.kill(second, 'SIGKILL')
    await eventually(
      async () => {
        const res = await http(p.admin, '/admin/services', { headers: auth })
        // A command that reached the worker as it died is answered with an error.
        if (res.status !== 200) return false
        const pids = res.json<{ workers: { pid: number }[] }>().workers.map((w) => w.pid)
        return pids.length === 2 && !pids.includes(second)
      },
      'the replacement of a worker killed after the reload',
      30_000,
    )
    for (let i = 0; i < 20; i++) expect(await serviceOf(p.gateway, `/orders/${i}`)).toBe('modern')

    proxy.child.kill('SIGTERM')
    expect(await proxy.exited).toEqual({ code: 0, signal: null })
    expect(proxy.lines.filter((l) => l.msg === 'worker exited').length).toBeGreaterThanOrEqual(2)
    for (const text of [proxy.stdout(), proxy.stderr()]) {
      expect(text).not.toContain(upstreamToken)
      expect(text).not.toContain(adminToken)
    }
  })
})

describe('breakwater proxy --workers 2: retry affinity', () => {
  it('a retried POST reaches the side of its first attempt whichever worker takes it, a crashed worker’s replacement included', async () => {
    const p = await ports()
    const file = join(dir, 'workers-affinity.yaml')
    writeFileSync(file, config(p))
    const proxy = await start(file, ['--workers', '2'])
    await waitForReady(proxy, p.admin)
    const post = (key: string) =>
      http(p.gateway, '/orders', {
        method: 'POST',
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{}',
      })
    // One connection per request: the primary hands them to the workers in turn, but only to
    // workers already listening. Readiness needs one, and under load the second can start late,
    // so the requests go on (new keys) until both workers have served some.
    const keys: string[] = []
    while (keys.length < 20 || workerPidsOf(proxy).size < 2) {
      if (keys.length >= 500) throw new Error('the second worker never served a request')
      const key = `order-${keys.length}`
      keys.push(key)
      expect((await post(key)).json<{ service: string }>().service).toBe('legacy')
    }
    // Each worker holds every pin once the other has told it (through the primary).
    await eventually(async () => {
      const routes = (await http(p.admin, '/admin/routes', { headers: auth })).json<{
        routes: { name: string; retryAffinity?: { pinnedKeys: number } }[]
      }>()
      const pinned = routes.routes.find((r) => r.name === 'orders')?.retryAffinity?.pinnedKeys
      return pinned === keys.length * 2
    }, `both workers to hold the ${keys.length} pins`)
    // A worker dies; the primary starts a replacement and gives it the pins its siblings
    // reported, so the retries it takes follow them too.
    const victim = [...workerPidsOf(proxy)][0]!
    process.kill(victim, 'SIGKILL')
    await eventually(
      async () =>
        proxy.lines.some(
          (l) =>
            l.msg === 'worker exited unexpectedly; starting a new one' && l.workerPid === victim,
        ),
      'the primary to see the worker die',
    )
    await eventually(async () => {
      const answer = await http(p.admin, '/admin/routes', { headers: auth })
      if (answer.status !== 200) return false
      const routes = answer.json<{
        routes: { name: string; retryAffinity?: { pinnedKeys: number } }[]
      }>()
      const pinned = routes.routes.find((r) => r.name === 'orders')?.retryAffinity?.pinnedKeys
      return pinned === keys.length * 2
    }, `the replacement worker to hold the ${keys.length} pins too`)
    const switched = await http(p.admin, '/admin/routes/orders', {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: '{"targets":[{"service":"modern","weight":1}]}',
    })
    expect(switched.status).toBe(200)
    const before = workerPidsOf(proxy)
    for (const key of keys)
      expect((await post(key)).json<{ service: string }>().service).toBe('legacy')
    // The replacement took some of those retries (the primary hands connections out in turn).
    const replacement = [...workerPidsOf(proxy)].filter((pid) => !before.has(pid))
    expect(replacement).toHaveLength(1)
    expect((await post('order-new')).json<{ service: string }>().service).toBe('modern')
    proxy.child.kill('SIGTERM')
    const exit = await proxy.exited
    expect(exit, `proxy output:\n${proxy.stdout()}\n${proxy.stderr()}`).toEqual({
      code: 0,
      signal: null,
    })
  })
})

function workerPidsOf(proxy: ProxyProcess): Set<number> {
  return new Set(
    proxy.lines
      .filter((l) => l.msg === 'access' && l.listener === 'inbound')
      .map((l) => l.pid as number),
  )
}
