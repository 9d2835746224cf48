// breakwater/proxy: ambassador, sidecar and strangler fig in one process, configured in YAML.
// The runtime (startProxy), config loader and CLI are exported from here as they land.

export type {
  ConfigProblem,
  ProxyConfigDocument,
  ProxyConfigInput,
  ProxyStartErrorCode,
} from './config/index.js'
export {
  ConfigInvalidError,
  loadProxyConfig,
  ProxyClosedError,
  ProxyStartError,
  parseProxyConfig,
  proxyConfigJsonSchema,
  proxyConfigSchema,
} from './config/index.js'
export type {
  CapturedResponse,
  ForwardOutcome,
  ForwardRequest,
  ListenerConfig,
  ProxyConfig,
  RouteConfig,
  RouteState,
  ServiceConfig,
  ServiceRuntime,
  ServiceState,
  ShadowMismatch,
} from './contracts.js'
export {
  connectionNamedHeaders,
  forwardableHeaders,
  HOP_BY_HOP_HEADERS,
  isHopByHop,
} from './hop-by-hop.js'
export type { Proxy, ProxyDrainReport, StartProxyOptions } from './runtime.js'
export { startProxy } from './runtime.js'
// What a service's exchange() rejects with (docs/errors.md): exported so that callers can test
// `instanceof` and read its `status` and `service`, not only its `code`.
export { UpstreamError } from './upstream/service-runtime.js'
