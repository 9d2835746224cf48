// An instance whose definition (name and version) no running worker has stays `running` for
// ever: each worker reports the due ones it cannot run, without claiming or changing them, so
// an operator sees them. Real SQLite and PostgreSQL, time on a ManualClock.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createSagaWorker,
  defineSaga,
  getSaga,
  type SagaEvent,
  startSaga,
} from '../../src/saga/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb } from './databases.js'

const start = 1_700_000_000_000

function definition(name: string, version: number) {
  return defineSaga({
    name,
    version,
    steps: [{ name: 'only', action: async () => ({ done: true }) }],
  })
}

describe.each(dbTargets)('instances no worker has a definition for, on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_missing_definition')
  })
  afterAll(async () => {
    await t?.close()
  })

  it('reports due instances of unknown versions and names, at most once per interval, leaving them alone', async () => {
    const clock = new ManualClock(start)
    const name = `order-${randomUUID().slice(0, 8)}`
    const other = `refund-${randomUUID().slice(0, 8)}`
    const v1 = definition(name, 1)
    const v2 = definition(name, 2)
    const old1 = await startSaga(t.db, v1, {}, { clock })
    const old2 = await startSaga(t.db, v1, {}, { clock })
    const unknown = await startSaga(t.db, definition(other, 1), {}, { clock })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [v2],
      clock,
      missingDefinitionCheckIntervalMs: 10_000,
    })
    const events: SagaEvent[] = []
    worker.events.on((event) => {
      if (event.type === 'definition-missing') events.push(event)
    })

    // Just due: a worker that has the definition may simply not have polled yet.
    expect(await worker.poll()).toBe(0)
    expect(events).toEqual([])

    // Due for a whole interval and nobody took them.
    await clock.advance(10_000)
    expect(await worker.poll()).toBe(0)
    const reported = events.map(({ saga, version, count }) => ({ saga, version, count }))
    expect(reported).toEqual(
      expect.arrayContaining([
        { saga: name, version: 1, count: 2 },
        { saga: other, version: 1, count: 1 },
      ]),
    )
    expect(events).toHaveLength(2)
    for (const event of events) expect(event).toMatchObject({ worker: worker.id, at: clock.now() })

    // Not on every poll: the next check is an interval later.
    await clock.advance(9_999)
    await worker.poll()
    expect(events).toHaveLength(2)
    await clock.advance(1)
    await worker.poll()
    expect(events).toHaveLength(4)

    // Left as they were: not claimed, not changed.
    for (const id of [old1.id, old2.id, unknown.id]) {
      const stored = (await getSaga(t.db, id))!
      expect(stored).toMatchObject({ status: 'running', stepIndex: 0, leaseOwner: undefined })
    }

    // A worker that has version 1 runs them; after that nothing is reported for it.
    const old = createSagaWorker({ db: t.db, sagas: [v1], clock })
    expect(await old.poll()).toBe(2)
    expect((await getSaga(t.db, old1.id))!.status).toBe('completed')
    events.length = 0
    await clock.advance(10_000)
    await worker.poll()
    expect(events.map(({ saga, version, count }) => ({ saga, version, count }))).toEqual([
      { saga: other, version: 1, count: 1 },
    ])
    await worker.stop()
    await old.stop()
  })

  it('does not report instances of its own definitions, nor ones not yet due', async () => {
    const clock = new ManualClock(start)
    const name = `held-${randomUUID().slice(0, 8)}`
    const v1 = definition(name, 1)
    const slow = defineSaga({
      name,
      version: 2,
      steps: [
        { name: 'wait', sleepMs: 60_000 },
        { name: 'after', action: async () => ({}) },
      ],
    })
    await startSaga(t.db, slow, {}, { clock })
    // Due for longer than the interval, but the worker has its definition (checked before it
    // claims, so the check does see it).
    const own = await startSaga(t.db, v1, {}, { clock })
    const worker = createSagaWorker({
      db: t.db,
      sagas: [v1],
      clock,
      missingDefinitionCheckIntervalMs: 1_000,
    })
    const events: SagaEvent[] = []
    worker.events.on((event) => {
      if (event.type === 'definition-missing' && event.saga === name) events.push(event)
    })
    // Its timer is 60 s away: not due, so not stranded.
    const holder = createSagaWorker({ db: t.db, sagas: [slow], clock })
    expect(await holder.poll()).toBe(1)
    await clock.advance(5_000)
    expect(await worker.poll()).toBe(1)
    expect((await getSaga(t.db, own.id))!.status).toBe('completed')
    expect(events).toEqual([])
    await worker.stop()
    await holder.stop()
  })

  it('refuses a bad interval', () => {
    expect(() =>
      createSagaWorker({
        db: t.db,
        sagas: [definition('x', 1)],
        missingDefinitionCheckIntervalMs: 0,
      }),
    ).toThrow(/missingDefinitionCheckIntervalMs/)
  })
})
