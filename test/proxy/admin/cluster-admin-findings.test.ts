// Defects of the multi-process admin API found by exploratory testing: a restarted worker
// served before it was given the route switches and isolations; one hung worker failed every
// admin command; commands were refused 404 while no worker was ready; reload refusals were
// counted by the primary and again by each worker; merged shadow examples ignored
// keepExamples; bodies of commands that take none were ignored. The workers are in-memory
// fakes of cluster's Worker; the worker side is the real receiveWorkerConfig and
// serveWorkerCommands on a fake channel.

import type { Worker } from 'node:cluster'
import { EventEmitter } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { keepExamplesOf, mergeRoutes } from '../../../src/proxy/admin/backend.js'
import {
  type ClusterBackend,
  createClusterBackend,
  mergeMetricsText,
  primaryOwnedFamilies,
  receiveWorkerConfig,
  serveWorkerCommands,
} from '../../../src/proxy/admin/cluster.js'
import type { AdminServer } from '../../../src/proxy/admin/server.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import type { RouteState } from '../../../src/proxy/contracts.js'
import type { ProxyInternals } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { adminApiOver, settle } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

const yaml = `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
  legacy: { endpoints: ['http://127.0.0.1:2'] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: main, match: { prefix: / }, targets: [{ service: legacy }], shadow: { service: orders, keepExamples: 2 } }
workers: 2
`
const config = parseProxyConfig(yaml, 'findings')
const token = 'findings-token'

function newBackend(
  clock = new ManualClock(0),
  loadConfig: () => Promise<{ config: typeof config; text: string }> = async () => ({
    config,
    text: yaml,
  }),
): { backend: ClusterBackend; metrics: ReturnType<typeof createMetricsRegistry> } {
  const metrics = createMetricsRegistry()
  const backend = createClusterBackend({
    config,
    configText: yaml,
    loadConfig,
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics,
    clock,
    commandTimeoutMs: 10_000,
  })
  return { backend, metrics }
}

/** An answering fake whose reads answer as a worker's runtime does (empty state). */
class ReadingWorker extends FakeWorker {
  constructor(id: number) {
    super(id)
  }
  override send(message: unknown, callback?: (error: Error | null) => void): boolean {
    const request = message as { bw?: string; id?: number; command?: { op: string } }
    this.sent.push(message)
    if (callback !== undefined) process.nextTick(callback, null)
    if (request.bw !== 'request') return true
    const op = request.command?.op
    const value =
      op === 'routes'
        ? { pid: this.process.pid, routes: [] }
        : op === 'services'
          ? { pid: this.process.pid, services: [] }
          : op === 'metrics'
            ? 'breakwater_proxy_config_reloads_total 0\n'
            : null
    process.nextTick(() => this.emit('message', { bw: 'reply', id: request.id, ok: true, value }))
    return true
  }
}

const attach = (backend: ClusterBackend, worker: FakeWorker): FakeWorker => {
  backend.attach(worker as unknown as Worker)
  return worker
}

let admin: AdminServer | undefined
afterEach(async () => {
  await admin?.close()
  admin = undefined
})

async function call(
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const { port } = (admin as AdminServer).address()
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body }),
  })
  const text = await res.text()
  return { status: res.status, json: text === '' ? {} : JSON.parse(text) }
}

describe('a starting worker is given the switches and isolations before it serves', () => {
  const targets = [{ service: 'orders', weight: 1 }]

  it('the primary sends them with the config, and pushes those recorded while it starts', async () => {
    const { backend } = newBackend()
    attach(backend, new FakeWorker(1, { answering: true })).start()
    await backend.switchRoute('main', targets)
    await backend.isolate('legacy')

    const next = attach(backend, new FakeWorker(2, { answering: true }))
    next.emit('message', { bw: 'starting' })
    expect(next.sent.find((m) => (m as { bw: string }).bw === 'config')).toMatchObject({
      changes: [
        { op: 'switchRoute', route: 'main', targets },
        { op: 'isolate', service: 'legacy' },
      ],
    })
    // Recorded while it binds its listeners (not ready yet): pushed, not waited for.
    await backend.reset('legacy')
    expect(next.sent.at(-1)).toEqual({ bw: 'change', command: { op: 'reset', service: 'legacy' } })
  })

  it('the worker applies them before it reports ready, also those pushed while it started', async () => {
    const sent: unknown[] = []
    const calls: string[] = []
    const ch = Object.assign(new EventEmitter(), {
      connected: true,
      send: (message: unknown) => {
        sent.push(message)
        if ((message as { bw: string }).bw === 'ready') calls.push('ready')
        return true
      },
    }) as unknown as NodeJS.Process & EventEmitter
    const given = receiveWorkerConfig(ch)
    ch.emit('message', {
      bw: 'config',
      text: yaml,
      generation: 0,
      workers: 2,
      changes: [{ op: 'switchRoute', route: 'main', targets }],
    })
    const worker = await given
    // While its runtime starts.
    ch.emit('message', { bw: 'change', command: { op: 'isolate', service: 'legacy' } })
    ch.emit('message', { bw: 'change', command: { op: 'isolate', service: 'unknown' } })
    const runtime = {
      onRetryPinReached: () => {},
      listenersDown: () => [],
      logSwitchesAtDebug: () => {},
      onListenersChanged: () => {},
      switchRoute: (route: string) => calls.push(`switch ${route}`),
      isolate: (service: string) => {
        if (service === 'unknown') throw new Error('no such service')
        calls.push(`isolate ${service}`)
      },
      reset: (service: string) => calls.push(`reset ${service}`),
    } as unknown as ProxyInternals
    serveWorkerCommands(runtime, ch, () => {}, worker)
    expect(calls).toEqual(['switch main', 'isolate legacy', 'ready'])
    // After that the channel's commands apply at once; no collector is left behind.
    ch.emit('message', { bw: 'change', command: { op: 'reset', service: 'legacy' } })
    expect(calls.at(-1)).toBe('reset legacy')
    expect(calls.filter((c) => c === 'reset legacy')).toHaveLength(1)
  })
})

describe('one worker that does not answer', () => {
  it('does not stop the others: a switch is 502 PARTIALLY_APPLIED, reads name it, /metrics serves the rest', async () => {
    const clock = new ManualClock(0)
    const { backend } = newBackend(clock)
    const healthy = attach(backend, new ReadingWorker(1))
    healthy.start()
    // A stopped process: takes commands, never answers.
    attach(backend, new FakeWorker(2)).start()
    admin = await adminApiOver(backend, token)

    const answered = async (
      pending: Promise<{ status: number; json: Record<string, unknown> }>,
    ) => {
      // Until the command timeout passes for the hung worker.
      while (clock.pendingTimers === 0) await settle()
      await clock.advance(10_000)
      return pending
    }
    const switched = await answered(
      call('POST', '/admin/routes/main', JSON.stringify({ targets: [{ service: 'orders' }] })),
    )
    expect(switched.status).toBe(502)
    expect(switched.json).toMatchObject({
      code: 'PARTIALLY_APPLIED',
      appliedBy: [1001],
      notAppliedBy: [{ pid: 1002, error: 'worker 1002 did not answer switchRoute in 10000 ms' }],
    })
    expect(healthy.commands()).toContainEqual({
      op: 'switchRoute',
      route: 'main',
      targets: [{ service: 'orders', weight: 1 }],
    })

    const routes = await answered(call('GET', '/admin/routes'))
    expect(routes.status).toBe(200)
    expect(routes.json).toMatchObject({
      workers: 1,
      notAnsweredBy: [{ pid: 1002, error: 'worker 1002 did not answer routes in 10000 ms' }],
    })
    const services = await answered(call('GET', '/admin/services'))
    expect(services.status).toBe(200)
    expect(services.json.notAnsweredBy).toEqual([
      { pid: 1002, error: 'worker 1002 did not answer services in 10000 ms' },
    ])

    const metrics = backend.metricsText()
    while (clock.pendingTimers === 0) await settle()
    await clock.advance(10_000)
    expect(await metrics).toContain(
      '# worker 1002 did not answer: worker 1002 did not answer metrics',
    )
  })
})

describe('while no worker is ready', () => {
  it('checks routes and services against the config and records the change for the workers to come', async () => {
    const { backend } = newBackend()
    admin = await adminApiOver(backend, token)
    const targets = JSON.stringify({ targets: [{ service: 'orders' }] })
    expect((await call('POST', '/admin/routes/main', targets)).status).toBe(200)
    expect((await call('POST', '/admin/services/legacy/isolate')).status).toBe(200)
    expect((await call('POST', '/admin/routes/nope', targets)).json.code).toBe('ROUTE_NOT_FOUND')
    expect((await call('POST', '/admin/services/nope/isolate')).json.code).toBe('SERVICE_NOT_FOUND')
    // No worker can refuse a bad target now: the primary does.
    const bad = await call(
      'POST',
      '/admin/routes/main',
      JSON.stringify({ targets: [{ service: 'nope' }] }),
    )
    expect(bad.status).toBe(400)
    expect(bad.json.field).toBe('targets[0].service')

    const first = attach(backend, new FakeWorker(1, { answering: true }))
    first.emit('message', { bw: 'starting' })
    expect(first.sent.find((m) => (m as { bw: string }).bw === 'config')).toMatchObject({
      changes: [
        { op: 'switchRoute', route: 'main', targets: [{ service: 'orders', weight: 1 }] },
        { op: 'isolate', service: 'legacy' },
      ],
    })
  })
})

describe('reload failures are counted once, by the primary', () => {
  it('counts a reload some worker refused once, and leaves out the workers’ own series', async () => {
    const { backend, metrics } = newBackend()
    attach(backend, new FakeWorker(1, { answering: true })).start()
    attach(
      backend,
      new FakeWorker(2, {
        answering: true,
        refusing: (command) => (command.op === 'reload' ? 'port in use' : undefined),
      }),
    ).start()
    await expect(backend.reload()).rejects.toThrow(/port in use/)
    expect(await metrics.render()).toContain('breakwater_proxy_config_reload_failures_total 1')

    const worker = [
      '# HELP breakwater_proxy_config_reload_failures_total Config reloads refused.',
      '# TYPE breakwater_proxy_config_reload_failures_total counter',
      'breakwater_proxy_config_reload_failures_total 1',
      '# TYPE breakwater_proxy_config_reloads_total counter',
      'breakwater_proxy_config_reloads_total 2',
    ].join('\n')
    const merged = mergeMetricsText(
      await metrics.render(),
      [{ pid: 7, text: worker }],
      primaryOwnedFamilies,
    )
    const failures = merged
      .split('\n')
      .filter((l) => l.startsWith('breakwater_proxy_config_reload_failures_total'))
    expect(failures).toEqual(['breakwater_proxy_config_reload_failures_total 1'])
    expect(merged).toContain('breakwater_proxy_config_reloads_total{worker="7"} 2')
  })
})

describe('merged shadow examples', () => {
  it('keep the route’s shadow.keepExamples', () => {
    const example = (at: number) =>
      ({ at }) as unknown as NonNullable<RouteState['shadow']>['examples'][number]
    const route = (ats: number[]): RouteState =>
      ({
        name: 'main',
        targets: [],
        overridden: false,
        requestsByService: {},
        shadow: { compared: ats.length, mismatches: ats.length, examples: ats.map(example) },
      }) as unknown as RouteState
    const merged = mergeRoutes(
      [
        { pid: 1, routes: [route([1, 3])] },
        { pid: 2, routes: [route([2, 4])] },
      ],
      keepExamplesOf(config),
    )
    expect(merged[0]?.shadow?.examples.map((e) => e.at)).toEqual([3, 4])
  })
})

describe('bodies and unknown services', () => {
  it('refuses a body a command does not take, and answers 404 before 405 for a service', async () => {
    const { backend } = newBackend()
    attach(backend, new FakeWorker(1, { answering: true })).start()
    admin = await adminApiOver(backend, token)
    const reload = await call('POST', '/admin/reload', '{"x":1}')
    expect(reload.status).toBe(400)
    expect(reload.json).toMatchObject({ code: 'INVALID_BODY', field: 'x' })
    const isolate = await call('POST', '/admin/services/legacy/isolate', '{"bogus":true}')
    expect(isolate.status).toBe(400)
    expect(isolate.json).toMatchObject({ code: 'INVALID_BODY', field: 'bogus' })
    expect((await call('POST', '/admin/services/legacy/isolate', '{}')).status).toBe(200)
    expect((await call('POST', '/admin/reload')).status).toBe(200)
    const missing = await call('GET', '/admin/services/nope/reset')
    expect(missing.status).toBe(404)
    expect(missing.json.code).toBe('SERVICE_NOT_FOUND')
    expect((await call('GET', '/admin/services/legacy/reset')).status).toBe(405)
  })
})
