// Dropped listeners in the multi-process mode: each worker reports the listeners it is not
// listening on (when it comes up and after each reload), and the primary's /readyz reports a
// listener down when no ready worker listens on it. node:cluster hands a port's connections
// only to the workers listening on it, so while one worker still listens the port answers.
// The workers are in-memory fakes of cluster's Worker; the worker side is the real
// serveWorkerCommands on a fake process channel and a fake runtime.

import type { Worker } from 'node:cluster'
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createClusterBackend, serveWorkerCommands } from '../../../src/proxy/admin/cluster.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import type { ProxyInternals } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

const config = parseProxyConfig(
  `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
listeners:
  - { name: public, role: gateway, port: 0, routes: [{ name: outside, match: { prefix: / }, targets: [{ service: orders }] }] }
  - { name: internal, role: gateway, port: 0, routes: [{ name: inside, match: { prefix: / }, targets: [{ service: orders }] }] }
workers: 2
`,
  'listeners',
)

function primary() {
  const backend = createClusterBackend({
    config,
    configText: '(the test config)',
    loadConfig: async () => ({ config, text: '(the test config)' }),
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock: new ManualClock(0),
    commandTimeoutMs: 60_000,
  })
  backend.expect(2)
  const up = (id: number): FakeWorker => {
    const worker = new FakeWorker(id, { answering: true })
    backend.attach(worker as unknown as Worker)
    worker.start()
    return worker
  }
  return { backend, up }
}

describe('cluster backend: listeners a worker is not listening on', () => {
  it('is not ready when no ready worker listens on a listener, and names it', () => {
    const { backend, up } = primary()
    const a = up(1)
    const b = up(2)
    expect(backend.ready()).toBe(true)
    a.emit('message', { bw: 'listeners', down: ['internal'] })
    // b still listens on it: the port answers.
    expect(backend.listenersDown()).toEqual([])
    expect(backend.ready()).toBe(true)
    b.emit('message', { bw: 'listeners', down: ['internal', 'public'] })
    expect(backend.listenersDown()).toEqual(['internal'])
    expect(backend.ready()).toBe(false)
    // A later reload bound it again in a.
    a.emit('message', { bw: 'listeners', down: [] })
    expect(backend.ready()).toBe(true)
  })

  it('forgets the report of a worker that exited', () => {
    const { backend, up } = primary()
    const a = up(1)
    const b = up(2)
    a.emit('message', { bw: 'listeners', down: ['public'] })
    b.emit('message', { bw: 'listeners', down: ['public'] })
    expect(backend.ready()).toBe(false)
    backend.detach(b as unknown as Worker)
    up(3)
    expect(backend.listenersDown()).toEqual([])
    expect(backend.ready()).toBe(true)
  })

  it('ignores a malformed report', () => {
    const { backend, up } = primary()
    const a = up(1)
    const b = up(2)
    a.emit('message', { bw: 'listeners', down: 'public' })
    b.emit('message', { bw: 'listeners', down: [42, 'public'] })
    expect(backend.listenersDown()).toEqual([])
  })

  it('a worker reports its listeners when it comes up, after every reload (failed or not), and when one is bound again', async () => {
    let down: string[] = []
    let failReload = false
    let changed: (() => void) | undefined
    const runtime = {
      onRetryPinReached: () => {},
      listenersDown: () => down,
      logSwitchesAtDebug: () => {},
      onListenersChanged: (listener: (() => void) | undefined) => {
        changed = listener
      },
      reload: async () => {
        down = ['internal']
        if (failReload) throw new Error('cannot bind internal')
      },
    } as unknown as ProxyInternals
    const sent: unknown[] = []
    const channel = Object.assign(new EventEmitter(), {
      connected: true,
      send: (message: unknown) => {
        sent.push(message)
        return true
      },
    }) as unknown as NodeJS.Process & EventEmitter
    const stop = serveWorkerCommands(runtime, channel, () => {})
    const reports = () =>
      sent
        .filter((m) => (m as { bw: string }).bw === 'listeners')
        .map((m) => (m as { down: string[] }).down)
    expect(reports()).toEqual([[]])
    failReload = true
    channel.emit('message', { bw: 'request', id: 1, command: { op: 'reload' } })
    await new Promise((resolve) => setImmediate(resolve))
    expect(reports()).toEqual([[], ['internal']])
    expect(sent.at(-1)).toMatchObject({ bw: 'reply', id: 1, ok: false })
    // Bound again between reloads: the runtime says so, and the worker reports it.
    down = []
    changed?.()
    expect(reports()).toEqual([[], ['internal'], []])
    stop()
    expect(changed).toBeUndefined()
  })
})
