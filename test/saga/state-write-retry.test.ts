// A momentary database failure of the write that records a step's outcome (a lock timeout on
// PostgreSQL, SQLite's writer held past the busy timeout) used to give the run up: the instance
// waited for its lease to run out and the step ran again, so its side effect (a payment call)
// was repeated because of a hiccup. A failure the database answered with, and so rolled back,
// is now written again in place. Real databases, one failure injected on the state write: a
// table lock held by another session (PostgreSQL, the worker's sessions with a lock_timeout),
// a transaction of another driver holding the SQLite file (the worker's busyTimeoutMs 50).
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaEvent,
  type SagaWorker,
} from '../../src/saga/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type Gate, gate } from '../support/gate.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { type EffectLog, effectLog, postgresDb, sqliteDb, type TestDb } from './databases.js'

const DATABASE_WAIT = { timeout: 15_000 }

/** A database, the worker's own driver on it, and a way to hold what its state write needs. */
interface Setup {
  readonly t: TestDb
  /** Gives up on a held lock fast (its lock_timeout or busyTimeoutMs). */
  readonly db: SqlDriver
  /** Holds what the worker's state write needs until `release()`. */
  block(): Promise<void>
  release(): Promise<void>
  close(): Promise<void>
  /** PostgreSQL: another session, to look at and end the worker's. */
  readonly locker?: pg.Client
}

async function postgresSetup(name: string, query: string): Promise<Setup> {
  const t = await postgresDb.open(name)
  const db = await openDatabase(`${t.url}?${query}`)
  const locker = new pg.Client({ connectionString: t.url })
  await locker.connect()
  return {
    t,
    db,
    locker,
    async block() {
      await locker.query('BEGIN')
      // Writes (and FOR UPDATE) wait for it; plain reads do not.
      await locker.query('LOCK TABLE breakwater_sagas IN EXCLUSIVE MODE')
    },
    async release() {
      await locker.query('COMMIT')
    },
    async close() {
      await locker.end()
      await db.close()
      await t.close()
    },
  }
}

async function sqliteSetup(name: string): Promise<Setup> {
  const t = await sqliteDb.open(name)
  const db = await openDatabase(t.url, { sqlite: { busyTimeoutMs: 50 } })
  let held: { commit(): Promise<void> } | undefined
  return {
    t,
    db,
    // Another driver's transaction holds the file's one writer.
    async block() {
      held = await holdOpenTransaction(t.db, async () => {})
    },
    async release() {
      await held?.commit()
    },
    async close() {
      await db.close()
      await t.close()
    },
  }
}

/**
 * A worker running a `charge` then `ship` saga, its `charge` step held until `finish()`:
 * `runs` counts each step's action calls, `events` has what the worker reported.
 */
async function heldCharge(db: SqlDriver, clock: ManualClock, atCommit?: EffectLog) {
  const inside = gate()
  const finish = gate()
  const runs = { charge: 0, ship: 0 }
  const saga = defineSaga({
    name: `write-retry-${randomUUID().slice(0, 8)}`,
    version: 1,
    steps: [
      {
        name: 'charge',
        action: async (ctx) => {
          runs.charge++
          if (atCommit !== undefined)
            ctx.atCommit(async (tx) => {
              await atCommit.record(tx, ctx.sagaId, 'charged')
            })
          inside.open()
          await finish.promise
          return { chargeId: 'c-1' }
        },
      },
      {
        name: 'ship',
        action: async () => {
          runs.ship++
        },
      },
    ],
  })
  const events: SagaEvent[] = []
  const worker: SagaWorker = createSagaWorker({ db, sagas: [saga], clock, listen: false })
  worker.events.on((e) => events.push(e))
  await worker.start()
  const running = worker.run(saga, {})
  await inside.promise
  const failures = () => events.filter((e) => e.type === 'error' && e.step === 'charge')
  return { worker, running, runs, events, failures, finish: () => finish.open() }
}

/**
 * Lets `held`'s step return while the state write it needs is blocked, so that write fails
 * once, then frees the database: resolves to that failure (with the instance's id), the run
 * then waiting to write again.
 */
async function failedOnce(setup: Setup, held: Awaited<ReturnType<typeof heldCharge>>) {
  await setup.block()
  try {
    held.finish()
    await vi.waitFor(() => expect(held.failures()).not.toEqual([]), DATABASE_WAIT)
  } finally {
    await setup.release()
  }
  const failure = held.failures()[0]!
  return { failure, id: failure.sagaId! }
}

/** Advances `clock` until the instance `id` is completed, wherever it runs. */
async function untilCompleted(t: TestDb, clock: ManualClock, id: string): Promise<void> {
  await vi.waitFor(async () => {
    await clock.advance(50)
    expect((await getSaga(t.db, id))!.status).toBe('completed')
  }, DATABASE_WAIT)
}

/**
 * Runs `saga` on a worker until the function that opens `inside` waits on `finish`, blocks the
 * state write that follows it once, and resolves to the run's outcome once it has settled (the
 * run returns when its instance suspends or finishes), with the worker's events.
 */
async function throughOneFailure(
  setup: Setup,
  saga: Parameters<SagaWorker['run']>[0],
  inside: Gate,
  finish: Gate,
) {
  const clock = new ManualClock(0)
  const events: SagaEvent[] = []
  const worker = createSagaWorker({ db: setup.db, sagas: [saga], clock, listen: false })
  worker.events.on((e) => events.push(e))
  await worker.start()
  const running = worker.run(saga, {})
  try {
    await inside.promise
    await setup.block()
    try {
      finish.open()
      await vi.waitFor(
        () => expect(events.some((e) => e.type === 'error' && e.step !== undefined)).toBe(true),
        DATABASE_WAIT,
      )
    } finally {
      await setup.release()
    }
    await vi.waitFor(async () => {
      await clock.advance(20)
      expect(await Promise.race([running, undefined])).toBeDefined()
    }, DATABASE_WAIT)
    return { outcome: await running, events }
  } finally {
    finish.open()
    await worker.stop()
  }
}

const targets = [
  { name: 'postgres', open: () => postgresSetup('saga_state_write_retry', 'lock_timeout=50') },
  { name: 'sqlite', open: () => sqliteSetup('saga_state_write_retry') },
]

describe.each(targets)('a transient failure of a step state write on $name', (target) => {
  let setup: Setup
  const log: EffectLog = effectLog(`state_write_effects_${randomUUID().slice(0, 8)}`)

  beforeAll(async () => {
    setup = await target.open()
    await log.create(setup.t.db)
  })
  afterAll(async () => {
    await setup?.close()
  })

  it.each([
    { how: 'with the batched write', atCommit: false },
    { how: 'with atCommit work', atCommit: true },
  ])('is written again in place $how: the step runs once', async ({ atCommit }) => {
    const clock = new ManualClock(0)
    const held = await heldCharge(setup.db, clock, atCommit ? log : undefined)
    try {
      const { failure, id } = await failedOnce(setup, held)
      await untilCompleted(setup.t, clock, id)
      expect(held.runs).toEqual({ charge: 1, ship: 1 })
      expect((await held.running).status).toBe('completed')
      // The atCommit work ran with each try, and committed once.
      if (atCommit) expect(await log.read(setup.t.db, id)).toEqual(['charged'])
      expect(failure).toMatchObject({ phase: 'run', sagaId: id, retryAt: expect.any(Number) })
      expect(held.events.filter((e) => e.type === 'recovered')).toEqual([])
    } finally {
      held.finish()
      await held.worker.stop()
    }
  })

  // The wait before writing again is the run's: stop({ timeoutMs }) that gives up on the run
  // during it ends it there, and nothing more is written for the instance (its lease is left
  // to run out, the step to run again elsewhere), however far the clock then goes.
  it('is not written again once stop({ timeoutMs }) gave up on the run', async () => {
    const clock = new ManualClock(0)
    const held = await heldCharge(setup.db, clock)
    try {
      const { failure, id } = await failedOnce(setup, held)
      // The write is written again at 20 ms; the stop gives up at 10.
      expect(failure.retryAt).toBe(20)
      const before = await getSaga(setup.t.db, id)
      let stopped = false
      const stopping = held.worker.stop({ timeoutMs: 10 }).then(() => {
        stopped = true
      })
      await clock.advance(10)
      expect(stopped).toBe(true)
      await stopping
      await clock.advance(1_000)
      await held.running
      expect(await getSaga(setup.t.db, id)).toEqual(before)
      expect(held.runs).toEqual({ charge: 1, ship: 0 })
      expect(held.failures()).toHaveLength(1)
      expect(held.events.some((e) => e.type === 'abandoned')).toBe(true)
    } finally {
      held.finish()
      await held.worker.stop()
    }
  })
})

// A compensation's outcome is recorded by the same write: one failure of it must not run the
// compensation (a refund) again either.
describe.each(targets)('a transient failure of a compensation state write on $name', (target) => {
  let setup: Setup

  beforeAll(async () => {
    setup = await target.open()
  })
  afterAll(async () => {
    await setup?.close()
  })

  it('is written again in place: the compensation runs once', async () => {
    const inside = gate()
    const finish = gate()
    let refunds = 0
    const saga = defineSaga({
      name: `write-retry-undo-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          action: async () => {},
          compensation: async () => {
            refunds++
            inside.open()
            await finish.promise
          },
        },
        {
          name: 'ship',
          action: async () => {
            throw new Error('no such address')
          },
        },
      ],
    })
    const { outcome, events } = await throughOneFailure(setup, saga, inside, finish)
    expect(refunds).toBe(1)
    expect(outcome.status).toBe('compensated')
    expect(events.find((e) => e.type === 'error')).toMatchObject({
      phase: 'run',
      step: 'charge',
      retryAt: expect.any(Number),
    })
  })
})

// A reply step's send runs in the transaction that records the step waiting: written again,
// that transaction runs send again, and the atCommit work it registers must be taken again
// (the first call's registration is closed once it returned).
describe('a transient failure of a reply step state write on postgres', () => {
  let setup: Setup
  const log: EffectLog = effectLog(`state_write_sends_${randomUUID().slice(0, 8)}`)

  beforeAll(async () => {
    setup = await postgresSetup('saga_state_write_reply', 'lock_timeout=50')
    await log.create(setup.t.db)
  })
  afterAll(async () => {
    await setup?.close()
  })

  it('is written again with its send and the atCommit work send registers', async () => {
    const inside = gate()
    const finish = gate()
    let sends = 0
    const saga = defineSaga({
      name: `write-retry-reply-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'charge',
          send: async (ctx) => {
            sends++
            ctx.atCommit(async (tx) => {
              await log.record(tx, ctx.sagaId, 'sent')
            })
            inside.open()
            await finish.promise
          },
          awaitReply: { timeoutMs: 60_000 },
        },
      ],
    })
    const { outcome, events } = await throughOneFailure(setup, saga, inside, finish)
    expect(outcome.status).toBe('running')
    expect(events.filter((e) => e.type === 'step-failed')).toEqual([])
    expect(events.find((e) => e.type === 'error')).toMatchObject({ retryAt: expect.any(Number) })
    expect((await getSaga(setup.t.db, outcome.id))!.steps[0]).toMatchObject({
      status: 'waiting',
      sent: true,
    })
    // Send ran with each try of its transaction; what it wrote committed once.
    expect(sends).toBe(2)
    expect(await log.read(setup.t.db, outcome.id)).toEqual(['sent'])
  })
})

// A connection lost with the write may have committed it (COMMIT sent, its answer lost), and a
// state write is not idempotent (its timeline rows, its atCommit work): it is not written
// again. The run is given up as before, and the step runs again once the lease runs out.
describe('a state write whose connection is lost on postgres', () => {
  let setup: Setup

  beforeAll(async () => {
    // A wait long enough for the test to find the write waiting and end its session.
    setup = await postgresSetup(
      'saga_state_write_lost',
      'lock_timeout=10000&application_name=write-lost',
    )
  })
  afterAll(async () => {
    await setup?.close()
  })

  it('is not written again: the run is given up', async () => {
    const clock = new ManualClock(0)
    const held = await heldCharge(setup.db, clock)
    try {
      await setup.block()
      try {
        held.finish()
        // The write waits for the lock; its session is ended under it.
        await vi.waitFor(async () => {
          const { rows } = await setup.locker!.query<{ n: string }>(
            `SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
             WHERE application_name = 'write-lost' AND wait_event_type = 'Lock'`,
          )
          expect(Number(rows[0]!.n)).toBe(1)
        }, DATABASE_WAIT)
        expect((await held.running).status).toBe('running')
      } finally {
        await setup.release()
      }
      const failures = held.failures()
      expect(failures).toHaveLength(1)
      expect(failures[0]!.retryAt).toBeUndefined()
      await untilCompleted(setup.t, clock, failures[0]!.sagaId!)
      // The known cost of an unknown outcome: the step ran again after the lease.
      expect(held.runs.charge).toBe(2)
    } finally {
      held.finish()
      await held.worker.stop()
    }
  })
})
