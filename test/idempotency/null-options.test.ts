// `null` for an idempotency option was taken as its default wherever it was read with
// `?? default`: createIdempotency({ leaseMs: null }) leased for 60 s, retentionMs: null kept
// records a day, an adapter's maxBodyBytes: null took a megabyte, sweepExpired({ batchSize:
// null }) swept in batches of 1000. Only undefined (or leaving it out) means the default: every
// option given as null is refused at construction (or call) with INVALID_OPTION naming it.
import { describe, it } from 'vitest'
import { idempotencyOptions, runOptions } from '../../src/idempotency/core.js'
import { expressOptions } from '../../src/idempotency/express.js'
import { fastifyOptions } from '../../src/idempotency/fastify.js'
import { honoOptions } from '../../src/idempotency/hono.js'
import { idempotentOptions } from '../../src/idempotency/idempotent.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  createRedisIdempotencyStore,
  createSweeper,
  expressIdempotency,
  fastifyIdempotency,
  honoIdempotency,
  idempotent,
  idempotentHandler,
  sweepExpired,
} from '../../src/idempotency/index.js'
import { handlerOptions } from '../../src/idempotency/node-http.js'
import { redisStoreOptions } from '../../src/idempotency/redis-store.js'
import { tenantScopeOptions } from '../../src/idempotency/scope.js'
import { sweeperOptions, sweepOptions } from '../../src/idempotency/sweeper.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'

const store = createMemoryIdempotencyStore()
const idempotency = createIdempotency({ store })
const handler = () => {}

const bags: Record<string, NullOptionCase> = {
  createIdempotency: {
    build: (o) => createIdempotency(o as never),
    good: { store },
    keys: idempotencyOptions,
    prefix: undefined,
  },
  'createIdempotency scope': {
    build: (o) => createIdempotency({ store, scope: o as never }),
    good: { tenantHeader: 'x-tenant-id' },
    keys: tenantScopeOptions,
    prefix: 'scope',
  },
  idempotent: {
    build: (o) => idempotent('k', () => 1, o as never),
    good: { store: createMemoryIdempotencyStore(), scope: 's' },
    keys: idempotentOptions,
    prefix: undefined,
  },
  expressIdempotency: {
    build: (o) => expressIdempotency(idempotency, o),
    good: {},
    keys: expressOptions,
    prefix: undefined,
  },
  fastifyIdempotency: {
    build: (o) => fastifyIdempotency(idempotency, o),
    good: {},
    keys: fastifyOptions,
    prefix: undefined,
  },
  honoIdempotency: {
    build: (o) => honoIdempotency(idempotency, o),
    good: {},
    keys: honoOptions,
    prefix: undefined,
  },
  idempotentHandler: {
    build: (o) => idempotentHandler(o as never, handler),
    good: { idempotency, onError: handler },
    keys: handlerOptions,
    prefix: undefined,
  },
  createRedisIdempotencyStore: {
    build: (o) => createRedisIdempotencyStore(o as never),
    good: { url: 'redis://127.0.0.1:1' },
    keys: redisStoreOptions,
    prefix: undefined,
  },
  'Idempotency.run': {
    build: (o) => idempotency.run('run-key', () => 1, o),
    good: {},
    keys: runOptions,
    prefix: undefined,
  },
  sweepExpired: {
    build: (o) => sweepExpired(store, o),
    good: {},
    keys: sweepOptions,
    prefix: undefined,
  },
  createSweeper: {
    build: async (o) => createSweeper(o as never).close(),
    good: { store },
    keys: sweeperOptions,
    prefix: undefined,
  },
}

describe('idempotency options given as null', () => {
  it.each(Object.keys(bags))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags[name]!),
  )

  it.each(Object.keys(bags))('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags[name]!),
  )
})
