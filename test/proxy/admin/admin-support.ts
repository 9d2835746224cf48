// What the admin API server's tests share: a server on loopback, on a free port, over a stub
// backend (members the test needs, on top of always ready with no listener down), with the real
// clock, a captured log and its own metrics registry.
import { afterEach } from 'vitest'
import { systemClock } from '../../../src/core/clock.js'
import {
  createJsonLogger,
  type LogOutput,
  type LogThreshold,
} from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import type { AdminBackend } from '../../../src/proxy/admin/backend.js'
import { type AdminServer, startAdminServer } from '../../../src/proxy/admin/server.js'
import { captureLog } from '../runtime/helpers.js'

/** The token of every test server (read from `env.T`). */
export const adminToken = 'admin-token-0123456789abcdef'

/** Options of {@link startTestAdmin}. */
export interface TestAdminOptions {
  /** The stub backend's members besides `ready()` (true) and `listenersDown()` (none). */
  readonly backend?: Readonly<Record<string, unknown>>
  /** Where the server logs. @default a capture nobody reads */
  readonly log?: LogOutput
  /** The logger's level. @default the logger's default */
  readonly level?: LogThreshold
  /** @default 127.0.0.1 */
  readonly host?: string
  readonly headersTimeoutMs?: number
  readonly requestTimeoutMs?: number
}

/** Starts an admin API server for a test (close it after). */
export function startTestAdmin(options: TestAdminOptions = {}): Promise<AdminServer> {
  const { backend, log, level, host = '127.0.0.1', ...timeouts } = options
  return startAdminServer({
    config: { host, port: 0, token: { env: 'T' } },
    backend: {
      ready: () => true,
      listenersDown: () => [],
      ...backend,
    } as unknown as AdminBackend,
    deps: {
      clock: systemClock,
      logger: createJsonLogger({ output: log ?? captureLog(), ...(level ? { level } : {}) }),
      metrics: createMetricsRegistry(),
    },
    env: { T: adminToken },
    ...timeouts,
  })
}

/**
 * {@link startTestAdmin} for the tests of the calling file, each server it started closed after
 * its test.
 */
export function useTestAdmin(): (options?: TestAdminOptions) => Promise<AdminServer> {
  const started: AdminServer[] = []
  afterEach(async () => {
    await Promise.all(started.splice(0).map((server) => server.close()))
  })
  return async (options) => {
    const server = await startTestAdmin(options)
    started.push(server)
    return server
  }
}
