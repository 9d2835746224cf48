// A gateway whose idempotency routes are guarded over a fresh SQLite store, for the tests
// that need the guard in the request path but not a particular engine.

import type { RouteConfig } from '../../../src/proxy/contracts.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import {
  createSidecarIdempotency,
  openProxyIdempotency,
} from '../../../src/proxy/inbound/sidecar-idempotency.js'
import { createTestSqlite } from '../../support/sqlite.js'
import { type Gateway, startGateway } from './harness.js'

/**
 * Starts a gateway over `upstreams` (service name → URL) and `routes` with a SQLite store of
 * its own; pushes the closing of the gateway, the store and the file onto `cleanups` (run them
 * last first).
 */
export async function startSqliteGuardedGateway(
  upstreams: Readonly<Record<string, string>>,
  routes: readonly RouteConfig[],
  cleanups: (() => Promise<void> | void)[],
): Promise<Gateway> {
  const sqlite = createTestSqlite('guarded-gateway')
  cleanups.push(() => sqlite.cleanup())
  const store = await openProxyIdempotency(sqlite.url)
  cleanups.push(() => store.close())
  const gw = await startGateway(upstreams, routes, createRouteTable(routes), {
    idempotency: createSidecarIdempotency({ idempotency: store.idempotency }),
  })
  cleanups.push(() => gw.close())
  return gw
}
