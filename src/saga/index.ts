// breakwater/saga: durable orchestration (a persisted state machine run by leased, fenced
// workers, with compensations, timers and command/reply steps) and traceable choreography.
// Loads no database driver by itself: it works through the stores seam.

export type {
  CancelSagaResult,
  DeliverReplyOptions,
  DeliverReplyResult,
  GetSagaOptions,
  ListSagasOptions,
  SagaAdminOptions,
  SagaSummary,
} from './admin.js'
export {
  cancelSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  listSagas,
  retrySaga,
} from './admin.js'
export type {
  ChoreographyEvent,
  CommandStepOptions,
  EmitEventOptions,
  EmittedEvent,
  ReactionContext,
  ReactorOptions,
  SagaCommand,
  SagaReply,
  SagaReplyHandlerOptions,
} from './choreography.js'
export {
  choreographyEvent,
  commandStep,
  createReactor,
  emitEvent,
  IDEMPOTENCY_KEY_HEADER,
  replyTo,
  SAGA_STEP_HEADER,
  sagaReplyHandler,
} from './choreography.js'
export type {
  ActionStep,
  AtCommitWork,
  AwaitReplyOptions,
  CompensationContext,
  MergeContext,
  ReplyStep,
  SagaDeclaration,
  SagaDefinition,
  SagaRetryOptions,
  SagaStep,
  SagaStepInfo,
  StepContext,
  WaitStep,
} from './definition.js'
export { defaultCallTimeoutMs, defineSaga } from './definition.js'
export {
  SagaAtCommitTimeoutError,
  SagaLeaseLostError,
  SagaNotFoundError,
  SagaReplyTimeoutError,
  SagaStateConflictError,
  SagaWorkerStoppedError,
} from './errors.js'
export type { SagaErrorPhase, SagaEvent, SagaEventType, SagaWorkerMetrics } from './events.js'
export type { SagaFaultPoint, SagaFaultSite, SagaFaults } from './faults.js'
export { sagaCrashAtFromEnv, sagaFaultPoints } from './faults.js'
export type {
  FlowDeclaration,
  FlowDefinition,
  FlowState,
  FlowStatus,
  FlowStepDeclaration,
  FlowStepState,
  FlowTracker,
  FlowTrackerOptions,
  TrackableMessage,
  TrackedEvent,
} from './flow-tracker.js'
export { createFlowTracker, defineFlow, reconstructFlow, trackedHeaders } from './flow-tracker.js'
export type {
  PrunableSagaStatus,
  PruneFlowEventsOptions,
  PruneSagasOptions,
} from './retention.js'
export { pruneFlowEvents, pruneSagas } from './retention.js'
export {
  flowEventsTable,
  sagaEventsTable,
  sagaMigrations,
  sagaNotifyChannel,
  sagaRepliesTable,
  sagaTable,
} from './sql.js'
export type { StartedSaga, StartSagaOptions } from './start.js'
export { migrateSagas, startSaga } from './start.js'
export type {
  ErrorInfo,
  SagaDefinitionProblem,
  SagaInstance,
  SagaStatus,
  SagaTimelineEntry,
  SagaUnreadableColumn,
  StepState,
  StepStatus,
} from './state.js'
export { sagaStatuses } from './state.js'
export type {
  RunSagaOptions,
  SagaOutcome,
  SagaWorker,
  SagaWorkerOptions,
  SagaWorkerState,
  StopSagaWorkerOptions,
} from './worker.js'
export { createSagaWorker, defaultAtCommitTimeoutMs, maxClaimBackoffMs } from './worker.js'
