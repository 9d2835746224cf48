// A Map, Headers, Date (or another built-in whose data is not in enumerable properties) given
// where an object of options or names is expected was accepted and read as {}: a webhook's
// `headers: new Map(...)` sent no header, `outbox.enqueue` with such headers stored "{}" (the
// event's headers lost), `createBulkheads(new Map(...))` made no bulkhead, and an HTTP
// service's `retry: new Date()` (or a relay's `retryBackoff`) silently used the defaults. Each
// is now refused with INVALID_OPTION naming the option and what was given. Objects made by a
// user class, or by Object.create with inherited options, are still accepted. On a real SQLite
// database for the outbox; every other call is refused before anything connects.
import { Blob } from 'node:buffer'
import { runInNewContext } from 'node:vm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createWebhookPublisher } from '../../src/brokers/index.js'
import { createHttpClient } from '../../src/http/index.js'
import { createBulkheads, retry } from '../../src/index.js'
import { createOutbox, createRelay } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { count, type OutboxDb, sqliteTarget } from '../outbox/support.js'
import { optionRefusal } from '../support/unknown-option.js'

const secret = 'x'.repeat(32)
const publisher = { publish: async () => {}, close: async () => {} }

/** The refusal of `run`, checked to name `option` and to say what was given instead. */
async function expectRefused(run: () => unknown, option: string, given: string): Promise<void> {
  const error = await optionRefusal(run)
  expect(error.option).toBe(option)
  // The kind is what was given (describeValue), not part of what is expected.
  expect(error.message).toBe(`${option}: expected a plain object, got ${given}`)
  expect(error.expected).toBe('a plain object')
}

describe('a built-in that is not a record, where an object is expected', () => {
  it('is refused for createBulkheads, which made no bulkhead of a Map', async () => {
    await expectRefused(
      () => createBulkheads(new Map([['payments', { maxConcurrent: 1 }]]) as never),
      'bulkheads',
      'a Map',
    )
  })

  it.each([
    ['a Map', new Map([['x-tenant', 'acme']])],
    ['a Headers', new Headers({ 'x-tenant': 'acme' })],
  ])('is refused as webhook headers (%s), which were never sent', async (given, headers) => {
    await expectRefused(
      () => createWebhookPublisher({ url: 'http://127.0.0.1:1/hooks', secret, headers } as never),
      'webhook.headers',
      given,
    )
  })

  it.each(['retry', 'circuitBreaker', 'bulkhead', 'retryBudget'])(
    "is refused as an HTTP service's %s, which took the defaults",
    async (option) => {
      await expectRefused(
        () =>
          createHttpClient({
            services: { a: { baseUrl: 'http://127.0.0.1:9', [option]: new Date() } },
          }),
        `services.a.${option}`,
        'a Date',
      )
    },
  )

  // Every kind refused, through one public factory (the rule is the same everywhere).
  it.each([
    ['a Set', new Set(['payments'])],
    ['a WeakMap', new WeakMap()],
    ['a WeakSet', new WeakSet()],
    ['a Date', new Date()],
    ['a RegExp', /payments/],
    ['a URLSearchParams', new URLSearchParams('payments=1')],
    ['a FormData', new FormData()],
    ['a Blob', new Blob(['x'])],
    ['a Promise', Promise.resolve({ payments: { maxConcurrent: 1 } })],
    ['an Error', new Error('payments')],
    ['an ArrayBuffer', new ArrayBuffer(4)],
    ['a Uint8Array', Buffer.from('payments')],
    ['a Float64Array', new Float64Array(2)],
    ['a DataView', new DataView(new ArrayBuffer(4))],
    ['a String', Object('payments')],
    // Another realm's (a vm context's, a jsdom window's) Map fails instanceof Map.
    ['a Map', runInNewContext('new Map([["payments", {}]])')],
  ])('is refused: %s', async (given, value) => {
    await expectRefused(() => createBulkheads(value as never), 'bulkheads', given)
  })
})

describe('relay option bags given as a Date', () => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await sqliteTarget.open('built_in_options')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each(['retryBackoff', 'circuitBreaker', 'retention'])(
    'refuses relay.%s, which took the defaults',
    async (option) => {
      await expectRefused(
        () => createRelay({ db: t.db, publisher, [option]: new Date() }),
        `relay.${option}`,
        'a Date',
      )
    },
  )

  it('refuses outbox.enqueue headers given as a Map, which were stored as {}', async () => {
    const outbox = createOutbox({ clock: new ManualClock(0), topic: 'orders' })
    await expectRefused(
      () =>
        t.db.transaction((tx) =>
          outbox.enqueue(tx, {
            aggregateType: 'order',
            aggregateId: 'o1',
            type: 'order-placed',
            payload: {},
            headers: new Map([['x', 'y']]) as never,
          }),
        ),
      'event.headers',
      'a Map',
    )
    expect(await count(t.db, 'breakwater_outbox')).toBe(0)
  })
})

describe('objects that hold their options in properties', () => {
  it('accepts a class instance and an object with inherited options', async () => {
    class Limits {
      readonly maxConcurrent = 1
    }
    const registry = createBulkheads({
      payments: new Limits(),
      reports: Object.assign(Object.create(null) as object, { maxConcurrent: 3 }),
    })
    expect([...registry.names].sort()).toEqual(['payments', 'reports'])
    class RetryOptions {
      readonly maxAttempts = 1
    }
    for (const options of [new RetryOptions(), Object.create({ maxAttempts: 1 }) as object]) {
      let calls = 0
      await expect(
        retry(options).execute(async () => {
          calls++
          throw new Error('down')
        }),
      ).rejects.toThrow('down')
      expect(calls).toBe(1)
    }
  })
})
