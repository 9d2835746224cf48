// breakwater/cqrs: event sourcing on the stores seam (SQLite and PostgreSQL). An event store with
// optimistic concurrency and a gap-safe global order, subscriptions, upcasters and snapshots;
// decide/evolve command handlers with retries, idempotent commands and the outbox; projections
// into SQL read models (inline or by a projector), rebuilds, lag and read-your-writes queries.
// No driver is imported here: everything goes through a SqlDriver.

export type {
  CommandHandler,
  CommandHandlerOptions,
  CommandOutboxOptions,
  CommandResult,
  Decider,
  HandleOptions,
  LoadedState,
  SnapshotOptions,
} from './command-handler.js'
export { createCommandHandler } from './command-handler.js'
export type { RebuildBlockingForeignKey } from './errors.js'
export {
  EventHandlingError,
  ProjectionFailedError,
  ProjectionSetupError,
  RebuildBlockedError,
  RebuildContendedError,
  RebuildSupersededError,
  SubscriptionHandlerError,
  UpcastError,
  WrongExpectedVersionError,
} from './errors.js'
export type { EventStore, EventStoreOptions } from './event-store.js'
export { createEventStore } from './event-store.js'
export type { CqrsEvents } from './events.js'
export { cqrsChannelNames } from './events.js'
export type {
  EventOfTypes,
  ProjectionContext,
  ProjectionDefinition,
  TableDefinition,
} from './projections.js'
export { defineProjection } from './projections.js'
export type {
  ProjectionLag,
  Projector,
  ProjectorOptions,
  RebuildOptions,
  RebuildResult,
  WaitForOptions,
} from './projector.js'
export { createProjector } from './projector.js'
export type {
  QueryHandler,
  QueryHandlerOptions,
  QueryOptions,
  ReadModelReader,
} from './query.js'
export { createQueryHandler } from './query.js'
export { cqrsMigrations, eventsChannel, migrateCqrs } from './sql.js'
export type { Subscription, SubscriptionOptions } from './subscription.js'
export type {
  AppendOptions,
  AppendResult,
  Event,
  EventEnvelope,
  EventShape,
  ExpectedVersion,
  NewEvent,
  NewEventFields,
  ReadAllOptions,
  ReadStreamOptions,
  ReadStreamResult,
  RecordedEvent,
  StreamInfo,
  StreamWriteOptions,
} from './types.js'
export type { Upcaster } from './upcasters.js'
