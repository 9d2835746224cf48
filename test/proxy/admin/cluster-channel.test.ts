// The primary's side of the worker IPC channel when the channel is closing: a worker that drains
// and disconnects while a retry pin or a command is on its way. Node reports such a failed send
// as an 'error' event when the sender passed no callback, and an 'error' event nobody listens
// to is an uncaught exception: it ended the primary with exit code 1 in the middle of a clean
// SIGTERM shutdown (seen once in CI, in the --workers 2 retry-affinity end-to-end test). The
// workers here are in-memory fakes of cluster's Worker that fail every send the way Node does.

import type { Worker } from 'node:cluster'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
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

function setup() {
  const log = captureLog()
  const clock = new ManualClock(0)
  const config = parseProxyConfig(yaml, 'test')
  const backend = createClusterBackend({
    config,
    configText: '(the test config)',
    loadConfig: async () => ({ config, text: '(the test config)' }),
    logger: createJsonLogger({ output: log, level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock,
    commandTimeoutMs: 60_000,
  })
  const a = new FakeWorker(1, { closing: true })
  const b = new FakeWorker(2, { closing: true })
  backend.attach(a as unknown as Worker)
  backend.attach(b as unknown as Worker)
  a.start()
  b.start()
  return { backend, a, b, log }
}

/** Lets nextTick and promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve))

describe('cluster backend: a closing worker channel', () => {
  it('forwards a retry pin to a worker whose channel fails without an uncaught error', async () => {
    const { a, b } = setup()
    const uncaught: unknown[] = []
    const onUncaught = (error: unknown) => uncaught.push(error)
    process.on('uncaughtException', onUncaught)
    try {
      a.emit('message', {
        bw: 'pin',
        route: 'orders',
        key: 'k-1',
        service: 'legacy',
        expiresAt: 1,
      })
      await settle()
      await settle()
    } finally {
      process.off('uncaughtException', onUncaught)
    }
    expect(b.sent).toContainEqual(expect.objectContaining({ bw: 'pin', key: 'k-1' }))
    expect(uncaught).toEqual([])
  })

  it('settles a drain at once when the send fails, instead of waiting for the command timeout', async () => {
    const { backend, a, b } = setup()
    let settled = false
    const drained = backend.drainAll().then(() => {
      settled = true
    })
    await settle()
    await settle()
    expect(settled).toBe(true)
    await drained
    expect(a.sent).toContainEqual(expect.objectContaining({ bw: 'request' }))
    expect(b.sent).toContainEqual(expect.objectContaining({ bw: 'request' }))
  })

  it('fails a command whose send fails with the channel error', async () => {
    const { backend } = setup()
    // A read names each worker that did not answer, and why.
    const read = await backend.services()
    expect(read.map((w) => w.error)).toEqual(['Channel closed', 'Channel closed'])
    await expect(backend.isolate('orders')).rejects.toThrow('Channel closed')
  })

  it("logs an 'error' the worker's channel reports, rather than letting it end the primary", () => {
    const { a, log } = setup()
    expect(() => a.emit('error', new Error('EPIPE'))).not.toThrow()
    expect(log.lines()).toContainEqual(
      expect.objectContaining({ msg: 'worker channel error', workerPid: 1001, error: 'EPIPE' }),
    )
  })
})
