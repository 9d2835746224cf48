// The saga admin readers on rows changed behind breakwater's back (a manual edit, another
// writer's bug, a restored backup). They parsed the stored JSON bare: a bare SyntaxError (or a
// TypeError for `null` steps) that named neither the saga nor the column, and one such row
// failed the whole of `listSagas` (`saga list`), hiding every good instance. Now the commands
// that need the row (deliverReply, retrySaga) throw StoredDataError naming it, which
// `breakwater saga` prints, the listing shows the row without its step, and getSagaTimeline
// marks the entry it cannot read among the others. Real SQLite.
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
  type SagaDefinition,
  startSaga,
} from '../../src/saga/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, sqliteDb, type TestDb } from './databases.js'
import { runSagaCommand } from './saga-command.js'

// Starts two instances of `saga` and sets `column` of the second to `bad`: getSaga and
// `saga show` (table and --json) fail naming the column with `said`.
async function spoilOne(
  t: TestDb,
  saga: SagaDefinition,
  clock: ManualClock,
  column: string,
  bad: unknown,
  said: string,
): Promise<{ good: string; broken: string }> {
  const good = (await startSaga(t.db, saga, {}, { clock })).id
  const broken = (await startSaga(t.db, saga, {}, { clock })).id
  await t.db.execute(`UPDATE breakwater_sagas SET ${column} = $1 WHERE id = $2`, [bad, broken])
  const error = await getSaga(t.db, broken).catch((e: unknown) => e)
  expect(error).toBeInstanceOf(StoredDataError)
  expect(error).toMatchObject({ table: 'breakwater_sagas', row: `saga "${broken}"`, column })
  expect((error as Error).message).toContain(said)
  for (const json of [[], ['--json']]) {
    const shown = await runSagaCommand(t, ['show', broken, ...json])
    expect(shown).toMatchObject({ code: 1, out: '' })
    expect(shown.err).toContain(`breakwater_sagas saga "${broken}": ${said}`)
  }
  return { good, broken }
}

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

  it('getSagaTimeline marks the event whose detail cannot be read, with the rest of the timeline', async () => {
    const id = await parkedSaga()
    const before = await getSagaTimeline(t.db, id)
    const parked = before.find((e) => e.kind === 'parked')!
    await t.db.execute(`UPDATE breakwater_saga_events SET detail = '{bad' WHERE seq = $1`, [
      parked.seq,
    ])
    const timeline = await getSagaTimeline(t.db, id)
    expect(timeline.filter((e) => e.seq !== parked.seq)).toEqual(
      before.filter((e) => e.seq !== parked.seq),
    )
    expect(timeline.find((e) => e.seq === parked.seq)).toEqual({
      ...parked,
      detail: undefined,
      unreadable: [{ column: 'detail', problem: expect.stringMatching(/^is not JSON \(/) }],
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

// The row's counters, shown as stored: `saga show` printed an attempt of text as NaN (null in
// --json) and a cancel_requested of 'true' (SQLite) or 2 as no request / a request, where the
// worker reports the same row as STORED_DATA_INVALID; `saga list` showed a step_index naming
// no step as step '-', as a finished saga, with no other marker. getSaga (`saga show`) now fails
// naming the column; the listing still lists the row, says which column it cannot read
// (`unreadable`), and the table marks it. PostgreSQL's INTEGER and SMALLINT columns hold
// neither text nor a fraction.
describe.each(dbTargets)('saga admin readers on malformed row counters, on $dialect', (target) => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await target.open('saga_malformed_admin_counters')
  })
  afterAll(async () => {
    await t?.close()
  })

  const run = (args: string[]) => runSagaCommand(t, args)

  it.each([
    ['attempt', -5, 'attempt is -5, not a whole number from 0'],
    ['cancel_requested', 2, 'cancel_requested is 2, not 0 or 1'],
    ['step_index', 2, 'step_index is 2, not the index of one of its 2 steps (0 to 1)'],
    ['step_index', -1, 'step_index is -1, not the index of one of its 2 steps (0 to 1)'],
    ...(target.dialect === 'sqlite'
      ? [
          ['attempt', 'abc', 'attempt is "abc", not a whole number from 0'],
          ['attempt', 1.5, 'attempt is 1.5, not a whole number from 0'],
          ['cancel_requested', 'true', 'cancel_requested is "true", not 0 or 1'],
          ['step_index', 'x', 'step_index is "x", not the index of one of its 2 steps (0 to 1)'],
        ]
      : []),
  ])('%s %s: getSaga and `saga show` name it, `saga list` marks it', async (column, bad, said) => {
    const saga = defineSaga({
      name: `counters-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        { name: 'reserve', action: async () => ({}) },
        { name: 'charge', action: async () => ({}) },
      ],
    })
    const { good, broken } = await spoilOne(t, saga, clock, `${column}`, bad, `${said}`)
    expect(await getSaga(t.db, good)).toMatchObject({ attempt: 0, cancelRequested: false })

    // The listing has no cancel_requested to show: nothing unreadable in it then.
    const unreadable = column === 'cancel_requested' ? undefined : [column]
    const listed = await listSagas(t.db, { name: saga.name })
    expect(listed.find((s) => s.id === good)).toMatchObject({ step: 'reserve', attempt: 0 })
    expect(listed.find((s) => s.id === good)?.unreadable).toBeUndefined()
    const row = listed.find((s) => s.id === broken)!
    expect(row.unreadable).toEqual(unreadable)
    if (column === 'attempt') expect(row.attempt).toBeUndefined()
    if (column === 'step_index') expect(row.step).toBeUndefined()

    const json = await run(['list', '--name', saga.name, '--json'])
    expect(json.code).toBe(0)
    const parsed = JSON.parse(json.out) as { id: string; attempt?: number; unreadable?: string[] }[]
    expect(parsed.find((s) => s.id === broken)?.unreadable).toEqual(unreadable)
    expect(parsed.find((s) => s.id === good)).not.toHaveProperty('unreadable')
    expect(json.out).not.toContain('NaN')

    const table = await run(['list', '--name', saga.name])
    expect(table.code).toBe(0)
    expect(table.out).not.toContain('NaN')
    const line = (id: string) => table.out.split('\n').find((l) => l.startsWith(id))!
    expect(line(good)).not.toContain('unreadable')
    if (unreadable === undefined) {
      expect(table.out).not.toContain('unreadable')
    } else {
      expect(line(broken)).toContain('(unreadable)')
      expect(table.out).toContain(
        `saga ${broken}: ${column} cannot be read (changed outside breakwater); breakwater saga show ${broken} says why`,
      )
    }
  })

  it('`saga list` marks a row whose steps cannot be read, naming the column', async () => {
    const saga = defineSaga({
      name: `steps-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'reserve', action: async () => ({}) }],
    })
    const broken = (await startSaga(t.db, saga, {}, { clock })).id
    await t.db.execute('UPDATE breakwater_sagas SET steps = $1 WHERE id = $2', ['{bad', broken])
    expect((await listSagas(t.db, { name: saga.name }))[0]).toMatchObject({
      step: undefined,
      attempt: 0,
      unreadable: ['steps'],
    })
    const table = await run(['list', '--name', saga.name])
    expect(table.out).toContain(`saga ${broken}: steps cannot be read`)
  })

  it('a finished saga at -1 or past its last step is read as it is', async () => {
    const saga = defineSaga({
      name: `done-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'reserve', action: async () => ({}) }],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const { id } = await worker.run(saga, {})
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed', stepIndex: 1 })
    await t.db.execute(
      `UPDATE breakwater_sagas SET status = 'cancelled', step_index = -1 WHERE id = $1`,
      [id],
    )
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'cancelled', stepIndex: -1 })
    await t.db.execute('UPDATE breakwater_sagas SET step_index = 2 WHERE id = $1', [id])
    await expect(getSaga(t.db, id)).rejects.toMatchObject({ column: 'step_index' })
    expect((await listSagas(t.db, { name: saga.name }))[0]?.unreadable).toEqual(['step_index'])
  })
})

// The row's version and times, read with Number(): text (SQLite keeps it in an INTEGER column)
// showed as NaN, an Invalid Date in `saga show` and `saga list`, and a negative number (either
// database) as a time before 1970 or a version no definition has. getSaga (`saga show`) now
// fails naming the column; the listing still lists the row, marks the column `unreadable` and
// leaves its field undefined.
describe.each(dbTargets)('saga admin readers on malformed row times, on $dialect', (target) => {
  let t: TestDb
  const clock = new ManualClock(1_700_000_000_000)
  beforeAll(async () => {
    t = await target.open('saga_malformed_admin_times')
  })
  afterAll(async () => {
    await t?.close()
  })

  const run = (args: string[]) => runSagaCommand(t, args)

  const time = 'a time (whole epoch ms from 0)'
  // [column, stored value, field of SagaSummary, what getSaga says]
  const cases: [string, unknown, string, string][] = [
    ['version', 0, 'version', 'version is 0, not a version (a whole number from 1)'],
    ['version', -1, 'version', 'version is -1, not a version (a whole number from 1)'],
    ['next_run_at', -5, 'nextRunAt', `next_run_at is -5, not ${time}`],
    ['created_at', -5, 'createdAt', `created_at is -5, not ${time}`],
    ['updated_at', -5, 'updatedAt', `updated_at is -5, not ${time}`],
    ['finished_at', -5, 'finishedAt', `finished_at is -5, not ${time}`],
    ['lease_expires_at', -5, 'leaseExpiresAt', `lease_expires_at is -5, not ${time}`],
    ...(target.dialect === 'sqlite'
      ? ([
          ['version', 'x', 'version', 'version is "x", not a version (a whole number from 1)'],
          ['next_run_at', 'abc', 'nextRunAt', `next_run_at is "abc", not ${time}`],
          ['created_at', 'abc', 'createdAt', `created_at is "abc", not ${time}`],
          ['updated_at', 'abc', 'updatedAt', `updated_at is "abc", not ${time}`],
          ['updated_at', 1.5, 'updatedAt', `updated_at is 1.5, not ${time}`],
          ['finished_at', 'abc', 'finishedAt', `finished_at is "abc", not ${time}`],
          ['lease_expires_at', 'abc', 'leaseExpiresAt', `lease_expires_at is "abc", not ${time}`],
        ] as [string, unknown, string, string][])
      : []),
  ]

  it.each(cases)(
    '%s %s: getSaga and `saga show` name it, `saga list` marks it',
    async (column, bad, field, said) => {
      const saga = defineSaga({
        name: `times-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [{ name: 'reserve', action: async () => ({}) }],
      })
      const { good, broken } = await spoilOne(t, saga, clock, column, bad, said)
      expect(await getSaga(t.db, good)).toMatchObject({
        version: 1,
        createdAt: clock.now(),
        updatedAt: clock.now(),
        nextRunAt: clock.now(),
      })

      const listed = await listSagas(t.db, { name: saga.name })
      const goodRow = listed.find((s) => s.id === good)!
      expect(goodRow).toMatchObject({ version: 1, createdAt: clock.now(), updatedAt: clock.now() })
      expect(goodRow.unreadable).toBeUndefined()
      const row = listed.find((s) => s.id === broken)!
      expect(row.unreadable).toEqual([column])
      expect(row).toMatchObject({ step: 'reserve', attempt: 0 })
      expect((row as unknown as Record<string, unknown>)[field]).toBeUndefined()

      const json = await run(['list', '--name', saga.name, '--json'])
      expect(json.code).toBe(0)
      const parsed = JSON.parse(json.out) as { id: string; unreadable?: string[] }[]
      expect(parsed.find((s) => s.id === broken)?.unreadable).toEqual([column])
      expect(json.out).not.toContain('NaN')

      const table = await run(['list', '--name', saga.name])
      expect(table.code).toBe(0)
      expect(table.out).not.toContain('NaN')
      expect(table.out).not.toContain('Invalid')
      const line = (id: string) => table.out.split('\n').find((l) => l.startsWith(id))!
      expect(line(good)).not.toContain('unreadable')
      if (column === 'version') expect(line(broken)).toContain(`${saga.name}@(unreadable)`)
      if (column === 'updated_at') expect(line(broken)).toContain('(unreadable)')
      expect(table.out).toContain(
        `saga ${broken}: ${column} cannot be read (changed outside breakwater); breakwater saga show ${broken} says why`,
      )
    },
  )
})

// The lease token and the timeline's times and attempts were still read with Number(): text
// (SQLite keeps it in an INTEGER column) showed in `saga show` as token NaN, an Invalid Date or
// `attempt NaN`, and a negative number (either database) as a token no claim gives or a time
// before 1970. getSaga (`saga show`) now fails naming the saga and the column; `saga list`
// shows neither, so it lists the row as before. A timeline entry is marked instead: one such
// entry failed the whole of `saga show`, hiding the rest of the timeline; getSagaTimeline now
// gives it with the others, the column undefined and named in its `unreadable` with what is
// wrong, and `saga show` (table and --json) shows it so. Nothing is written.
describe.each(dbTargets)(
  'saga show on a malformed lease token and timeline, on $dialect',
  (target) => {
    let t: TestDb
    const clock = new ManualClock(1_700_000_000_000)
    beforeAll(async () => {
      t = await target.open('saga_malformed_admin_timeline')
    })
    afterAll(async () => {
      await t?.close()
    })

    const twoSteps = () =>
      defineSaga({
        name: `timeline-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          { name: 'reserve', action: async () => ({}) },
          { name: 'charge', action: async () => ({}) },
        ],
      })

    const token = 'a fencing token (a whole number from 0)'
    it.each([
      [-1, `lease_token is -1, not ${token}`],
      ...(target.dialect === 'sqlite'
        ? ([
            ['abc', `lease_token is "abc", not ${token}`],
            [1.5, `lease_token is 1.5, not ${token}`],
          ] as [unknown, string][])
        : []),
    ])(
      'lease_token %s: getSaga and `saga show` name it, `saga list` lists the row',
      async (bad, said) => {
        const saga = twoSteps()
        const { good, broken } = await spoilOne(t, saga, clock, 'lease_token', bad, said)
        expect(await getSaga(t.db, good)).toMatchObject({ leaseToken: 0 })
        const listed = await listSagas(t.db, { name: saga.name })
        expect(listed.find((s) => s.id === broken)).toMatchObject({ step: 'reserve', attempt: 0 })
        expect(listed.find((s) => s.id === broken)?.unreadable).toBeUndefined()
      },
    )

    const time = 'a time (whole epoch ms from 0)'
    const count = 'a whole number from 0'
    it.each([
      ['at', -5, `is -5, not ${time}`],
      ['attempt', -1, `is -1, not ${count}`],
      ...(target.dialect === 'sqlite'
        ? ([
            ['at', 'abc', `is "abc", not ${time}`],
            ['at', 1.5, `is 1.5, not ${time}`],
            ['attempt', 'x', `is "x", not ${count}`],
            ['attempt', 2.5, `is 2.5, not ${count}`],
          ] as [string, unknown, string][])
        : []),
    ])(
      'timeline %s %s: getSagaTimeline and `saga show` mark the entry, with the others',
      async (column, bad, problem) => {
        const saga = twoSteps()
        const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
        const { id } = await worker.run(saga, {})
        const before = await getSagaTimeline(t.db, id)
        expect(before.length).toBeGreaterThan(1)
        const attempted = before.find((e) => e.attempt !== undefined)!
        expect(attempted).toMatchObject({ attempt: 1, at: clock.now() })
        await t.db.execute(`UPDATE breakwater_saga_events SET ${column} = $1 WHERE seq = $2`, [
          bad,
          attempted.seq,
        ])
        const stored = () =>
          t.db.query('SELECT * FROM breakwater_saga_events WHERE saga_id = $1 ORDER BY seq', [id])
        const edited = await stored()

        const timeline = await getSagaTimeline(t.db, id)
        expect(timeline.filter((e) => e.seq !== attempted.seq)).toEqual(
          before.filter((e) => e.seq !== attempted.seq),
        )
        expect(timeline.find((e) => e.seq === attempted.seq)).toEqual({
          ...attempted,
          [column]: undefined,
          unreadable: [{ column, problem }],
        })

        const json = await runSagaCommand(t, ['show', id, '--json'])
        expect(json).toMatchObject({ code: 0, err: '' })
        const shown = (JSON.parse(json.out) as { timeline: { seq: number }[] }).timeline
        expect(shown).toHaveLength(before.length)
        expect(shown.find((e) => e.seq === attempted.seq)).toMatchObject({
          kind: attempted.kind,
          unreadable: [{ column, problem }],
        })
        expect(shown.find((e) => e.seq === attempted.seq)).not.toHaveProperty(column)

        const text = await runSagaCommand(t, ['show', id])
        expect(text).toMatchObject({ code: 0, err: '' })
        const lines = text.out.split('\n')
        const timelineLines = lines.slice(lines.indexOf('timeline') + 1).filter((l) => l !== '')
        // The `started` line, then every entry.
        expect(timelineLines).toHaveLength(before.length + 1)
        const marked = timelineLines.find((l) =>
          l.includes(`event ${attempted.seq} cannot be read`),
        )
        expect(marked).toContain(`${attempted.kind}  ${attempted.step}`)
        expect(marked).toContain(
          `event ${attempted.seq} cannot be read (changed outside breakwater): ${column} ${problem}`,
        )
        expect(marked).toContain(column === 'at' ? '  (unreadable)  ' : 'attempt (unreadable)')
        expect(text.out).not.toContain('NaN')
        expect(text.out).not.toContain('Invalid')

        // Read only: the rows are as they were edited.
        expect(await stored()).toEqual(edited)
        // A step without an attempt (null) is read as none, as written.
        expect(before.some((e) => e.attempt === undefined)).toBe(true)
        await worker.stop()
      },
    )

    // retrySaga adds one to the token, as a claim does; at the BIGINT maximum PostgreSQL failed
    // the retry with a bare 'bigint out of range' naming neither saga nor column. It now leaves
    // the token as it is, as the claim does (a worker then reports the row, naming lease_token).
    it('retrySaga re-queues a parked saga whose lease_token is at the BIGINT maximum', async () => {
      const saga = twoSteps()
      const { id } = await startSaga(t.db, saga, {}, { clock })
      const max = '9223372036854775807'
      await t.db.execute(
        `UPDATE breakwater_sagas SET status = 'failed', lease_token = ${max} WHERE id = $1`,
        [id],
      )
      await retrySaga(t.db, id, { clock })
      const rows = await t.db.query<{ status: string; token: string }>(
        'SELECT status, CAST(lease_token AS TEXT) AS token FROM breakwater_sagas WHERE id = $1',
        [id],
      )
      expect(rows).toEqual([{ status: 'compensating', token: max }])
    })
  },
)
