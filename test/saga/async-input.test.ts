// A saga's input function must answer synchronously: an async one (zod's parseAsync) returned
// a promise, which was stored as the input `{}` (and its rejection went unhandled). It is
// refused, and nothing is started (on real SQLite and PostgreSQL).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createSagaWorker, defineSaga, startSaga } from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga input functions on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_async_input')
  })
  afterAll(async () => {
    await t?.close()
  })

  const saga = defineSaga({
    name: 'async-input',
    version: 1,
    input: (async (raw: unknown) => raw) as never,
    steps: [{ name: 'a', action: () => undefined }],
  })

  it('startSaga refuses an input function that returns a promise, starting nothing', async () => {
    const error = await startSaga(t.db, saga, { orderId: 'o-1' }, { id: 's-1' }).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('saga "async-input".input')
    expect(await countRows(t.db, 'breakwater_sagas')).toBe(0)
  })

  it('worker.run refuses it too', async () => {
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    await expect(worker.run(saga, { orderId: 'o-2' })).rejects.toBeInstanceOf(InvalidOptionError)
    expect(await countRows(t.db, 'breakwater_sagas')).toBe(0)
  })
})

describe('startSaga options', () => {
  it('refuses a notify that is not a boolean (the string "false" notified)', async () => {
    const saga = defineSaga({ name: 'n', version: 1, steps: [{ name: 'a', action: () => {} }] })
    const untouched = { dialect: 'sqlite', query: async () => expect.unreachable() } as never
    for (const notify of ['false', 0, null]) {
      const error = await startSaga(untouched, saga, {}, { notify: notify as never }).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('options.notify')
    }
  })
})
