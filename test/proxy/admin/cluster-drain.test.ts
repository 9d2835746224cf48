// Draining the workers (SIGTERM to the primary) while a worker is still starting: a restarted
// worker that has not come up yet does not listen for commands, so a `drain` request sent to it
// was lost and the primary waited the whole command timeout for its answer, and then for a
// worker that never drained. A worker not up yet is sent SIGTERM instead (a worker drains on
// it, and one still starting stops as soon as it is up). The workers are in-memory fakes.

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
listeners:
  - { name: out, role: ambassador, host: 127.0.0.1, port: 0 }
workers: 2
`

/** Lets nextTick and promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve))

describe('cluster backend: drain', () => {
  it('asks the workers that are up to drain and signals the one still starting', async () => {
    const config = parseProxyConfig(yaml, 'test')
    const backend = createClusterBackend({
      config,
      configText: yaml,
      loadConfig: async () => ({ config, text: yaml }),
      logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
      metrics: createMetricsRegistry(),
      clock: new ManualClock(0),
      commandTimeoutMs: 60_000,
    })
    const up = new FakeWorker(1, { answering: true })
    backend.attach(up as unknown as Worker)
    up.start()
    // A replacement that asked for its config and is binding its listeners: it answers nothing.
    const starting = new FakeWorker(2)
    backend.attach(starting as unknown as Worker)
    starting.emit('message', { bw: 'starting' })
    let drained = false
    void backend.drainAll().then(() => {
      drained = true
    })
    await settle()
    expect(drained).toBe(true)
    expect(up.commands()).toEqual([{ op: 'drain' }])
    expect(up.signals).toEqual([])
    expect(starting.commands()).toEqual([])
    expect(starting.signals).toEqual(['SIGTERM'])
    expect(backend.ready()).toBe(false)
  })

  it('signals a worker being replaced only once: a second SIGTERM would force its stop', async () => {
    const config = parseProxyConfig(yaml, 'test')
    const backend = createClusterBackend({
      config,
      configText: yaml,
      loadConfig: async () => ({ config, text: yaml }),
      logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
      metrics: createMetricsRegistry(),
      clock: new ManualClock(0),
      commandTimeoutMs: 60_000,
    })
    const applying = new FakeWorker(1, { answering: true })
    const refusing = new FakeWorker(2, {
      answering: true,
      refusing: (command) => (command.op === 'reload' ? 'cannot bind' : undefined),
    })
    for (const worker of [applying, refusing]) {
      backend.attach(worker as unknown as Worker)
      worker.start()
    }
    await expect(backend.reload()).rejects.toBeInstanceOf(PartiallyAppliedError)
    expect(refusing.signals).toEqual(['SIGTERM'])
    await backend.drainAll()
    expect(refusing.signals).toEqual(['SIGTERM'])
    expect(applying.commands().at(-1)).toEqual({ op: 'drain' })
  })
})
