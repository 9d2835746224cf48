// A saga row's times changed outside breakwater. SQLite keeps text or a blob as it is in its
// INTEGER column, and it sorts above every number, so a `next_run_at` of text was never due and a
// `lease_expires_at` of text never ran out: the instance was never claimed again, silently (the
// missing-definition check skipped it too). A renewal kept such a lease end (it compared greater
// than the new one). PostgreSQL's BIGINT holds only numbers; a negative one is due or run out.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { renewLeases } from '../../src/saga/store.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga rows with malformed times, on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_malformed_times')
  })
  afterAll(async () => {
    await t?.close()
  })

  const oneStep = () =>
    defineSaga({
      name: `times-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'reserve', action: async () => ({}) }],
    })

  // SQL literals: the driver would bind a JS string as text, but a blob needs x''.
  const values = ['-5', ...(target.dialect === 'sqlite' ? [`'abc'`, `x'01'`] : [])]

  // A gone worker's lease: the lease end alone decides whether it ran out.
  const claims = values.flatMap((bad) => [
    ['next_run_at', bad, `next_run_at = ${bad}`],
    ['lease_expires_at', bad, `lease_owner = 'gone', lease_expires_at = ${bad}`],
  ])

  it.each(claims)('%s %s: due / run out, claimed and run', async (_column, _bad, set) => {
    const clock = new ManualClock(1_700_000_000_000)
    const saga = oneStep()
    const { id } = await startSaga(t.db, saga, {}, { clock })
    await t.db.execute(`UPDATE breakwater_sagas SET ${set} WHERE id = $1`, [id])
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const recovered: SagaEvent[] = []
    worker.events.on((e) => {
      if (e.type === 'recovered') recovered.push(e)
    })
    try {
      expect(await worker.poll()).toBe(1)
    } finally {
      await worker.stop()
    }
    expect(await getSaga(t.db, id)).toMatchObject({ status: 'completed' })
    // A lease end that is not a time gives no recovery time, not NaN (null in the timeline).
    for (const event of recovered) expect(event).not.toHaveProperty('recoveryMs')
    if (_column === 'lease_expires_at') expect(recovered).toHaveLength(1)
  })

  it.each(values)('a renewal replaces a lease end of %s with its own', async (bad) => {
    const clock = new ManualClock(1_700_000_000_000)
    const { id } = await startSaga(t.db, oneStep(), {}, { clock })
    await t.db.execute(
      `UPDATE breakwater_sagas SET lease_owner = 'w', lease_expires_at = ${bad} WHERE id = $1`,
      [id],
    )
    const { renewed, leaseEnd } = await renewLeases(t.db, 'w', clock, 30_000, [id])
    expect([...renewed.keys()]).toEqual([id])
    const [row] = await t.db.query<{ lease_expires_at: number | string }>(
      'SELECT lease_expires_at FROM breakwater_sagas WHERE id = $1',
      [id],
    )
    expect(Number(row?.lease_expires_at)).toBe(leaseEnd)
  })
})
