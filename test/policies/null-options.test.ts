// `null` used to be read as "use the default" for most options (`retry({ maxAttempts: null })`
// made 3 attempts, `circuitBreaker({ window: null })` used the default window), because the
// factories wrote `options.x ?? default`; a few options refused it (`random: null`). Only
// `undefined` means the default: every option given as null is refused at construction with
// INVALID_OPTION naming it, and an optional one's message says it may be left out. The table
// walks every option of every policy factory: the key sets the factories refuse unknown keys
// by, which optionKeys<T> keeps complete (a key missing from one fails the typecheck).
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
import { backoffOptions } from '../../src/policies/backoff.js'
import { windowOptions } from '../../src/policies/breaker-windows.js'
import { bulkheadOptions } from '../../src/policies/bulkhead.js'
import { registryOptions } from '../../src/policies/bulkhead-registry.js'
import { circuitBreakerOptions } from '../../src/policies/circuit-breaker.js'
import { adoptOptions, deadlineOptions, fromHeadersOptions } from '../../src/policies/deadline.js'
import { fallbackOptions } from '../../src/policies/fallback.js'
import { keyedBreakersOptions } from '../../src/policies/keyed-breakers.js'
import { retryOptions } from '../../src/policies/retry.js'
import { retryBudgetOptions } from '../../src/policies/retry-budget.js'
import { timeoutOptions } from '../../src/policies/timeout.js'
import { ManualClock } from '../../src/testing/index.js'
import { expectUndefinedOptionsAccepted } from '../support/null-option.js'
import { optionRefusal } from '../support/unknown-option.js'

const clock = new ManualClock()

interface Factory {
  /** Builds with `options` (a good bag with one key replaced). */
  readonly build: (options: Record<string, unknown>) => unknown
  /** A bag the factory accepts, holding every required option. */
  readonly good: Record<string, unknown>
  /** Every option key: the factory's own set, which optionKeys<T> keeps complete. */
  readonly keys: ReadonlySet<string>
  /** How errors name the options. */
  readonly prefix: string
  /** Options that have no default (null is refused without "or left out"). */
  readonly required?: readonly string[]
}

// One entry per window kind, each with the keys that kind takes.
function windowFactories(): Record<string, Factory> {
  const entries = Object.entries(windowOptions).map(([kind, keys]): [string, Factory] => [
    `circuitBreaker ${kind} window`,
    {
      build: (o) => circuitBreaker({ window: o as never, clock }),
      good: { kind },
      keys,
      prefix: 'circuitBreaker.window',
      required: ['kind'],
    },
  ])
  return Object.fromEntries(entries)
}

const factories: Record<string, Factory> = {
  retry: {
    build: (o) => retry(o),
    good: { clock },
    keys: retryOptions,
    prefix: 'retry',
  },
  exponentialBackoff: {
    build: (o) => exponentialBackoff(o),
    good: {},
    keys: backoffOptions,
    prefix: 'backoff',
  },
  circuitBreaker: {
    build: (o) => circuitBreaker(o),
    good: { clock },
    keys: circuitBreakerOptions,
    prefix: 'circuitBreaker',
  },
  ...windowFactories(),
  bulkhead: {
    build: (o) => bulkhead(o as never),
    good: { maxConcurrent: 2 },
    keys: bulkheadOptions,
    prefix: 'bulkhead',
    required: ['maxConcurrent'],
  },
  'createBulkheads definition': {
    build: (o) => createBulkheads({ search: o as never }),
    good: { maxConcurrent: 2 },
    keys: bulkheadOptions,
    prefix: 'bulkheads.search',
    required: ['maxConcurrent'],
  },
  'createBulkheads options': {
    build: (o) => createBulkheads({ search: { maxConcurrent: 1 } }, o),
    good: {},
    keys: registryOptions,
    prefix: 'bulkheads.options',
  },
  createRetryBudget: {
    build: (o) => createRetryBudget(o),
    good: {},
    keys: retryBudgetOptions,
    prefix: 'retryBudget',
  },
  timeout: {
    build: (o) => timeout(100, o),
    good: {},
    keys: timeoutOptions,
    prefix: 'timeout',
  },
  createKeyedBreakers: {
    build: (o) => createKeyedBreakers(o as never),
    good: { create: () => circuitBreaker({ clock }) },
    keys: keyedBreakersOptions,
    prefix: 'keyedBreakers',
    required: ['create'],
  },
  fallback: {
    build: (o) => fallback('default', o),
    good: {},
    keys: fallbackOptions,
    prefix: 'fallback',
  },
  withDeadline: {
    build: (o) => withDeadline(100, () => 'done', o),
    good: {},
    keys: deadlineOptions,
    prefix: 'withDeadline',
  },
  deadlineFromHeaders: {
    build: (o) => deadlineFromHeaders({}, o),
    good: {},
    keys: fromHeadersOptions,
    prefix: 'deadlineFromHeaders',
  },
  adoptDeadline: {
    build: (o) => adoptDeadline({}, () => 'done', o),
    good: {},
    keys: adoptOptions,
    // Its header options are refused under the name deadlineFromHeaders gives them.
    prefix: 'adoptDeadline',
  },
}

// adoptDeadline reads its header options through deadlineFromHeaders' checks.
function expectedName(prefix: string, key: string): string {
  if (prefix === 'adoptDeadline' && key !== 'clock') return `deadlineFromHeaders.${key}`
  return `${prefix}.${key}`
}

describe('an option given as null', () => {
  for (const [what, factory] of Object.entries(factories)) {
    it(`is accepted left out and refused as null, naming it: ${what}`, async () => {
      await factory.build({ ...factory.good })
      for (const key of factory.keys) {
        // undefined is the default, whether the key is absent or present.
        if (!factory.required?.includes(key))
          await factory.build({ ...factory.good, [key]: undefined })
        const refused = await optionRefusal(() => factory.build({ ...factory.good, [key]: null }))
        expect(refused.option, key).toBe(expectedName(factory.prefix, key))
        expect(refused.value, key).toBeNull()
        if (factory.required?.includes(key)) {
          expect(refused.expected, key).not.toMatch(/left out/)
        } else {
          expect(refused.expected, key).toMatch(/ or left out$/)
          expect(refused.message, key).toBe(
            `${expectedName(factory.prefix, key)}: expected ${refused.expected}, got null`,
          )
        }
      }
    })
  }

  it.each(Object.keys(factories))('%s takes each optional option given as undefined', (what) =>
    expectUndefinedOptionsAccepted(factories[what]!),
  )

  it('a retry given maxAttempts: null makes no attempt: it is never built', async () => {
    let calls = 0
    expect(() => retry({ maxAttempts: null as never, clock })).toThrow(
      'retry.maxAttempts: expected an integer >= 1 or left out, got null',
    )
    // The default still applies when the option is left out (a 0 ms backoff: no sleep).
    const policy = retry({ baseDelayMs: 0, shouldRetry: () => true })
    await expect(
      policy.execute(() => {
        calls++
        throw new Error('down')
      }),
    ).rejects.toThrow('down')
    expect(calls).toBe(3)
  })
})

describe('a name', () => {
  for (const [what, build, option] of [
    ['circuitBreaker', (name: unknown) => circuitBreaker({ name: name as never }), 'name'],
    ['bulkhead', (name: unknown) => bulkhead({ maxConcurrent: 1, name: name as never }), 'name'],
    [
      'createBulkheads',
      (name: unknown) => createBulkheads({ a: { maxConcurrent: 1, name: name as never } }),
      'name',
    ],
  ] as const) {
    it(`must be a string: ${what}`, async () => {
      for (const bad of [3, true, {}, Symbol('s')]) {
        const refused = await optionRefusal(() => build(bad))
        expect(refused.option.endsWith(`.${option}`)).toBe(true)
      }
      expect(() => build('payments')).not.toThrow()
    })
  }

  it('createBulkheads keeps the key as the name only when name is left out', () => {
    const registry = createBulkheads({
      search: { maxConcurrent: 1 },
      b: { maxConcurrent: 1, name: 'bee' },
    })
    expect(registry.get('search').name).toBe('search')
    expect(registry.get('b').name).toBe('bee')
  })
})
