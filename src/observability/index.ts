// Observability for breakwater's long-running processes (relay, saga worker, proxy): JSON
// logs with secrets redacted, a small Prometheus registry, and the /metrics server.

export {
  type BufferedOutput,
  type BufferedOutputOptions,
  createBufferedOutput,
} from './buffered-output.js'
export type {
  JsonLoggerOptions,
  LogFields,
  Logger,
  LogLevel,
  LogOutput,
  LogThreshold,
} from './logger.js'
export { createJsonLogger, logThresholds } from './logger.js'
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
  MetricsRegistryOptions,
} from './metrics.js'
export {
  createMetricsRegistry,
  escapeHelp,
  escapeLabelValue,
  formatSampleValue,
  MetricsCollectTimeoutError,
  metricsPerRegistry,
  PROMETHEUS_CONTENT_TYPE,
} from './metrics.js'
export type { MetricsServer, MetricsServerOptions } from './metrics-server.js'
export { HealthCheckTimeoutError, startMetricsServer } from './metrics-server.js'
export { isSecretKey, REDACTED, redactSecrets } from './redact.js'
