// Bad options get a clear error, whatever they are. Each factory that validates options at
// construction is fed random option objects: its own option names with values of any type
// (numbers out of range, NaN, strings, nulls, arrays, functions, nested junk), and plain junk
// in place of the whole object. A factory may accept what it gets; when it refuses, the error
// must be a BreakwaterError with a code and a message naming the option, never a TypeError
// or RangeError from deeper inside.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'
import { createWebhookPublisher } from '../../src/brokers/index.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createEventStore } from '../../src/cqrs/index.js'
import { createHttpClient } from '../../src/http/index.js'
import { createIdempotency, createSweeper } from '../../src/idempotency/index.js'
import {
  BreakwaterError,
  bulkhead,
  circuitBreaker,
  createKeyedBreakers,
  createRetryBudget,
  exponentialBackoff,
  fallback,
  retry,
  timeout,
} from '../../src/index.js'
import { createJsonLogger, createMetricsRegistry } from '../../src/observability/index.js'
import { createInbox, createOutbox, createRelay, createSqlQueue } from '../../src/outbox/index.js'
import { parseProxyConfig } from '../../src/proxy/config/load.js'
import { createSagaWorker, defineSaga } from '../../src/saga/index.js'
import { createSqliteDriver, type SqlDriver } from '../../src/stores/index.js'

/** A value of any type, weighted towards the ones validators get wrong. */
const junk: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer({ min: -3, max: 3 }),
  fc.integer(),
  fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -0, 0.5, 2 ** 53, -(2 ** 31)),
  fc.double(),
  fc.string({ maxLength: 8 }),
  fc.constantFrom(null, undefined, true, false, '', '0', 'full', 'none', 'http://'),
  fc.array(fc.anything({ maxDepth: 1 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 6 }), fc.anything({ maxDepth: 1 }), { maxKeys: 3 }),
  fc.func(fc.anything({ maxDepth: 0 })),
  fc.anything({ maxDepth: 2 }),
)

/** An options object with any subset of `keys`, each set to junk (plus, sometimes, whole junk). */
function optionsOf(keys: readonly string[]): fc.Arbitrary<unknown> {
  const record = fc.record(Object.fromEntries(keys.map((k) => [k, junk])), { requiredKeys: [] })
  return fc.oneof({ weight: 5, arbitrary: record }, { weight: 1, arbitrary: junk })
}

/** Calls `make`; when it throws, the error must be breakwater's, with a code and a message. */
async function refusesClearly(make: () => unknown): Promise<void> {
  try {
    await make()
  } catch (error) {
    if (!BreakwaterError.is(error)) throw error
    expect(typeof error.code).toBe('string')
    expect(error.message.length).toBeGreaterThan(10)
  }
}

const runs = { numRuns: 300 }

describe('option validation under random input', () => {
  let db: SqlDriver
  beforeAll(async () => {
    db = await createSqliteDriver({ filename: ':memory:' })
  })
  afterAll(async () => {
    await db?.close()
  })

  const policies: Array<[string, (o: unknown) => unknown, readonly string[]]> = [
    [
      'retry',
      (o) => retry(o as never),
      [
        'maxAttempts',
        'baseDelayMs',
        'factor',
        'maxDelayMs',
        'jitter',
        'random',
        'shouldRetry',
        'maxRetryAfterMs',
        'budget',
        'clock',
      ],
    ],
    ['timeout', (o) => timeout(1_000, o as never), ['mode', 'clock']],
    [
      'circuitBreaker',
      (o) => circuitBreaker(o as never),
      [
        'window',
        'slowCallMs',
        'isFailure',
        'cooldownMs',
        'cooldownMultiplier',
        'maxCooldownMs',
        'halfOpenProbes',
        'name',
        'clock',
      ],
    ],
    [
      'bulkhead',
      (o) => bulkhead(o as never),
      ['maxConcurrent', 'maxQueued', 'queueTimeoutMs', 'name', 'clock'],
    ],
    ['fallback', (o) => fallback(() => 1, o as never), ['shouldFallback']],
    [
      'createRetryBudget',
      (o) => createRetryBudget(o as never),
      ['ratio', 'minRetriesPerSecond', 'ttlMs', 'clock'],
    ],
    [
      'createKeyedBreakers',
      (o) => createKeyedBreakers(o as never),
      ['create', 'maxKeys', 'idleMs', 'clock'],
    ],
    [
      'exponentialBackoff',
      (o) => exponentialBackoff(o as never),
      ['baseDelayMs', 'factor', 'maxDelayMs', 'jitter', 'random'],
    ],
  ]
  for (const [name, make, keys] of policies) {
    it(`${name} refuses bad options with a breakwater error`, async () => {
      await fc.assert(
        fc.asyncProperty(optionsOf(keys), (options) => refusesClearly(() => make(options))),
        runs,
      )
    })
  }

  it('createHttpClient refuses bad service options with a breakwater error', async () => {
    const nested = fc.record(
      {
        retry: optionsOf(['maxAttempts', 'baseDelayMs', 'factor', 'maxDelayMs', 'jitter']),
        circuitBreaker: optionsOf(['window', 'cooldownMs', 'halfOpenProbes', 'slowCallMs']),
        bulkhead: optionsOf(['maxConcurrent', 'maxQueued', 'queueTimeoutMs']),
        retryBudget: optionsOf(['ratio', 'minRetriesPerSecond', 'ttlMs']),
        baseUrl: fc.constantFrom('http://127.0.0.1:9', 'https://example.test/api'),
      },
      { requiredKeys: ['baseUrl'] },
    )
    const service = optionsOf([
      'baseUrl',
      'connectTimeoutMs',
      'headersTimeoutMs',
      'bodyTimeoutMs',
      'attemptTimeoutMs',
      'overallTimeoutMs',
      'retry',
      'circuitBreaker',
      'bulkhead',
      'connections',
      'retryBudget',
      'idempotencyKeys',
      'throwOnErrorStatus',
      'propagateDeadline',
      'deadlineMarginMs',
      'headers',
      'maxResponseBytes',
      'clock',
    ])
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ services: fc.dictionary(fc.string({ maxLength: 6 }), service) }),
          fc.record({ services: fc.dictionary(fc.constantFrom('inventory', 'pay'), nested) }),
          optionsOf(['services', 'clock']),
        ),
        async (options) => {
          await refusesClearly(async () => {
            const client = createHttpClient(options as never)
            await client.close()
          })
        },
      ),
      runs,
    )
  })

  it('createOutbox, createRelay and createEventStore refuse bad options with a breakwater error', async () => {
    const publisher = { publish: async () => {} }
    await fc.assert(
      fc.asyncProperty(
        optionsOf(['topic', 'propagateTraceContext', 'notify', 'clock']),
        optionsOf([
          'batchSize',
          'ordering',
          'leaseMs',
          'publishTimeoutMs',
          'pollIntervalMs',
          'maxPollIntervalMs',
          'listen',
          'maxAttempts',
          'retryBackoff',
          'circuitBreaker',
          'retention',
          'faults',
          'relayId',
          'clock',
        ]),
        optionsOf(['upcasters', 'inlineProjections', 'notify', 'notifyDelayMs', 'groupCommit']),
        async (outbox, relay, store) => {
          await refusesClearly(() => createOutbox(outbox as never))
          await refusesClearly(() => createRelay({ db, publisher, ...(relay as object) } as never))
          await refusesClearly(() => createEventStore(db, store as never))
        },
      ),
      runs,
    )
  })

  it('createIdempotency and createSagaWorker refuse bad options with a breakwater error', async () => {
    const saga = defineSaga({
      name: 'fuzzed',
      version: 1,
      steps: [{ name: 'one', action: () => {} }],
    })
    await fc.assert(
      fc.asyncProperty(
        optionsOf([
          'claim',
          'scope',
          'fingerprint',
          'methods',
          'required',
          'leaseMs',
          'retentionMs',
          'onConcurrent',
          'waitTimeoutMs',
          'retryAfterMs',
          'storeResponse',
          'replayHeaders',
          'problemTypeBase',
          'clock',
        ]),
        optionsOf([
          'sagas',
          'leaseMs',
          'renewIntervalMs',
          'pollIntervalMs',
          'concurrency',
          'workerId',
          'listen',
          'keepAlive',
          'faults',
          'clock',
        ]),
        async (idempotency, worker) => {
          await refusesClearly(() =>
            createIdempotency({ store: db, ...(idempotency as object) } as never),
          )
          await refusesClearly(() =>
            createSagaWorker({ db, sagas: [saga], ...(worker as object) } as never),
          )
        },
      ),
      runs,
    )
  })

  it('defineSaga refuses bad declarations with a breakwater error', async () => {
    const step = optionsOf([
      'name',
      'action',
      'compensation',
      'retry',
      'timeoutMs',
      'compensationRequired',
      'compensationRetry',
      'compensationTimeoutMs',
    ])
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({
            name: fc.oneof(fc.constant('ok-saga'), junk),
            version: fc.oneof(fc.constant(1), junk),
            steps: fc.oneof(fc.array(step, { maxLength: 3 }), junk),
          }),
          junk,
        ),
        (declaration) => refusesClearly(() => defineSaga(declaration as never)),
      ),
      runs,
    )
  })

  it('parseProxyConfig refuses bad YAML with a config error naming the path', async () => {
    const route = optionsOf(['path', 'pathPrefix', 'targets', 'split', 'retryAffinity', 'sticky'])
    const listener = optionsOf(['port', 'host', 'mode', 'routes', 'service', 'services'])
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({
            version: fc.oneof(fc.constant(1), junk),
            listeners: fc.oneof(
              fc.array(
                fc.oneof(
                  listener,
                  fc.record({ port: fc.constant(8080), routes: fc.array(route, { maxLength: 2 }) }),
                ),
                { maxLength: 2 },
              ),
              junk,
            ),
            services: fc.oneof(fc.dictionary(fc.string({ maxLength: 5 }), junk), junk),
          }),
          junk,
        ),
        async (document) => {
          let text: string
          try {
            text = stringifyYaml(document)
            parseYaml(text)
          } catch {
            return // not representable as YAML (functions, symbols): nothing to feed
          }
          await refusesClearly(() => parseProxyConfig(text, 'fuzzed.yaml'))
        },
      ),
      runs,
    )
  })

  it('the SQL queue, webhook publisher, inbox, logger, metrics and sweeper refuse bad options with a breakwater error', async () => {
    await fc.assert(
      fc.asyncProperty(
        optionsOf([
          'clock',
          'visibilityTimeoutMs',
          'retryDelayMs',
          'prefetch',
          'concurrency',
          'pollIntervalMs',
          'maxPollIntervalMs',
          'listen',
          'onError',
        ]),
        optionsOf([
          'url',
          'secret',
          'batch',
          'concurrency',
          'attemptTimeoutMs',
          'retry',
          'headers',
          'clock',
        ]),
        optionsOf(['consumer', 'clock']),
        optionsOf(['level', 'output', 'fields', 'redactKeys', 'clock']),
        optionsOf(['onCollectError']),
        optionsOf(['intervalMs', 'onError', 'batchSize', 'maxBatches', 'clock']),
        async (queue, webhook, inbox, logger, metrics, sweeper) => {
          await refusesClearly(async () => {
            await createSqlQueue(db, queue as never).close()
          })
          await refusesClearly(async () => {
            await createWebhookPublisher(webhook as never).close?.()
          })
          await refusesClearly(() => createInbox(inbox as never))
          await refusesClearly(() => createJsonLogger(logger as never))
          await refusesClearly(() => createMetricsRegistry(metrics as never))
          await refusesClearly(async () => {
            await createSweeper({ store: db, ...(sweeper as object) } as never).close()
          })
        },
      ),
      runs,
    )
  })

  it('the checker itself fails on a raw TypeError (it can fail)', async () => {
    await expect(
      refusesClearly(() => {
        throw new TypeError('boom')
      }),
    ).rejects.toThrow(TypeError)
    await expect(
      refusesClearly(() => {
        throw new InvalidOptionError('x', 'a number', 'y')
      }),
    ).resolves.toBeUndefined()
  })
})
