// waitFor's (and a query's read-your-writes) `timeoutMs: Infinity` means no timeout, as it does
// for withDeadline: it was refused as "an integer >= 0", so waiting without a limit took a
// made-up large number. NaN, negatives and non-numbers stay refused. On a real SQLite database,
// time moved by a ManualClock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createEventStore,
  createProjector,
  createQueryHandler,
  defineProjection,
  type EventStore,
  type Projector,
} from '../../src/cqrs/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { sqliteDb, type TestDb } from './databases.js'

let t: TestDb
let store: EventStore
let projector: Projector
const clock = new ManualClock(Date.now())

beforeAll(async () => {
  t = await sqliteDb.open('cqrs-wait-for-timeout')
  store = createEventStore(t.db, { clock })
  projector = createProjector(
    store,
    defineProjection({
      name: 'wait_for_timeout',
      eventTypes: ['w'],
      tables: { wait_for_timeout: (table) => [`CREATE TABLE ${table} (n INTEGER)`] },
      apply: () => {},
    }),
    { clock },
  )
  await projector.catchUp()
})

afterAll(async () => {
  await t?.close()
})

/** Whether `promise` has settled, and how, once the jobs queued so far have run. */
function watch(promise: Promise<unknown>): { settled: boolean; outcome: unknown } {
  const state = { settled: false, outcome: undefined as unknown }
  promise.then(
    (value) => Object.assign(state, { settled: true, outcome: value }),
    (error: unknown) => Object.assign(state, { settled: true, outcome: error }),
  )
  return state
}

describe('timeoutMs: Infinity', () => {
  it.each([
    [
      'Projector.waitFor',
      (position: number) => projector.waitFor(position, { timeoutMs: Infinity }),
    ],
    [
      'a query with atLeastPosition',
      (position: number) =>
        createQueryHandler({ db: t.db, projectors: [projector], run: async () => 'ran' })(
          undefined,
          { atLeastPosition: position, timeoutMs: Infinity },
        ),
    ],
  ])('%s waits without a limit until the position is applied', async (_, wait) => {
    const { lastPosition } = await store.append('w-1', [{ type: 'w', data: 1 }])
    const waiting = watch(wait(lastPosition))
    // A year on (a jump: firing every poll of a year one by one would take hours), past any
    // finite timeout a caller would pick, then the next poll looks at the time left.
    await clock.advance(200)
    clock.jump(365 * 24 * 3600 * 1000)
    await clock.advance(200)
    expect(waiting).toMatchObject({ settled: false })
    await projector.catchUp()
    for (let i = 0; i < 100 && !waiting.settled; i++) await clock.advance(100)
    await flushJobs()
    expect(waiting.settled).toBe(true)
    expect(waiting.outcome).not.toBeInstanceOf(Error)
  })

  it.each([
    ['NaN', Number.NaN],
    ['a negative', -1],
    ['-Infinity', Number.NEGATIVE_INFINITY],
    ['a fraction', 1.5],
    ['a string', '5000'],
  ])('%s is still refused, naming timeoutMs', async (_, timeoutMs) => {
    const error = await projector
      .waitFor(Number.MAX_SAFE_INTEGER, { timeoutMs: timeoutMs as number })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('timeoutMs')
    expect((error as InvalidOptionError).expected).toContain('Infinity')
  })
})
