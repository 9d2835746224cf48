// A change (route switch, isolation) that only some workers apply: the workers that applied it
// keep it, so the primary records it (a restarted worker is given it too) and the caller is
// told which workers did not apply it. The workers are in-memory fakes of cluster's Worker.

import type { Worker } from 'node:cluster'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { createClusterBackend } from '../../../src/proxy/admin/cluster.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

const yaml = `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
  legacy: { endpoints: ['http://127.0.0.1:2'] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: main, match: { prefix: / }, targets: [{ service: legacy }, { service: orders, weight: 0 }] }
workers: 2
`
const config = parseProxyConfig(yaml, 'partial')

// The file after an edit: the main route goes to orders, and draining takes 2 s.
const edited = parseProxyConfig(
  yaml
    .replace('[{ service: legacy }, { service: orders, weight: 0 }]', '[{ service: orders }]')
    .replace('workers: 2', 'drainTimeoutMs: 2000\nworkers: 2'),
  'partial',
)

function newBackend(
  clock = new ManualClock(0),
  loadConfig: () => Promise<{ config: typeof config; text: string }> = async () => ({
    config,
    text: yaml,
  }),
): ReturnType<typeof createClusterBackend> {
  return createClusterBackend({
    config,
    configText: yaml,
    loadConfig,
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock,
    commandTimeoutMs: 60_000,
  })
}

describe('cluster backend: a change only some workers apply', () => {
  it('records it for restarted workers and names the workers that did not apply it', async () => {
    const backend = newBackend()
    const up = (worker: FakeWorker): FakeWorker => {
      backend.attach(worker as unknown as Worker)
      worker.start()
      return worker
    }
    up(new FakeWorker(1, { answering: true }))
    const failing = up(
      new FakeWorker(2, {
        answering: true,
        refusing: (command) => (command.op === 'reload' ? undefined : 'runtime fault'),
      }),
    )
    const targets = [{ service: 'orders', weight: 1 }]
    const error = await backend.switchRoute('main', targets).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(PartiallyAppliedError)
    expect((error as PartiallyAppliedError).applied).toEqual([1001])
    expect((error as PartiallyAppliedError).failed).toEqual([{ pid: 1002, error: 'runtime fault' }])
    await expect(backend.isolate('orders')).rejects.toThrow('not by worker 1002 (runtime fault)')

    // The worker that failed is replaced: its replacement runs what its sibling runs.
    backend.detach(failing as unknown as Worker)
    const next = up(new FakeWorker(3, { answering: true }))
    expect(next.commands()).toEqual([
      { op: 'switchRoute', route: 'main', targets },
      { op: 'isolate', service: 'orders' },
    ])
  })

  it('records nothing when no worker applied it, and rejects with its error', async () => {
    const backend = newBackend()
    const refusing = new FakeWorker(1, { answering: true, refusing: () => 'no such route' })
    backend.attach(refusing as unknown as Worker)
    refusing.start()
    await expect(backend.switchRoute('main', [{ service: 'orders', weight: 1 }])).rejects.toThrow(
      'no such route',
    )
    const next = new FakeWorker(2, { answering: true })
    backend.attach(next as unknown as Worker)
    next.start()
    expect(next.commands()).toEqual([])
  })

  it('adopts a reload some workers applied and replaces the workers that did not', async () => {
    const clock = new ManualClock(0)
    const backend = newBackend(clock, async () => ({ config: edited, text: 'edited' }))
    const up = (worker: FakeWorker): FakeWorker => {
      backend.attach(worker as unknown as Worker)
      worker.start()
      return worker
    }
    const applying = up(new FakeWorker(1, { answering: true }))
    const failing = up(
      new FakeWorker(2, {
        answering: true,
        refusing: (command) => (command.op === 'reload' ? 'cannot read tls file' : undefined),
      }),
    )
    // A switch made before the reload: the reload edits main's targets, which ends it, in the
    // primary too.
    await backend.switchRoute('main', [{ service: 'legacy', weight: 1 }])

    const error = await backend.reload().then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(PartiallyAppliedError)
    expect((error as PartiallyAppliedError).applied).toEqual([1001])
    expect((error as PartiallyAppliedError).failed).toEqual([
      { pid: 1002, error: 'cannot read tls file' },
    ])
    // The new file is in force in the primary: the workers that run it and a replacement
    // (which reads the file) agree with what GET /admin/config shows.
    expect(await backend.config()).toBe(edited)
    // The worker still on the old file is asked to drain and exit, and is out of commands.
    expect(failing.signals).toEqual(['SIGTERM'])
    expect(applying.signals).toEqual([])
    expect(backend.readyWorkers()).toBe(1)
    await backend.isolate('orders')
    expect(failing.commands().filter((c) => (c as { op: string }).op === 'isolate')).toEqual([])

    // Its replacement is given no route switch (the reload dropped it), only the isolation.
    failing.exit(0, null)
    backend.detach(failing as unknown as Worker)
    const next = up(new FakeWorker(3, { answering: true }))
    expect(next.commands()).toEqual([{ op: 'isolate', service: 'orders' }])
    // Exited in time: no SIGKILL follows.
    await clock.advance(60_000)
    expect(failing.signals).toEqual(['SIGTERM'])
  })

  it('kills a worker being replaced that has not exited when its drain time is up', async () => {
    const clock = new ManualClock(0)
    const backend = newBackend(clock, async () => ({ config: edited, text: 'edited' }))
    for (const worker of [
      new FakeWorker(1, { answering: true }),
      new FakeWorker(2, { answering: true, refusing: () => 'stuck' }),
    ]) {
      backend.attach(worker as unknown as Worker)
      worker.start()
    }
    const hung = new FakeWorker(3, { answering: true, refusing: () => 'stuck' })
    backend.attach(hung as unknown as Worker)
    hung.start()
    await expect(backend.reload()).rejects.toBeInstanceOf(PartiallyAppliedError)
    expect(hung.signals).toEqual(['SIGTERM'])
    // The new config's drain time (2 s) plus 5 s of grace.
    await clock.advance(6_999)
    expect(hung.signals).toEqual(['SIGTERM'])
    await clock.advance(1)
    expect(hung.signals).toEqual(['SIGTERM', 'SIGKILL'])
  })

  it('keeps the old config everywhere when no worker applied the reload', async () => {
    const backend = newBackend(new ManualClock(0), async () => ({ config: edited, text: 'edited' }))
    const refusing = new FakeWorker(1, { answering: true, refusing: () => 'cannot bind' })
    backend.attach(refusing as unknown as Worker)
    refusing.start()
    const refused = await backend.reload()
    expect(refused?.code).toBe('CONFIG_INVALID')
    expect(refused?.message).toContain('cannot bind')
    expect(await backend.config()).toBe(config)
    expect(refusing.signals).toEqual([])
  })
})
