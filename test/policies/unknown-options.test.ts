// A misspelt option used to be dropped without a word and its default used instead
// (`retry({ maxAttemps: 10 })` retried 3 times). Every policy factory now refuses an option it
// does not know, naming it, once at construction; the correct spelling still works.
import { describe, expect, it } from 'vitest'
import {
  adoptDeadline,
  bulkhead,
  circuitBreaker,
  createBulkheads,
  createKeyedBreakers,
  createRetryBudget,
  deadlineFromHeaders,
  exponentialBackoff,
  fallback,
  retry,
  timeout,
  withDeadline,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'

const clock = new ManualClock()

/** [what, build with the options given, a good option bag, the misspelt key, its error name] */
const cases: ReadonlyArray<
  readonly [string, (options: Record<string, unknown>) => unknown, object, string, string]
> = [
  ['retry', (o) => retry(o), { maxAttempts: 2, clock }, 'maxAttemps', 'retry.maxAttemps'],
  [
    'exponentialBackoff',
    (o) => exponentialBackoff(o),
    { baseDelayMs: 10, jitter: 'none' },
    'jiter',
    'backoff.jiter',
  ],
  ['timeout', (o) => timeout(100, o), { mode: 'hard', clock }, 'mod', 'timeout.mod'],
  [
    'circuitBreaker',
    (o) => circuitBreaker(o),
    { cooldownMs: 1_000, clock },
    'cooldownMS',
    'circuitBreaker.cooldownMS',
  ],
  [
    'circuitBreaker window (consecutive)',
    (o) => circuitBreaker({ window: o as never, clock }),
    { kind: 'consecutive', failures: 3 },
    'failurs',
    'circuitBreaker.window.failurs',
  ],
  [
    'circuitBreaker window (count): a time window option',
    (o) => circuitBreaker({ window: o as never, clock }),
    { kind: 'count', size: 10, failureRateThreshold: 0.5, minimumCalls: 5 },
    'durationMs',
    'circuitBreaker.window.durationMs',
  ],
  [
    'circuitBreaker window (time): a count window option',
    (o) => circuitBreaker({ window: o as never, clock }),
    { kind: 'time', durationMs: 1_000, buckets: 10, failureRateThreshold: 0.5, minimumCalls: 5 },
    'size',
    'circuitBreaker.window.size',
  ],
  [
    'bulkhead',
    (o) => bulkhead(o as never),
    { maxConcurrent: 2, maxQueued: 1, queueTimeoutMs: 10, name: 'b', clock },
    'maxQueue',
    'bulkhead.maxQueue',
  ],
  [
    'createBulkheads definition',
    (o) => createBulkheads({ search: o as never }),
    { maxConcurrent: 2 },
    'queueTimeout',
    'bulkheads.search.queueTimeout',
  ],
  [
    'createBulkheads options',
    (o) => createBulkheads({ search: { maxConcurrent: 1 } }, o),
    { clock },
    'clok',
    'bulkheads.options.clok',
  ],
  [
    'createKeyedBreakers',
    (o) => createKeyedBreakers(o as never),
    { create: () => circuitBreaker({ clock }), maxKeys: 10, idleMs: 1_000, clock },
    'maxKey',
    'keyedBreakers.maxKey',
  ],
  [
    'fallback',
    (o) => fallback(0, o),
    { shouldFallback: () => true },
    'shouldFalback',
    'fallback.shouldFalback',
  ],
  ['withDeadline', (o) => withDeadline(100, () => 1, o), { clock }, 'clok', 'withDeadline.clok'],
  [
    'deadlineFromHeaders',
    (o) => deadlineFromHeaders({}, o),
    { maxMs: 1_000, defaultMs: 500 },
    'maxMS',
    'deadlineFromHeaders.maxMS',
  ],
  [
    'adoptDeadline',
    (o) => adoptDeadline({}, () => 1, o),
    { maxMs: 1_000, defaultMs: 500, clock },
    'maxMS',
    'adoptDeadline.maxMS',
  ],
  [
    'createRetryBudget',
    (o) => createRetryBudget(o),
    { ratio: 0.1, minRetriesPerSecond: 1, ttlMs: 1_000, clock },
    'minRetryPerSecond',
    'retryBudget.minRetryPerSecond',
  ],
]

describe('policy factories refuse unknown (misspelt) options', () => {
  it.each(cases)('%s', async (_what, build, good, misspelt, name) => {
    expect(() => build({ ...good })).not.toThrow()
    // An undefined value is no option at all (spread defaults are fine).
    expect(() => build({ ...good, [misspelt]: undefined })).not.toThrow()
    const refused = await optionRefusal(() => build({ ...good, [misspelt]: 1 }))
    expect(refused.option).toBe(name)
    // The message lists what would have been accepted.
    expect(refused.message).toContain(Object.keys(good)[0])
  })
})
