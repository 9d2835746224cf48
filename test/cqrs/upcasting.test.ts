// Upcasting failures on real SQLite and PostgreSQL: an event whose stored schema version the
// upcasters cannot reach the current version from, and an upcaster that throws, fail the read
// with an UpcastError naming the event (never handing it on in its old shape), and
// subscriptions and projectors report it through onError and retry without moving past it.
import { beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  UpcastError,
  type Upcaster,
} from '../../src/cqrs/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, unhandledRejectionsDuring, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }

/** What `promise` rejected with (failing the test when it resolved). */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.fail('expected a rejection'),
    (error: unknown) => error,
  )
}

/** Checks that `error` is the UpcastError for one event, and returns it. */
function expectUpcastError(
  error: unknown,
  expected: { type: string; schemaVersion: number; stream: string; position: number },
): UpcastError {
  expect(error).toBeInstanceOf(UpcastError)
  const e = error as UpcastError
  expect(BreakwaterError.is(e)).toBe(true)
  expect(e.code).toBe('UPCAST_FAILED')
  expect({
    type: e.type,
    schemaVersion: e.schemaVersion,
    stream: e.stream,
    position: e.position,
  }).toEqual(expected)
  expect(e.message).toContain(`"${expected.type}"`)
  expect(e.message).toContain(`v${expected.schemaVersion}`)
  expect(e.message).toContain(`"${expected.stream}"`)
  expect(e.message).toContain(`position ${expected.position}`)
  return e
}

/**
 * A 'priced' v1 upcaster that throws 'bad price' on data with the price 'bad' until repair() is
 * called, and otherwise returns what `then` makes of the data.
 */
function upcasterFailingOnBadPrice(then: (data: unknown) => unknown): {
  upcaster: Upcaster
  repair(): void
} {
  let broken = true
  return {
    upcaster: {
      type: 'priced',
      fromVersion: 1,
      upcast: (d) => {
        if (broken && (d as { price: string }).price === 'bad') throw new Error('bad price')
        return then(d)
      },
    },
    repair: () => {
      broken = false
    },
  }
}

describe.each(dbTargets)('upcasting failures on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_upcasting')
  let plain: EventStore
  let n = 0
  const fresh = () => `upcast-${++n}-${Date.now()}`

  beforeAll(async () => {
    plain = createEventStore(t.db)
  })

  // Only v2 -> v3 is registered: v1 events have no path to v3.
  const fromV2: Upcaster[] = [
    { type: 'priced', fromVersion: 2, upcast: (d) => ({ ...(d as object), currency: 'EUR' }) },
  ]

  it('fails a read of an event whose stored version has no path to the current one', async () => {
    const store = createEventStore(t.db, { upcasters: fromV2 })
    const s = fresh()
    const { events } = await plain.append(s, [
      { type: 'priced', data: { cents: 100 }, schemaVersion: 2 },
      { type: 'priced', data: { price: '1' }, schemaVersion: 1 },
    ])
    const old = events[1]!
    const expected = { type: 'priced', schemaVersion: 1, stream: s, position: old.position }
    const error = expectUpcastError(await rejectionOf(store.readStream(s)), expected)
    expect(error.message).toContain('v3')
    expectUpcastError(
      await rejectionOf(store.readAll({ fromPosition: events[0]!.position })),
      expected,
    )
    expectUpcastError(await rejectionOf(store.readStream(s, { direction: 'backwards' })), expected)
    // The v2 event before it still reads, upcast.
    const first = await store.readAll({ fromPosition: events[0]!.position, limit: 1 })
    expect(first.map((e) => [e.schemaVersion, e.data])).toEqual([
      [3, { cents: 100, currency: 'EUR' }],
    ])
  })

  it('refuses, before writing, an append at a version with no path to the current one', async () => {
    const store = createEventStore(t.db, { upcasters: fromV2 })
    const s = fresh()
    const error = await rejectionOf(
      store.append(s, [{ type: 'priced', data: { price: '1' }, schemaVersion: 1 }]),
    )
    expect(error).toBeInstanceOf(UpcastError)
    expect((error as UpcastError).stream).toBe(s)
    expect((error as UpcastError).schemaVersion).toBe(1)
    expect((await plain.readStream(s)).version).toBe(0)
  })

  it('names the event an upcaster threw on and keeps the cause', async () => {
    const cause = new Error('price is not a number')
    const store = createEventStore(t.db, {
      upcasters: [
        {
          type: 'priced',
          fromVersion: 1,
          upcast: (d) => {
            const cents = Number((d as { price: string }).price) * 100
            if (!Number.isFinite(cents)) throw cause
            return { cents }
          },
        },
      ],
    })
    const s = fresh()
    const { events } = await plain.append(s, [
      { type: 'priced', data: { price: '1' }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'ten' }, schemaVersion: 1 },
    ])
    const expected = { type: 'priced', schemaVersion: 1, stream: s, position: events[1]!.position }
    const error = expectUpcastError(await rejectionOf(store.readStream(s)), expected)
    expect(error.cause).toBe(cause)
    expect(error.message).toContain('price is not a number')
    expectUpcastError(
      await rejectionOf(store.readAll({ fromPosition: events[0]!.position })),
      expected,
    )
  })

  it('fails a read whose upcaster returns undefined instead of handing on undefined data', async () => {
    // A step that mutates its input and forgets to return it: every reader would get
    // `data: undefined`, which no append can write.
    const store = createEventStore(t.db, {
      upcasters: [
        {
          type: 'priced',
          fromVersion: 1,
          upcast: (d) => {
            ;(d as { currency?: string }).currency = 'EUR'
          },
        },
      ],
    })
    const s = fresh()
    const { events } = await plain.append(s, [
      { type: 'priced', data: { cents: 1 }, schemaVersion: 1 },
    ])
    const error = expectUpcastError(await rejectionOf(store.readStream(s)), {
      type: 'priced',
      schemaVersion: 1,
      stream: s,
      position: events[0]!.position,
    })
    expect(error.message).toContain('returned undefined')
  })

  it('fails a read whose upcaster is async instead of handing on a promise as the data', async () => {
    // Upcasting is synchronous (every read runs it): an async step would hand every reader a
    // Promise as `data`, and one that rejects would be an unhandled rejection (Node exits).
    const rejections = await unhandledRejectionsDuring(async () => {
      const store = createEventStore(t.db, {
        upcasters: [
          {
            type: 'priced',
            fromVersion: 1,
            upcast: async (d) => {
              if ((d as { cents: number }).cents < 0) throw new Error('negative')
              return { ...(d as object), currency: 'EUR' }
            },
          },
        ],
      })
      const s = fresh()
      const { events } = await plain.append(s, [
        { type: 'priced', data: { cents: 1 }, schemaVersion: 1 },
        { type: 'priced', data: { cents: -1 }, schemaVersion: 1 },
      ])
      const error = expectUpcastError(await rejectionOf(store.readStream(s)), {
        type: 'priced',
        schemaVersion: 1,
        stream: s,
        position: events[0]!.position,
      })
      expect(error.message).toContain('returned a promise')
      // An append at the old version upcasts before writing: refused, nothing written.
      const other = fresh()
      expect(
        await rejectionOf(
          store.append(other, [{ type: 'priced', data: { cents: -1 }, schemaVersion: 1 }]),
        ),
      ).toBeInstanceOf(UpcastError)
      expect((await plain.readStream(other)).version).toBe(0)
    })
    expect(rejections).toEqual([])
  })
  it('keeps a subscription on the failing event: reported to onError, retried, checkpoint not past it', async () => {
    const clock = new ManualClock(Date.now())
    const priced = upcasterFailingOnBadPrice(() => ({ cents: 1 }))
    const store = createEventStore(t.db, { upcasters: [priced.upcaster] })
    const s = fresh()
    const { events } = await plain.append(s, [
      { type: 'priced', data: { price: 'ok' }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'bad' }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'ok' }, schemaVersion: 1 },
    ])
    const positions = events.map((e) => e.position)
    const seen: number[] = []
    const errors: unknown[] = []
    const name = `sub-${s}`
    const subscription = store.subscribe(
      (event) => {
        seen.push(event.position)
      },
      {
        name,
        fromPosition: positions[0]!,
        // One batch holds all three: the event before the failing one is still handled.
        batchSize: 100,
        retryBaseDelayMs: 1000,
        pollIntervalMs: 60_000,
        clock,
        onError: (e) => errors.push(e),
      },
    )
    try {
      await expect.poll(() => errors.length, poll).toBeGreaterThanOrEqual(1)
      expectUpcastError(errors[0], {
        type: 'priced',
        schemaVersion: 1,
        stream: s,
        position: positions[1]!,
      })
      expect(seen).toEqual([positions[0]])
      expect(subscription.position).toBe(positions[0])
      const rows = await t.db.query<{ position: number | string }>(
        'SELECT position FROM breakwater_checkpoints WHERE name = $1',
        [name],
      )
      expect(Number(rows[0]!.position)).toBe(positions[0])
      priced.repair()
      await expect
        .poll(async () => {
          await clock.advance(1000)
          return seen
        }, poll)
        .toEqual(positions)
    } finally {
      await subscription.stop()
    }
  })

  it('keeps a projector on the failing event: reported to onError, retried, checkpoint not past it', async () => {
    const clock = new ManualClock(Date.now())
    const priced = upcasterFailingOnBadPrice((d) => d)
    const store = createEventStore(t.db, { upcasters: [priced.upcaster] })
    // Starts after everything the earlier tests left in the log.
    const s = fresh()
    const seen: string[] = []
    const projection = defineProjection({
      name: `upcast_projection_${target.dialect}`,
      tables: {},
      apply(event) {
        if (event.stream === s) seen.push((event.data as { price: string }).price)
      },
    })
    const projector = createProjector(store, projection, {
      // One batch holds all three: the event before the failing one still commits.
      batchSize: 100,
      retryBaseDelayMs: 1000,
      pollIntervalMs: 60_000,
      clock,
      onError: (e) => errors.push(e),
    })
    const errors: unknown[] = []
    // Skip what earlier tests left (some of it does not upcast): register, then move the
    // checkpoint to the head with a store that has no upcasters.
    await createProjector(plain, projection).catchUp()
    const before = await projector.position()
    const { events } = await plain.append(s, [
      { type: 'priced', data: { price: 'ok' }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'bad' }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'ok' }, schemaVersion: 1 },
    ])
    const positions = events.map((e) => e.position)
    expect(before).toBeLessThan(positions[0]!)
    expectUpcastError(await rejectionOf(projector.catchUp()), {
      type: 'priced',
      schemaVersion: 1,
      stream: s,
      position: positions[1]!,
    })
    expect(await projector.position()).toBe(positions[0])
    projector.start()
    try {
      await expect.poll(() => errors.length, poll).toBeGreaterThanOrEqual(1)
      expect(errors[0]).toBeInstanceOf(UpcastError)
      expect(await projector.position()).toBe(positions[0])
      priced.repair()
      await expect
        .poll(async () => {
          await clock.advance(1000)
          return projector.position()
        }, poll)
        .toBe(positions[2])
      expect(seen).toEqual(['ok', 'bad', 'ok'])
    } finally {
      await projector.stop()
    }
  })

  it('a projector upcasts only the event types its projection reads', async () => {
    const priced = upcasterFailingOnBadPrice((d) => d)
    let upcastNotes = 0
    const store = createEventStore(t.db, {
      upcasters: [
        priced.upcaster,
        {
          type: 'noted',
          fromVersion: 1,
          upcast: (d) => {
            upcastNotes++
            return d
          },
        },
      ],
    })
    const s = fresh()
    const seen: unknown[] = []
    const projection = defineProjection({
      name: `upcast_only_read_${target.dialect}`,
      tables: {},
      eventTypes: ['noted'],
      apply(event) {
        if (event.stream === s) seen.push(event.data)
      },
    })
    // Skip what earlier tests left, with a store that has no upcasters.
    await createProjector(plain, projection).catchUp()
    const { lastPosition } = await plain.append(s, [
      { type: 'noted', data: { n: 1 }, schemaVersion: 1 },
      { type: 'priced', data: { price: 'bad' }, schemaVersion: 1 },
      { type: 'noted', data: { n: 2 }, schemaVersion: 1 },
    ])
    // Live and rebuilt: the 'priced' event it does not read neither stops it nor is upcast.
    const projector = createProjector(store, projection, { batchSize: 2 })
    expect(await projector.catchUp()).toBe(lastPosition)
    expect(seen).toEqual([{ n: 1 }, { n: 2 }])
    expect(upcastNotes).toBe(2)
    const rebuilt = await projector.rebuild()
    expect(rebuilt.position).toBe(lastPosition)
    expect(seen.slice(2)).toEqual([{ n: 1 }, { n: 2 }])
    // A projection without eventTypes reads every event: the failing one stops it.
    const catchAll = defineProjection({
      name: `${projection.name}_all`,
      tables: {},
      apply: projection.apply,
    })
    await createProjector(plain, catchAll).catchUp()
    await plain.append(s, [{ type: 'priced', data: { price: 'bad' }, schemaVersion: 1 }])
    expect(await rejectionOf(createProjector(store, catchAll).catchUp())).toBeInstanceOf(
      UpcastError,
    )
  })
})
