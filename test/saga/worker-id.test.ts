// A worker id is written as the lease owner of every instance the worker claims, and into the
// timeline. One holding a NUL or half of a surrogate pair was taken: on PostgreSQL every claim
// then failed with a bare driver error (`invalid byte sequence 0x00`, or `22P02 invalid input
// syntax for type json` from the batched write), and the worker never ran a saga, where SQLite
// ran them. It is refused as saga ids, reply headers and an operator's `by` are. Found by
// exploratory testing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createSagaWorker, defineSaga } from '../../src/saga/index.js'
import { dbTargets, type TestDb } from './databases.js'

const saga = defineSaga({
  name: 'worker-id',
  version: 1,
  steps: [{ name: 'a', action: async () => ({}) }],
})

describe.each(dbTargets)('a saga worker id on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_worker_id')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([
    ['a NUL', 'w\u0000x'],
    ['a lone high surrogate', 'w\ud800x'],
    ['a lone low surrogate', 'w\udc00'],
  ])('refuses one holding %s, naming workerId', (_what, workerId) => {
    let error: unknown
    try {
      createSagaWorker({ db: t.db, sagas: [saga], workerId, listen: false })
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('workerId')
    expect((error as InvalidOptionError).message).toContain('NUL')
  })

  it('takes one with a surrogate pair (an emoji)', async () => {
    const worker = createSagaWorker({ db: t.db, sagas: [saga], workerId: 'w-😀', listen: false })
    expect(worker.id).toBe('w-😀')
    const outcome = await worker.run(saga, null)
    expect(outcome.status).toBe('completed')
    await worker.stop()
  })
})
