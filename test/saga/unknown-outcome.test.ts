// Steps whose attempts end without a recorded outcome: the worker dies or loses its lease while
// the step runs. (1) A wait step's waitUntil, and a reply step's onReply, obey the attempt bound
// of an action: one that kills its worker every time must not be called for ever. (2) An action step an attempt of
// which ended so may have had its effect: its own compensation runs, first, before the earlier
// steps' in reverse order. So may (3) an action the runner cut off at its timeoutMs: its call may
// have reached the remote side. (4) An action that returned (its effect happened) but whose step
// could not be recorded (its atCommit work threw or ran past atCommitTimeoutMs, or its result is
// not JSON) is compensated the same way, without the result (rolled back); a retry runs it
// again with the same key. An action that only ever failed with an error it threw itself (its
// own timeout or aborted request included) is not compensated (it did not complete).
// Crashes are lease losses (workers whose clocks stand still) and fault hooks that abandon the
// run as a killed process would.
import { randomUUID } from 'node:crypto'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AbortedError, TimeoutError } from '../../src/index.js'
import {
  type AtCommitWork,
  cancelSaga,
  createSagaWorker,
  defineSaga,
  deliverReply,
  getSaga,
  type SagaDefinition,
  type SagaFaults,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { dbTargets, effectLog, type TestDb } from './databases.js'

const leaseMs = 1_000

describe.each(dbTargets)('steps with an unknown outcome on $dialect', (target) => {
  let t: TestDb

  const rows = effectLog('unknown_outcome_rows')

  beforeAll(async () => {
    t = await target.open('saga_unknown_outcome')
    await rows.create(t.db)
  })
  afterAll(async () => {
    await t?.close()
  })

  /**
   * A step function that kills its worker on each of its first three calls: it does not return
   * while that worker "is dead" (until `settle`). A call past the third returns `value` at
   * once, so the test ends with or without the bound. `dieThrice` has three workers take the
   * instance over in turn, each dying in it: each one's clock stands still (a dead process: no
   * renewal), the next one's is past the lease of the one before, so its claim counts an
   * attempt. Then a last worker, past every lease, polls once.
   */
  function killing<T>(value: T) {
    const stuck = gate()
    let called = gate()
    const polls: Promise<number>[] = []
    const calls = { count: 0 }
    return {
      calls,
      fn: async (): Promise<T> => {
        calls.count++
        if (calls.count > 3) return value
        called.open()
        await stuck.promise
        return value
      },
      async dieThrice(saga: SagaDefinition<unknown, unknown>, from: number): Promise<number> {
        for (let n = 0; n < 3; n++) {
          called = gate()
          const worker = createSagaWorker({
            db: t.db,
            sagas: [saga],
            clock: new ManualClock(from + n * 10 * leaseMs),
            leaseMs,
            workerId: `dead-${n}`,
          })
          polls.push(worker.poll())
          await called.promise
        }
        expect(calls.count).toBe(3)
        const last = createSagaWorker({
          db: t.db,
          sagas: [saga],
          clock: new ManualClock(from + 100 * leaseMs),
          leaseMs,
          workerId: 'last',
        })
        return last.poll()
      },
      /** Lets the dead workers' calls return; their late writes must be fenced off. */
      async settle(): Promise<void> {
        stuck.open()
        await Promise.all(polls)
      },
    }
  }

  /** A first step that reserves, and logs its undoing to `effects`. */
  const reserveStep = (effects: string[]) => ({
    name: 'reserve',
    action: async () => ({ reserved: true }),
    compensation: async () => {
      effects.push('undo-reserve')
    },
  })

  it('a waitUntil that kills its worker every time is not called past its attempts', async () => {
    const effects: string[] = []
    const waitUntil = killing(0)
    const saga = defineSaga({
      name: `wait-crash-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [reserveStep(effects), { name: 'wait', waitUntil: waitUntil.fn }],
    })
    const { id } = await startSaga(t.db, saga, {}, { clock: new ManualClock(0) })
    expect(await waitUntil.dieThrice(saga, 0)).toBe(1)
    expect(waitUntil.calls.count).toBe(3)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('step "wait" used up its 3 attempts without recording')
    expect(instance!.steps[1]).toMatchObject({ status: 'failed' })
    expect(effects).toEqual(['undo-reserve'])
    await waitUntil.settle()
    expect(await getSaga(t.db, id)).toEqual(instance)
  })

  // Each claim that reads the reply counts an attempt, as an action's: the claim that would call
  // onReply past the step's attempts fails the step, and the saga compensates, the step itself
  // too (its command was sent and its reply never handled). Unchecked, it was called for ever.
  it('an onReply that kills its worker every time is not called past its attempts', async () => {
    const effects: string[] = []
    const onReply = killing({ charged: true })
    const saga = defineSaga({
      name: `reply-crash-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [
        reserveStep(effects),
        {
          name: 'charge',
          retry: { maxAttempts: 3 },
          send: async (ctx) => {
            effects.push(`send ${ctx.attempt}`)
          },
          awaitReply: { timeoutMs: 1_000 * leaseMs, onReply: onReply.fn },
          compensation: async () => {
            effects.push('refund')
          },
        },
        { name: 'ship', action: async () => ({ shipped: true }) },
      ],
    })
    const sender = createSagaWorker({ db: t.db, sagas: [saga], clock: new ManualClock(0), leaseMs })
    const { id } = await sender.run(saga, {})
    const clock = new ManualClock(0)
    expect(await deliverReply(t.db, id, 'charge', { ok: true }, { clock })).toBe('delivered')
    expect(await onReply.dieThrice(saga, 10 * leaseMs)).toBe(1)
    expect(onReply.calls.count).toBe(3)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('step "charge" used up its 3 attempts without recording')
    expect(instance!.steps[1]).toMatchObject({ status: 'compensated' })
    expect(effects).toEqual(['send 1', 'refund', 'undo-reserve'])
    await onReply.settle()
    expect(await getSaga(t.db, id)).toEqual(instance)
  })

  /**
   * reserve, then charge (its action crashes, hangs or throws as scripted, given the step's
   * signal and atCommit; it may return its own result), with compensations that log.
   * `timeoutMs` is charge's; `inCharge` resolves once charge's action is entered (its timer
   * set), or `run` settled first.
   */
  function chargeSaga(
    charge: (
      attempt: number,
      signal: AbortSignal,
      atCommit: (work: AtCommitWork) => void,
    ) => Promise<unknown>,
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
            const own = (await charge(ctx.attempt, ctx.signal, (work) => ctx.atCommit(work))) as
              | { chargeId: string | number }
              | undefined
            log.push(`charge ${ctx.attempt}`)
            return own ?? { chargeId: 'c-1' }
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

  // ---- (4) the action returned, its step could not be recorded ----------------------------

  /** What charge's atCommit work does on an attempt, or what the action returns instead. */
  type Commit = 'ok' | 'throw' | 'transient' | 'hang' | 'nan'

  /**
   * A charge that records a row with atCommit (under `tag`), behaving per attempt as
   * scripted; `hanging` is called when a hanging atCommit is entered.
   */
  const committing =
    (script: (attempt: number) => Commit, hanging = () => {}, tag = '') =>
    async (attempt: number, _signal: AbortSignal, atCommit: (work: AtCommitWork) => void) => {
      const commit = script(attempt)
      atCommit(async (tx) => {
        await rows.record(tx, tag, `charge ${attempt}`)
        if (commit === 'throw') throw new Error('duplicate charge row')
        if (commit === 'transient') throw Object.assign(new Error('busy'), { status: 503 })
        if (commit === 'hang') {
          hanging()
          await new Promise<never>(() => {})
        }
      })
      return commit === 'nan' ? { chargeId: Number.NaN } : { chargeId: `c-${attempt}` }
    }

  // A failed expectation must not leave a worker (or a hung transaction) behind for the next.
  const workers: ReturnType<typeof createSagaWorker>[] = []
  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.stop({ timeoutMs: 1 })))
  })

  /** Only the atCommit bound (500 ms) and the retry delays move these sagas on. */
  function committingWorker(saga: ReturnType<typeof chargeSaga>['saga'], clock: ManualClock) {
    const w = createSagaWorker({
      db: t.db,
      sagas: [saga],
      clock,
      leaseMs: 3_600_000,
      atCommitTimeoutMs: 500,
    })
    workers.push(w)
    return w
  }

  async function driveCommitting(w: ReturnType<typeof createSagaWorker>, clock: ManualClock) {
    for (let round = 0; round < 4; round++) {
      await clock.advance(100)
      await w.poll()
    }
  }

  it('an action whose atCommit work failed for good is compensated itself, first', async () => {
    const { saga, log } = chargeSaga(committing(() => 'throw'))
    const w = committingWorker(saga, new ManualClock(0))
    const outcome = await w.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toContain('duplicate charge row')
    const instance = await getSaga(t.db, outcome.id)
    expect(instance!.steps[1]).toMatchObject({
      status: 'compensated',
      attempts: 1,
      outcomeUnknown: true,
    })
    expect(instance!.steps[1]).not.toHaveProperty('result')
    expect(log).toEqual([
      'charge 1',
      `refund by key ${outcome.id}:charge:compensate`,
      'undo-reserve r-1',
    ])
  })

  it('an action whose atCommit work ran past atCommitTimeoutMs on every attempt is compensated itself', async () => {
    let hung = gate()
    const { saga, log } = chargeSaga(
      committing(
        () => 'hang',
        () => hung.open(),
      ),
    )
    const clock = new ManualClock(0)
    const w = committingWorker(saga, clock)
    const running = w.run(saga, {})
    await hung.promise
    hung = gate()
    await clock.advance(500)
    const { id } = await running
    // Past the retry delay: the second attempt hangs the same way.
    await clock.advance(100)
    const second = w.poll()
    await hung.promise
    await clock.advance(500)
    expect(await second).toBe(1)
    await driveCommitting(w, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'compensated' })
    expect(instance!.reason).toContain('SAGA_AT_COMMIT_TIMEOUT')
    expect(instance!.steps[1]).toMatchObject({
      status: 'compensated',
      attempts: 2,
      outcomeUnknown: true,
      error: { code: 'SAGA_AT_COMMIT_TIMEOUT' },
    })
    // The retry ran the action again (with the same key: the service's dedup makes one charge).
    expect(log).toEqual([
      'charge 1',
      'charge 2',
      `refund by key ${id}:charge:compensate`,
      'undo-reserve r-1',
    ])
  })

  it('an action whose atCommit work failed, then cancelled in its retry delay, is compensated itself', async () => {
    const { saga, log } = chargeSaga(committing(() => 'transient'))
    const clock = new ManualClock(0)
    const w = committingWorker(saga, clock)
    const outcome = await w.run(saga, {})
    expect(outcome.status).toBe('running')
    await cancelSaga(t.db, outcome.id, { reason: 'customer left' })
    await driveCommitting(w, clock)
    expect(await getSaga(t.db, outcome.id)).toMatchObject({ status: 'cancelled' })
    expect(log).toEqual([
      'charge 1',
      `refund by key ${outcome.id}:charge:compensate`,
      'undo-reserve r-1',
    ])
  })

  it('an action whose atCommit work failed, then completed on retry, is no longer of unknown outcome', async () => {
    const tag = randomUUID()
    const script = (attempt: number): Commit => (attempt === 1 ? 'transient' : 'ok')
    const { saga, log } = chargeSaga(committing(script, undefined, tag))
    const clock = new ManualClock(0)
    const w = committingWorker(saga, clock)
    const { id } = await w.run(saga, {})
    await driveCommitting(w, clock)
    const instance = await getSaga(t.db, id)
    expect(instance).toMatchObject({ status: 'completed' })
    expect(instance!.steps[1]).toMatchObject({
      status: 'completed',
      attempts: 2,
      result: { chargeId: 'c-2' },
    })
    expect(instance!.steps[1]).not.toHaveProperty('outcomeUnknown')
    expect(log).toEqual(['charge 1', 'charge 2'])
    // Only the completing attempt's atCommit row committed.
    expect(await rows.read(t.db, tag)).toEqual(['charge 2'])
  })

  it('an action that returned a result that is not a JSON value is compensated itself', async () => {
    const { saga, log } = chargeSaga(committing(() => 'nan'))
    const w = committingWorker(saga, new ManualClock(0))
    const outcome = await w.run(saga, {})
    expect(outcome.status).toBe('compensated')
    expect(outcome.reason).toContain('INVALID_OPTION')
    const instance = await getSaga(t.db, outcome.id)
    expect(instance!.steps[1]).toMatchObject({ status: 'compensated', outcomeUnknown: true })
    expect(log).toEqual([
      'charge 1',
      `refund by key ${outcome.id}:charge:compensate`,
      'undo-reserve r-1',
    ])
  })
})
