// A misspelt option key was dropped without a word: `append(s, events, { expectedVerison: 3 })`
// appended at any version (no concurrency check at all), `createProjector(store, p,
// { pollIntervalMS })` polled at the default. Every factory and method of breakwater/cqrs that
// takes an options object refuses a key it does not know with InvalidOptionError
// (INVALID_OPTION) naming it and listing the known ones; the same options spelt right still
// work. On a real SQLite database.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  type CommandHandler,
  createCommandHandler,
  createEventStore,
  createProjector,
  createQueryHandler,
  defineProjection,
  type EventStore,
  type Projector,
} from '../../src/cqrs/index.js'
import { createOutbox } from '../../src/outbox/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { type Account, type AccountCommand, type AccountEvent, account } from './accounts.js'
import { sqliteDb, type TestDb } from './databases.js'

let test: TestDb
let store: EventStore
let handler: CommandHandler<AccountCommand, AccountEvent, Account>
let projector: Projector
const clock = new ManualClock()
const projection = defineProjection({
  name: 'unknown_options',
  tables: { seen: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY)`] },
  apply: () => {},
})

beforeAll(async () => {
  test = await sqliteDb.open('cqrs-unknown-options')
  store = createEventStore(test.db, { clock })
  handler = createCommandHandler(store, { decider: account, clock })
  projector = createProjector(store, projection, { clock })
  await store.append('s-1', [{ type: 'opened', data: { owner: 'a' } }])
})

afterAll(async () => {
  await projector?.stop()
  await test?.close()
})

const noop = () => {}
const map = () => []

// [what, call, a misspelt key's options, the option named, the same options spelt right,
//  every key it takes (each refused as null)]
const cases: Array<[string, (o: object) => unknown, object, string, object, string[]]> = [
  [
    'createEventStore',
    (o) => createEventStore(test.db, o),
    { notfy: false },
    'options.notfy',
    { notify: false },
    ['upcasters', 'inlineProjections', 'notify', 'notifyDelayMs', 'groupCommit', 'clock'],
  ],
  [
    // A misspelt `fromVersoin` left the step without a version: refused as a non-integer, the
    // message said nothing of the misspelling; a stray `fromVersoin` beside the right key was
    // dropped without a word.
    'an upcaster passed to createEventStore',
    (o) =>
      createEventStore(test.db, {
        upcasters: [{ type: 'upcast-me', fromVersion: 1, upcast: (d: unknown) => d, ...o }],
      }),
    { fromVersoin: 2 },
    'upcasters[0].fromVersoin',
    { fromVersion: 1 },
    ['type', 'fromVersion', 'upcast'],
  ],
  [
    'EventStore.append',
    (o) => store.append('s-2', [{ type: 'opened', data: {} }], o),
    { expectedVerison: 'noStream' },
    'options.expectedVerison',
    { expectedVersion: 'noStream' },
    ['expectedVersion', 'tx'],
  ],
  [
    'EventStore.readStream',
    (o) => store.readStream('s-1', o),
    { direcion: 'backwards' },
    'options.direcion',
    { direction: 'backwards' },
    ['from', 'direction', 'limit', 'tx'],
  ],
  [
    'EventStore.readAll',
    (o) => store.readAll(o),
    { from: 1 },
    'options.from',
    { fromPosition: 1 },
    ['fromPosition', 'limit', 'tx'],
  ],
  [
    'EventStore.headPosition',
    (o) => store.headPosition(o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
    ['tx'],
  ],
  [
    'EventStore.streamInfo',
    (o) => store.streamInfo('s-1', o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
    ['tx'],
  ],
  [
    'EventStore.setStreamMetadata',
    (o) => store.setStreamMetadata('s-1', {}, o),
    { expected: 'any' },
    'options.expected',
    { expectedVersion: 'any' },
    ['expectedVersion', 'tx'],
  ],
  [
    'EventStore.deleteStream',
    (o) => store.deleteStream('s-3', o),
    { expected: 'any' },
    'options.expected',
    { expectedVersion: 'any' },
    ['expectedVersion', 'tx'],
  ],
  [
    'EventStore.subscribe',
    (o) => store.subscribe(noop, { clock, ...o }),
    { fromPositon: 1 },
    'options.fromPositon',
    { fromPosition: 1 },
    [
      'name',
      'fromPosition',
      'batchSize',
      'pollIntervalMs',
      'retryBaseDelayMs',
      'retryMaxDelayMs',
      'onError',
      'clock',
    ],
  ],
  [
    'createCommandHandler',
    (o) => createCommandHandler(store, { decider: account, ...o }),
    { maxAttempt: 2 },
    'options.maxAttempt',
    { maxAttempts: 2 },
    [
      'decider',
      'maxAttempts',
      'baseDelayMs',
      'maxDelayMs',
      'idempotency',
      'outbox',
      'snapshots',
      'clock',
    ],
  ],
  [
    'createCommandHandler idempotency',
    (o) => createCommandHandler(store, { decider: account, idempotency: o }),
    { scop: 'x' },
    'idempotency.scop',
    { scope: 'x' },
    ['scope', 'leaseMs', 'retentionMs', 'fingerprint'],
  ],
  [
    'createCommandHandler outbox',
    (o) =>
      createCommandHandler(store, {
        decider: account,
        outbox: { outbox: createOutbox(), map, ...o },
      }),
    { mapper: map },
    'outbox.mapper',
    {},
    ['outbox', 'map'],
  ],
  [
    'createCommandHandler snapshots',
    (o) => createCommandHandler(store, { decider: account, snapshots: { every: 5, ...o } }),
    { nme: 'x' },
    'snapshots.nme',
    { name: 'x' },
    ['every', 'name', 'serialize', 'deserialize'],
  ],
  [
    'CommandHandler.handle',
    (o) => handler.handle('s-4', { kind: 'open', owner: 'b' }, o),
    { expectedVerison: 'noStream' },
    'options.expectedVerison',
    { expectedVersion: 'noStream' },
    ['commandId', 'expectedVersion', 'metadata', 'signal'],
  ],
  [
    'CommandHandler.load',
    (o) => handler.load('s-1', o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
    ['tx'],
  ],
  [
    'createProjector',
    (o) => createProjector(store, projection, o),
    { pollIntervalMS: 5 },
    'options.pollIntervalMS',
    { pollIntervalMs: 5 },
    [
      'batchSize',
      'pollIntervalMs',
      'retryBaseDelayMs',
      'retryMaxDelayMs',
      'onError',
      'maxSwapRounds',
      'swapLockTimeoutMs',
      'clock',
    ],
  ],
  ['Projector.catchUp', (o) => projector.catchUp(o), { signl: 1 }, 'options.signl', {}, ['signal']],
  [
    'Projector.waitFor',
    (o) => projector.waitFor(0, o),
    { timeout: 5 },
    'options.timeout',
    { timeoutMs: 5 },
    ['timeoutMs', 'signal'],
  ],
  [
    'Projector.rebuild',
    (o) => projector.rebuild(o),
    { batch: 5 },
    'options.batch',
    { batchSize: 5 },
    ['batchSize', 'signal'],
  ],
  [
    'createQueryHandler',
    (o) => createQueryHandler({ db: test.db, run: async () => 1, ...o }),
    { projector: [] },
    'options.projector',
    { projectors: [] },
    ['db', 'projectors', 'run'],
  ],
  [
    'a query',
    // A projector to wait for: atLeastPosition without one is refused (refused-options.test.ts).
    (o) =>
      createQueryHandler({
        db: test.db,
        projectors: [{ waitFor: async () => {} } as never],
        run: async () => 1,
      })(undefined, o),
    { atLeast: 0 },
    'options.atLeast',
    { atLeastPosition: 0 },
    ['atLeastPosition', 'timeoutMs', 'signal'],
  ],
  [
    'defineProjection',
    (o) => defineProjection({ name: 'p', tables: {}, apply: noop, ...o }),
    { eventType: ['opened'] },
    'projection.eventType',
    { eventTypes: ['opened'] },
    ['name', 'tables', 'eventTypes', 'apply'],
  ],
]

describe('an unknown (misspelt) option is refused', () => {
  it.each(cases)('%s', async (_name, call, wrong, option, right, _keys) => {
    const error = await optionRefusal(() => call(wrong))
    expect(error.option).toBe(option)
    // The message lists the known keys, so the right spelling is at hand.
    for (const key of Object.keys(right)) expect(error.message).toContain(key)
    const outcome = await Promise.resolve()
      .then(() => call(right))
      .then(
        (value) => value,
        (e: unknown) => e,
      )
    expect(outcome).not.toBeInstanceOf(Error)
    const started = outcome as { stop?: unknown } | undefined
    if (typeof started?.stop === 'function') await (started.stop as () => Promise<void>)()
  })

  it('an inline projection passed to createEventStore is checked the same way', async () => {
    const inline = { name: 'p', tables: {}, apply: noop, eventType: ['opened'] }
    const error = await optionRefusal(() =>
      createEventStore(test.db, { inlineProjections: [inline] }),
    )
    expect(error.option).toBe('inlineProjections[0].eventType')
  })
})

// An appended event's misspelt field (`metdata`, `schemaVerison`) was dropped: the event was
// recorded without its metadata, or at the type's current schema version.
describe('an appended event field the store does not know is refused', () => {
  it.each([
    ['metdata', { metdata: { user: 'u' } }],
    ['schemaVerison', { schemaVersion: undefined, schemaVerison: 1 }],
  ])('%s, naming the event, and nothing is appended', async (field, extra) => {
    const before = await store.streamInfo('s-5')
    const error = await optionRefusal(() =>
      store.append('s-5', [
        { type: 'opened', data: { owner: 'c' } },
        { type: 'deposited', data: { amount: 1 }, ...extra } as never,
      ]),
    )
    expect(error.option).toBe(`events[1].${field}`)
    expect(error.message).toContain('metadata')
    expect(await store.streamInfo('s-5')).toEqual(before)
  })

  it('spelt right, and with an undefined stray field, the event is appended', async () => {
    const stray = { stray: undefined } as object
    const result = await store.append('s-6', [
      { type: 'opened', data: { owner: 'd' }, metadata: { user: 'u' }, ...stray },
    ])
    expect(result.version).toBe(1)
  })
})

// null was taken as the default by most options (see null-options.test.ts): it is refused,
// naming the option, for every key of every call above.
// Options each call above passes itself (a spread of undefined would remove them).
const required = new Set([
  'type',
  'fromVersion',
  'upcast',
  'decider',
  'db',
  'run',
  'name',
  'tables',
  'apply',
  'outbox',
  'map',
  'every',
])

describe('null for an option is refused, naming it', () => {
  it.each(cases)('%s', async (_name, call, _wrong, option, _right, keys) => {
    // The misspelt key's name says where the call's options sit: 'options.x', 'snapshots.x'.
    const prefix = option.startsWith('options.') ? '' : option.slice(0, option.lastIndexOf('.') + 1)
    for (const key of keys) {
      const error = await optionRefusal(() => call({ [key]: null }))
      expect(error.option).toBe(`${prefix}${key}`)
      expect(error.value).toBeNull()
    }
    // Undefined is the default, as before (a required option keeps its value from the call).
    const optional = keys.filter((key) => !required.has(key))
    const outcome = await Promise.resolve()
      .then(() => call(Object.fromEntries(optional.map((key) => [key, undefined]))))
      .catch((e: unknown) => e)
    expect(outcome).not.toBeInstanceOf(Error)
    const started = outcome as { stop?: unknown } | undefined
    if (typeof started?.stop === 'function') await (started.stop as () => Promise<void>)()
  })

  it('an inline projection passed to createEventStore, and an event id', async () => {
    const inline = { name: 'p', tables: {}, apply: noop, eventTypes: null }
    const error = await optionRefusal(() =>
      createEventStore(test.db, { inlineProjections: [inline as never] }),
    )
    expect(error.option).toBe('inlineProjections[0].eventTypes')
    const before = await store.streamInfo('s-7')
    const id = await optionRefusal(() =>
      store.append('s-7', [{ type: 'opened', data: null, id: null as never }]),
    )
    expect(id.option).toBe('events[0].id')
    expect(await store.streamInfo('s-7')).toEqual(before)
    // null data is JSON null, a value, not a missing option.
    expect((await store.append('s-7', [{ type: 'opened', data: null }])).events[0]!.data).toBe(null)
  })
})
