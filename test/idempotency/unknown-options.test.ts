// A misspelt option of an idempotency factory is refused at construction, naming it: it used to
// be dropped without a word and its default used instead (`leaseMS` ran with a 60 s lease).
import { describe, expect, it } from 'vitest'
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
import { expectUnknownOptionRefused } from '../support/unknown-option.js'

const store = createMemoryIdempotencyStore()
const idempotency = createIdempotency({ store })
const handler = () => {}

/** Each factory with correct options, and with them plus a misspelt key. */
const factories: Array<[string, (extra: object) => unknown, string]> = [
  ['createIdempotency', (x) => createIdempotency({ store, leaseMs: 5_000, ...x }), 'options'],
  [
    'createIdempotency scope',
    (x) => createIdempotency({ store, scope: { tenantHeader: 'x-tenant-id', ...x } }),
    'scope',
  ],
  [
    'idempotent',
    (x) => idempotent('k', () => 1, { store: createMemoryIdempotencyStore(), scope: 's', ...x }),
    'options',
  ],
  [
    'expressIdempotency',
    (x) => expressIdempotency(idempotency, { maxBodyBytes: 10, ...x }),
    'options',
  ],
  [
    'fastifyIdempotency',
    (x) => fastifyIdempotency(idempotency, { scope: () => 's', ...x }),
    'options',
  ],
  ['honoIdempotency', (x) => honoIdempotency(idempotency, { maxBodyBytes: 10, ...x }), 'options'],
  [
    'idempotentHandler',
    (x) => idempotentHandler({ idempotency, onError: handler, ...x }, handler),
    'options',
  ],
  [
    'createRedisIdempotencyStore',
    (x) => createRedisIdempotencyStore({ url: 'redis://127.0.0.1:1', keyPrefix: 'p:', ...x }),
    'options',
  ],
  [
    'Idempotency.run',
    (x) => idempotency.run('run-key', () => 1, { scope: 'consumer', ...x }),
    'options',
  ],
  ['sweepExpired', (x) => sweepExpired(store, { batchSize: 10, ...x }), 'options'],
  [
    'createSweeper',
    async (x) => createSweeper({ store, intervalMs: 1_000, batchSize: 10, ...x }).close(),
    'options',
  ],
]

describe('idempotency factories refuse unknown options', () => {
  it.each(factories)('%s', (_name, make, prefix) =>
    expectUnknownOptionRefused(make, prefix, { leaseMS: 1 }),
  )

  it('idempotent() refuses an option of createIdempotency it does not take (methods)', async () => {
    await expect(
      idempotent('k', () => 1, { store, methods: ['POST'] } as never),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'options.methods' })
  })

  it('Idempotency.run refuses a misspelt scope before claiming anything', async () => {
    const own = createMemoryIdempotencyStore()
    const guarded = createIdempotency({ store: own })
    let ran = 0
    await expect(
      guarded.run('k', () => ++ran, { scopes: 'billing' } as never),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'options.scopes' })
    // Nothing was claimed in the default scope: the call with the right spelling runs.
    expect(await guarded.run('k', () => ++ran, { scope: 'default' })).toBe(1)
  })
})
