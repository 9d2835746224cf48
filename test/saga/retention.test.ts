// Retention of finished saga instances on real SQLite and PostgreSQL: pruneSagas removes
// instances that ended long enough ago, with their timeline and recorded replies, in bounded
// batches, and never a running, compensating or (unless asked) parked one.
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  cancelSaga,
  createFlowTracker,
  createSagaWorker,
  defineFlow,
  defineSaga,
  deliverReply,
  getSaga,
  pruneFlowEvents,
  pruneSagas,
  retrySaga,
  type SagaDefinition,
  SagaNotFoundError,
} from '../../src/saga/index.js'
import {
  flowEventsTable,
  flowPruneStatements,
  sagaEventsTable,
  sagaRepliesTable,
  sagaStatements,
} from '../../src/saga/sql.js'
import type { SqlExecutor } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { dbTargets, type TestDb } from './databases.js'

const day = 86_400_000

/**
 * Records a reply for step `a` of a finished instance with the statement deliverReply uses (which
 * holds the instance on PostgreSQL): a reply recorded while its step waited stays with the
 * instance until it is pruned, and deliverReply itself drops one for a step that already ran.
 */
async function recordReply(executor: SqlExecutor, sagaId: string, now: number): Promise<number> {
  const statement = sagaStatements[executor.dialect].insertReply
  return (await executor.execute(statement, [sagaId, 'a', '{"late":true}', now])).rowCount
}

describe.each(dbTargets)('pruneSagas on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_retention')
  })
  afterAll(async () => {
    await t?.close()
  })

  const rowsOf = async (table: string, id: string): Promise<number> =>
    Number(
      (
        await t.db.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${table} WHERE saga_id = $1`, [
          id,
        ])
      )[0]!.n,
    )

  /** One instance in each status, all started at `clock`'s time, on a fresh definition. */
  async function oneOfEach(clock: ManualClock) {
    const tag = randomUUID().slice(0, 8)
    const undone = (name: string) => ({
      name,
      action: async () => ({}),
      compensation: async () => {},
    })
    const sagas = {
      completed: defineSaga({ name: `ok-${tag}`, version: 1, steps: [undone('a')] }),
      compensated: defineSaga({
        name: `undo-${tag}`,
        version: 1,
        steps: [
          undone('a'),
          {
            name: 'b',
            action: async () => {
              throw Object.assign(new Error('refused'), { status: 422 })
            },
          },
        ],
      }),
      failed: defineSaga({
        name: `park-${tag}`,
        version: 1,
        steps: [
          {
            name: 'a',
            action: async () => ({}),
            compensation: async () => {
              throw Object.assign(new Error('refund refused'), { status: 422 })
            },
            compensationRetry: { maxAttempts: 1 },
          },
          {
            name: 'b',
            action: async () => {
              throw Object.assign(new Error('refused'), { status: 422 })
            },
          },
        ],
      }),
      cancelled: defineSaga({
        name: `cancel-${tag}`,
        version: 1,
        steps: [undone('a'), { name: 'wait', sleepMs: 10 * day }],
      }),
      running: defineSaga({
        name: `run-${tag}`,
        version: 1,
        steps: [undone('a'), { name: 'wait', sleepMs: 1_000 * day }],
      }),
    } satisfies Record<string, SagaDefinition>
    const worker = createSagaWorker({ db: t.db, sagas: Object.values(sagas), clock })
    const ids: Record<keyof typeof sagas, string> = {
      completed: (await worker.run(sagas.completed, {})).id,
      compensated: (await worker.run(sagas.compensated, {})).id,
      failed: (await worker.run(sagas.failed, {})).id,
      cancelled: (await worker.run(sagas.cancelled, {})).id,
      running: (await worker.run(sagas.running, {})).id,
    }
    await cancelSaga(t.db, ids.cancelled, { clock })
    await worker.poll()
    for (const [status, id] of Object.entries(ids)) {
      expect((await getSaga(t.db, id))?.status, status).toBe(status)
    }
    return { ids, worker }
  }

  it('removes finished instances older than the window with their timeline and replies, and nothing else', async () => {
    const clock = new ManualClock(1_000 * day)
    const { ids, worker } = await oneOfEach(clock)
    // A late reply for a step that already ran is dropped, and recorded nothing.
    expect(await deliverReply(t.db, ids.completed, 'a', { late: true }, { clock })).toBe('stale')
    expect(await rowsOf(sagaRepliesTable, ids.completed)).toBe(0)
    await recordReply(t.db, ids.completed, clock.now())
    expect(await rowsOf(sagaEventsTable, ids.completed)).toBeGreaterThan(0)
    expect(await rowsOf(sagaRepliesTable, ids.completed)).toBe(1)

    // Not old enough yet.
    await clock.advance(7 * day - 1)
    expect(await pruneSagas(t.db, { olderThanMs: 7 * day, clock })).toBe(0)

    await clock.advance(1)
    expect(await pruneSagas(t.db, { olderThanMs: 7 * day, clock })).toBe(3)
    for (const gone of [ids.completed, ids.compensated, ids.cancelled]) {
      expect(await getSaga(t.db, gone), gone).toBeUndefined()
      expect(await rowsOf(sagaEventsTable, gone), gone).toBe(0)
      expect(await rowsOf(sagaRepliesTable, gone), gone).toBe(0)
    }
    // The parked one waits for an operator; the running one is still running.
    expect((await getSaga(t.db, ids.failed))?.status).toBe('failed')
    expect((await getSaga(t.db, ids.running))?.status).toBe('running')
    expect(await rowsOf(sagaEventsTable, ids.failed)).toBeGreaterThan(0)
    expect(await pruneSagas(t.db, { olderThanMs: 7 * day, clock })).toBe(0)

    // Named explicitly, an abandoned parked instance goes too; the running one never does.
    expect(
      await pruneSagas(t.db, { olderThanMs: 7 * day, statuses: ['failed', 'completed'], clock }),
    ).toBe(1)
    expect(await getSaga(t.db, ids.failed)).toBeUndefined()
    expect(await rowsOf(sagaEventsTable, ids.failed)).toBe(0)
    await expect(retrySaga(t.db, ids.failed, { clock })).rejects.toBeInstanceOf(SagaNotFoundError)
    expect((await getSaga(t.db, ids.running))?.status).toBe('running')
    await worker.stop()
  })

  it('counts a parked instance from its last change, so a retried one is not removed', async () => {
    const clock = new ManualClock(2_000 * day)
    const { ids, worker } = await oneOfEach(clock)
    await clock.advance(5 * day)
    // The operator retries it: it compensates again and parks again, now.
    await retrySaga(t.db, ids.failed, { clock })
    await worker.poll()
    expect((await getSaga(t.db, ids.failed))?.status).toBe('failed')
    await clock.advance(3 * day)
    const removed = await pruneSagas(t.db, {
      olderThanMs: 7 * day,
      statuses: ['failed', 'completed', 'compensated', 'cancelled'],
      clock,
    })
    expect(removed).toBe(3)
    expect((await getSaga(t.db, ids.failed))?.status).toBe('failed')
    await worker.stop()
  })

  it('never leaves a reply without its instance when a reply and the pruner meet', async () => {
    const clock = new ManualClock(4_000 * day)
    const { ids, worker } = await oneOfEach(clock)
    await clock.advance(40 * day)
    if (target.dialect === 'postgres') {
      // A reply being recorded holds its instance: the pruner passes over it until the reply's
      // transaction ends, then removes both.
      const held = await holdOpenTransaction(t.db, (tx) =>
        recordReply(tx, ids.completed, clock.now()),
      )
      expect(await pruneSagas(t.db, { olderThanMs: 30 * day, clock })).toBe(2)
      await held.commit()
      expect(await rowsOf(sagaRepliesTable, ids.completed)).toBe(1)
      expect(await pruneSagas(t.db, { olderThanMs: 30 * day, clock })).toBe(1)
      expect(await rowsOf(sagaRepliesTable, ids.completed)).toBe(0)
    } else {
      expect(await pruneSagas(t.db, { olderThanMs: 30 * day, clock })).toBe(3)
    }
    // A reply for an instance already removed is refused, and nothing is recorded.
    await expect(
      deliverReply(t.db, ids.compensated, 'a', { late: true }, { clock }),
    ).rejects.toBeInstanceOf(SagaNotFoundError)
    expect(await rowsOf(sagaRepliesTable, ids.compensated)).toBe(0)
    await worker.stop()
  })

  it('works in bounded batches and stops after maxBatches', async () => {
    const clock = new ManualClock(3_000 * day)
    const saga = defineSaga({
      name: `batch-${randomUUID().slice(0, 8)}`,
      version: 1,
      steps: [{ name: 'a', action: async () => ({}) }],
    })
    const worker = createSagaWorker({ db: t.db, sagas: [saga], clock })
    const ids: string[] = []
    for (let i = 0; i < 7; i++) ids.push((await worker.run(saga, {})).id)
    await clock.advance(31 * day)
    // Two batches of two: four removed, three left for the next call.
    expect(await pruneSagas(t.db, { batchSize: 2, maxBatches: 2, clock })).toBe(4)
    expect(await pruneSagas(t.db, { batchSize: 2, clock })).toBe(3)
    for (const id of ids) expect(await getSaga(t.db, id)).toBeUndefined()
    await worker.stop()
  })

  it('refuses bad options, naming them', async () => {
    await expect(pruneSagas(t.db, { olderThanMs: -1 })).rejects.toThrow(/pruneSagas\.olderThanMs/)
    await expect(pruneSagas(t.db, { olderThanMs: 1.5 })).rejects.toThrow(/pruneSagas\.olderThanMs/)
    await expect(pruneSagas(t.db, { statuses: ['running' as never] })).rejects.toBeInstanceOf(
      InvalidOptionError,
    )
    await expect(pruneSagas(t.db, { statuses: [] })).rejects.toThrow(/pruneSagas\.statuses/)
    await expect(pruneSagas(t.db, { batchSize: 0 })).rejects.toThrow(/pruneSagas\.batchSize/)
    await expect(pruneSagas(t.db, null as never)).rejects.toThrow(/pruneSagas/)
  })
})

describe.each(dbTargets)('pruneFlowEvents on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('flow_retention')
  })
  afterAll(async () => {
    await t?.close()
  })

  const flow = defineFlow({ name: 'order', steps: ['order-placed', 'order-paid', 'order-shipped'] })
  const eventsOf = async (correlationId: string): Promise<number> =>
    Number(
      (
        await t.db.query<{ n: number }>(
          `SELECT COUNT(*) AS n FROM ${flowEventsTable} WHERE correlation_id = $1`,
          [correlationId],
        )
      )[0]!.n,
    )

  it('removes whole flows whose last event is old enough, and keeps every flow with a newer one', async () => {
    const clock = new ManualClock(100 * day)
    const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
    const record = (correlationId: string, type: string, at: number) =>
      tracker.record(t.db, { id: `${correlationId}:${type}`, correlationId, type, at })
    // Finished 40 days before "now"; started long ago but still going; recent.
    await record('old', 'order-placed', 50 * day)
    await record('old', 'order-paid', 50 * day + 1)
    await record('old', 'order-shipped', 60 * day)
    await record('long', 'order-placed', 50 * day)
    await record('long', 'order-paid', 95 * day)
    await record('new', 'order-placed', 99 * day)
    // Many old flows, so the scan needs many batches (of one event each), and the still-going
    // flow's old event comes first in `at` order: a scan that started over each batch would
    // find nothing but it.
    for (let i = 0; i < 25; i++) await record(`bulk-${i}`, 'order-placed', 55 * day + i)

    expect(await pruneFlowEvents(t.db, { olderThanMs: 30 * day, batchSize: 1, clock })).toBe(26)
    expect(await eventsOf('old')).toBe(0)
    for (let i = 0; i < 25; i++) expect(await eventsOf(`bulk-${i}`)).toBe(0)
    expect(await eventsOf('long')).toBe(2)
    expect(await eventsOf('new')).toBe(1)
    expect(await tracker.state('old')).toBeUndefined()
    expect((await tracker.state('long'))?.events).toHaveLength(2)

    // Later, once the long flow has been quiet for the whole window, it goes too.
    await clock.advance(26 * day)
    expect(await pruneFlowEvents(t.db, { olderThanMs: 30 * day, clock })).toBe(1)
    expect(await eventsOf('long')).toBe(0)
    expect(await eventsOf('new')).toBe(1)
    expect(await pruneFlowEvents(t.db, { olderThanMs: 30 * day, clock })).toBe(0)
  })

  it('stops after maxBatches and refuses bad options', async () => {
    // A database of its own: only these flows are old here.
    const own = await target.open('flow_retention_batches')
    const clock = new ManualClock(200 * day)
    const tracker = createFlowTracker({ db: own.db, flows: [flow], clock })
    for (let i = 0; i < 6; i++) {
      await tracker.record(own.db, {
        id: `batch-${i}`,
        correlationId: `batch-${i}`,
        type: 'order-placed',
        at: 150 * day + i,
      })
    }
    expect(await pruneFlowEvents(own.db, { batchSize: 2, maxBatches: 2, clock })).toBe(4)
    expect(await pruneFlowEvents(own.db, { batchSize: 2, clock })).toBe(2)
    await own.close()
    await expect(pruneFlowEvents(t.db, { olderThanMs: -5 })).rejects.toThrow(
      /pruneFlowEvents\.olderThanMs/,
    )
    await expect(pruneFlowEvents(t.db, { batchSize: 0 })).rejects.toThrow(
      /pruneFlowEvents\.batchSize/,
    )
    await expect(pruneFlowEvents(t.db, 'all' as never)).rejects.toThrow(/pruneFlowEvents/)
  })

  // An event whose `at` was changed outside breakwater. On SQLite text or a blob in the INTEGER
  // column sorts above every number: the scan's `at <= cutoff` never found such an event, and
  // the delete's "has a newer event" (`at > cutoff`) held for it, so neither its flow nor any
  // flow holding one was ever removed. Such an event now counts as old enough (its age cannot
  // be told), found by a second range of the `at` index. PostgreSQL's BIGINT holds only
  // numbers: a negative one was already old enough.
  it.each([1, 1000])(
    'removes a flow whose events hold a time that is not a number, unless it has a newer event (batchSize %i)',
    async (batchSize) => {
      const clock = new ManualClock(100 * day)
      const tracker = createFlowTracker({ db: t.db, flows: [flow], clock })
      const run = randomUUID().slice(0, 8)
      const record = async (name: string, type: string, at: number, stored?: unknown) => {
        const id = `${run}-${name}`
        await tracker.record(t.db, { id: `${id}:${type}`, correlationId: id, type, at })
        if (stored !== undefined)
          await t.db.execute(`UPDATE ${flowEventsTable} SET at = $1 WHERE event_id = $2`, [
            stored,
            `${id}:${type}`,
          ])
        return id
      }
      const bad: unknown[] =
        target.dialect === 'sqlite' ? ['abc', '', Buffer.from([0, 1]), -5] : [-5]
      const gone: string[] = []
      const kept: string[] = []
      for (const [i, value] of bad.entries()) {
        // Every event unreadable; an old event and an unreadable one.
        gone.push(await record(`only-${i}`, 'order-placed', 99 * day, value))
        const mixed = await record(`mixed-${i}`, 'order-placed', 50 * day)
        await record(`mixed-${i}`, 'order-paid', 99 * day, value)
        gone.push(mixed)
        // An unreadable event and a recent one: kept whole.
        const going = await record(`going-${i}`, 'order-placed', 99 * day, value)
        await record(`going-${i}`, 'order-paid', 95 * day)
        kept.push(going)
      }
      gone.push(await record('old', 'order-placed', 50 * day))
      kept.push(await record('new', 'order-placed', 99 * day))

      expect(await pruneFlowEvents(t.db, { olderThanMs: 30 * day, batchSize, clock })).toBe(
        gone.length,
      )
      for (const id of gone) expect(await eventsOf(id), id).toBe(0)
      for (const id of kept) expect(await eventsOf(id), id).toBeGreaterThan(0)
      expect(await eventsOf(kept[0]!)).toBe(2)
      expect(await pruneFlowEvents(t.db, { olderThanMs: 30 * day, batchSize, clock })).toBe(0)
    },
  )

  it.runIf(target.dialect === 'sqlite')(
    'finds them by two bounded ranges of the `at` index, never scanning the events',
    async () => {
      const plan = await t.db.query<{ detail: string }>(
        `EXPLAIN QUERY PLAN ${flowPruneStatements.sqlite.scan
          .replaceAll('$1', '0')
          .replaceAll('$2', '0')
          .replaceAll('$3', '0')
          .replaceAll('$4', '10')}`,
      )
      const details = plan.map((row) => row.detail)
      const at = 'SEARCH breakwater_flow_events USING (COVERING )?INDEX breakwater_flow_events_at'
      expect(details).toContainEqual(
        expect.stringMatching(new RegExp(`${at} \\(at>\\? AND at<\\?\\)`)),
      )
      expect(details).toContainEqual(expect.stringMatching(new RegExp(`${at} \\(at>\\?\\)`)))
      expect(details.filter((d) => /^SCAN breakwater_flow_events\b/.test(d))).toEqual([])
    },
  )
})
