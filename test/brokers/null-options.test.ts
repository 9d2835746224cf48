// `null` for a broker option was taken as its default wherever it was read with `?? default`:
// createRedisBroker({ prefetch: null }) prefetched 64, createWebhookPublisher({ retry:
// { maxAttempts: null } }) retried three times, createSqlQueue(db, { visibilityTimeoutMs:
// null }) leased for 30 s, and openBroker's clock: null was refused under the adapter's name.
// Only undefined (or leaving it out) means the default: every option given as null is refused
// at construction with INVALID_OPTION naming it. Nothing connects: the checks come first.
import { afterAll, beforeAll, describe, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  createWebhookPublisher,
  openBroker,
  verifyWebhookSignature,
} from '../../src/brokers/index.js'
import { natsOptions, streamSpecKeys } from '../../src/brokers/nats.js'
import { openBrokerKeys } from '../../src/brokers/open.js'
import { rabbitOptions } from '../../src/brokers/rabbitmq.js'
import { redisOptions } from '../../src/brokers/redis.js'
import {
  createSqlQueue,
  migrateSqlQueue,
  pruneSqlQueue,
  pruneSqlQueueOptions,
  sqlQueueOptions,
} from '../../src/brokers/sql-queue.js'
import { tlsOptions } from '../../src/brokers/tls.js'
import { verifyOptions, webhookOptions, webhookRetryOptions } from '../../src/brokers/webhook.js'
import { createSqliteDriver, type SqlDriver } from '../../src/stores/index.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'

const secret = 'a-webhook-secret-of-32-characters'
const webhook = { url: 'http://127.0.0.1:1/hooks', secret }

/** Builds a broker or publisher, closing it if it was made (the table expects a refusal). */
async function closed(made: unknown): Promise<void> {
  await (made as { close?: () => Promise<void> } | undefined)?.close?.()
}

describe('broker options given as null', () => {
  let db: SqlDriver
  beforeAll(async () => {
    db = await createSqliteDriver({ filename: ':memory:' })
    // pruneSqlQueue deletes from the queue's tables: a call that passes its checks needs them.
    await migrateSqlQueue(db)
  })
  afterAll(async () => {
    await db?.close()
  })

  const bags = (): Record<string, NullOptionCase> => ({
    createNatsBroker: {
      build: (o) => closed(createNatsBroker(o as never)),
      good: { url: 'nats://127.0.0.1:1' },
      keys: natsOptions,
      prefix: 'nats',
    },
    'createNatsBroker stream': {
      build: (o) => closed(createNatsBroker({ url: 'nats://127.0.0.1:1', stream: o as never })),
      good: { name: 'all', subjects: ['orders.>'] },
      keys: streamSpecKeys,
      prefix: 'nats.stream',
    },
    createRedisBroker: {
      build: (o) => closed(createRedisBroker(o as never)),
      good: { url: 'redis://127.0.0.1:1' },
      keys: redisOptions,
      prefix: 'redis',
    },
    'createRedisBroker tls': {
      build: (o) => closed(createRedisBroker({ url: 'rediss://127.0.0.1:1', tls: o })),
      good: {},
      keys: tlsOptions,
      prefix: 'redis.tls',
    },
    createRabbitMqBroker: {
      build: (o) => closed(createRabbitMqBroker(o as never)),
      good: { url: 'amqp://127.0.0.1:1' },
      keys: rabbitOptions,
      prefix: 'rabbitmq',
    },
    openBroker: {
      build: (o) => closed(openBroker('nats://127.0.0.1:1', o)),
      good: {},
      keys: openBrokerKeys,
      prefix: 'openBroker',
    },
    createWebhookPublisher: {
      build: (o) => closed(createWebhookPublisher(o as never)),
      good: webhook,
      keys: webhookOptions,
      prefix: 'webhook',
    },
    'createWebhookPublisher retry': {
      build: (o) => closed(createWebhookPublisher({ ...webhook, retry: o })),
      good: {},
      keys: webhookRetryOptions,
      prefix: 'webhook.retry',
    },
    verifyWebhookSignature: {
      build: (o) => verifyWebhookSignature(secret, undefined, '{}', o),
      good: {},
      keys: verifyOptions,
      prefix: undefined,
    },
    createSqlQueue: {
      build: (o) => closed(createSqlQueue(db, o)),
      good: {},
      keys: sqlQueueOptions,
      prefix: 'sqlQueue',
    },
    pruneSqlQueue: {
      build: (o) => pruneSqlQueue(db, o),
      good: {},
      keys: pruneSqlQueueOptions,
      prefix: 'pruneSqlQueue',
    },
  })

  it.each(Object.keys(bags()))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags()[name]!),
  )

  it.each(Object.keys(bags()))('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags()[name]!),
  )
})
