// A saga instance row changed behind breakwater's back (a manual edit, another writer's bug, a
// restored backup) so that its input, context or steps is not JSON, or its steps not a list.
// The worker's claim threw a bare SyntaxError out of poll(): the other instances claimed with it
// never ran (their leases expired, and the next claim took the bad one again), and nothing named
// the instance. It is now reported as an `error` event with a StoredDataError naming the saga
// and the column, left as it is, and the others run. Real SQLite, time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaEvent,
  type SagaWorker,
  startSaga,
} from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { sqliteDb, type TestDb } from './databases.js'

/**
 * Checks that the instance the worker reported is held for a minute: not claimed and reported
 * again at every lease (800 ms) until someone fixes it.
 */
async function expectHeldForAMinute(
  worker: SagaWorker,
  clock: ManualClock,
  events: readonly SagaEvent[],
): Promise<void> {
  const reports = () => events.filter((e) => e.type === 'error').length
  const before = reports()
  await clock.advance(59_999)
  await worker.poll()
  expect(reports()).toBe(before)
  await clock.advance(1)
  await worker.poll()
  expect(reports()).toBe(before + 1)
}

describe('saga instances with malformed stored rows, on SQLite', () => {
  let t: TestDb
  beforeAll(async () => {
    t = await sqliteDb.open('saga_malformed_state')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([
    ['steps', '{bad', 'is not JSON'],
    ['context', '{bad', 'is not JSON'],
    ['input', 'x', 'is not JSON'],
    ['steps', 'null', 'is not a JSON list'],
  ])('%s %s: reported by name, the others run', async (column, bad, said) => {
    const clock = new ManualClock(1_700_000_000_000)
    const name = `order-${randomUUID().slice(0, 8)}`
    const saga = defineSaga({
      name,
      version: 1,
      steps: [{ name: 'only', action: async () => ({ done: true }) }],
    })
    const broken = (await startSaga(t.db, saga, {}, { clock })).id
    const healthy = (await startSaga(t.db, saga, {}, { clock })).id
    await t.db.execute(`UPDATE breakwater_sagas SET ${column} = $1 WHERE id = $2`, [bad, broken])
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, concurrency: 4 })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    try {
      await worker.poll()
      expect((await getSaga(t.db, healthy))?.status).toBe('completed')
      const errors = events.filter((e) => e.type === 'error')
      expect(errors).toHaveLength(1)
      expect(errors[0]).toMatchObject({ error: { code: 'STORED_DATA_INVALID' } })
      const message = JSON.stringify(errors[0])
      expect(message).toContain(`saga \\"${broken}\\"`)
      expect(message).toContain(`${column} ${said}`)

      const read = await getSaga(t.db, broken).catch((e: unknown) => e)
      expect(read).toBeInstanceOf(StoredDataError)
      expect(read).toMatchObject({ table: 'breakwater_sagas', column })

      await expectHeldForAMinute(worker, clock, events)
    } finally {
      await worker.stop()
    }
    const [row] = await t.db.query<Record<string, unknown>>(
      `SELECT ${column} AS v, status FROM breakwater_sagas WHERE id = $1`,
      [broken],
    )
    expect(row).toEqual({ v: bad, status: 'running' })
  })

  // A step_index that names none of the instance's stored steps (a row edited outside
  // breakwater): a running saga past its last step finished `completed` without running a step
  // or saying a word, and a compensating one compensated from its last step. It is now reported
  // as STORED_DATA_INVALID naming the saga and the index, left as it is, and held like a row
  // whose state cannot be read. (A definition whose steps changed without a version bump is
  // another matter: the stored step names differ, and the instance is parked; engine.test.ts.)
  it.each([
    ['running', 2],
    ['running', 7],
    ['running', -1],
    ['compensating', 2],
  ])('%s at step_index %d: reported by name, left and held', async (status, index) => {
    const clock = new ManualClock(1_700_000_000_000)
    const name = `index-${randomUUID().slice(0, 8)}`
    const ran: string[] = []
    const saga = defineSaga({
      name,
      version: 1,
      steps: [
        { name: 'a', action: async () => void ran.push('a'), compensation: async () => {} },
        { name: 'b', action: async () => void ran.push('b'), compensation: async () => {} },
      ],
    })
    const broken = (await startSaga(t.db, saga, {}, { clock })).id
    await t.db.execute('UPDATE breakwater_sagas SET status = $1, step_index = $2 WHERE id = $3', [
      status,
      index,
      broken,
    ])
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    try {
      await worker.poll()
      const errors = events.filter((e) => e.type === 'error')
      expect(errors).toHaveLength(1)
      expect(errors[0]).toMatchObject({
        sagaId: broken,
        error: {
          code: 'STORED_DATA_INVALID',
          message: expect.stringContaining(
            `breakwater_sagas saga "${broken}": step_index is ${index}, not the index of one of its 2 steps (0 to 1) of ${name}@1`,
          ),
        },
      })
      expect(ran).toEqual([])
      await expectHeldForAMinute(worker, clock, events)
    } finally {
      await worker.stop()
    }
    const read = await getSaga(t.db, broken)
    expect(read).toMatchObject({ status, stepIndex: index, finishedAt: undefined })
  })
})
