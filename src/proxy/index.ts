// breakwater/proxy: ambassador, sidecar and strangler fig in one process, configured in YAML.
// The runtime (startProxy), config loader and CLI are exported from here as they land.

// Type-only re-exports of what the exported types name (the logger and metrics registry
// startProxy takes, the parts of a ProxyConfig, a service's exchange), so that a user can
// write them: none loads a module.
export type {
  LogFields,
  Logger,
  LogLevel,
  LogThreshold,
} from '../observability/logger.js'
export type {
  Counter,
  CounterOptions,
  Gauge,
  GaugeOptions,
  Histogram,
  HistogramOptions,
  HistogramSnapshot,
  LabelValues,
  MetricOptions,
  MetricsRegistry,
} from '../observability/metrics.js'
export type {
  ConfigProblem,
  ProxyConfigDocument,
  ProxyConfigInput,
  ProxyConfigOverrides,
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
  AdminConfig,
  BreakerConfig,
  BulkheadConfig,
  CapturedResponse,
  DiscoveryConfig,
  EndpointState,
  ExchangeOptions,
  ForwardOptions,
  ForwardOutcome,
  ForwardRequest,
  IdempotencyStoreConfig,
  LimitsConfig,
  ListenerConfig,
  ListenerTlsConfig,
  OutboundAuthConfig,
  OutlierEjectionConfig,
  ProxyConfig,
  ProxyResponse,
  RetryAffinityConfig,
  RetryConfig,
  RouteConfig,
  RouteIdempotencyConfig,
  RouteMatchConfig,
  RouteState,
  RouteTargetConfig,
  SecretSource,
  ServiceConfig,
  ServiceRuntime,
  ServiceState,
  ShadowConfig,
  ShadowMismatch,
  TimeoutsConfig,
  TunnelEnd,
  TunnelOutcome,
  TunnelRequest,
  UpstreamTlsConfig,
  WebSocketConfig,
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
