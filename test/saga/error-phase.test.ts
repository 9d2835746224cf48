// A saga worker's database failures on real PostgreSQL, provoked by a table lock held from
// another session while the worker's sessions run with a short lock_timeout: each `error` event
// names what failed (the claim, the renewal of the leases, the run's state write and its step),
// and the worker carries on once the lock is gone. A bare "canceling statement due to lock
// timeout" told an operator nothing of whether claims, renewals or writes were failing.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createSagaWorker, getSaga, type SagaEvent } from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { holdingSaga, postgresDb, type TestDb } from './databases.js'

const DATABASE_WAIT = { timeout: 15_000 }

describe('saga worker error events on postgres', () => {
  let t: TestDb
  let db: SqlDriver
  let locker: pg.Client

  beforeAll(async () => {
    t = await postgresDb.open('saga_error_phase')
    // The worker's sessions give up on a lock after 50 ms (55P03) instead of waiting.
    db = await openDatabase(`${t.url}?lock_timeout=50`)
    locker = new pg.Client({ connectionString: t.url })
    await locker.connect()
  })
  afterAll(async () => {
    await locker?.end()
    await db?.close()
    await t?.close()
  })

  it('names the claim, the renewal and the state write that a lock timeout failed', async () => {
    const clock = new ManualClock(0)
    const inside = gate()
    const finish = gate()
    const saga = holdingSaga('phase', inside, finish)
    const events: SagaEvent[] = []
    const worker = createSagaWorker({ db, sagas: [saga], clock, listen: false })
    worker.events.on((e) => events.push(e))
    await worker.start()
    const running = worker.run(saga, {})
    await inside.promise
    const errors = () => events.filter((e) => e.type === 'error')
    // Writes and claims (FOR UPDATE) wait for it; plain reads do not.
    await locker.query('BEGIN')
    await locker.query('LOCK TABLE breakwater_sagas IN EXCLUSIVE MODE')
    try {
      // A renewal (every 266 ms) and a claim (every 100 ms) are due.
      await clock.advance(300)
      await vi.waitFor(() => {
        const phases = errors().map((e) => e.phase)
        expect(phases).toContain('claim')
        expect(phases).toContain('renew')
      }, DATABASE_WAIT)
      for (const e of errors()) expect(e.error).toMatchObject({ code: '55P03' })
      // The step returns while the table is locked: its state write fails, is written again
      // a few times on the worker's clock (each failure an event with its retryAt), then the
      // run is given up.
      finish.open()
      await vi.waitFor(async () => {
        await clock.advance(20)
        expect(await Promise.race([running, undefined])).toBeDefined()
      }, DATABASE_WAIT)
      const outcome = await running
      expect(outcome.status).not.toBe('completed')
      const writes = errors().filter((e) => e.phase === 'run')
      for (const write of writes)
        expect(write).toMatchObject({ sagaId: outcome.id, step: 'hold', error: { code: '55P03' } })
      expect(writes.map((e) => e.retryAt !== undefined)).toEqual([true, true, true, false])
    } finally {
      await locker.query('COMMIT')
    }
    // Nothing was lost: once its lease runs out the instance is claimed again and completes.
    await clock.advance(1_000)
    await vi.waitFor(async () => {
      await clock.advance(100)
      expect((await getSaga(t.db, (await running).id))!.status).toBe('completed')
    }, DATABASE_WAIT)
    await worker.stop()
  })
})
