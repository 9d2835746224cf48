// A saga worker's start() never failed: after stop() it resolved and the worker stayed stopped,
// claiming nothing; on a closed database it resolved and the loop then reported STORE_CLOSED at
// every poll, for ever. It now rejects as the outbox relay's does. And a claim that keeps
// failing (the database unreachable) backs off instead of failing once per poll interval.
// Found by exploratory testing.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  maxClaimBackoffMs,
  type SagaEvent,
  SagaWorkerStoppedError,
  startSaga,
} from '../../src/saga/index.js'
import { sagaTable } from '../../src/saga/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { dbTargets, type TestDb } from './databases.js'

describe.each(dbTargets)('saga worker start() on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_worker_start')
  })
  afterAll(async () => {
    await t?.close()
  })

  const oneStep = () =>
    defineSaga({
      name: `start-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => ({ a: 1 }) }],
    })

  it('rejects after stop() with SAGA_WORKER_STOPPED, started before or not', async () => {
    const saga = oneStep()
    const started = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    await started.start()
    await started.stop()
    const refused = await started.start().catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(SagaWorkerStoppedError)
    expect(refused).toMatchObject({ code: 'SAGA_WORKER_STOPPED', workerId: started.id })
    expect(started.state).toBe('stopped')

    const never = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0) })
    await never.stop()
    await expect(never.start()).rejects.toMatchObject({ code: 'SAGA_WORKER_STOPPED' })
  })

  it('start() twice at once resolves both, once', async () => {
    const worker = createSagaWorker({ db: t.db, sagas: [oneStep()], clock: new ManualClock(0) })
    await Promise.all([worker.start(), worker.start()])
    expect(worker.state).toBe('running')
    await worker.start()
    await worker.stop()
  })

  it('rejects with STORE_CLOSED on a closed database, reporting nothing after', async () => {
    const db = await t.reopen()
    await db.close()
    const clock = new ManualClock(0)
    const worker = createSagaWorker({ db, sagas: [oneStep()], clock })
    const errors: SagaEvent[] = []
    worker.events.on((e) => {
      if (e.type === 'error') errors.push(e)
    })
    await expect(worker.start()).rejects.toMatchObject({ code: 'STORE_CLOSED' })
    expect(worker.state).toBe('stopped')
    await clock.advance(10_000)
    expect(errors).toEqual([])
    expect(clock.pendingTimers).toBe(0)
    await worker.stop()
    await expect(worker.start()).rejects.toMatchObject({ code: 'SAGA_WORKER_STOPPED' })
  })

  it('rejects on a database without the saga tables', async () => {
    const empty = await target.openEmpty('saga_worker_start_empty')
    try {
      const worker = createSagaWorker({
        db: empty.db,
        sagas: [oneStep()],
        clock: new ManualClock(0),
      })
      await expect(worker.start()).rejects.toThrow(new RegExp(sagaTable))
      expect(worker.state).toBe('stopped')
    } finally {
      await empty.close()
    }
  })

  it('backs off on consecutive claim failures up to a cap, and polls again once one succeeds', async () => {
    // A database of its own: its saga table is renamed away (every claim fails) and back.
    const own = await target.open('saga_worker_backoff')
    const clock = new ManualClock(0)
    const pollIntervalMs = 100
    const saga = oneStep()
    const worker = createSagaWorker({
      db: own.db,
      sagas: [saga],
      clock,
      pollIntervalMs,
      listen: false,
      missingDefinitionCheckIntervalMs: 1_000_000_000,
    })
    const failedAt: number[] = []
    worker.events.on((e) => {
      if (e.type === 'error') failedAt.push(e.at)
    })
    // The next poll's wait once the loop is idle again (nothing in hand: its only timer).
    const nextWait = async (): Promise<number> => {
      await until(() => clock.pendingTimers === 1, 'the worker to wait for its next poll')
      return clock.nextTimerAt()! - clock.now()
    }
    const firePoll = async (): Promise<void> => {
      await clock.advance(await nextWait())
    }
    try {
      await worker.start()
      expect(await nextWait()).toBe(pollIntervalMs)
      await own.db.execute(`ALTER TABLE ${sagaTable} RENAME TO ${sagaTable}_away`)
      const waits: number[] = []
      for (let i = 0; i < 10; i++) {
        await firePoll()
        waits.push(await nextWait())
      }
      expect(failedAt).toHaveLength(10)
      expect(waits).toEqual([
        200,
        400,
        800,
        1_600,
        3_200,
        maxClaimBackoffMs,
        maxClaimBackoffMs,
        maxClaimBackoffMs,
        maxClaimBackoffMs,
        maxClaimBackoffMs,
      ])
      await own.db.execute(`ALTER TABLE ${sagaTable}_away RENAME TO ${sagaTable}`)
      const { id } = await startSaga(own.db, saga, null, { clock })
      await firePoll()
      expect(await nextWait()).toBe(pollIntervalMs)
      expect(failedAt).toHaveLength(10)
      expect(await getSaga(own.db, id)).toMatchObject({ status: 'completed' })
    } finally {
      await worker.stop()
      await own.close()
    }
  })
})
