// pruneSagas on instance rows whose times were changed outside breakwater. SQLite keeps text or
// a blob as it is in an INTEGER column, and it sorts above every number: `created_at <= cutoff`
// and `COALESCE(finished_at, updated_at) <= cutoff` never held, so such a finished instance was
// never removed. A finished instance whose end cannot be read now counts as ended long enough
// ago; a running one is never removed, whatever its times hold. PostgreSQL's BIGINT holds only
// numbers: a negative one was already old enough. Real databases.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  pruneSagas,
  startSaga,
} from '../../src/saga/index.js'
import { sagaPruneStatements } from '../../src/saga/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const day = 86_400_000

describe.each(dbTargets)('pruneSagas on malformed instance times, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_malformed_retention')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('removes a finished instance whose created, finished or updated time is not a number, never a running one', async () => {
    const clock = new ManualClock(1_000 * day)
    const saga = defineSaga({
      name: `prune-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => ({}) }],
    })
    const waiting = defineSaga({
      name: `wait-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', sleepMs: 1_000 * day }],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga, waiting], clock })
    const finished = async () => (await worker.run(saga, {})).id
    const set = (id: string, assignments: string, values: unknown[] = []) =>
      t.db.execute(`UPDATE breakwater_sagas SET ${assignments} WHERE id = $1`, [id, ...values])

    const blob = Buffer.from([0, 1])
    const spoilt: [string, unknown[]][] = [
      ['created_at = -5', []],
      ['finished_at = -5', []],
      ['finished_at = NULL, updated_at = -5', []],
      ...(target.dialect === 'sqlite'
        ? ([
            ['created_at = $2', ['abc']],
            ['created_at = $2', [blob]],
            ['finished_at = $2', ['abc']],
            ['finished_at = $2', ['']],
            ['finished_at = $2', [blob]],
            ['finished_at = NULL, updated_at = $2', ['abc']],
            ['created_at = $2, finished_at = $2, updated_at = $2', ['abc']],
          ] as [string, unknown[]][])
        : []),
    ]
    const gone: string[] = []
    for (const [assignments, values] of spoilt) {
      const id = await finished()
      await set(id, assignments, values)
      gone.push(id)
    }
    // Never removed: a running instance, whatever its times hold.
    const running: string[] = []
    for (const bad of target.dialect === 'sqlite' ? ['abc', blob, -5] : [-5]) {
      const { id } = await worker.run(waiting, {})
      await set(id, 'created_at = $2, updated_at = $2, finished_at = $2', [bad])
      running.push(id)
    }
    await clock.advance(8 * day)
    // Kept: ended (or created, which comes first) within the window.
    const recent = await finished()
    const recentUnreadableEnd = await finished()
    await set(recentUnreadableEnd, 'finished_at = $2', [target.dialect === 'sqlite' ? 'abc' : -5])
    const justStarted = (await startSaga(t.db, waiting, {}, { clock })).id

    // The one with a negative end and a recent start: created within the window, so not yet.
    expect(await pruneSagas(t.db, { olderThanMs: 7 * day, clock })).toBe(gone.length)
    for (const id of gone) expect(await rowCount(id), id).toBe(0)
    for (const id of [...running, recent, recentUnreadableEnd, justStarted])
      expect(await rowCount(id), id).toBe(1)
    expect((await getSaga(t.db, recent))?.status).toBe('completed')
    await worker.stop()
  })

  const rowCount = async (id: string) =>
    Number(
      (
        await t.db.query<{ n: number }>(
          'SELECT COUNT(*) AS n FROM breakwater_sagas WHERE id = $1',
          [id],
        )
      )[0]!.n,
    )

  it.runIf(target.dialect === 'sqlite')(
    'finds them by two bounded ranges of the status index, never scanning the instances',
    async () => {
      const pick = sagaPruneStatements.sqlite.pick
      const plan = await t.db.query<{ detail: string }>(
        `EXPLAIN QUERY PLAN ${pick.replaceAll('$1', `'completed'`).replaceAll('$2', '0').replaceAll('$3', '10')}`,
      )
      const details = plan.map((row) => row.detail)
      expect(details).toContainEqual(
        expect.stringMatching(
          /SEARCH breakwater_sagas USING (COVERING )?INDEX breakwater_sagas_status \(status=\? AND created_at<\?\)/,
        ),
      )
      expect(details).toContainEqual(
        expect.stringMatching(
          /SEARCH breakwater_sagas USING (COVERING )?INDEX breakwater_sagas_status \(status=\? AND created_at>\?\)/,
        ),
      )
      expect(details.filter((d) => /^SCAN breakwater_sagas\b/.test(d))).toEqual([])
    },
  )
})
