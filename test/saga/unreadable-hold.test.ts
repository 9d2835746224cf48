// The minute an instance with a row it cannot read is held (holdUnreadable) against a lease
// renewal that was already on its way: the worker's renewal takes the ids in hand when it starts,
// and on SQLite waits for the writer (on PostgreSQL for a connection), so its statement can run
// after the run reported the row and held the instance. It set the lease back to leaseMs from
// then, and the instance was claimed and reported again within a second instead of a minute.
// The two statements in that order, on the real databases; time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineSaga, startSaga } from '../../src/saga/index.js'
import {
  claimInstances,
  holdUnreadable,
  renewLeases,
  stringListParam,
  unreadableHoldMs,
} from '../../src/saga/store.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, leaseFrom, type TestDb } from './databases.js'

describe.each(dbTargets)('an unreadable instance held on $dialect', (target) => {
  let t: TestDb
  beforeAll(async () => {
    t = await target.open('saga_unreadable_hold')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('keeps its minute when a renewal sent before the hold runs after it', async () => {
    const now = 1_700_000_000_000
    const saga = defineSaga({
      name: `hold-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'only', action: async () => {} }],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock: new ManualClock(now) })
    const keys = stringListParam(t.db, [`${saga.name}@1`])
    const [row] = await claimInstances(t.db, 'w', leaseFrom(now, 800), keys, 10)
    expect(row?.id).toBe(id)
    const clock = new ManualClock(now + 100)
    expect(await holdUnreadable(t.db, id, Number(row!.lease_token), clock)).toBe(
      now + 100 + unreadableHoldMs,
    )
    const renewal = await renewLeases(t.db, 'w', clock, 800, [id])
    expect(renewal.renewed.get(id)).toBe(Number(row!.lease_token))
    const [stored] = await t.db.query<{ lease_expires_at: number | string }>(
      'SELECT lease_expires_at FROM breakwater_sagas WHERE id = $1',
      [id],
    )
    expect(Number(stored!.lease_expires_at)).toBe(now + 100 + unreadableHoldMs)
  })
})
