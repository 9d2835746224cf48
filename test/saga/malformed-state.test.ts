// A saga instance row changed behind breakwater's back (a manual edit, another writer's bug, a
// restored backup) so that its input, context or steps is not JSON, or its steps not a list.
// The worker's claim threw a bare SyntaxError out of poll(): the other instances claimed with it
// never ran (their leases expired, and the next claim took the bad one again), and nothing named
// the instance. It is now reported as an `error` event with a StoredDataError naming the saga
// and the column, left as it is, and the others run. The same for the other rows a worker
// reads (a step index, a reply, a cancel request's detail). Real SQLite, time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  type SagaDefinition,
  type SagaEvent,
  type SagaWorker,
  startSaga,
} from '../../src/saga/index.js'
import { type SqlDriver, StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, sqliteDb, type TestDb } from './databases.js'

/** A worker for `saga` and the events it emits. */
function watched(db: SqlDriver, saga: SagaDefinition<unknown, unknown>, clock: ManualClock) {
  const worker = createSagaWorker({ db, sagas: [saga], clock })
  const events: SagaEvent[] = []
  worker.events.on((e) => events.push(e))
  return { worker, events }
}

/** Checks that the worker reported one error so far: STORED_DATA_INVALID for `sagaId`, saying `said`. */
function expectReportedOnce(events: readonly SagaEvent[], sagaId: string, said: string): void {
  const errors = events.filter((e) => e.type === 'error')
  expect(errors).toHaveLength(1)
  expect(errors[0]).toMatchObject({
    sagaId,
    error: { code: 'STORED_DATA_INVALID', message: expect.stringContaining(said) },
  })
}

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
    ['steps', '[null]', 'holds null at [0], not a step'],
    ['steps', '[{"status":"pending"}]', 'holds an object without a name at [0], not a step'],
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
    const { worker, events } = watched(t.db, saga, clock)
    try {
      await worker.poll()
      expectReportedOnce(
        events,
        broken,
        `breakwater_sagas saga "${broken}": step_index is ${index}, not the index of one of its 2 steps (0 to 1) of ${name}@1`,
      )
      expect(ran).toEqual([])
      await expectHeldForAMinute(worker, clock, events)
    } finally {
      await worker.stop()
    }
    // Left as it is; getSaga (`saga show`) names it as the worker does.
    const [row] = await t.db.query(
      'SELECT status, step_index, finished_at FROM breakwater_sagas WHERE id = $1',
      [broken],
    )
    expect(row).toEqual({ status, step_index: index, finished_at: null })
    await expect(getSaga(t.db, broken)).rejects.toMatchObject({ column: 'step_index' })
  })

  // Rows the worker reads while it runs an instance: a recorded reply, and the detail of a
  // cancel request (its reason). Not JSON, they threw a bare SyntaxError (a detail `null`, a
  // TypeError) out of the run, naming nothing, and the instance was claimed again, and the
  // error reported again, at every lease (800 ms) until someone found the row.
  it('a recorded reply that is not JSON: reported by name, the reply left, no resend, held', async () => {
    const bad = '{bad'
    const clock = new ManualClock(1_700_000_000_000)
    let sent = 0
    const saga = defineSaga({
      name: `reply-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: async () => void sent++,
          awaitReply: { timeoutMs: 600_000 },
        },
      ],
    })
    const { worker, events } = watched(t.db, saga, clock)
    try {
      const { id } = await worker.run(saga, {})
      expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock })).toBe('delivered')
      await t.db.execute('UPDATE breakwater_saga_replies SET reply = $1 WHERE saga_id = $2', [
        bad,
        id,
      ])
      await worker.poll()
      expectReportedOnce(events, id, `breakwater_saga_replies saga "${id}" step "charge": reply is`)
      await expectHeldForAMinute(worker, clock, events)
      expect(sent).toBe(1)
      expect((await getSaga(t.db, id))?.steps[0]).toMatchObject({ status: 'waiting' })
      const replies = await t.db.query(
        'SELECT reply FROM breakwater_saga_replies WHERE saga_id = $1',
        [id],
      )
      expect(replies).toEqual([{ reply: bad }])
    } finally {
      await worker.stop()
    }
  })

  it.each(['{bad', 'null'])(
    'the detail of a cancel request %s: reported by name, left, held',
    async (bad) => {
      const clock = new ManualClock(1_700_000_000_000)
      const saga = defineSaga({
        name: `cancel-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [{ name: 'nap', sleepMs: 600_000 }],
      })
      const { worker, events } = watched(t.db, saga, clock)
      try {
        const { id } = await worker.run(saga, {})
        await cancelSaga(t.db, id, { reason: 'customer left', clock })
        const edited = await t.db.query<{ seq: number }>(
          `UPDATE breakwater_saga_events SET detail = $1 WHERE saga_id = $2 AND kind = 'cancel-requested' RETURNING seq`,
          [bad, id],
        )
        const seq = edited[0]!.seq
        await worker.poll()
        expectReportedOnce(
          events,
          id,
          `breakwater_saga_events saga "${id}" event ${seq}: detail is`,
        )
        await expectHeldForAMinute(worker, clock, events)
        expect(await getSaga(t.db, id)).toMatchObject({ status: 'running', cancelRequested: true })
      } finally {
        await worker.stop()
      }
    },
  )
})

// A step entry whose fields breakwater never writes (a row edited outside breakwater). Each of
// these did harm without a word: a completed step with another status, or a step flagged
// outcomeUnknown with 'true', was not compensated; a wait step whose wakeAt is null or text
// completed at once; attempts that are text kept an attempt that recorded nothing from being
// flagged; a null error made the run throw a bare TypeError at every lease; a replyRefusedAt
// that is text let a refused reply's redelivered copy through. Now STORED_DATA_INVALID naming
// the step and the field, the row left as it is, the instance held. (result and
// compensationAttempts are only shown, never acted on: not checked.)
describe.each(dbTargets)(
  'saga step entries and counters with malformed values, on $dialect',
  (target) => {
    let t: TestDb
    beforeAll(async () => {
      t = await target.open('saga_malformed_step_fields')
    })
    afterAll(async () => {
      await t?.close()
    })

    it.each([
      [{ status: 'done' }, 'status "done"'],
      [{ status: null }, 'status null'],
      [{ attempts: 'x' }, 'attempts "x"'],
      [{ attempts: -1 }, 'attempts -1'],
      [{ attempts: 1.5 }, 'attempts 1.5'],
      [{ wakeAt: null }, 'wakeAt null'],
      [{ wakeAt: 'abc' }, 'wakeAt "abc"'],
      [{ sent: 'true' }, 'sent "true"'],
      [{ outcomeUnknown: 'true' }, 'outcomeUnknown "true"'],
      [{ replyRefusedAt: 'abc' }, 'replyRefusedAt "abc"'],
      [{ error: null }, 'error null'],
      [{ compensationError: 'x' }, 'compensationError "x"'],
    ])('%o: reported by step and field, nothing run, left and held', async (fields, said) => {
      const clock = new ManualClock(1_700_000_000_000)
      const ran: string[] = []
      const saga = defineSaga({
        name: `fields-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          { name: 'a', action: async () => void ran.push('a'), compensation: async () => {} },
          { name: 'b', action: async () => void ran.push('b') },
        ],
      })
      const broken = (await startSaga(t.db, saga, {}, { clock })).id
      const steps = JSON.stringify([
        { name: 'a', status: 'pending', attempts: 0, ...fields },
        { name: 'b', status: 'pending', attempts: 0 },
      ])
      await t.db.execute('UPDATE breakwater_sagas SET steps = $1 WHERE id = $2', [steps, broken])
      const { worker, events } = watched(t.db, saga, clock)
      try {
        await worker.poll()
        expectReportedOnce(
          events,
          broken,
          `breakwater_sagas saga "${broken}": steps holds step "a" at [0] with ${said}`,
        )
        expect(ran).toEqual([])
        await expectHeldForAMinute(worker, clock, events)
      } finally {
        await worker.stop()
      }
      await expect(getSaga(t.db, broken)).rejects.toBeInstanceOf(StoredDataError)
      const [row] = await t.db.query('SELECT steps FROM breakwater_sagas WHERE id = $1', [broken])
      expect(row).toEqual({ steps })
    })

    // The row's own counters. attempt: the claim adds one (on SQLite text becomes 1 there, which
    // only restarts the count), but a fraction or a number below 0 reached the step: ctx.attempt
    // -4, a step retried past its maxAttempts, or (1.5) an attempt taken as one that recorded
    // nothing, and compensated. cancel_requested: text ('true') was read as no cancel request.
    // PostgreSQL's INTEGER and SMALLINT columns hold neither text nor a fraction.
    const claimed = 'not an attempt (a whole number from 1 once claimed)'
    it.each([
      ['attempt', -5, `attempt is -4, ${claimed}`],
      ['cancel_requested', 2, 'cancel_requested is 2'],
      ...(target.dialect === 'sqlite'
        ? [
            ['attempt', 1.5, `attempt is 2.5, ${claimed}`],
            ['cancel_requested', 'true', 'cancel_requested is "true"'],
          ]
        : []),
    ])('%s %s: reported by name, nothing run, held', async (column, bad, said) => {
      const clock = new ManualClock(1_700_000_000_000)
      const ran: string[] = []
      const saga = defineSaga({
        name: `columns-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          { name: 'a', action: async () => void ran.push('a'), compensation: async () => {} },
        ],
      })
      const broken = (await startSaga(t.db, saga, {}, { clock })).id
      await t.db.execute(`UPDATE breakwater_sagas SET ${column} = $1 WHERE id = $2`, [bad, broken])
      const { worker, events } = watched(t.db, saga, clock)
      try {
        await worker.poll()
        expectReportedOnce(events, broken, `breakwater_sagas saga "${broken}": ${said}`)
        expect(ran).toEqual([])
        await expectHeldForAMinute(worker, clock, events)
      } finally {
        await worker.stop()
      }
      await expect(getSaga(t.db, broken)).rejects.toMatchObject({ column })
    })

    // The same column edited while a step runs: the run read it back from its write after the
    // step (not at a claim) with Boolean(Number()), so 'true' (SQLite) let the next step run as
    // if no cancel was asked (the saga could end completed, never reported) and 2 cancelled it,
    // compensating the step, where the claim reports both. Now the run reports it as the claim
    // does, after its write (what the step did is kept), and the instance is held.
    it.each([2, ...(target.dialect === 'sqlite' ? ['true'] : [])])(
      'cancel_requested %s written while a step runs: reported after its write, nothing more run',
      async (bad) => {
        const clock = new ManualClock(1_700_000_000_000)
        const ran: string[] = []
        const saga = defineSaga({
          name: `edited-${randomUUID().slice(0, 8)}`,
          version: 1,
          steps: [
            {
              name: 'a',
              action: async (ctx) => {
                ran.push('a')
                await t.db.execute(
                  'UPDATE breakwater_sagas SET cancel_requested = $1 WHERE id = $2',
                  [bad, ctx.sagaId],
                )
              },
              compensation: async () => void ran.push('undo a'),
            },
            { name: 'b', action: async () => void ran.push('b') },
          ],
        })
        const { worker, events } = watched(t.db, saga, clock)
        try {
          const { id } = await worker.run(saga, {})
          expectReportedOnce(
            events,
            id,
            `breakwater_sagas saga "${id}": cancel_requested is ${JSON.stringify(bad)}, not 0 or 1`,
          )
          expect(ran).toEqual(['a'])
          const [row] = await t.db.query<{ status: string; steps: string }>(
            'SELECT status, steps FROM breakwater_sagas WHERE id = $1',
            [id],
          )
          expect(row?.status).toBe('running')
          expect(JSON.parse(row!.steps)[0]).toMatchObject({ name: 'a', status: 'completed' })
          await expectHeldForAMinute(worker, clock, events)
          expect(ran).toEqual(['a'])
        } finally {
          await worker.stop()
        }
      },
    )
  },
)
