// A worker outlives the code that starts it: an application that bounds its startup with
// withDeadline, or starts the worker from inside a transaction, must not have every step the
// poll loop runs later bound by that (long expired) deadline or taken for a statement of that
// (long closed) transaction. Real databases; a ManualClock drives the poll timer.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { currentDeadline, type Deadline, withDeadline } from '../../src/policies/deadline.js'
import {
  createSagaWorker,
  defineSaga,
  type SagaEvent,
  type SagaWorker,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, type TestDb } from './databases.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('saga worker context on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_detached_context')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** Moves the clock a poll interval at a time until `done()` (real I/O runs in between). */
  async function pollUntil(clock: ManualClock, done: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 20_000
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await clock.advance(100)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  }

  function lookingSaga(seen: Array<Deadline | undefined>) {
    return defineSaga({
      name: `look-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'look',
          action: async () => {
            seen.push(currentDeadline())
            return { ok: true }
          },
        },
      ],
    })
  }

  it("runs the steps it polls for outside the deadline its starter's start() ran under", async () => {
    const clock = new ManualClock(T0)
    const seen: Array<Deadline | undefined> = []
    const saga = lookingSaga(seen)
    const worker: SagaWorker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      listen: false,
      pollIntervalMs: 100,
    })
    try {
      await withDeadline(1_000, () => worker.start(), { clock })
      await clock.advance(2_000)
      await startSaga(t.db, saga, {}, { clock })
      await pollUntil(clock, () => seen.length > 0, 'the step')
      expect(seen).toEqual([undefined])
    } finally {
      await worker.stop()
    }
  })

  it.runIf(target.dialect === 'sqlite')(
    'claims outside the transaction its start() was called in',
    async () => {
      const clock = new ManualClock(T0)
      const seen: Array<Deadline | undefined> = []
      const saga = lookingSaga(seen)
      const worker = createSagaWorker({
        db: t.db,
        sagas: [saga],
        clock,
        listen: false,
        pollIntervalMs: 100,
      })
      const errors: SagaEvent[] = []
      worker.events.on((e) => {
        if (e.type === 'error') errors.push(e)
      })
      try {
        await t.db.transaction(async () => {
          await worker.start()
          // The transaction stays open a little while the loop makes its first claim.
          await new Promise((resolve) => setTimeout(resolve, 20))
        })
        await startSaga(t.db, saga, {}, { clock })
        await pollUntil(clock, () => seen.length > 0, 'the step')
        expect(errors).toEqual([])
      } finally {
        await worker.stop()
      }
    },
  )

  it("renews the poll loop's leases outside the deadline of a run() that set the renewal timer", async () => {
    const clock = new ManualClock(T0)
    const entered = new Set<string>()
    const release = gate()
    // What the step of `b` (claimed by the poll loop) sees when its lease is found lost.
    const lostUnder: Array<Deadline | undefined> = []
    const saga = defineSaga({
      name: `hold-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'hold',
          action: async (ctx) => {
            const who = (ctx.input as { who: string }).who
            ctx.signal.addEventListener('abort', () => {
              if (who === 'b') lostUnder.push(currentDeadline())
            })
            entered.add(who)
            await Promise.race([
              release.promise,
              new Promise((resolve) => ctx.signal.addEventListener('abort', resolve)),
            ])
          },
        },
      ],
    })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      listen: false,
      leaseMs: 3_000,
      renewIntervalMs: 1_000,
      pollIntervalMs: 100,
    })
    // The caller's own run, under its deadline: it is the first to need the renewal timer.
    const a = withDeadline(60_000, () => worker.run(saga, { who: 'a' }), { clock })
    try {
      await pollUntil(clock, () => entered.has('a'), 'the run of a')
      await worker.start()
      const b = await startSaga(t.db, saga, { who: 'b' }, { clock })
      await pollUntil(clock, () => entered.has('b'), 'the step of b')
      // Another worker took b over: the next renewal finds it lost and aborts its step.
      await t.db.execute("UPDATE breakwater_sagas SET lease_owner = 'thief' WHERE id = $1", [b.id])
      await pollUntil(clock, () => lostUnder.length > 0, 'the lost lease of b')
      expect(lostUnder).toEqual([undefined])
    } finally {
      release.open()
      await a.catch(() => {})
      await worker.stop()
    }
  })
})
