// A saga's `reason` written as bytes by another tool, an older version or bad input (a Buffer
// parameter). SQLite keeps it as a blob in the TEXT column, and the worker handed it to the
// compensations as a Buffer (`ctx.reason` is documented as a string); the write after the
// compensation then threw a bare TypeError (`replaceAll` of a Buffer), so the compensation ran
// again at every lease. PostgreSQL stores the same bytes as text when they are UTF-8 (and
// refuses the write when they are not, or hold NUL). SQLite now behaves the same: a blob of such
// bytes is read as that text, exactly, by the worker and the admin readers alike; any other blob
// is not decoded (that would lose bytes) but reported as StoredDataError naming the saga and
// `reason`, the instance held and its row left as it is, as getSaga refuses it.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  listSagas,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

describe.each(dbTargets)('a reason stored as bytes, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_reason_blob')
  })
  afterAll(async () => {
    await t?.close()
  })

  // An instance compensating its first step, its reason written as `reason` (a Buffer), with
  // what its compensation was given.
  async function compensating(reason: Buffer, clock: ManualClock) {
    const given: unknown[] = []
    const saga = defineSaga({
      name: `reason-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async () => ({}),
          compensation: async (ctx) => {
            given.push(ctx.reason)
          },
        },
        { name: 'charge', action: async () => ({}) },
      ],
    })
    const { id } = await startSaga(t.db, saga, null, { clock })
    const steps = [
      { name: 'reserve', status: 'completed', attempts: 1 },
      { name: 'charge', status: 'failed', attempts: 1 },
    ]
    await t.db.execute(
      `UPDATE breakwater_sagas SET status = 'compensating', step_index = 0, attempt = 0,
         steps = $1, reason = $2 WHERE id = $3`,
      [JSON.stringify(steps), reason, id],
    )
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const events: SagaEvent[] = []
    worker.events.on((e) => events.push(e))
    return { id, saga, worker, events, given }
  }

  it('UTF-8 bytes reach the compensation as that text, as saga show and saga list show it', async () => {
    const clock = new ManualClock(1_700_000_000_000)
    const text = 'card declined: café \u2615 \ufeffbom'
    const { id, saga, worker, events, given } = await compensating(Buffer.from(text), clock)
    if (target.dialect === 'sqlite') {
      const [row] = await t.db.query<{ kind: string }>(
        'SELECT typeof(reason) AS kind FROM breakwater_sagas WHERE id = $1',
        [id],
      )
      expect(row?.kind).toBe('blob')
    }
    expect((await getSaga(t.db, id))?.reason).toBe(text)
    const [listed] = await listSagas(t.db, { name: saga.name })
    expect(listed).toMatchObject({ reason: text, unreadable: undefined })
    const show = await runSagaCommand(t, ['show', id])
    expect(show).toMatchObject({ code: 0, err: '' })
    expect(show.out).toContain(`reason    ${text}`)

    await worker.poll()
    expect(given).toEqual([text])
    expect(events.filter((e) => e.type === 'error')).toEqual([])
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'compensated', reason: text })
    await worker.stop()
  })

  it.each([
    ['not UTF-8', Buffer.from([0x63, 0x61, 0x72, 0x64, 0xff, 0x41])],
    ['holding NUL', Buffer.from('card\u0000declined')],
  ])('bytes %s: never handed on, reported naming the saga and reason', async (_, bytes) => {
    const clock = new ManualClock(1_700_000_000_000)
    if (target.dialect === 'postgres') {
      // PostgreSQL's text takes no such bytes: the write is refused, nothing is stored.
      await expect(compensating(bytes, clock)).rejects.toMatchObject({ code: '22021' })
      return
    }
    const { id, saga, worker, events, given } = await compensating(bytes, clock)
    const stored = () =>
      t.db.query(
        'SELECT status, hex(reason) AS reason, typeof(reason) AS kind FROM breakwater_sagas WHERE id = $1',
        [id],
      )
    const before = await stored()
    expect(before).toEqual([
      { status: 'compensating', reason: bytes.toString('hex').toUpperCase(), kind: 'blob' },
    ])

    await worker.poll()
    expect(given).toEqual([])
    const errors = events.filter((e) => e.type === 'error')
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({
      sagaId: id,
      error: {
        code: 'STORED_DATA_INVALID',
        message: expect.stringContaining(`breakwater_sagas saga "${id}": reason is a blob of`),
      },
    })
    // Held, not claimed and reported again at every lease.
    await clock.advance(1_000)
    await worker.poll()
    expect(events.filter((e) => e.type === 'error')).toHaveLength(1)
    expect(given).toEqual([])
    expect(await stored()).toEqual(before)

    const error = await getSaga(t.db, id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({ column: 'reason', row: `saga "${id}"` })
    const [listed] = await listSagas(t.db, { name: saga.name })
    expect(listed).toMatchObject({ reason: undefined, unreadable: ['reason'] })
    await worker.stop()
  })
})
