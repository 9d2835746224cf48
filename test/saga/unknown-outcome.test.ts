// Steps whose attempts end without a recorded outcome: the worker dies or loses its lease while
// the step runs. (1) A wait step's waitUntil obeys the attempt bound of an action: one that
// kills its worker every time must not be called for ever. (2) An action step an attempt of
// which ended so may have had its effect: its own compensation runs, first, before the earlier
// steps' in reverse order. So may (3) an action the runner cut off at its timeoutMs: its call may
// have reached the remote side. An action that only ever failed with an error it threw itself
// (its own timeout or aborted request included) is not compensated (it did not complete).
// Crashes are lease losses (workers whose clocks stand still) and fault hooks that abandon the
// run as a killed process would.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AbortedError, TimeoutError } from '../../src/index.js'
import {
  cancelSaga,
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaFaults,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

/** A promise with its resolver, opened once. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void
  const promise = new Promise<void>((resolve) => {
    open = resolve
  })
  return { promise, open }
}

const leaseMs = 1_000

describe.each(dbTargets)('steps with an unknown outcome on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_unknown_outcome')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('a waitUntil that kills its worker every time is not called past its attempts', async () => {
    const effects: string[] = []
    const stuck = gate()
    let calls = 0
    let called = gate()
    const saga = defineSaga({
      name: `wait-crash-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async () => ({ reserved: true }),
          compensation: async () => {
            effects.push('undo-reserve')
          },
        },
        {
          name: 'wait',
          waitUntil: async () => {
            calls++
            // The bound's test must end, with or without the bound: a call past the third
            // returns (a wait already over), the others never do while their worker "is dead".
            if (calls > 3) return 0
            called.open()
            await stuck.promise
            return 0
          },
        },
      ],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    const polls: Promise<number>[] = []
    // Each worker's clock stands still (a dead process: no renewal), the next one's is past
    // the lease of the one before, so it takes the instance over: the claim counts an attempt.
    for (let n = 0; n < 3; n++) {
      called = gate()
      const worker = createSagaWorker({
        db: t.db,
        sagas: [saga],
        clock: new ManualClock(n * 10 * leaseMs),
        leaseMs,
        workerId: `dead-${n}`,
      })
      polls.push(worker.poll())
      await called.promise
    }
    expect(calls).toBe(3)
    const last = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock: new ManualClock(100 * leaseMs),
      leaseMs,
      workerId: 'last',
    })
    expect(await last.poll()).toBe(1)
    expect(calls).toBe(3)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('step "wait" used up its 3 attempts without recording')
    expect(instance!.steps[1]).toMatchObject({ status: 'failed' })
    expect(effects).toEqual(['undo-reserve'])
    stuck.open()
    await Promise.all(polls)
    // The dead workers' late writes were fenced off.
    expect(await getSaga(t.db, id)).toEqual(instance)
  })

  /**
   * reserve, then charge (its action crashes, hangs or throws as scripted, given the step's
   * signal), with compensations that log. `timeoutMs` is charge's; `inCharge` resolves once
   * charge's action is entered (its timer set), or `run` settled first.
   */
  function chargeSaga(
    charge: (attempt: number, signal: AbortSignal) => Promise<void>,
    timeoutMs?: number,
  ) {
    const log: string[] = []
    let entered = gate()
    const saga = defineSaga({
      name: `unknown-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        {
          name: 'reserve',
          action: async () => ({ reservationId: 'r-1' }),
          compensation: async (ctx) => {
            log.push(`undo-reserve ${ctx.context.reservationId}`)
          },
        },
        {
          name: 'charge',
          ...(timeoutMs === undefined ? {} : { timeoutMs }),
          retry: { maxAttempts: 2, baseDelayMs: 10, jitter: 'none' },
          action: async (ctx) => {
            entered.open()
            await charge(ctx.attempt, ctx.signal)
            log.push(`charge ${ctx.attempt}`)
            return { chargeId: 'c-1' }
          },
          compensation: async (ctx) => {
            // The charge's result was never recorded: its fields are absent.
            log.push(`refund ${ctx.context.chargeId ?? 'by key'} ${ctx.idempotencyKey}`)
          },
        },
        { name: 'ship', action: async () => ({ shipped: true }) },
      ],
    })
    const inCharge = async (run: Promise<unknown>) => {
      await Promise.race([entered.promise, run])
      entered = gate()
    }
    return { saga, log, inCharge }
  }

  /** A worker on `clock` whose process "dies" right after charge's action on these attempts. */
  function crashingWorker(
    saga: ReturnType<typeof chargeSaga>['saga'],
    clock: ManualClock,
    crashOn: (attempt: number) => boolean,
  ) {
    let attempt = 0
    const faults: SagaFaults = async (point, site) => {
      if (site.step !== 'charge') return
      if (point === 'before-step') attempt++
      if (point === 'after-step-action' && crashOn(attempt)) throw new Error('SIGKILL')
    }
    return createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs, faults })
  }

  async function drive(worker: ReturnType<typeof createSagaWorker>, clock: ManualClock) {
    for (let round = 0; round < 8; round++) {
      await clock.advance(2 * leaseMs)
      await worker.poll()
    }
  }

  it('an action whose attempts are spent by crashes is compensated itself, first', async () => {
    const { saga, log } = chargeSaga(async () => {})
    const clock = new ManualClock(0)
    const worker = crashingWorker(saga, clock, () => true)
    const { id } = await worker.run(saga, {})
    await drive(worker, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('step "charge" used up its 2 attempts')
    expect(instance!.steps[1]).toMatchObject({ status: 'compensated', outcomeUnknown: true })
    expect(log).toEqual([
      'charge 1',
      'charge 2',
      `refund by key ${id}:charge:compensate`,
      'undo-reserve r-1',
    ])
  })

  it('an action that crashed once, then failed with an error, is compensated itself', async () => {
    const { saga, log } = chargeSaga(async (attempt) => {
      if (attempt === 2) throw new Error('card declined')
    })
    const clock = new ManualClock(0)
    const worker = crashingWorker(saga, clock, (attempt) => attempt === 1)
    const { id } = await worker.run(saga, {})
    await drive(worker, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('card declined')
    expect(log).toEqual(['charge 1', `refund by key ${id}:charge:compensate`, 'undo-reserve r-1'])
  })

  it('an action cancelled in its retry delay after a crash is compensated itself', async () => {
    const { saga, log } = chargeSaga(async () => {})
    const clock = new ManualClock(0)
    const worker = crashingWorker(saga, clock, (attempt) => attempt === 1)
    const { id } = await worker.run(saga, {})
    await cancelSaga(t.db, id, { reason: 'customer left' })
    await drive(worker, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'cancelled' })
    expect(log).toEqual(['charge 1', `refund by key ${id}:charge:compensate`, 'undo-reserve r-1'])
  })

  it('an action that only failed with recorded errors is not compensated', async () => {
    const { saga, log } = chargeSaga(async () => {
      throw Object.assign(new Error('gateway down'), { status: 503 })
    })
    const clock = new ManualClock(0)
    const worker = crashingWorker(saga, clock, () => false)
    const { id } = await worker.run(saga, {})
    await drive(worker, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.steps[1]).toMatchObject({ status: 'failed', attempts: 2 })
    expect(instance!.steps[1]).not.toHaveProperty('outcomeUnknown')
    expect(log).toEqual(['undo-reserve r-1'])
  })

  /** Never settles, as a remote call that hangs and ignores its signal. */
  const hang = () => new Promise<void>(() => {})

  /**
   * Runs the saga to its end on a ManualClock: once charge's action is entered, the clock
   * passes its timeoutMs; between polls, past the retry delay.
   */
  async function runTimed({ saga, inCharge }: ReturnType<typeof chargeSaga>, cancel = false) {
    const clock = new ManualClock(0)
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock, leaseMs: 10 * leaseMs })
    const running = worker.run(saga, {})
    await inCharge(running)
    await clock.advance(500)
    const { id } = await running
    if (cancel) await cancelSaga(t.db, id, { reason: 'customer left' })
    for (let round = 0; round < 4; round++) {
      await clock.advance(500)
      const polled = worker.poll()
      await inCharge(polled)
      await clock.advance(500)
      await polled
    }
    return id
  }

  it('an action cut off by its timeoutMs, then refused, is compensated itself, first', async () => {
    const timed = chargeSaga(async (attempt) => {
      if (attempt === 1) return hang()
      throw new Error('card declined')
    }, 500)
    const id = await runTimed(timed)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('card declined')
    expect(instance!.steps[1]).toMatchObject({
      status: 'compensated',
      attempts: 2,
      outcomeUnknown: true,
    })
    expect(timed.log).toEqual([`refund by key ${id}:charge:compensate`, 'undo-reserve r-1'])
  })

  it('an action cut off by its timeoutMs on every attempt is compensated itself', async () => {
    const timed = chargeSaga(hang, 500)
    const id = await runTimed(timed)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.steps[1]).toMatchObject({
      status: 'compensated',
      attempts: 2,
      outcomeUnknown: true,
      error: { code: 'TIMEOUT' },
    })
    expect(timed.log).toEqual([`refund by key ${id}:charge:compensate`, 'undo-reserve r-1'])
  })

  it('an action cut off by its timeoutMs, then cancelled in its retry delay, is compensated itself', async () => {
    const timed = chargeSaga(hang, 500)
    const id = await runTimed(timed, true)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'cancelled' })
    expect(instance!.steps[1]).toMatchObject({ attempts: 1 })
    expect(timed.log).toEqual([`refund by key ${id}:charge:compensate`, 'undo-reserve r-1'])
  })

  it('an action cut off by its timeoutMs, then completed, is no longer of unknown outcome', async () => {
    const timed = chargeSaga(async (attempt) => {
      if (attempt === 1) return hang()
    }, 500)
    const id = await runTimed(timed)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'completed' })
    expect(instance!.steps[1]).toMatchObject({ status: 'completed', result: { chargeId: 'c-1' } })
    expect(instance!.steps[1]).not.toHaveProperty('outcomeUnknown')
    expect(instance!.steps[1]).toMatchObject({ attempts: 2 })
    expect(timed.log).toEqual(['charge 2'])
  })

  it('an action that throws its own timeout or abort (the runner cut nothing) is not compensated', async () => {
    const own = [
      () => new TimeoutError(100),
      () => new AbortedError('request aborted'),
      () => Object.assign(new Error('This operation was aborted'), { name: 'AbortError' }),
    ]
    for (const error of own) {
      const timed = chargeSaga(async (_attempt, signal) => {
        // Its own bound, shorter than the step's: what it throws is its word on the outcome.
        expect(signal.aborted).toBe(false)
        throw error()
      }, 500)
      const id = await runTimed(timed)
      const instance = await getSaga(t.db, id)
      expect(instance).toMatchObject({ status: 'compensated' })
      expect(instance!.steps[1]).toMatchObject({ status: 'failed' })
      expect(instance!.steps[1]).not.toHaveProperty('outcomeUnknown')
      expect(timed.log).toEqual(['undo-reserve r-1'])
    }
  })
})
