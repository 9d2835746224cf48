// A projection's apply or a subscription's handler that throws is reported with the event it
// failed on: ProjectionFailedError (PROJECTION_FAILED) and SubscriptionHandlerError
// (SUBSCRIPTION_HANDLER_FAILED) name the position, stream, type and event id, with the
// application's own error as `cause`, from catchUp, start()'s onError and the
// projection-error diagnostic, rebuild(), and a subscription's onError.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { describe, expect, it } from 'vitest'
import {
  cqrsChannelNames,
  createCommandHandler,
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  ProjectionFailedError,
  type RecordedEvent,
  SubscriptionHandlerError,
} from '../../src/cqrs/index.js'
import { sqlErrorKind } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }

class Boom extends Error {}

/** A projection of events of type `type` whose apply throws `boom` on the data 'bad'. */
function failing(name: string, type: string, boom: Boom) {
  return defineProjection({
    name,
    eventTypes: [type],
    tables: { [name]: (table) => [`CREATE TABLE ${table} (n TEXT NOT NULL)`] },
    async apply(event, { tx, table }) {
      await tx.execute(`INSERT INTO ${table(name)} (n) VALUES ($1)`, [String(event.data)])
      if (event.data === 'bad') throw boom
    },
  })
}

function expectNames(error: unknown, event: RecordedEvent, boom: Boom): void {
  expect(error).toBeInstanceOf(ProjectionFailedError)
  const failure = error as ProjectionFailedError
  expect(failure.code).toBe('PROJECTION_FAILED')
  expect(failure.position).toBe(event.position)
  expect(failure.stream).toBe(event.stream)
  expect(failure.type).toBe(event.type)
  expect(failure.eventId).toBe(event.id)
  expect(failure.cause).toBe(boom)
  expect(failure.message).toContain(boom.message)
  expect(failure.message).toContain(`position ${event.position}`)
  expect(failure.message).toContain(event.id)
}

/** Appends an event of `type` carrying 'ok', then one carrying 'bad'. */
async function okThenBad(store: EventStore, stream: string, type: string) {
  const { events } = await store.append(stream, [
    { type, data: 'ok' },
    { type, data: 'bad' },
  ])
  return events
}

describe.each(dbTargets)('handler failures name their event on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_handler_failures')

  it('catchUp() rejects with ProjectionFailedError, also when the event starts the batch', async () => {
    const store = createEventStore(t.db)
    const events = await okThenBad(store, 'fail-catch-up', 'fc')
    const boom = new Boom('apply refused it')
    const projector = createProjector(store, failing('fail_catch_up', 'fc', boom))
    // The first call applies the event before it, then fails; the second starts at it.
    expectNames(await projector.catchUp().catch((e: unknown) => e), events[1]!, boom)
    expectNames(await projector.catchUp().catch((e: unknown) => e), events[1]!, boom)
  })

  it('start() reports it to onError and on the projection-error channel', async () => {
    const store = createEventStore(t.db)
    const { events } = await store.append('fail-start', [{ type: 'fs', data: 'bad' }])
    const boom = new Boom('apply refused it in the loop')
    const reported: unknown[] = []
    const published: unknown[] = []
    const onPublished = (message: unknown): void => {
      const m = message as { projection: string; error: unknown }
      if (m.projection === 'fail_start') published.push(m.error)
    }
    subscribe(cqrsChannelNames['projection-error'], onPublished)
    const projector = createProjector(store, failing('fail_start', 'fs', boom), {
      clock: new ManualClock(Date.now()),
      onError: (error) => reported.push(error),
    })
    try {
      projector.start()
      await expect.poll(() => reported.length, poll).toBeGreaterThan(0)
      await projector.stop()
    } finally {
      unsubscribe(cqrsChannelNames['projection-error'], onPublished)
    }
    expectNames(reported[0], events[0]!, boom)
    expect(published[0]).toBe(reported[0])
  })

  it('rebuild() rejects with ProjectionFailedError', async () => {
    const store = createEventStore(t.db)
    const events = await okThenBad(store, 'fail-rebuild', 'fr')
    const boom = new Boom('apply refused it in the rebuild')
    const projector = createProjector(store, failing('fail_rebuild', 'fr', boom))
    const error = await projector.rebuild().catch((e: unknown) => e)
    expectNames(error, events[1]!, boom)
    expect((error as Error).message).toContain('rebuild')
  })

  it('an inline append rejects with ProjectionFailedError, position 0, and writes nothing', async () => {
    // It rejected with the bare error of apply: a unique violation of the projection's own
    // table read (sqlErrorKind) as the append's, naming no projection, event or stream.
    const name = 'fail_inline'
    const projection = defineProjection({
      name,
      tables: { [name]: (table) => [`CREATE TABLE ${table} (id TEXT PRIMARY KEY)`] },
      async apply(event, { tx, table }) {
        await tx.execute(`INSERT INTO ${table(name)} (id) VALUES ($1)`, [String(event.data)])
      },
    })
    const store = createEventStore(t.db, { inlineProjections: [projection] })
    await store.append('fail-inline-a', [{ type: 'fi', data: 'dup' }])
    const head = await store.headPosition()
    const appends = [
      () => store.append('fail-inline-b', [{ type: 'fi', data: 'dup', id: 'fi-1' }]),
      () =>
        t.db.transaction((tx) =>
          store.append('fail-inline-b', [{ type: 'fi', data: 'dup', id: 'fi-1' }], { tx }),
        ),
    ]
    for (const append of appends) {
      const error = await append().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(ProjectionFailedError)
      const failure = error as ProjectionFailedError
      expect(failure.code).toBe('PROJECTION_FAILED')
      expect(failure.projection).toBe(name)
      expect(failure.rebuild).toBe(false)
      expect(failure.inline).toBe(true)
      expect(failure.stream).toBe('fail-inline-b')
      expect(failure.type).toBe('fi')
      expect(failure.eventId).toBe('fi-1')
      // Never committed: the event has no position in the log.
      expect(failure.position).toBe(0)
      expect(failure.message).toMatch(/projection "fail_inline" \(inline\)/)
      expect(failure.message).toContain('not written')
      expect(sqlErrorKind(failure.cause)).toBe('unique-violation')
      // The append's own unique violation is no longer what a caller classifies it as.
      expect(sqlErrorKind(failure)).toBe('other')
    }
    expect(await store.headPosition()).toBe(head)
    expect((await store.streamInfo('fail-inline-b')).version).toBe(0)
  })

  it("an inline apply's serialization failure passes as it is, and a command retries it", async () => {
    // It is the transaction's, not the projection's: wrapped, the command would stop retrying.
    const name = 'fail_inline_retry'
    let failures = 1
    const projection = defineProjection({
      name,
      tables: { [name]: (table) => [`CREATE TABLE ${table} (n TEXT NOT NULL)`] },
      async apply(event, { tx, table }) {
        if (failures-- > 0) throw Object.assign(new Error('could not serialize'), { code: '40001' })
        await tx.execute(`INSERT INTO ${table(name)} (n) VALUES ($1)`, [event.id])
      },
    })
    const store = createEventStore(t.db, { inlineProjections: [projection] })
    const error = await store
      .append('fail-inline-retry', [{ type: 'fir', data: 1 }])
      .catch((e: unknown) => e)
    expect(error).not.toBeInstanceOf(ProjectionFailedError)
    expect(sqlErrorKind(error)).toBe('serialization-failure')
    failures = 1
    const handler = createCommandHandler(store, {
      baseDelayMs: 0,
      decider: {
        initialState: () => 0,
        evolve: (n: number) => n + 1,
        decide: () => [{ type: 'fir', data: 1 }],
      },
    })
    expect((await handler.handle('fail-inline-retry', {})).version).toBe(1)
    expect(await t.db.query(`SELECT n FROM ${name}`)).toHaveLength(1)
  })

  it('a subscription reports SubscriptionHandlerError to onError', async () => {
    const store = createEventStore(t.db)
    const from = (await store.headPosition()) + 1
    const events = await okThenBad(store, 'fail-subscription', 'fsub')
    const boom = new Boom('handler refused it')
    const reported: unknown[] = []
    const subscription = store.subscribe(
      (event) => {
        if (event.data === 'bad') throw boom
      },
      {
        name: 'failing-subscriber',
        fromPosition: from,
        clock: new ManualClock(Date.now()),
        onError: (error) => reported.push(error),
      },
    )
    await expect.poll(() => reported.length, poll).toBeGreaterThan(0)
    await subscription.stop()
    const error = reported[0] as SubscriptionHandlerError
    expect(error).toBeInstanceOf(SubscriptionHandlerError)
    expect(error.code).toBe('SUBSCRIPTION_HANDLER_FAILED')
    expect(error.subscription).toBe('failing-subscriber')
    expect(error.position).toBe(events[1]!.position)
    expect(error.stream).toBe('fail-subscription')
    expect(error.type).toBe('fsub')
    expect(error.eventId).toBe(events[1]!.id)
    expect(error.cause).toBe(boom)
    expect(error.message).toContain(boom.message)
    // Handled up to the event before it.
    expect(subscription.position).toBe(events[0]!.position)
  })
})
