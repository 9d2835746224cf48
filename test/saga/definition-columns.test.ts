// An instance row whose `name` or `version` no longer matches its `definition` column (the key
// the claim matches on), after a manual edit: a worker registered for the definition claimed
// it and ran the definition's steps on it, while `saga list` showed it under the other name or
// version. It is now reported as STORED_DATA_INVALID naming the saga and the column, left as it
// is, and held like any other row the worker cannot read; the instances claimed with it run.
// Found by exploratory testing.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)(
  'an instance whose name or version is not its definition, on $dialect',
  (target) => {
    let t: TestDb
    beforeAll(async () => {
      t = await target.open('saga_definition_columns')
    })
    afterAll(async () => {
      await t?.close()
    })

    it.each([
      ['name', "name = 'other'", 'is "other", not "'],
      ['version', 'version = 2', 'is 2, not 1: '],
      ['name', "name = 'other', version = 2", 'is "other" and its version 2, not "'],
    ])('%s edited (%s): reported once, not run, the others run', async (column, edit, said) => {
      const clock = new ManualClock(1_700_000_000_000)
      let runs = 0
      const saga = defineSaga({
        name: `def-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          {
            name: 'only',
            action: async () => {
              runs++
              return { done: true }
            },
          },
        ],
      })
      const broken = (await startSaga(t.db, saga, {}, { clock })).id
      const healthy = (await startSaga(t.db, saga, {}, { clock })).id
      await t.db.execute(`UPDATE breakwater_sagas SET ${edit} WHERE id = $1`, [broken])
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, listen: false })
      const events: SagaEvent[] = []
      worker.events.on((e) => events.push(e))
      const reports = () => events.filter((e) => e.type === 'error')
      try {
        await worker.poll()
        expect((await getSaga(t.db, healthy))?.status).toBe('completed')
        expect(runs).toBe(1)
        expect(reports()).toHaveLength(1)
        expect(reports()[0]).toMatchObject({
          sagaId: broken,
          error: {
            code: 'STORED_DATA_INVALID',
            message: expect.stringContaining(`${broken}": ${column} ${said}`),
          },
        })
        expect(reports()[0]?.error?.message).toContain(`its definition column says ${saga.name}@1`)
        // Held for a minute, as other rows it cannot read: not claimed and reported at every lease.
        await clock.advance(59_999)
        await worker.poll()
        expect(reports()).toHaveLength(1)
        await clock.advance(1)
        await worker.poll()
        expect(reports()).toHaveLength(2)
        expect(runs).toBe(1)
      } finally {
        await worker.stop()
      }
      const [row] = await t.db.query<{ status: string; steps: string }>(
        'SELECT status, steps FROM breakwater_sagas WHERE id = $1',
        [broken],
      )
      expect(row?.status).toBe('running')
      expect(JSON.parse(row!.steps)).toMatchObject([{ name: 'only', status: 'pending' }])
    })
  },
)
