// The policy scenarios of `breakwater demo policies`: misbehaving local HTTP services, the
// four scenarios that measure the seed's claims, and the report. The CLI is the only caller
// outside this folder; nothing here is part of the package's public API.

export type {
  BreakerScenarioOptions,
  BreakerScenarioResult,
  BreakerTransition,
  BreakerVariantResult,
} from './breaker-scenario.js'
export { concludeBreaker, runBreakerScenario, transitionPath } from './breaker-scenario.js'
export type {
  BulkheadScenarioOptions,
  BulkheadScenarioResult,
  BulkheadVariantResult,
  Downstream,
} from './bulkhead-scenario.js'
export { concludeBulkhead, runBulkheadScenario } from './bulkhead-scenario.js'
export type { DemoClient } from './client.js'
export { createDemoClient, ServiceStatusError } from './client.js'
export type {
  JitterScenarioOptions,
  JitterScenarioResult,
  JitterVariantResult,
} from './jitter-scenario.js'
export { concludeJitter, runJitterScenario } from './jitter-scenario.js'
export type { CallSummary } from './measure.js'
export { CallLog, isFastFailure, peakInWindow, percentile } from './measure.js'
export type { Column, PolicyScenarioResult } from './report.js'
export { renderFooter, renderHeader, renderScenario, renderTable, wrap } from './report.js'
export type { PoliciesDemoOptions, PoliciesDemoResult, PolicyScenarioName } from './run.js'
export { policyScenarioNames, runPoliciesDemo } from './run.js'
export type {
  Behaviour,
  DemoTransport,
  FaultyService,
  FaultyServiceOptions,
  Reaction,
  RequestInfo,
  ServiceStats,
} from './services.js'
export { createFaultyService } from './services.js'
export type { TimeoutScenarioOptions, TimeoutScenarioResult } from './timeout-scenario.js'
export { concludeTimeout, runTimeoutScenario } from './timeout-scenario.js'
export type { Conclusion, ScenarioHeading, VariantResult } from './types.js'
