// A misspelt option key was dropped without a word: `pruneSagas(db, { olderThan })` pruned with
// the 30-day default, `createSagaWorker({ leaseMS })` ran with the default lease. Every factory and
// function of breakwater/saga that takes an options object refuses a key it does not know with
// InvalidOptionError (INVALID_OPTION) naming it, before it touches the database; the same
// options spelt right still work.
// An option given as null was taken as its default wherever it was read with `??`
// (`retry: { maxAttempts: null }` retried three times, `leaseMs: null` ran with the default
// lease) while `timeoutMs: null` was refused: only undefined means the default, and every option
// given as null is refused the same way, naming it. A reply's payload is data: null stays
// accepted. And startSaga / worker.run with an undefined input (stored as null) are refused.
// On a real SQLite database.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox } from '../../src/outbox/index.js'
import {
  cancelSaga,
  commandStep,
  createFlowTracker,
  createReactor,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  emitEvent,
  getSaga,
  listSagas,
  pruneFlowEvents,
  pruneSagas,
  replyTo,
  retrySaga,
  type SagaWorker,
  sagaReplyHandler,
  startSaga,
} from '../../src/saga/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { sqliteDb, type TestDb } from './databases.js'

const seen: unknown[] = []
const saga = defineSaga({
  name: 'opts',
  version: 1,
  steps: [{ name: 'a', action: (ctx) => void seen.push(ctx.input) }],
})
const flow = defineFlow({ name: 'opts-flow', steps: ['placed', 'paid'] })

let test: TestDb
let db: SqlDriver
let worker: SagaWorker
const clock = new ManualClock()

beforeAll(async () => {
  test = await sqliteDb.open('saga-unknown-options')
  db = test.db
  worker = createSagaWorker({ db, sagas: [saga], listen: false, clock })
})

afterAll(async () => {
  await worker?.stop()
  await test?.close()
})

const noop = () => {}

// [what, call, a misspelt key's options (the correct key of the same call, changed), the option
// named, the same options spelt right]
const cases: Array<[string, (o: object) => unknown, object, string, object]> = [
  [
    'createSagaWorker',
    (o) => createSagaWorker({ db, sagas: [saga], listen: false, clock, ...o }),
    { leaseMS: 500 },
    'options.leaseMS',
    { leaseMs: 500 },
  ],
  [
    'SagaWorker.run',
    (o) => worker.run(saga, {}, o),
    { ID: 'run-2' },
    'options.ID',
    { id: 'run-1' },
  ],
  [
    'startSaga',
    (o) => startSaga(db, saga, {}, o),
    { Id: 'start-2' },
    'options.Id',
    { id: 'start-1' },
  ],
  [
    'listSagas',
    (o) => listSagas(db, o),
    { state: 'running' },
    'options.state',
    { status: 'running' },
  ],
  [
    'retrySaga',
    (o) => retrySaga(db, 'missing', o),
    { because: 'fixed' },
    'options.because',
    { reason: 'fixed' }, // correct options reach the database: no such saga
  ],
  [
    'cancelSaga',
    (o) => cancelSaga(db, 'missing', o),
    { who: 'alice' },
    'options.who',
    { by: 'alice' },
  ],
  [
    'deliverReply',
    (o) => deliverReply(db, 'missing', 'a', {}, o),
    { attempts: 1 },
    'options.attempts',
    { attempt: 1 },
  ],
  [
    'pruneSagas',
    (o) => pruneSagas(db, o),
    { olderThan: 1 },
    'pruneSagas.olderThan',
    { olderThanMs: 1 },
  ],
  [
    'pruneFlowEvents',
    (o) => pruneFlowEvents(db, o),
    { olderThan: 1 },
    'pruneFlowEvents.olderThan',
    { olderThanMs: 1 },
  ],
  [
    'createFlowTracker',
    (o) => createFlowTracker({ db, flows: [flow], ...o }),
    { clok: clock },
    'options.clok',
    { clock },
  ],
  [
    'FlowTracker.stalled',
    (o) => createFlowTracker({ db, flows: [flow] }).stalled(o),
    { within: 5 },
    'options.within',
    { withinMs: 5 },
  ],
  [
    'defineSaga',
    (o) => defineSaga({ name: 'x', version: 1, steps: [{ name: 'a', action: noop }], ...o }),
    { inputs: noop },
    'saga "x".inputs',
    { input: (raw: unknown) => raw },
  ],
  [
    'defineSaga step retry',
    (o) =>
      defineSaga({ name: 'x', version: 1, steps: [{ name: 'a', action: noop, retry: { ...o } }] }),
    { maxAttemps: 2 },
    'saga "x".steps["a"].retry.maxAttemps',
    { maxAttempts: 2 },
  ],
  [
    'commandStep',
    (o) =>
      commandStep({
        name: 'c',
        outbox: createOutbox(),
        command: noop as never,
        timeoutMs: 1,
        ...o,
      }),
    { timeout: 5 },
    'commandStep.timeout',
    { callTimeoutMs: 5 },
  ],
  [
    // A reply's misspelt field was dropped: the reply went out as a 'saga-reply' aggregate.
    'replyTo',
    (o) =>
      replyTo(
        { id: 'cmd-1', headers: { 'correlation-id': 's-1', 'saga-step': 'charge' } },
        { type: 'charged', topic: 'saga.replies', payload: {}, ...o },
      ),
    { aggregatetype: 'payment' },
    'reply.aggregatetype',
    { aggregateType: 'payment' },
  ],
  [
    'defineFlow',
    (o) => defineFlow({ name: 'f', steps: ['a'], ...o }),
    { within: 5 },
    'flow "f".within',
    { withinMs: 5 },
  ],
]

describe('an unknown (misspelt) option is refused', () => {
  it.each(cases)('%s', async (name, call, misspelt, option, correct) => {
    const error = await optionRefusal(() => call(misspelt))
    expect(error.option).toBe(option)
    // The message lists the keys the call knows, so the right spelling is at hand.
    const known = Object.keys(correct)[0]!
    expect(error.message).toContain(known)
    // Spelt right, the same call goes through validation (a saga that does not exist is the
    // database's answer, not a refused option).
    const outcome = await Promise.resolve()
      .then(() => call(correct))
      .then(
        (value) => value,
        (e: unknown) => e,
      )
    expect(outcome).not.toBeInstanceOf(InvalidOptionError)
    if (name === 'createSagaWorker') await (outcome as SagaWorker).stop()
  })

  it('an undefined value under an unknown key is not refused (spread defaults)', async () => {
    const options = { limit: 1, ...({ stray: undefined } as object) }
    expect(await listSagas(db, options)).toBeInstanceOf(Array)
  })

  it('SagaWorker.stop refuses an unknown option', async () => {
    const other = createSagaWorker({ db, sagas: [saga], listen: false, clock })
    const error = await optionRefusal(() => other.stop({ timeout: 5 } as never))
    expect(error.option).toBe('options.timeout')
    await other.stop({ timeoutMs: 5 })
  })
})

const outbox = createOutbox()
const command = () => ({ aggregateType: 'p', aggregateId: 'p', type: 'c', payload: {} })
const message = { id: 'cmd-1', headers: { 'correlation-id': 's-1', 'saga-step': 'charge' } }
const step = (extra: object) => ({ name: 'a', action: noop, ...extra })
const declare = (s: object) => defineSaga({ name: 'x', version: 1, steps: [s] } as never)

// [what, call with these options added, where its options are named, every option it takes]
const nullCases: Array<[string, (o: object) => unknown, string, string[]]> = [
  [
    'createSagaWorker',
    (o) => createSagaWorker({ db, sagas: [saga], listen: false, clock, ...o }),
    'options',
    [
      'db',
      'sagas',
      'leaseMs',
      'renewIntervalMs',
      'atCommitTimeoutMs',
      'pollIntervalMs',
      'missingDefinitionCheckIntervalMs',
      'concurrency',
      'workerId',
      'listen',
      'keepAlive',
      'faults',
      'clock',
    ],
  ],
  ['SagaWorker.run', (o) => worker.run(saga, {}, o), 'options', ['id']],
  [
    'SagaWorker.stop',
    (o) => createSagaWorker({ db, sagas: [saga] }).stop(o),
    'options',
    ['timeoutMs'],
  ],
  ['startSaga', (o) => startSaga(db, saga, {}, o), 'options', ['id', 'notify', 'clock']],
  ['listSagas', (o) => listSagas(db, o), 'options', ['status', 'name', 'limit']],
  ['retrySaga', (o) => retrySaga(db, 'missing', o), 'options', ['by', 'reason', 'clock']],
  ['cancelSaga', (o) => cancelSaga(db, 'missing', o), 'options', ['by', 'reason', 'clock']],
  ['deliverReply', (o) => deliverReply(db, 'missing', 'a', {}, o), 'options', ['clock', 'attempt']],
  [
    'pruneSagas',
    (o) => pruneSagas(db, o),
    'pruneSagas',
    ['olderThanMs', 'statuses', 'batchSize', 'maxBatches', 'clock'],
  ],
  [
    'pruneFlowEvents',
    (o) => pruneFlowEvents(db, o),
    'pruneFlowEvents',
    ['olderThanMs', 'batchSize', 'maxBatches', 'clock'],
  ],
  [
    'createFlowTracker',
    (o) => createFlowTracker({ db, flows: [flow], ...o }),
    'options',
    ['db', 'flows', 'clock'],
  ],
  [
    'FlowTracker.stalled',
    (o) => createFlowTracker({ db, flows: [flow] }).stalled(o),
    'options',
    ['withinMs', 'limit'],
  ],
  [
    'defineSaga',
    (o) => defineSaga({ name: 'x', version: 1, steps: [step({})], ...o }),
    'saga "x"',
    ['version', 'input', 'steps'],
  ],
  [
    'defineSaga step',
    (o) => declare(step(o)),
    'saga "x".steps["a"]',
    [
      'action',
      'compensation',
      'retry',
      'timeoutMs',
      'compensationRequired',
      'compensationRetry',
      'compensationTimeoutMs',
      'sleepMs',
      'waitUntil',
      'awaitReply',
      'send',
      'callTimeoutMs',
    ],
  ],
  [
    'defineSaga reply step',
    (o) => declare({ name: 'a', send: noop, awaitReply: { timeoutMs: 10, ...o } }),
    'saga "x".steps["a"].awaitReply',
    ['timeoutMs', 'onReply'],
  ],
  ...(['retry', 'compensationRetry'] as const).map(
    (field): [string, (o: object) => unknown, string, string[]] => [
      `defineSaga step ${field}`,
      (o) => declare(step({ compensation: noop, [field]: o })),
      `saga "x".steps["a"].${field}`,
      [
        'maxAttempts',
        'baseDelayMs',
        'factor',
        'maxDelayMs',
        'jitter',
        'random',
        'shouldRetry',
        'maxRetryAfterMs',
      ],
    ],
  ),
  [
    'commandStep',
    (o) => commandStep({ name: 'c', outbox, command, timeoutMs: 1, ...o }),
    'commandStep',
    [
      'name',
      'outbox',
      'command',
      'timeoutMs',
      'onReply',
      'compensation',
      'retry',
      'compensationRequired',
      'compensationRetry',
      'compensationTimeoutMs',
      'callTimeoutMs',
    ],
  ],
  [
    'replyTo',
    (o) => replyTo(message, { type: 'charged', topic: 'saga.replies', payload: {}, ...o }),
    'reply',
    ['type', 'topic', 'aggregateType'],
  ],
  [
    'sagaReplyHandler',
    (o) => sagaReplyHandler(db, o),
    'options',
    ['consumer', 'onIgnored', 'clock'],
  ],
  [
    'createReactor',
    (o) => createReactor({ db, consumer: 'r', outbox, reactions: {}, ...o }),
    'options',
    ['db', 'consumer', 'outbox', 'reactions', 'tracker', 'clock'],
  ],
  [
    'emitEvent',
    (o) => emitEvent(db, { outbox, ...o }, command()),
    'options',
    ['outbox', 'tracker', 'consumer', 'clock'],
  ],
  [
    'defineFlow',
    (o) => defineFlow({ name: 'f', steps: ['a'], ...o }),
    'flow "f"',
    ['steps', 'compensation', 'withinMs'],
  ],
  [
    'defineFlow step',
    (o) => defineFlow({ name: 'f', steps: [{ event: 'a', ...o }] }),
    'flow "f".steps[0]',
    ['event', 'withinMs', 'failsOn'],
  ],
]

describe('an option given as null is refused, naming it (only undefined means the default)', () => {
  it.each(
    nullCases.flatMap(([what, call, prefix, keys]) =>
      keys.map((key): [string, (o: object) => unknown, string] => [
        `${what} ${key}`,
        call,
        `${prefix}.${key}`,
      ]),
    ),
  )('%s', async (label, call, option) => {
    const key = label.slice(label.lastIndexOf(' ') + 1)
    const error = await optionRefusal(() => call({ [key]: null }))
    expect(error.option).toBe(option)
    expect(error.message).toContain('not null')
  })

  it('refuses before anything is written (startSaga with notify: null)', async () => {
    await optionRefusal(() => startSaga(db, saga, {}, { id: 'null-notify', notify: null as never }))
    expect(await getSaga(db, 'null-notify')).toBeUndefined()
  })

  it('still takes a reply whose payload is null (data, not an option)', () => {
    const reply = replyTo(message, { type: 'charged', topic: 'saga.replies', payload: null })
    expect(reply.payload).toBeNull()
  })

  it('still takes undefined as the default', () => {
    const defined = declare(step({ retry: { maxAttempts: undefined }, callTimeoutMs: undefined }))
    expect(defined.stepNames).toEqual(['a'])
  })
})

describe('the input of startSaga and worker.run is required JSON', () => {
  it('refuses an undefined input, which was stored as null', async () => {
    const error = await optionRefusal(() =>
      startSaga(db, saga, undefined as never, { id: 'no-input' }),
    )
    expect(error.option).toBe('input')
    expect(error.message).toContain('pass null for none')
    expect(await getSaga(db, 'no-input')).toBeUndefined()
    const run = await optionRefusal(() => worker.run(saga, undefined as never, { id: 'no-input' }))
    expect(run.option).toBe('input')
    expect(await getSaga(db, 'no-input')).toBeUndefined()
  })

  it('refuses an input function that returns undefined', async () => {
    const parsed = defineSaga({
      name: 'nulls-parsed',
      version: 1,
      input: () => undefined,
      steps: [{ name: 'a', action: noop }],
    })
    const error = await optionRefusal(() => startSaga(db, parsed, {}, { id: 'parsed-undefined' }))
    expect(error.option).toBe('saga "nulls-parsed".input')
    expect(await getSaga(db, 'parsed-undefined')).toBeUndefined()
  })

  it('takes null as the input: the step sees null', async () => {
    seen.length = 0
    const { id } = await startSaga(db, saga, null, { id: 'null-input', clock })
    expect(id).toBe('null-input')
    expect(await worker.poll()).toBe(1)
    await expect.poll(() => seen.length).toBe(1)
    expect(seen).toEqual([null])
  })
})
