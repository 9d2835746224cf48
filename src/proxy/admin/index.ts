// The proxy's admin API: config, service and route state, route switch and rollback, reload,
// breaker isolate/reset, behind a bearer token; /metrics, /healthz and /readyz beside it.

export type {
  AdminBackend,
  ReloadReport,
  StartOnlySettings,
  WorkerReload,
  WorkerRoutes,
  WorkerServices,
} from './backend.js'
export { configForDisplay, mergeRoutes } from './backend.js'
export type { AdminServer, AdminServerOptions } from './server.js'
export { parseTargets, resolveSecret, startAdminServer, tokenMatches } from './server.js'
