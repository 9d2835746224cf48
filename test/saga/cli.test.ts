// `breakwater saga list|show|retry|cancel|prune --db <url>` on real SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import {
  createFlowTracker,
  createSagaWorker,
  defineFlow,
  defineSaga,
  getSaga,
  listSagas,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { createTestSqlite } from '../support/sqlite.js'
import { dbTargets, type TestDb } from './databases.js'

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = ''
  let err = ''
  const code = await sagaCommand(args, {
    stdout: { write: (t: string) => (out += t) },
    stderr: { write: (t: string) => (err += t) },
  })
  return { code, out, err }
}

describe('saga command arguments', () => {
  it.each([
    [[], 'a command is needed'],
    [['purge'], 'unknown command "purge"'],
    [['show'], 'needs exactly one saga id'],
    [['show', 'a', 'b'], 'needs exactly one saga id'],
    [['show', ''], 'the saga id must not be empty'],
    [['cancel', ''], 'the saga id must not be empty'],
    [['list', 'extra'], 'unexpected argument "extra"'],
    [['list', '--status', 'lost'], '--status must be one of'],
    [['list', '--limit', '0'], '--limit must be an integer'],
    [['list', '--limit', '0x10'], '--limit must be an integer'],
    [['list', '--limit', '1e2'], '--limit must be an integer'],
    [['list', '--limit', ' 5'], '--limit must be an integer'],
    [['list', '--limit'], '--limit needs a value'],
    [['list', '--db'], '--db needs a value'],
    [['list', '--db', '--json'], '--db needs a value'],
    [['retry', 'x', '--json'], 'unknown option "--json" for "saga retry"'],
    [['list', '--verbose'], 'unknown option "--verbose"'],
    [['list', '--json=yes'], '--json takes no value'],
    [['list', '--name', 'a', '--name', 'b'], '--name given twice'],
    [['prune', 'old'], 'unexpected argument "old"'],
    [['prune', '--older-than', '30'], '--older-than must be a whole number with a unit'],
    [['prune', '--older-than', '1.5d'], 'got "1.5d"'],
    [['prune', '--older-than', '-3d'], 'got "-3d"'],
    [['prune', '--include-parked=yes'], '--include-parked takes no value'],
    [['prune', '--allow-short-window'], '--allow-short-window applies only with --older-than'],
    [['list', '--older-than', '3d'], 'unknown option "--older-than" for "saga list"'],
  ])('%j -> exit 2 with a message and the usage', async (args, message) => {
    const { code, err, out } = await run(args)
    expect(code).toBe(2)
    expect(err).toContain(message)
    expect(err).toContain('usage: breakwater saga')
    expect(out).toBe('')
  })

  it('a database URL it cannot parse is a usage error (exit 2)', async () => {
    const { code, err } = await run(['list', '--db', 'mysql://localhost/x'])
    expect(code).toBe(2)
    expect(err).toContain('--db: expected sqlite:<file> or postgres://')
  })

  it('--help prints the usage', async () => {
    const { code, out } = await run(['--help'])
    expect(code).toBe(0)
    expect(out).toContain('list [--status <status>]')
  })

  it('a database without the saga tables fails with a hint to migrate (exit 1)', async () => {
    const file = createTestSqlite('empty')
    try {
      const { code, err } = await run(['list', '--db', file.url])
      expect(code).toBe(1)
      expect(err).toContain('run `breakwater migrate --db')
    } finally {
      file.cleanup()
    }
  })
})

describe.each(dbTargets)('saga command on $dialect', (target) => {
  let t: TestDb
  // Starts at the real time: the CLI stamps retry and cancel with the system clock.
  const clock = new ManualClock(Date.now())
  let refundWorks = false
  const saga = defineSaga({
    name: 'cli-order',
    version: 2,
    steps: [
      {
        name: 'charge',
        action: async () => ({ chargeId: 'c-1' }),
        compensation: async () => {
          if (!refundWorks) throw new Error('refund service down')
        },
        compensationRetry: { maxAttempts: 1 },
      },
      { name: 'wait', sleepMs: 60_000 },
      {
        name: 'ship',
        action: async (ctx) => {
          if ((ctx.input as { ship?: boolean }).ship === false) {
            throw Object.assign(new Error('address rejected'), { status: 422 })
          }
        },
      },
    ],
  })
  const ids: Record<string, string> = {}

  beforeAll(async () => {
    t = await target.open('saga_cli')
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, workerId: 'cli-worker' })
    ids.waiting = (await worker.run(saga, {}, { id: `waiting-${randomUUID().slice(0, 6)}` })).id
    ids.parked = (
      await worker.run(saga, { ship: false }, { id: `parked-${randomUUID().slice(0, 6)}` })
    ).id
    ids.done = (await worker.run(saga, {}, { id: `done-${randomUUID().slice(0, 6)}` })).id
    ids.parkedToo = (await worker.run(saga, { ship: false })).id
    await clock.advance(60_000)
    // Every instance went past the wait: 'waiting' is re-made below to stay running.
    await worker.poll()
    ids.waiting = (await worker.run(saga, {}, { id: `waiting2-${randomUUID().slice(0, 6)}` })).id
  })
  afterAll(async () => {
    await t?.close()
  })

  it('lists instances newest first, filtered by status and name', async () => {
    const all = await run(['list', '--db', t.url])
    expect(all.code).toBe(0)
    expect(all.out.split('\n')[0]).toMatch(
      /^ID\s+SAGA\s+STATUS\s+STEP\s+ATTEMPT\s+UPDATED\s+REASON$/,
    )
    for (const id of Object.values(ids)) expect(all.out).toContain(id)
    const failed = await run(['list', '--status', 'failed', '--db', t.url])
    expect(failed.out).toContain(ids.parked)
    expect(failed.out).not.toContain(ids.done)
    expect(failed.out).toContain('compensation of step "charge" failed')
    const json = await run(['list', '--db', t.url, '--json', '--limit', '2'])
    const parsed = JSON.parse(json.out) as { id: string; status: string; name: string }[]
    expect(parsed).toHaveLength(2)
    expect(parsed[0]).toMatchObject({ id: ids.waiting, status: 'running', name: 'cli-order' })
    const none = await run(['list', '--name', 'nothing-here', '--db', t.url])
    expect(none.out).toBe('no saga instances\n')
  })

  it('shows an instance with its steps and its timeline of attempts, errors and compensations', async () => {
    const { code, out } = await run(['show', ids.parked!, '--db', t.url])
    expect(code).toBe(0)
    expect(out).toContain(`saga      ${ids.parked}`)
    expect(out).toContain('name      cli-order@2')
    expect(out).toContain('status    failed')
    expect(out).toMatch(
      /charge\s+completed\s+1\s+pending \(1 attempt\)\s+Error: refund service down/,
    )
    expect(out).toMatch(/ship\s+failed\s+1\s+-\s+Error: address rejected/)
    expect(out).toContain('timeline')
    expect(out).toMatch(/step-completed\s+charge\s+attempt 1/)
    expect(out).toMatch(
      /step-failed\s+ship\s+attempt 1\s+error Error: address rejected\s+\(final\)/,
    )
    expect(out).toMatch(
      /compensation-failed\s+charge\s+attempt 1\s+error Error: refund service down/,
    )
    expect(out).toMatch(/parked\s+reason: compensation of step "charge" failed/)
    expect(out).toContain('[cli-worker]')
    const json = JSON.parse((await run(['show', ids.done!, '--db', t.url, '--json'])).out) as {
      saga: { status: string }
      timeline: { kind: string }[]
    }
    expect(json.saga.status).toBe('completed')
    expect(json.timeline.at(-1)!.kind).toBe('completed')
    const missing = await run(['show', 'no-such-id', '--db', t.url])
    expect(missing.code).toBe(1)
    expect(missing.err).toBe('breakwater saga: no saga instance has the id "no-such-id"\n')
  })

  it('retry re-queues a parked saga; a worker then finishes its compensation', async () => {
    const refused = await run(['retry', ids.done!, '--db', t.url])
    expect(refused.code).toBe(1)
    // Lower case after `breakwater saga:`, as every CLI message: the library's error is a
    // sentence (`Saga <id> is ...`, `No saga instance ...`), which retry and cancel printed as is.
    expect(refused.err).toBe(
      `breakwater saga: saga ${ids.done} is completed: only a parked (failed) saga can be retried\n`,
    )
    const unknown = await run(['retry', 'nope', '--db', t.url])
    expect(unknown.code).toBe(1)
    expect(unknown.err).toBe('breakwater saga: no saga instance has the id "nope"\n')
    const { code, out } = await run([
      'retry',
      ids.parked!,
      '--db',
      t.url,
      '--reason',
      'refunds are back',
    ])
    expect(code).toBe(0)
    expect(out).toContain('re-queued')
    refundWorks = true
    await createSagaWorker({ db: t.db, sagas: [saga], clock }).poll()
    expect((await getSaga(t.db, ids.parked!))!.status).toBe('compensated')
    const shown = await run(['show', ids.parked!, '--db', t.url])
    expect(shown.out).toMatch(/retry-requested\s+reason: refunds are back\s+\[cli\]/)
  })

  it('cancel compensates a running saga; unknown ids and finished sagas exit 1', async () => {
    const { code, out } = await run(['cancel', ids.waiting!, '--db', t.url, '--by', 'alice'])
    expect(code).toBe(0)
    expect(out).toContain('cancel requested')
    await createSagaWorker({ db: t.db, sagas: [saga], clock }).poll()
    expect((await getSaga(t.db, ids.waiting!))!.status).toBe('cancelled')
    const again = await run(['cancel', ids.waiting!, '--db', t.url])
    expect(again.code).toBe(1)
    expect(again.err).toBe(
      `breakwater saga: saga ${ids.waiting} is cancelled: only a running saga can be cancelled\n`,
    )
    const unknown = await run(['cancel', 'nope', '--db', t.url])
    expect(unknown.code).toBe(1)
    expect(unknown.err).toBe('breakwater saga: no saga instance has the id "nope"\n')
  })

  it('show prints a time past Date’s range as its number (a sleep an earlier version stored)', async () => {
    const id = (await createSagaWorker({ db: t.db, sagas: [saga], clock }).run(saga, {})).id
    // Such a sleep fails its step now; an earlier version wrote its end (on SQLite).
    const far = 9_000_000_000_000_000
    await t.db.execute('UPDATE breakwater_sagas SET next_run_at = $2 WHERE id = $1', [id, far])
    await t.db.execute(
      "UPDATE breakwater_saga_events SET detail = $2 WHERE saga_id = $1 AND kind = 'step-waiting'",
      [id, JSON.stringify({ until: far })],
    )
    const { code, out, err } = await run(['show', id, '--db', t.url])
    expect(err).toBe('')
    expect(code).toBe(0)
    expect(out).toContain(`next run  ${far} (epoch ms, past Date's range)`)
    expect(out).toMatch(
      /step-waiting\s+wait\s+until 9000000000000000 \(epoch ms, past Date's range\)/,
    )
    expect((await run(['list', '--db', t.url])).code).toBe(0)
  })
})

describe.each(dbTargets)('saga prune command on $dialect', (target) => {
  let t: TestDb
  // The CLI reads the system clock: these instances ended 40 and 10 days before now.
  const day = 86_400_000
  const saga = defineSaga({
    name: 'cli-prune',
    version: 1,
    steps: [
      {
        name: 'charge',
        action: async (ctx) => {
          if ((ctx.input as { fail?: boolean }).fail === true) {
            throw Object.assign(new Error('refused'), { status: 422 })
          }
        },
        compensation: async () => {
          throw Object.assign(new Error('refund refused'), { status: 422 })
        },
        compensationRetry: { maxAttempts: 1 },
      },
      {
        name: 'ship',
        action: async (ctx) => {
          if ((ctx.input as { park?: boolean }).park === true) {
            throw Object.assign(new Error('address rejected'), { status: 422 })
          }
        },
      },
    ],
  })
  const ids: Record<string, string> = {}

  beforeAll(async () => {
    t = await target.open('saga_cli_prune')
    const old = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: new ManualClock(Date.now() - 40 * day),
    })
    ids.old = (await old.run(saga, {})).id
    ids.oldParked = (await old.run(saga, { park: true })).id
    // Two tracked flows: one quiet for 50 days, one for 5.
    const tracker = createFlowTracker({
      db: t.db,
      flows: [defineFlow({ name: 'order', steps: ['order-placed', 'order-paid'] })],
    })
    for (const [id, ageDays] of [
      ['flow-old', 50],
      ['flow-recent', 5],
    ] as const) {
      await tracker.record(t.db, {
        id,
        correlationId: id,
        type: 'order-placed',
        at: Date.now() - ageDays * day,
      })
    }
    const recent = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: new ManualClock(Date.now() - 10 * day),
    })
    ids.recent = (await recent.run(saga, {})).id
    expect((await getSaga(t.db, ids.oldParked))!.status).toBe('failed')
  })
  afterAll(async () => {
    await t?.close()
  })

  // A removed instance's id is free again, so the window is also how long a duplicate start is
  // caught: `--older-than 0d` removed every finished instance and tracked flow (flows still
  // going among them), and said 'older than 0ms'. Under an hour is refused unless meant.
  it('refuses a window under 1h, removing nothing, unless --allow-short-window is given', async () => {
    const before = (await listSagas(t.db, {})).length
    for (const window of ['0d', '0ms', '59m']) {
      const short = await run(['prune', '--db', t.url, '--older-than', window, '--include-parked'])
      expect(short.code, window).toBe(2)
      expect(short.err).toContain(`breakwater saga: --older-than ${window} is shorter than 1h`)
      expect(short.err).toContain('runs again')
      expect(short.err).toContain('--allow-short-window')
      expect(short.out).toBe('')
    }
    expect(await listSagas(t.db, {})).toHaveLength(before)
  })

  it('removes finished instances older than the window (30 days by default), then parked ones on request', async () => {
    const first = await run(['prune', '--db', t.url, '--older-than', '45d'])
    expect(first).toMatchObject({
      code: 0,
      out: 'removed 0 saga instances and 1 tracked flow older than 45d\n',
    })
    const second = await run(['prune', '--db', t.url])
    expect(second).toMatchObject({
      code: 0,
      out: 'removed 1 saga instance and 0 tracked flows older than 30d\n',
    })
    expect(await getSaga(t.db, ids.old!)).toBeUndefined()
    expect((await getSaga(t.db, ids.oldParked!))!.status).toBe('failed')
    expect((await getSaga(t.db, ids.recent!))!.status).toBe('completed')
    const parked = await run(['prune', '--db', t.url, '--include-parked'])
    expect(parked.out).toBe('removed 1 saga instance and 0 tracked flows older than 30d\n')
    expect(await getSaga(t.db, ids.oldParked!)).toBeUndefined()
    const all = await run(['prune', '--db', t.url, '--older-than', '12h'])
    expect(all.out).toBe('removed 1 saga instance and 1 tracked flow older than 12h\n')
    expect(await getSaga(t.db, ids.recent!)).toBeUndefined()
    // Meant: taken, and the window printed as it was given.
    const meant = await run(['prune', '--db', t.url, '--older-than', '0d', '--allow-short-window'])
    expect(meant).toMatchObject({
      code: 0,
      out: 'removed 0 saga instances and 0 tracked flows older than 0d\n',
    })
  })
})
