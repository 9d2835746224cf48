// Retry affinity pins in the multi-process mode: the primary keeps the pins its workers report,
// and a worker that comes up later (a crashed worker's replacement) is given the live ones, so
// that a retry reaching it goes where the first attempt went. The workers are in-memory fakes
// of cluster's Worker that record what they are sent; the worker side is the real
// serveWorkerCommands on a fake process channel and a fake runtime.

import type { Worker } from 'node:cluster'
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createClusterBackend, serveWorkerCommands } from '../../../src/proxy/admin/cluster.js'
import { PinBook } from '../../../src/proxy/admin/pin-book.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import type { SharedRetryPin } from '../../../src/proxy/inbound/routes.js'
import type { ProxyInternals } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

const yaml = (maxKeys: number) => `services:
  legacy: { endpoints: ['http://127.0.0.1:1'] }
  modern: { endpoints: ['http://127.0.0.1:2'] }
listeners:
  - name: in
    role: gateway
    host: 127.0.0.1
    port: 0
    routes:
      - name: orders
        match: { prefix: /orders }
        targets: [{ service: legacy, weight: 50 }, { service: modern, weight: 50 }]
        retryAffinity: { maxKeys: ${maxKeys} }
workers: 2
`

/** The pins sent in `pins` batches (to a worker that came up). */
function batchedPins(worker: FakeWorker): SharedRetryPin[] {
  return worker.sent
    .filter(
      (m): m is { bw: 'pins'; pins: SharedRetryPin[] } => (m as { bw?: string }).bw === 'pins',
    )
    .flatMap((m) => m.pins)
}

function setup(maxKeys = 100) {
  const clock = new ManualClock(1_000_000)
  const config = parseProxyConfig(yaml(maxKeys), 'test')
  const backend = createClusterBackend({
    config,
    configText: '(the test config)',
    loadConfig: async () => ({ config, text: '(the test config)' }),
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock,
    commandTimeoutMs: 60_000,
  })
  const up = (id: number) => {
    const worker = new FakeWorker(id)
    backend.attach(worker as unknown as Worker)
    worker.start()
    return worker
  }
  return { backend, clock, up }
}

const pin = (key: string, service: string, expiresAt: number): SharedRetryPin => ({
  route: 'orders',
  key,
  service,
  expiresAt,
})

describe('cluster backend: retry pins for a worker that comes up later', () => {
  it('gives a new worker the live pins its siblings reported, latest report per key', async () => {
    const { clock, up } = setup()
    const a = up(1)
    const b = up(2)
    a.emit('message', { bw: 'pin', ...pin('k1', 'legacy', 1_600_000) })
    b.emit('message', { bw: 'pin', ...pin('k2', 'modern', 1_600_000) })
    b.emit('message', { bw: 'pin', ...pin('k3', 'legacy', 1_100_000) })
    // k1 reported again (another request of the key reached a target): the latest report wins.
    b.emit('message', { bw: 'pin', ...pin('k1', 'legacy', 1_700_000) })
    // Passed on to the sibling at once, as before.
    expect(b.sent).toContainEqual({ bw: 'pin', ...pin('k1', 'legacy', 1_600_000) })

    // Worker 1 crashed; its replacement comes up after k3 expired.
    await clock.advance(200_000)
    const c = up(3)
    expect(batchedPins(c)).toEqual([pin('k2', 'modern', 1_600_000), pin('k1', 'legacy', 1_700_000)])
    // The siblings already have them: they are not sent the batch.
    expect(batchedPins(a)).toEqual([])
  })

  it('holds no more pins than the routes may hold together, dropping the oldest', () => {
    const { up } = setup(2)
    const a = up(1)
    for (const key of ['k1', 'k2', 'k3'])
      a.emit('message', { bw: 'pin', ...pin(key, 'legacy', 2_000_000) })
    expect(batchedPins(up(2)).map((p) => p.key)).toEqual(['k2', 'k3'])
  })

  it('sends many pins in batches of 1,000', () => {
    const { up } = setup(5_000)
    const a = up(1)
    for (let i = 0; i < 2_500; i++)
      a.emit('message', { bw: 'pin', ...pin(`k${i}`, 'modern', 2_000_000) })
    const b = up(2)
    const batches = b.sent.filter((m) => (m as { bw?: string }).bw === 'pins') as {
      pins: unknown[]
    }[]
    expect(batches.map((m) => m.pins.length)).toEqual([1_000, 1_000, 500])
  })

  it('a worker adopts every pin of a batch', () => {
    const adopted: SharedRetryPin[] = []
    const runtime = {
      adoptRetryPin: (p: SharedRetryPin) => adopted.push(p),
      onRetryPinReached: () => {},
      listenersDown: () => [],
      logSwitchesAtDebug: () => {},
      onListenersChanged: () => {},
    } as unknown as ProxyInternals
    const events = new EventEmitter()
    const channel = Object.assign(events, {
      connected: true,
      send: () => true,
    }) as unknown as NodeJS.Process
    const stop = serveWorkerCommands(runtime, channel, () => {})
    events.emit('message', { bw: 'pins', pins: [pin('k1', 'legacy', 9), pin('k2', 'modern', 9)] })
    events.emit('message', { bw: 'pins', pins: 'not a list' })
    expect(adopted).toEqual([pin('k1', 'legacy', 9), pin('k2', 'modern', 9)])
    stop()
  })

  it('counts the capacity over every route with retry affinity, and trims on a reload', () => {
    const twoRoutes = yaml(7).replace(
      'workers: 2',
      `      - name: refunds
        match: { prefix: /refunds }
        targets: [{ service: legacy, weight: 1 }]
        retryAffinity: { maxKeys: 5 }
      - name: health
        match: { prefix: /health }
        targets: [{ service: legacy, weight: 1 }]
        retryAffinity: false
workers: 2`,
    )
    const config = parseProxyConfig(twoRoutes, 'test')
    expect(PinBook.capacityOf(config)).toBe(12)
    const book = new PinBook(config)
    for (let i = 0; i < 12; i++) book.add(pin(`k${i}`, 'legacy', 10), 0)
    expect(book.size).toBe(12)
    book.configure(parseProxyConfig(yaml(3), 'test'))
    expect([...book.batches(0, 100)].flat().map((p) => p.key)).toEqual(['k9', 'k10', 'k11'])
  })
})
