// A misspelt option key was dropped without a word: `pruneSagas(db, { olderThan })` pruned with
// the 30-day default, `createSagaWorker({ leaseMS })` ran with the default lease. Every factory and
// function of breakwater/saga that takes an options object refuses a key it does not know with
// InvalidOptionError (INVALID_OPTION) naming it, before it touches the database; the same
// options spelt right still work. On a real SQLite database.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox } from '../../src/outbox/index.js'
import {
  cancelSaga,
  commandStep,
  createFlowTracker,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  listSagas,
  pruneFlowEvents,
  pruneSagas,
  replyTo,
  retrySaga,
  type SagaWorker,
  startSaga,
} from '../../src/saga/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { sqliteDb, type TestDb } from './databases.js'

const saga = defineSaga({ name: 'opts', version: 1, steps: [{ name: 'a', action: () => {} }] })
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
