// What the cluster backend's tests with in-memory fake workers share: a two-worker config, a
// backend over it on a clock that stands still, and a fake typed as a worker.
import type { Worker } from 'node:cluster'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { type ClusterBackend, createClusterBackend } from '../../../src/proxy/admin/cluster.js'
import { type AdminServer, startAdminServer } from '../../../src/proxy/admin/server.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import type { ProxyConfig } from '../../../src/proxy/contracts.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

/** A config with one service, one listener and two workers. */
export const twoWorkersYaml = `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
listeners:
  - { name: out, role: ambassador, host: 127.0.0.1, port: 0 }
workers: 2
`

/** Lets nextTick and promise callbacks run. */
export const settle = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve))

/**
 * A cluster backend over {@link twoWorkersYaml}, on a clock that never moves (so no command
 * times out on its own), logging to a capture.
 */
export function twoWorkerBackend(): ClusterBackend {
  const config = parseProxyConfig(twoWorkersYaml, 'test')
  return createClusterBackend({
    config,
    configText: twoWorkersYaml,
    loadConfig: async () => ({ config, text: twoWorkersYaml }),
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock: new ManualClock(0),
    commandTimeoutMs: 60_000,
  })
}

/** The fake, typed as the Worker it stands in for (for attach and detach). */
export function asWorker(worker: FakeWorker): Worker {
  return worker as unknown as Worker
}

/**
 * A cluster backend on `before` whose reloads read `after`, on a clock that never moves,
 * `up`: attaches an answering fake worker with that id and plays its start, and the primary's
 * `log`.
 */
export function reloadingBackend(
  before: { config: ProxyConfig; text: string },
  after: { config: ProxyConfig; text: string },
): { backend: ClusterBackend; up(id: number): FakeWorker; log: ReturnType<typeof captureLog> } {
  const log = captureLog()
  const backend = createClusterBackend({
    config: before.config,
    configText: before.text,
    loadConfig: async () => after,
    logger: createJsonLogger({ output: log, level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock: new ManualClock(0),
    commandTimeoutMs: 60_000,
  })
  const up = (id: number): FakeWorker => {
    const worker = new FakeWorker(id, { answering: true })
    backend.attach(asWorker(worker))
    worker.start()
    return worker
  }
  return { backend, up, log }
}

/** The primary's admin API over `backend` on loopback, its token `token` (close it after). */
export function adminApiOver(backend: ClusterBackend, token: string): Promise<AdminServer> {
  return startAdminServer({
    config: { host: '127.0.0.1', port: 0, token: { env: 'T' } },
    backend,
    deps: {
      clock: new ManualClock(0),
      logger: createJsonLogger({ output: captureLog() }),
      metrics: createMetricsRegistry(),
    },
    env: { T: token },
  })
}
