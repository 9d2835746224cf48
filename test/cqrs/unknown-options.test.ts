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

// [what, call, a misspelt key's options, the option named, the same options spelt right]
const cases: Array<[string, (o: object) => unknown, object, string, object]> = [
  [
    'createEventStore',
    (o) => createEventStore(test.db, o),
    { notfy: false },
    'options.notfy',
    { notify: false },
  ],
  [
    'EventStore.append',
    (o) => store.append('s-2', [{ type: 'opened', data: {} }], o),
    { expectedVerison: 'noStream' },
    'options.expectedVerison',
    { expectedVersion: 'noStream' },
  ],
  [
    'EventStore.readStream',
    (o) => store.readStream('s-1', o),
    { direcion: 'backwards' },
    'options.direcion',
    { direction: 'backwards' },
  ],
  ['EventStore.readAll', (o) => store.readAll(o), { from: 1 }, 'options.from', { fromPosition: 1 }],
  [
    'EventStore.headPosition',
    (o) => store.headPosition(o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
  ],
  [
    'EventStore.streamInfo',
    (o) => store.streamInfo('s-1', o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
  ],
  [
    'EventStore.setStreamMetadata',
    (o) => store.setStreamMetadata('s-1', {}, o),
    { expected: 'any' },
    'options.expected',
    { expectedVersion: 'any' },
  ],
  [
    'EventStore.deleteStream',
    (o) => store.deleteStream('s-3', o),
    { expected: 'any' },
    'options.expected',
    { expectedVersion: 'any' },
  ],
  [
    'EventStore.subscribe',
    (o) => store.subscribe(noop, { clock, ...o }),
    { fromPositon: 1 },
    'options.fromPositon',
    { fromPosition: 1 },
  ],
  [
    'createCommandHandler',
    (o) => createCommandHandler(store, { decider: account, ...o }),
    { maxAttempt: 2 },
    'options.maxAttempt',
    { maxAttempts: 2 },
  ],
  [
    'createCommandHandler idempotency',
    (o) => createCommandHandler(store, { decider: account, idempotency: o }),
    { scop: 'x' },
    'idempotency.scop',
    { scope: 'x' },
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
  ],
  [
    'createCommandHandler snapshots',
    (o) => createCommandHandler(store, { decider: account, snapshots: { every: 5, ...o } }),
    { nme: 'x' },
    'snapshots.nme',
    { name: 'x' },
  ],
  [
    'CommandHandler.handle',
    (o) => handler.handle('s-4', { kind: 'open', owner: 'b' }, o),
    { expectedVerison: 'noStream' },
    'options.expectedVerison',
    { expectedVersion: 'noStream' },
  ],
  [
    'CommandHandler.load',
    (o) => handler.load('s-1', o),
    { txn: 1 },
    'options.txn',
    { tx: undefined },
  ],
  [
    'createProjector',
    (o) => createProjector(store, projection, o),
    { pollIntervalMS: 5 },
    'options.pollIntervalMS',
    { pollIntervalMs: 5 },
  ],
  ['Projector.catchUp', (o) => projector.catchUp(o), { signl: 1 }, 'options.signl', {}],
  [
    'Projector.waitFor',
    (o) => projector.waitFor(0, o),
    { timeout: 5 },
    'options.timeout',
    { timeoutMs: 5 },
  ],
  [
    'Projector.rebuild',
    (o) => projector.rebuild(o),
    { batch: 5 },
    'options.batch',
    { batchSize: 5 },
  ],
  [
    'createQueryHandler',
    (o) => createQueryHandler({ db: test.db, run: async () => 1, ...o }),
    { projector: [] },
    'options.projector',
    { projectors: [] },
  ],
  [
    'a query',
    (o) => createQueryHandler({ db: test.db, run: async () => 1 })(undefined, o),
    { atLeast: 0 },
    'options.atLeast',
    { atLeastPosition: 0 },
  ],
  [
    'defineProjection',
    (o) => defineProjection({ name: 'p', tables: {}, apply: noop, ...o }),
    { eventType: ['opened'] },
    'projection.eventType',
    { eventTypes: ['opened'] },
  ],
]

describe('an unknown (misspelt) option is refused', () => {
  it.each(cases)('%s', async (_name, call, wrong, option, right) => {
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
