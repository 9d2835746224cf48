// How soon the primary replaces a worker that exited: a worker that crashed while serving is
// replaced after 500 ms, but one that keeps failing to start (its idempotency store down, a TLS
// file gone) used to be restarted every 500 ms for ever, each time forking a whole Node
// process; the delay now doubles for each worker in a row that exited before it came up, up
// to 30 s, and starts over once one comes up.

import type { Worker } from 'node:cluster'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createClusterBackend, RestartBackoff } from '../../../src/proxy/admin/cluster.js'
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

describe('worker restart delay', () => {
  it('doubles for each worker in a row that did not come up, and starts over when one did', () => {
    const backoff = new RestartBackoff()
    expect(backoff.next(true)).toBe(500)
    expect([1, 2, 3, 4, 5, 6, 7, 8].map(() => backoff.next(false))).toEqual([
      500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000,
    ])
    expect(backoff.next(true)).toBe(500)
    expect(backoff.next(false)).toBe(500)
    expect(backoff.next(false)).toBe(1_000)
  })

  it('refuses bad delays', () => {
    expect(() => new RestartBackoff({ firstDelayMs: 0 })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'firstDelayMs' }),
    )
    expect(() => new RestartBackoff({ firstDelayMs: 1_000, maxDelayMs: 999 })).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'maxDelayMs' }),
    )
  })

  it('the backend says whether a worker it forgets had come up', () => {
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
    const served = new FakeWorker(1, { answering: true })
    backend.attach(served as unknown as Worker)
    served.start()
    const neverUp = new FakeWorker(2, { answering: true })
    backend.attach(neverUp as unknown as Worker)
    neverUp.emit('message', { bw: 'starting' })
    expect(backend.detach(served as unknown as Worker)).toBe(true)
    expect(backend.detach(neverUp as unknown as Worker)).toBe(false)
    expect(backend.detach(neverUp as unknown as Worker)).toBe(false)
  })
})
