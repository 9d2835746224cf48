// The root entry point: resilience policies only. It must never load a database or broker
// driver; those live behind their own subpaths.

export type { Clock, TimerHandle } from './core/clock.js'
export { sleep, systemClock } from './core/clock.js'
export type { ErrorCode } from './core/error-codes.js'
export { errorCodes } from './core/error-codes.js'
export type { BreakwaterErrorOptions } from './core/errors.js'
export { AbortedError, BreakwaterError, InvalidOptionError } from './core/errors.js'
export type { Classifier, FailureKind } from './policies/classify.js'
export {
  classifyFailure,
  isTransientFailure,
  isTransientStatus,
  parseRetryAfter,
  retryAfterMsOf,
} from './policies/classify.js'
export type { Unsubscribe } from './policies/events.js'
export { EventSource } from './policies/events.js'
export type { Policy, PolicyContext, PolicyFunction } from './policies/types.js'
export { neverAbortedSignal } from './policies/types.js'
