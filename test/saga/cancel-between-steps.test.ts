// A cancel made while a step's transaction is open (its ctx.atCommit work runs) waits for that
// transaction (the row lock on PostgreSQL, the writer on SQLite) and commits right after it.
// The run used to learn of a cancel only when a later write of its own read the flag back, so
// the next step ran first, and when that was the last step the saga ended completed (found by
// exploratory testing). The step in progress finishes; no step starts after the cancel.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  getSaga,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { until } from '../support/until.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('a cancel during a step commit on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_cancel_between')
  })
  afterAll(async () => {
    await t?.close()
  })

  // Until the cancel has committed (PostgreSQL: the step's row is not locked yet), or waits for
  // the step's transaction (a row lock; on SQLite this driver's queue, which it joins at once).
  async function landedOrWaiting(cancel: Promise<unknown>): Promise<void> {
    let done = false
    void cancel.then(() => (done = true)).catch(() => (done = true))
    if (target.dialect === 'sqlite') {
      for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve))
      return
    }
    await until(async () => {
      if (done) return true
      const [row] = await t.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      )
      return row!.n > 0
    }, 'the cancel to commit or wait for the step transaction')
  }

  it.each(Array.from({ length: 10 }, (_, i) => i))(
    'is seen before the next step starts, even the last one %i',
    async () => {
      const log: string[] = []
      const inCommit = gate()
      const hold = gate()
      const saga = defineSaga({
        name: `cancel-between-${randomUUID().slice(0, 8)}`,
        version: 1,
        steps: [
          {
            name: 'a',
            action: async () => ({ a: 1 }),
            compensation: async () => {
              log.push('comp a')
            },
          },
          {
            name: 'b',
            action: async (ctx) => {
              ctx.atCommit(async () => {
                inCommit.open()
                await hold.promise
              })
              return { b: 1 }
            },
            compensation: async () => {
              log.push('comp b')
            },
          },
          {
            name: 'c',
            action: async () => {
              log.push('c ran')
              return { c: 1 }
            },
            compensation: async () => {
              log.push('comp c')
            },
          },
        ],
      })
      const clock = new ManualClock(0)
      const { id } = await startSaga(t.db, saga, null, { clock })
      const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 60_000 })
      const run = worker.poll()
      await inCommit.promise
      const cancelled = cancelSaga(t.db, id, { reason: 'during commit', clock })
      await landedOrWaiting(cancelled)
      hold.open()
      await cancelled
      expect(await run).toBe(1)
      const instance = await getSaga(t.db, id)
      expect(instance).toMatchObject({
        status: 'cancelled',
        reason: 'cancel requested: during commit',
      })
      expect(log).toEqual(['comp b', 'comp a'])
    },
  )
})
