// The transactional outbox, its relay, the inbox, and the embedded SQL queue broker. Loads no
// database or broker driver by itself: it works through the stores and brokers seams.

export type {
  PruneSqlQueueOptions,
  SqlQueue,
  SqlQueueErrorEvent,
  SqlQueueOptions,
} from '../brokers/sql-queue.js'
export {
  createSqlQueue,
  migrateSqlQueue,
  pruneSqlQueue,
  QUEUE_CHANNEL,
  SqlQueueClosedError,
  sqlQueueMigrations,
} from '../brokers/sql-queue.js'
export type {
  DeadEvent,
  ListDeadOptions,
  OutboxStats,
  OutboxStatsOptions,
} from './dead-letters.js'
export { listDead, outboxStats, redrive } from './dead-letters.js'
export { PayloadTooLargeError, PoisonMessageError } from './errors.js'
export type { RelayFaultPoint, RelayFaults } from './faults.js'
export { crashAtFromEnv, relayFaultPoints } from './faults.js'
export type { Inbox, InboxOptions, InboxResult } from './inbox.js'
export { createInbox, inboxHandler } from './inbox.js'
export { RelayIdInUseError } from './leases.js'
export { migrateInbox, migrateOutbox } from './migrate.js'
export type { Outbox, OutboxEvent, OutboxOptions } from './outbox.js'
export {
  AGGREGATE_TYPE_HEADER,
  CAUSATION_ID_HEADER,
  CORRELATION_ID_HEADER,
  createOutbox,
  EVENT_TYPE_HEADER,
} from './outbox.js'
export { OUTBOX_PARTITIONS, partitionOf } from './partition.js'
export type {
  Relay,
  RelayEvent,
  RelayMetrics,
  RelayOptions,
  RelayOrdering,
  RelayRetentionOptions,
  RelayState,
} from './relay.js'
export { createRelay, RelayStoppedError } from './relay.js'
export type { PruneInboxOptions, PruneOutboxOptions } from './retention.js'
export { pruneInbox, pruneOutbox } from './retention.js'
export {
  inboxMigrations,
  inboxTable,
  OUTBOX_CHANNEL,
  outboxArchiveTable,
  outboxMigrations,
  outboxPartitionsTable,
  outboxRelaysTable,
  outboxTable,
} from './sql.js'
