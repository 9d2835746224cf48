// The root entry point: resilience policies, and runUntilSignal to run a long-running piece
// (relay, subscription, saga worker) until a signal. It must never load a database or broker
// driver; those live behind their own subpaths.

export type { Clock, TimerHandle } from './core/clock.js'
export { sleep, systemClock } from './core/clock.js'
export type { ErrorCode } from './core/error-codes.js'
export { errorCodes } from './core/error-codes.js'
export type { BreakwaterErrorOptions } from './core/errors.js'
export { AbortedError, BreakwaterError, InvalidOptionError } from './core/errors.js'
export type { Jsonified } from './core/jsonified.js'
export type { Backoff, BackoffOptions, Jitter } from './policies/backoff.js'
export { exponentialBackoff } from './policies/backoff.js'
export type {
  BreakerWindowOptions,
  ConsecutiveWindowOptions,
  CountWindowOptions,
  TimeWindowOptions,
} from './policies/breaker-windows.js'
export type { Bulkhead, BulkheadEvent, BulkheadOptions } from './policies/bulkhead.js'
export { bulkhead } from './policies/bulkhead.js'
export type { BulkheadRegistry, BulkheadRegistryOptions } from './policies/bulkhead-registry.js'
export { createBulkheads } from './policies/bulkhead-registry.js'
export type {
  CircuitBreaker,
  CircuitBreakerEvent,
  CircuitBreakerOptions,
  CircuitState,
} from './policies/circuit-breaker.js'
export { circuitBreaker } from './policies/circuit-breaker.js'
export type { Classifier, FailureKind } from './policies/classify.js'
export {
  classifyFailure,
  isTransientFailure,
  isTransientStatus,
  parseRetryAfter,
  retryAfterMsOf,
} from './policies/classify.js'
export type {
  AdoptDeadlineOptions,
  Deadline,
  DeadlineFromHeadersOptions,
  DeadlineOptions,
  HeadersLike,
} from './policies/deadline.js'
export {
  adoptDeadline,
  currentDeadline,
  DEADLINE_HEADER,
  DEFAULT_MAX_DEADLINE_MS,
  deadlineFromHeaders,
  deadlineHeaderValue,
  GRPC_TIMEOUT_HEADER,
  parseGrpcTimeout,
  remainingMs,
  withDeadline,
} from './policies/deadline.js'
export {
  BrokenCircuitError,
  BulkheadRejectedError,
  DeadlineExceededError,
  IsolatedCircuitError,
  RetryBudgetExhaustedError,
  TimeoutError,
} from './policies/errors.js'
export type { Unsubscribe } from './policies/events.js'
export { EventSource } from './policies/events.js'
export type {
  FallbackEvent,
  FallbackFunction,
  FallbackOptions,
  FallbackPolicy,
} from './policies/fallback.js'
export { fallback } from './policies/fallback.js'
export type { KeyedBreakers, KeyedBreakersOptions } from './policies/keyed-breakers.js'
export { createKeyedBreakers } from './policies/keyed-breakers.js'
export type { FallbackPipeline } from './policies/pipeline.js'
export { pipeline } from './policies/pipeline.js'
export type { RandomSource } from './policies/random.js'
export { seededRandom } from './policies/random.js'
export type { GiveUpReason, RetryEvent, RetryOptions, RetryPolicy } from './policies/retry.js'
export { retry } from './policies/retry.js'
export type { RetryBudget, RetryBudgetOptions } from './policies/retry-budget.js'
export { createRetryBudget } from './policies/retry-budget.js'
export type {
  TimeoutEvent,
  TimeoutMode,
  TimeoutOptions,
  TimeoutPolicy,
} from './policies/timeout.js'
export { timeout } from './policies/timeout.js'
export type { Policy, PolicyContext, PolicyFunction } from './policies/types.js'
export { neverAbortedSignal } from './policies/types.js'
export type {
  RunningService,
  RunOutcome,
  RunUntilSignalOptions,
  SignalTarget,
} from './process/index.js'
export { runUntilSignal } from './process/index.js'
