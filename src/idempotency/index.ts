// breakwater/idempotency: the server side of the Idempotency-Key pattern (IETF httpapi draft,
// Stripe's design). One framework-free protocol core over a store (SQLite, PostgreSQL, memory),
// thin adapters for node:http, Express, Fastify and Hono, and idempotent() for non-HTTP work.
// No framework or driver is imported here: adapters are typed structurally.

// What idempotent() and ctx.phase() give back; also exported from the root entry.
export type { Jsonified } from '../core/jsonified.js'
export { idempotencyContextOf } from './context-registry.js'
export type {
  Idempotency,
  IdempotencyBegin,
  IdempotencyClaimMode,
  IdempotencyOptions,
  IdempotentAbortOptions,
  IdempotentExecution,
  RunOptions,
} from './core.js'
export {
  createIdempotency,
  defaultReplayHeaders,
  defaultStoreResponse,
  replayedHeader,
} from './core.js'
export type {
  IdempotencyError,
  IdempotencyKeyRule,
  InProgressReason,
  UnsupportedResponseRule,
} from './errors.js'
export {
  IdempotencyBodyTooLargeError,
  IdempotencyBodyUnavailableError,
  IdempotencyInProgressError,
  IdempotencyKeyInvalidError,
  IdempotencyKeyMissingError,
  IdempotencyMismatchError,
  IdempotencyReleaseError,
  IdempotencyResponseUnsupportedError,
} from './errors.js'
export type { IdempotencyEvents } from './events.js'
export { idempotencyChannelNames } from './events.js'
export type {
  ExpressIdempotencyMiddleware,
  ExpressIdempotencyOptions,
  ExpressLikeRequest,
  ExpressLikeResponse,
} from './express.js'
export { expressIdempotency } from './express.js'
export type {
  FastifyIdempotencyOptions,
  FastifyIdempotencyPlugin,
  FastifyLikeInstance,
  FastifyLikeReply,
  FastifyLikeRequest,
} from './fastify.js'
export { fastifyIdempotency } from './fastify.js'
export type { FingerprintFunction } from './fingerprint.js'
export { canonicalBodyBytes, defaultFingerprint, parsedBodyBytes } from './fingerprint.js'
export type {
  HonoIdempotencyMiddleware,
  HonoIdempotencyOptions,
  HonoLikeContext,
} from './hono.js'
export { honoIdempotency } from './hono.js'
export type { IdempotentOptions } from './idempotent.js'
export { idempotent } from './idempotent.js'
export { checkOperationKey, maxKeyLength, parseIdempotencyKey } from './key.js'
export { createMemoryIdempotencyStore } from './memory-store.js'
export type {
  IdempotentHandlerExtras,
  IdempotentHandlerOptions,
  IdempotentRequestHandler,
} from './node-http.js'
export { idempotentHandler } from './node-http.js'
export type { ProblemDetails } from './problem.js'
export { defaultProblemTypeBase, problemDetailsOf, problemResponse } from './problem.js'
export type {
  RedisIdempotencyClient,
  RedisIdempotencyStore,
  RedisIdempotencyStoreOptions,
} from './redis-store.js'
export { createRedisIdempotencyStore } from './redis-store.js'
export type { ReplayCacheOptions } from './replay-cache.js'
export type { ScopeFunction, ScopeOption } from './scope.js'
export { credentialHeaders, credentialScope, maxScopeBytes } from './scope.js'
export type { IdempotencyStatements } from './sql.js'
export { idempotencyMigrations, idempotencyStatements, idempotencyTable } from './sql.js'
export { createSqlIdempotencyStore, migrateIdempotency } from './sql-store.js'
export type {
  ClaimInput,
  ClaimOutcome,
  IdempotencyClaimSteps,
  IdempotencyRecord,
  IdempotencyStore,
  LeaseRef,
  StoredResult,
  TakeoverInput,
} from './store.js'
export type { Sweeper, SweeperOptions, SweepOptions } from './sweeper.js'
export { createSweeper, sweepExpired } from './sweeper.js'
export type {
  IdempotencyContext,
  IdempotencyRequest,
  IdempotencyResponse,
  JsonValue,
} from './types.js'
