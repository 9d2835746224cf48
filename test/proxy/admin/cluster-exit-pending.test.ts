// A worker that exits while the primary waits for its answer (it crashed in the middle of a
// reload or an admin command): the command used to wait the whole command timeout (10 s) for
// an answer that could not come, holding the admin call and every reload queued behind it. It
// now fails for that worker as soon as the primary forgets it. The workers are in-memory fakes.

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

describe('cluster backend: a worker that exits before it answers', () => {
  it('fails the command for that worker at once instead of at the timeout', async () => {
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
    const answering = new FakeWorker(1, { answering: true })
    const crashing = new FakeWorker(2)
    for (const worker of [answering, crashing]) {
      backend.attach(worker as unknown as Worker)
      worker.start()
    }
    let outcome: unknown
    void backend.isolate('orders').then(
      () => {
        outcome = 'done'
      },
      (error: unknown) => {
        outcome = error
      },
    )
    await settle()
    expect(outcome).toBeUndefined()
    crashing.exit(null, 'SIGKILL')
    backend.detach(crashing as unknown as Worker)
    await settle()
    expect(outcome).toBeInstanceOf(PartiallyAppliedError)
    expect((outcome as PartiallyAppliedError).failed).toEqual([
      { pid: 1002, error: 'worker 1002 exited before it answered isolate' },
    ])
  })
})
