// The config a worker runs comes from the primary, never from the file: a worker (a first one,
// or one restarted after a crash) is handed the text the primary last accepted, so it cannot
// start on a file the primary refused (nor fail to start on an invalid one, again and again);
// reloads carry the accepted text; and a worker that was still starting when a reload was
// accepted is brought up to date once it is up. The workers are in-memory fakes of cluster's
// Worker; the worker side is the real receiveWorkerConfig/serveWorkerCommands on a fake channel.

import type { Worker } from 'node:cluster'
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import {
  createClusterBackend,
  receiveWorkerConfig,
  serveWorkerCommands,
} from '../../../src/proxy/admin/cluster.js'
import { ConfigInvalidError } from '../../../src/proxy/config/errors.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import type { ProxyConfig } from '../../../src/proxy/contracts.js'
import type { ProxyInternals } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

const first = `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
  legacy: { endpoints: ['http://127.0.0.1:2'] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: main, match: { prefix: / }, targets: [{ service: legacy }] }
workers: 2
`
const second = first.replace('targets: [{ service: legacy }]', 'targets: [{ service: orders }]')

/** Lets nextTick and promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve))

function primary(files: string[] = [second]) {
  const log = captureLog()
  let read = 0
  const backend = createClusterBackend({
    config: parseProxyConfig(first, 'file'),
    configText: first,
    // Each reload reads the next text of `files`; 'invalid' is refused.
    loadConfig: async () => {
      const text = files[read++] as string
      if (text === 'invalid')
        throw new ConfigInvalidError('file', [
          { path: 'services', message: 'broken', line: 1, column: 1 },
        ])
      return { config: parseProxyConfig(text, 'file'), text }
    },
    logger: createJsonLogger({ output: log, level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock: new ManualClock(0),
    commandTimeoutMs: 60_000,
  })
  backend.expect(2)
  const attach = (worker: FakeWorker): FakeWorker => {
    backend.attach(worker as unknown as Worker)
    return worker
  }
  return { backend, attach, log }
}

const reloads = (worker: FakeWorker) =>
  worker.commands().filter((c) => (c as { op: string }).op === 'reload')

describe('cluster backend: the config a worker runs', () => {
  it('hands a starting worker the text it accepted, not what the file says now', async () => {
    const { backend, attach } = primary([second, 'invalid'])
    const a = attach(new FakeWorker(1, { answering: true }))
    const b = attach(new FakeWorker(2, { answering: true }))
    expect(a.start()).toBe(0)
    b.start()
    expect(a.sent).toContainEqual({
      bw: 'config',
      text: first,
      generation: 0,
      workers: 2,
      changes: [],
    })

    expect(await backend.reload()).toBeUndefined()
    // The reload carries the text the primary validated.
    expect(reloads(a)).toEqual([{ op: 'reload', text: second, generation: 1 }])
    // The file is broken now: the reload is refused, and a restarted worker still gets the
    // text in force.
    expect(await backend.reload()).toBeInstanceOf(ConfigInvalidError)
    backend.detach(b as unknown as Worker)
    const c = attach(new FakeWorker(3, { answering: true }))
    expect(c.start()).toBe(1)
    expect(c.sent).toContainEqual({
      bw: 'config',
      text: second,
      generation: 1,
      workers: 2,
      changes: [],
    })
    expect(reloads(c)).toEqual([])
    expect(backend.readyWorkers()).toBe(2)
  })

  it('brings a worker that was starting during a reload onto the new config once it is up', async () => {
    const { backend, attach } = primary()
    const a = attach(new FakeWorker(1, { answering: true }))
    a.start()
    const b = attach(new FakeWorker(2, { answering: true }))
    // b was handed the first text and is still starting (binding its listeners).
    b.emit('message', { bw: 'starting' })
    await backend.switchRoute('main', [{ service: 'legacy', weight: 1 }])
    expect(await backend.reload()).toBeUndefined()
    expect(reloads(b)).toEqual([])
    const switched = [{ service: 'orders', weight: 1 }]
    await backend.switchRoute('main', switched)
    b.emit('message', { bw: 'ready', generation: 0 })
    await settle()
    await settle()
    // The reload first, then the switch made on the new config (the reload edited main's
    // targets, which dropped the switch made before it).
    expect(b.commands()).toEqual([
      { op: 'reload', text: second, generation: 1 },
      { op: 'switchRoute', route: 'main', targets: switched },
    ])
    expect(backend.readyWorkers()).toBe(2)
    expect(backend.hasStartedAll()).toBe(true)
  })

  it('brings up to date a worker that came up while a reload was under way', async () => {
    const { backend, attach } = primary()
    // a answers only when the test says so.
    const a = attach(new FakeWorker(1))
    a.start()
    const b = attach(new FakeWorker(2, { answering: true }))
    b.emit('message', { bw: 'starting' })
    const reloading = backend.reload()
    await settle()
    const request = a.sent.at(-1) as { id: number; command: { op: string } }
    expect(request.command.op).toBe('reload')
    // b comes up on the first text while a applies the second.
    b.emit('message', { bw: 'ready', generation: 0 })
    await settle()
    a.emit('message', { bw: 'reply', id: request.id, ok: true, value: null })
    expect(await reloading).toBeUndefined()
    await settle()
    await settle()
    expect(reloads(b)).toEqual([{ op: 'reload', text: second, generation: 1 }])
    expect(backend.readyWorkers()).toBe(2)
  })

  it('replaces a worker that cannot apply the config in force when it comes up', async () => {
    const { backend, attach, log } = primary()
    const a = attach(new FakeWorker(1, { answering: true }))
    a.start()
    const b = attach(
      new FakeWorker(2, {
        answering: true,
        refusing: (command) => (command.op === 'reload' ? 'cannot bind' : undefined),
      }),
    )
    b.emit('message', { bw: 'starting' })
    expect(await backend.reload()).toBeUndefined()
    b.emit('message', { bw: 'ready', generation: 0 })
    await settle()
    await settle()
    expect(b.signals).toEqual(['SIGTERM'])
    expect(backend.readyWorkers()).toBe(1)
    expect(log.lines().map((l) => l.msg)).toContain(
      'a worker could not apply the config in force; replacing it',
    )
  })
})

describe('worker side: the config comes from the primary', () => {
  function channel() {
    const sent: unknown[] = []
    const ch = Object.assign(new EventEmitter(), {
      connected: true,
      send: (message: unknown) => {
        sent.push(message)
        return true
      },
    }) as unknown as NodeJS.Process & EventEmitter
    return { ch, sent }
  }

  it('asks for the config and resolves with what the primary sends', async () => {
    const { ch, sent } = channel()
    const given = receiveWorkerConfig(ch)
    expect(sent).toEqual([{ bw: 'starting' }])
    ch.emit('message', { bw: 'pin', route: 'x' })
    ch.emit('message', { bw: 'config', text: second, generation: 3, workers: 4 })
    expect(await given).toEqual({ text: second, generation: 3, workers: 4, changes: [] })
    // One listener is left: it collects the changes recorded while the worker starts, until
    // serveWorkerCommands takes over.
    expect(ch.listenerCount('message')).toBe(1)
  })

  it('resolves with nothing when the primary goes away first (nothing to run)', async () => {
    const { ch } = channel()
    const given = receiveWorkerConfig(ch)
    ch.emit('disconnect')
    expect(await given).toBeUndefined()
    expect(ch.listenerCount('disconnect')).toBe(0)
  })

  it('reports the generation it started on, and reloads the text it is sent', async () => {
    const { ch, sent } = channel()
    const applied: (string | undefined)[] = []
    const runtime = {
      onRetryPinReached: () => {},
      listenersDown: () => [],
      logSwitchesAtDebug: () => {},
      onListenersChanged: () => {},
      reload: async (text?: string) => {
        applied.push(text)
      },
      config: () => ({}) as ProxyConfig,
    } as unknown as ProxyInternals
    serveWorkerCommands(runtime, ch, () => {}, 3)
    expect(sent).toContainEqual({ bw: 'ready', generation: 3 })
    ch.emit('message', {
      bw: 'request',
      id: 1,
      command: { op: 'reload', text: second, generation: 4 },
    })
    await settle()
    expect(applied).toEqual([second])
    expect(sent.at(-1)).toMatchObject({ bw: 'reply', id: 1, ok: true })
  })
})
