// The saga admin readers on rows changed behind breakwater's back (a manual edit, another
// writer's bug, a restored backup). They parsed the stored JSON bare: a bare SyntaxError (or a
// TypeError for `null` steps) that named neither the saga nor the column, and one such row
// failed the whole of `listSagas` (`saga list`), hiding every good instance. Now the commands
// that need the row (deliverReply, retrySaga, getSagaTimeline) throw StoredDataError naming it,
// which `breakwater saga` prints, and the listing shows the row without its step. Real SQLite.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import {
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  listSagas,
  retrySaga,
  startSaga,
} from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { sqliteDb, type TestDb } from './databases.js'

describe('saga admin readers on malformed stored rows, on SQLite', () => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await sqliteDb.open('saga_malformed_admin')
  })
  afterAll(async () => {
    await t?.close()
  })

  const replySaga = () =>
    defineSaga({
      name: `admin-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'reserve', action: async () => ({ reserved: true }) },
        { name: 'charge', send: async () => {}, awaitReply: { timeoutMs: 600_000 } },
      ],
    })

  const spoil = (table: string, column: string, bad: string, where: string, id: string) =>
    t.db.query<{ seq?: number }>(
      `UPDATE ${table} SET ${column} = $1 WHERE ${where} = $2 RETURNING *`,
      [bad, id],
    )

  it('listSagas lists an instance whose steps cannot be read, without its step, with the others', async () => {
    const saga = replySaga()
    const good = (await startSaga(t.db, saga, {}, { clock })).id
    const broken = (await startSaga(t.db, saga, {}, { clock })).id
    const nulled = (await startSaga(t.db, saga, {}, { clock })).id
    await spoil('breakwater_sagas', 'steps', '{bad', 'id', broken)
    await spoil('breakwater_sagas', 'steps', 'null', 'id', nulled)
    const listed = await listSagas(t.db, { name: saga.name })
    expect(Object.fromEntries(listed.map((s) => [s.id, s.step]))).toEqual({
      [good]: 'reserve',
      [broken]: undefined,
      [nulled]: undefined,
    })
    expect(listed.find((s) => s.id === broken)).toMatchObject({ status: 'running', attempt: 0 })
  })

  it.each(['{bad', 'null'])(
    'deliverReply to an instance whose steps are %s names it, and records nothing',
    async (bad) => {
      const saga = replySaga()
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
      const { id } = await worker.run(saga, {})
      await spoil('breakwater_sagas', 'steps', bad, 'id', id)
      const error = await deliverReply(t.db, id, 'charge', { ok: true }, { clock }).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        table: 'breakwater_sagas',
        row: `saga "${id}"`,
        column: 'steps',
      })
      const replies = await t.db.query('SELECT 1 FROM breakwater_saga_replies WHERE saga_id = $1', [
        id,
      ])
      expect(replies).toEqual([])
    },
  )

  // A saga that is parked while compensating: its `compensating` event holds the reason.
  const parkedSaga = async () => {
    const saga = defineSaga({
      name: `parked-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => {},
          compensation: async () => {
            throw new Error('refund service down')
          },
          compensationRetry: { maxAttempts: 1 },
        },
        {
          name: 'ship',
          action: async () => {
            throw Object.assign(new Error('address rejected'), { status: 422 })
          },
        },
      ],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id, status } = await worker.run(saga, {})
    expect(status).toBe('failed')
    return id
  }

  it('getSagaTimeline names the event whose detail cannot be read', async () => {
    const id = await parkedSaga()
    const [edited] = await spoil('breakwater_saga_events', 'detail', '{bad', 'saga_id', id)
    const error = await getSagaTimeline(t.db, id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({
      table: 'breakwater_saga_events',
      row: `saga "${id}" event ${edited!.seq}`,
      column: 'detail',
    })
  })

  it('retrySaga (and `saga retry`) names the compensating event it cannot read, and re-queues nothing', async () => {
    const id = await parkedSaga()
    await t.db.execute(
      `UPDATE breakwater_saga_events SET detail = '{bad' WHERE saga_id = $1 AND kind = 'compensating'`,
      [id],
    )
    const error = await retrySaga(t.db, id, { clock }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({ table: 'breakwater_saga_events', column: 'detail' })

    let err = ''
    const code = await sagaCommand(['retry', id, '--db', t.url], {
      stdout: { write: () => true },
      stderr: { write: (text: string) => (err += text) },
    })
    expect(code).toBe(1)
    expect(err).toContain(`breakwater_saga_events saga "${id}" event `)
    expect(err).toContain(': detail is not JSON')
    expect((await getSaga(t.db, id))?.status).toBe('failed')
  })
})
