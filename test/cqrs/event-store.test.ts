// The event store on real SQLite and real PostgreSQL: appends and reads, every expectation,
// soft delete, metadata, upcasters, and optimistic concurrency under 100 concurrent writers.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { fileURLToPath } from 'node:url'
import { beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  cqrsChannelNames,
  createEventStore,
  defineProjection,
  type EventStore,
  type ExpectedVersion,
  WrongExpectedVersionError,
} from '../../src/cqrs/index.js'
import { dbTargets, postgresDb, useTestDb } from './databases.js'

const event = (n: number) => ({ type: 'counted', data: { n } })

const raceWriter = fileURLToPath(new URL('../fixtures/cqrs/race-writer.ts', import.meta.url))

function runWriter(
  url: string,
  stream: string,
  count: number,
  label: string,
): Promise<{ label: string; conflicts: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', raceWriter, url, stream, String(count), label],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let out = ''
    let err = ''
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString()
    })
    child.on('error', reject)
    child.on('exit', (code) => {
      if (code === 0) resolve(JSON.parse(out.trim()) as { label: string; conflicts: number })
      else reject(new Error(`writer ${label} exited with ${code}: ${err}`))
    })
  })
}

async function conflict(promise: Promise<unknown>): Promise<WrongExpectedVersionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(WrongExpectedVersionError)
  return error as WrongExpectedVersionError
}

describe.each(dbTargets)('event store on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_store')
  let store: EventStore
  let n = 0
  const fresh = () => `stream-${++n}`

  beforeAll(async () => {
    store = createEventStore(t.db)
  })

  it('appends atomically and reads streams forwards, backwards, from a version, limited', async () => {
    const s = fresh()
    const first = await store.append(s, [event(1), event(2), event(3)], {
      expectedVersion: 'noStream',
    })
    expect(first.version).toBe(3)
    expect(first.lastPosition - first.firstPosition).toBe(2)
    expect(first.events.map((e) => [e.version, e.position])).toEqual([
      [1, first.firstPosition],
      [2, first.firstPosition + 1],
      [3, first.firstPosition + 2],
    ])
    await store.append(s, [event(4)], { expectedVersion: 3 })

    const all = await store.readStream(s)
    expect(all.version).toBe(4)
    expect(all.exists).toBe(true)
    expect(all.events.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }])
    expect(all.events[0]).toMatchObject({
      type: 'counted',
      stream: s,
      version: 1,
      schemaVersion: 1,
      metadata: {},
    })
    expect(typeof all.events[0]!.id).toBe('string')

    const from = await store.readStream(s, { from: 3 })
    expect(from.events.map((e) => e.version)).toEqual([3, 4])
    const back = await store.readStream(s, { direction: 'backwards', limit: 3 })
    expect(back.events.map((e) => e.version)).toEqual([4, 3, 2])
    const backFrom = await store.readStream(s, { direction: 'backwards', from: 2 })
    expect(backFrom.events.map((e) => e.version)).toEqual([2, 1])
    const limited = await store.readStream(s, { from: 2, limit: 2 })
    expect(limited.events.map((e) => e.version)).toEqual([2, 3])
    expect(limited.version).toBe(4)

    const missing = await store.readStream(fresh())
    expect(missing).toEqual({ events: [], version: 0, exists: false, deleted: false })
  })

  it('reports the stream state with limit 0 (no events), forwards and backwards', async () => {
    const s = fresh()
    await store.append(s, [event(1), event(2)])
    for (const direction of ['forwards', 'backwards'] as const) {
      expect(await store.readStream(s, { limit: 0, direction })).toEqual({
        events: [],
        version: 2,
        exists: true,
        deleted: false,
      })
    }
    await store.deleteStream(s)
    expect(await store.readStream(s, { limit: 0 })).toEqual({
      events: [],
      version: 2,
      exists: false,
      deleted: true,
    })
    expect(await store.readStream(fresh(), { limit: 0 })).toEqual({
      events: [],
      version: 0,
      exists: false,
      deleted: false,
    })
  })

  // readAll refused limit 0 while readStream took it (no events, the stream's state): both
  // take 0 now, and readAll's gives no events.
  it('reads no events from the log with limit 0', async () => {
    await store.append(fresh(), [event(1)])
    expect(await store.readAll({ limit: 0 })).toEqual([])
    expect(await store.readAll({ fromPosition: 1, limit: 0 })).toEqual([])
  })

  it('keeps ids, metadata and explicit schema versions', async () => {
    const s = fresh()
    await store.append(s, [
      { type: 'a', data: [1, 'x'], id: 'evt-1', metadata: { correlationId: 'c1' } },
      { type: 'b', data: null, schemaVersion: 3 },
    ])
    const { events } = await store.readStream(s)
    expect(events[0]).toMatchObject({
      id: 'evt-1',
      data: [1, 'x'],
      metadata: { correlationId: 'c1' },
    })
    expect(events[1]).toMatchObject({ type: 'b', data: null, schemaVersion: 3 })
  })

  it('checks every expectation and reports expected and actual', async () => {
    const s = fresh()
    const e1 = await conflict(store.append(s, [event(1)], { expectedVersion: 'streamExists' }))
    expect(e1).toMatchObject({
      code: 'WRONG_EXPECTED_VERSION',
      stream: s,
      actual: 0,
      deleted: false,
    })
    expect(e1.expected).toBe('streamExists')
    await conflict(store.append(s, [event(1)], { expectedVersion: 1 }))
    await store.append(s, [event(1)], { expectedVersion: 0 })
    const e2 = await conflict(store.append(s, [event(2)], { expectedVersion: 'noStream' }))
    expect(e2.actual).toBe(1)
    const e3 = await conflict(store.append(s, [event(2)], { expectedVersion: 0 }))
    expect([e3.expected, e3.actual]).toEqual([0, 1])
    await store.append(s, [event(2)], { expectedVersion: 'streamExists' })
    await store.append(s, [event(3)], { expectedVersion: 'any' })
    await store.append(s, [event(4)])
    const e4 = await conflict(store.append(s, [event(5)], { expectedVersion: 3 }))
    expect(e4.message).toContain('version 4')
    await store.append(s, [event(5)], { expectedVersion: 4 })
    expect((await store.readStream(s)).events.map((e) => e.version)).toEqual([1, 2, 3, 4, 5])
    // A failed append wrote nothing.
    expect((await store.streamInfo(s)).version).toBe(5)
  })

  it('checks every expectation for several-event appends too, and keeps their text exact', async () => {
    const s = fresh()
    const two = (n: number) => [event(n), event(n + 1)]
    await conflict(store.append(s, two(1), { expectedVersion: 'streamExists' }))
    await conflict(store.append(s, two(1), { expectedVersion: 2 }))
    expect((await store.append(s, two(1), { expectedVersion: 0 })).version).toBe(2)
    expect((await conflict(store.append(s, two(3), { expectedVersion: 'noStream' }))).actual).toBe(
      2,
    )
    expect((await conflict(store.append(s, two(3), { expectedVersion: 0 }))).actual).toBe(2)
    expect((await conflict(store.append(s, two(3), { expectedVersion: 1 }))).actual).toBe(2)
    expect((await store.append(s, two(3), { expectedVersion: 2 })).version).toBe(4)
    expect((await store.append(s, two(5), { expectedVersion: 'streamExists' })).version).toBe(6)
    expect((await store.append(s, two(7), { expectedVersion: 'any' })).version).toBe(8)
    await store.deleteStream(s)
    const recreated = await store.append(s, two(9), { expectedVersion: 'noStream' })
    expect(recreated.events.map((e) => e.version)).toEqual([9, 10])
    expect(recreated.lastPosition).toBeGreaterThan(recreated.firstPosition)
    // Text that an array literal must quote or escape, in every column that travels as one.
    const odd = ['q"uote', 'back\\slash', 'a,b', '{brace}', 'NULL', '', ' spaced ', 'é€😀\n']
    const t = fresh()
    const appended = await store.append(
      t,
      odd.map((text, i) => ({
        type: `t${text}`,
        id: `id${text}${i}`,
        data: { text },
        ...(i % 2 === 0 ? { metadata: { text } } : {}),
      })),
    )
    const { events } = await store.readStream(t)
    expect(events.map((e) => [e.type, e.id, e.data, e.metadata, e.position])).toEqual(
      odd.map((text, i) => [
        `t${text}`,
        `id${text}${i}`,
        { text },
        i % 2 === 0 ? { text } : {},
        appended.events[i]!.position,
      ]),
    )
  })

  it('soft-deletes: reads hide the stream, readAll keeps the log, an append recreates it', async () => {
    const s = fresh()
    const first = await store.append(s, [event(1), event(2)])
    await conflict(store.deleteStream(s, { expectedVersion: 1 }))
    await store.deleteStream(s, { expectedVersion: 2 })
    await store.deleteStream(s) // deleting again does nothing

    expect(await store.readStream(s)).toEqual({
      events: [],
      version: 2,
      exists: false,
      deleted: true,
    })
    expect(await store.streamInfo(s)).toMatchObject({ version: 2, exists: false, deleted: true })
    const log = await store.readAll({ fromPosition: first.firstPosition, limit: 2 })
    expect(log.map((e) => e.stream)).toEqual([s, s])

    // A deleted stream counts as no stream, and keeps its last version.
    const exists = await conflict(store.append(s, [event(3)], { expectedVersion: 'streamExists' }))
    expect(exists).toMatchObject({ actual: 2, deleted: true })
    await conflict(store.append(s, [event(3)], { expectedVersion: 0 }))
    const again = await store.append(s, [event(3)], { expectedVersion: 'noStream' })
    expect(again.version).toBe(3)
    const read = await store.readStream(s)
    expect(read).toMatchObject({ version: 3, exists: true, deleted: false })
    expect(read.events.map((e) => [e.version, e.data])).toEqual([[3, { n: 3 }]])

    // Appending at the deleted stream's version also recreates it.
    const other = fresh()
    await store.append(other, [event(1)])
    await store.deleteStream(other)
    await store.append(other, [event(2)], { expectedVersion: 1 })
    expect((await store.readStream(other)).events.map((e) => e.version)).toEqual([2])
    expect((await store.readStream(other, { direction: 'backwards' })).events).toHaveLength(1)
  })

  it('stores stream metadata, with its own expectation', async () => {
    const s = fresh()
    await store.setStreamMetadata(s, { owner: 'team-a', maxAgeMs: 1000 })
    expect(await store.streamInfo(s)).toEqual({
      version: 0,
      exists: false,
      deleted: false,
      metadata: { owner: 'team-a', maxAgeMs: 1000 },
    })
    // A metadata-only stream has no events: noStream and 0 still hold.
    await store.append(s, [event(1)], { expectedVersion: 'noStream' })
    await conflict(store.setStreamMetadata(s, { owner: 'b' }, { expectedVersion: 0 }))
    await store.setStreamMetadata(s, { owner: 'b' }, { expectedVersion: 1 })
    expect(await store.streamInfo(s)).toMatchObject({
      version: 1,
      exists: true,
      metadata: { owner: 'b' },
    })
  })

  it('reads the log by global position', async () => {
    const head = await store.headPosition()
    const a = fresh()
    const b = fresh()
    await store.append(a, [event(1)])
    await store.append(b, [event(2), event(3)])
    await store.append(a, [event(4)])
    const log = await store.readAll({ fromPosition: head + 1 })
    expect(log.map((e) => [e.stream, e.data])).toEqual([
      [a, { n: 1 }],
      [b, { n: 2 }],
      [b, { n: 3 }],
      [a, { n: 4 }],
    ])
    const positions = log.map((e) => e.position)
    expect([...positions].sort((x, y) => x - y)).toEqual(positions)
    const page = await store.readAll({ fromPosition: positions[1]!, limit: 2 })
    expect(page.map((e) => e.position)).toEqual([positions[1], positions[2]])
    expect(await store.headPosition()).toBe(positions[3])
  })

  it('upcasts old schema versions on every read and writes new events at the current one', async () => {
    const upcasting = createEventStore(t.db, {
      upcasters: [
        {
          type: 'priced',
          fromVersion: 1,
          upcast: (d) => ({ cents: Number((d as { price: string }).price) * 100 }),
        },
        {
          type: 'priced',
          fromVersion: 2,
          upcast: (d, m) => ({
            ...(d as object),
            currency: (m.currency as string | undefined) ?? 'EUR',
          }),
        },
      ],
    })
    const s = fresh()
    await store.append(s, [
      { type: 'priced', data: { price: '2' }, schemaVersion: 1 },
      { type: 'priced', data: { cents: 300 }, schemaVersion: 2, metadata: { currency: 'USD' } },
      { type: 'other', data: { price: '2' } },
    ])
    await upcasting.append(s, [{ type: 'priced', data: { cents: 400, currency: 'GBP' } }])
    const { events } = await upcasting.readStream(s)
    expect(events.map((e) => [e.type, e.schemaVersion, e.data])).toEqual([
      ['priced', 3, { cents: 200, currency: 'EUR' }],
      ['priced', 3, { cents: 300, currency: 'USD' }],
      ['other', 1, { price: '2' }],
      ['priced', 3, { cents: 400, currency: 'GBP' }],
    ])
    const log = await upcasting.readAll({ fromPosition: events[0]!.position, limit: 1 })
    expect(log[0]!.data).toEqual({ cents: 200, currency: 'EUR' })
    // The plain store reads what is stored.
    expect((await store.readStream(s)).events.map((e) => e.schemaVersion)).toEqual([1, 2, 1, 3])
  })

  it('hands inline projections and the caller upcast data when an event names an old schema version', async () => {
    const seen: unknown[] = []
    const priced = defineProjection({
      name: 'priced-cents',
      tables: {
        priced_cents: (table) => [
          `CREATE TABLE ${table} (id TEXT PRIMARY KEY, cents INTEGER NOT NULL)`,
        ],
      },
      async apply(e, { tx, table }) {
        seen.push([e.schemaVersion, e.data])
        const { cents } = e.data as { cents: number }
        await tx.execute(`INSERT INTO ${table('priced_cents')} VALUES ($1, $2)`, [e.id, cents])
      },
    })
    const upcasting = createEventStore(t.db, {
      upcasters: [
        {
          type: 'priced',
          fromVersion: 1,
          upcast: (d) => ({ cents: Number((d as { price: string }).price) * 100 }),
        },
      ],
      inlineProjections: [priced],
    })
    const s = fresh()
    const appended = await upcasting.append(s, [
      { type: 'priced', data: { price: '2' }, schemaVersion: 1, id: `${s}-old` },
      { type: 'priced', data: { cents: 300 }, id: `${s}-new` },
    ])
    const read = await upcasting.readStream(s)
    // What the append hands back (and to inline projections) is what every read returns.
    expect(appended.events.map((e) => [e.schemaVersion, e.data])).toEqual(
      read.events.map((e) => [e.schemaVersion, e.data]),
    )
    expect(seen).toEqual([
      [2, { cents: 200 }],
      [2, { cents: 300 }],
    ])
    const rows = await t.db.query<{ id: string; cents: number | string }>(
      'SELECT id, cents FROM priced_cents ORDER BY id',
    )
    expect(rows.map((r) => [r.id, Number(r.cents)])).toEqual([
      [`${s}-new`, 300],
      [`${s}-old`, 200],
    ])
  })

  it('refuses, before writing, an old-version event its upcasters cannot read', async () => {
    // Every read of such an event would fail: followers and projections would stop there.
    const upcasting = createEventStore(t.db, {
      upcasters: [
        {
          type: 'priced',
          fromVersion: 1,
          upcast: (d) => {
            const cents = Number((d as { price: string }).price) * 100
            if (!Number.isFinite(cents)) throw new Error('price is not a number')
            return { cents }
          },
        },
      ],
    })
    const s = fresh()
    await expect(
      upcasting.append(s, [{ type: 'priced', data: { price: 'ten' }, schemaVersion: 1 }]),
    ).rejects.toThrow('price is not a number')
    expect((await store.readStream(s)).version).toBe(0)
    await expect(
      t.db.transaction((tx) =>
        upcasting.append(s, [{ type: 'priced', data: { price: 'ten' }, schemaVersion: 1 }], {
          tx,
        }),
      ),
    ).rejects.toThrow('price is not a number')
    expect((await store.readStream(s)).version).toBe(0)
  })

  it('rejects bad arguments with errors naming them', () => {
    expect(() =>
      createEventStore(t.db, {
        upcasters: [
          { type: 'x', fromVersion: 2, upcast: (d) => d },
          { type: 'x', fromVersion: 4, upcast: (d) => d },
        ],
      }),
    ).toThrow(/gap-free chain for "x" \(no upcaster reads v3\)/)
    // schema_version is a 32-bit column: a current version above it would fail every append
    // of the type with a bare driver error.
    expect(() =>
      createEventStore(t.db, {
        upcasters: [{ type: 'x', fromVersion: 2_147_483_647, upcast: (d) => d }],
      }),
    ).toThrow(/upcasters\[0\]\.fromVersion/)
    expect(() =>
      createEventStore(t.db, {
        upcasters: [
          { type: 'x', fromVersion: 1, upcast: (d) => d },
          { type: 'x', fromVersion: 1, upcast: (d) => d },
        ],
      }),
    ).toThrow(InvalidOptionError)
    expect(() => createEventStore({} as never)).toThrow(/db: expected a breakwater SqlDriver/)
    return Promise.all([
      expect(store.append('', [event(1)])).rejects.toThrow(/stream: expected a non-empty string/),
      expect(store.append('s', [])).rejects.toThrow(/events: expected a non-empty array/),
      expect(store.append('s', [{ type: '', data: 1 }])).rejects.toThrow(/events\[0\]\.type/),
      expect(store.append('s', [{ type: 'x', data: undefined }])).rejects.toThrow(
        /events\[0\]\.data/,
      ),
      expect(
        store.append('s', [event(1)], { expectedVersion: -1 as ExpectedVersion }),
      ).rejects.toThrow(
        /expectedVersion: expected "any", "noStream", "streamExists" or an integer >= 0/,
      ),
      // Beyond 2^53 a version is no longer exact (and 1e21 is not even sent as an integer).
      ...[2 ** 53, 1e21].flatMap((expectedVersion) => [
        expect(store.append('s', [event(1)], { expectedVersion })).rejects.toThrow(
          InvalidOptionError,
        ),
        // The message names the limit: "an integer >= 0" would refuse what reads as one.
        expect(store.append('s', [event(1), event(2)], { expectedVersion })).rejects.toThrow(
          /expectedVersion: expected .* or an integer in \[0, 2\^53 - 1\]/,
        ),
        expect(store.deleteStream('s', { expectedVersion })).rejects.toThrow(InvalidOptionError),
        expect(store.setStreamMetadata('s', {}, { expectedVersion })).rejects.toThrow(
          InvalidOptionError,
        ),
      ]),
      // Metadata is an object (as for setStreamMetadata), and what JSON cannot hold is refused
      // as a bad argument rather than a bare TypeError.
      expect(store.append('s', [{ ...event(1), metadata: [1, 2] as never }])).rejects.toThrow(
        /events\[0\]\.metadata: expected an object/,
      ),
      expect(store.append('s', [{ type: 'x', data: { n: 1n } }])).rejects.toThrow(
        /events\[0\]\.data: expected a JSON-serializable value/,
      ),
      expect(store.append('s', [{ ...event(1), metadata: { n: 1n } }])).rejects.toThrow(
        /events\[0\]\.metadata: expected a JSON-serializable object/,
      ),
      expect(store.setStreamMetadata('s', { n: 1n })).rejects.toThrow(
        /metadata: expected a JSON-serializable object/,
      ),
      // PostgreSQL text cannot hold NUL: refused up front, on both databases alike.
      expect(store.append('s\u0000x', [event(1)])).rejects.toThrow(
        /stream: expected a non-empty string without NUL/,
      ),
      expect(store.readStream('s\u0000x')).rejects.toThrow(InvalidOptionError),
      // A lone surrogate reaches PostgreSQL as U+FFFD: 's\ud800' and 's\udc00' would collide.
      expect(store.append('s\ud800', [event(1)])).rejects.toThrow(/or lone surrogates/),
      expect(store.readStream('s\udc00')).rejects.toThrow(InvalidOptionError),
      expect(store.append('s', [{ type: 'a\udbff', data: 1 }])).rejects.toThrow(InvalidOptionError),
      expect(store.append('s', [{ type: 'a\u0000', data: 1 }])).rejects.toThrow(
        /events\[0\]\.type: expected a non-empty string without NUL/,
      ),
      expect(store.append('s', [{ ...event(1), id: 'i\u0000' }])).rejects.toThrow(
        /events\[0\]\.id: expected a non-empty string without NUL/,
      ),
      expect(store.readAll({ limit: -1 })).rejects.toThrow(/limit: expected an integer >= 0/),
      expect(store.readAll({ fromPosition: 2 ** 60 })).rejects.toThrow(
        /fromPosition: expected an integer in \[0, 2\^53 - 1\]/,
      ),
      expect(store.readStream('s', { direction: 'sideways' as 'forwards' })).rejects.toThrow(
        /direction/,
      ),
    ])
  })

  it('refuses numbers JSON cannot hold (NaN, Infinity) instead of storing null', async () => {
    // JSON.stringify writes NaN and ±Infinity as null: the event would be stored as another
    // value than the one appended (and handed to inline projections and evolve as given).
    const head = await store.headPosition()
    const cases: [string, () => Promise<unknown>][] = [
      ['events[0].data', () => store.append('nan', [{ type: 'x', data: Number.NaN }])],
      ['events[0].data', () => store.append('nan', [{ type: 'x', data: { a: [1, Infinity] } }])],
      [
        'events[1].data',
        () => store.append('nan', [event(1), { type: 'x', data: { n: -Infinity } }]),
      ],
      ['events[0].metadata', () => store.append('nan', [{ ...event(1), metadata: { n: NaN } }])],
      ['metadata', () => store.setStreamMetadata('nan', { deep: { n: NaN } })],
    ]
    for (const [option, run] of cases) {
      const error = await run().then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).code).toBe('INVALID_OPTION')
      expect((error as Error).message).toContain(`${option}: expected`)
    }
    expect(await store.headPosition()).toBe(head)
    expect(await store.streamInfo('nan')).toMatchObject({ version: 0, metadata: {} })
    // null itself, a toJSON that hides a non-finite number, and -0 (JSON 0) stay accepted.
    const hidden = { n: Number.NaN, toJSON: () => ({ n: null }) }
    const { events } = await store.append('nan', [
      { type: 'x', data: { a: null, b: hidden, c: -0 } },
    ])
    expect(events).toHaveLength(1)
    expect((await store.readStream('nan')).events[0]!.data).toEqual({
      a: null,
      b: { n: null },
      c: 0,
    })
  })

  it('hands appended data that JSON changes on as every read returns it, not as given', async () => {
    class Item {
      constructor(readonly sku: string) {}
    }
    // A Date (or a toJSON, a class instance) in event data or metadata is stored as its JSON: the append's
    // result and inline projections got the caller's objects while every read got the JSON,
    // so an inline projection binding a Date failed on SQLite, and a command's returned state
    // differed from the one its stream loads to.
    const seen: unknown[] = []
    const capture = defineProjection({
      name: 'json-capture',
      tables: {
        json_capture: (t) => [`CREATE TABLE ${t} (id TEXT PRIMARY KEY, at TEXT NOT NULL)`],
      },
      async apply(e, { tx, table }) {
        seen.push({ data: e.data, metadata: e.metadata })
        const at = (e.data as { at: unknown }).at
        await tx.execute(`INSERT INTO ${table('json_capture')} VALUES ($1, $2)`, [e.id, at])
      },
    })
    const inline = createEventStore(t.db, { inlineProjections: [capture] })
    const id = fresh()
    const at = new Date(Date.UTC(2026, 0, 2))
    const appended = await inline.append(id, [
      {
        type: 'stamped',
        data: { at, item: new Item('a'), hidden: { n: 1, toJSON: () => 'shown' } },
        metadata: { occurredAt: at },
      },
    ])
    const read = (await inline.readStream(id)).events[0]!
    expect(read.data).toEqual({ at: at.toISOString(), item: { sku: 'a' }, hidden: 'shown' })
    expect(read.metadata).toEqual({ occurredAt: at.toISOString() })
    expect(appended.events[0]!.data).toEqual(read.data)
    expect(appended.events[0]!.metadata).toEqual(read.metadata)
    expect(seen).toEqual([{ data: read.data, metadata: read.metadata }])
    // Plain data is handed on as given (no copy).
    const data = { at: 'x', n: [1, { m: null }] }
    const plain = await inline.append(id, [{ type: 'stamped', data }])
    expect(plain.events[0]!.data).toBe(data)
  })

  it('refuses options that are not an object instead of ignoring the expectation in them', async () => {
    // deleteStream('s', 3) meant "at version 3": the number was ignored and the stream deleted
    // under 'any', whatever its version.
    const stream = `opts-${Date.now()}`
    await store.append(stream, [event(1), event(2)])
    for (const options of [3, 'noStream', null, [] as unknown]) {
      await expect(store.deleteStream(stream, options as never)).rejects.toThrow(
        /options: expected an object/,
      )
      await expect(store.setStreamMetadata(stream, { a: 1 }, options as never)).rejects.toThrow(
        /options: expected an object/,
      )
      await expect(store.streamInfo(stream, options as never)).rejects.toThrow(
        /options: expected an object/,
      )
      await expect(store.headPosition(options as never)).rejects.toThrow(
        /options: expected an object/,
      )
    }
    expect(await store.streamInfo(stream)).toMatchObject({
      version: 2,
      deleted: false,
      metadata: {},
    })
  })

  it('refuses the driver itself as the tx of a write: its statements would each commit alone', async () => {
    // On SQLite, two appends at 'noStream' through `tx: db` both passed the check (each
    // statement autocommitted), the second bumped the stream row and then failed with a bare
    // UNIQUE error, its stream-row write kept. On PostgreSQL, deleteStream's FOR UPDATE held
    // nothing by the time of its UPDATE.
    const stream = fresh()
    const writes = [
      () => store.append(stream, [event(1)], { expectedVersion: 'noStream', tx: t.db }),
      () => store.setStreamMetadata(stream, { a: 1 }, { tx: t.db }),
      () => store.deleteStream(stream, { tx: t.db }),
    ]
    for (const write of writes) {
      const error = await write().then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as Error).message).toMatch(/^tx: expected a transaction/)
    }
    expect(await store.streamInfo(stream)).toMatchObject({ version: 0, exists: false })
    // Reads through the driver are fine: each is one statement.
    expect((await store.readStream(stream, { tx: t.db })).version).toBe(0)
    expect(await store.streamInfo(stream, { tx: t.db })).toMatchObject({ version: 0 })
  })

  it('refuses a tx that is not a transaction, naming tx, in every method that takes one', async () => {
    // Each failed with a bare TypeError (tx.query / executor.query is not a function), naming
    // neither the option nor what it takes; reads did not look at tx at all.
    const stream = fresh()
    for (const tx of [{}, 'x', 5, { query: () => [] }, { execute: () => ({}) }]) {
      const calls: [string, () => Promise<unknown>][] = [
        ['append', () => store.append(stream, [event(1)], { tx: tx as never })],
        ['readStream', () => store.readStream(stream, { tx: tx as never })],
        ['readAll', () => store.readAll({ tx: tx as never })],
        ['headPosition', () => store.headPosition({ tx: tx as never })],
        ['streamInfo', () => store.streamInfo(stream, { tx: tx as never })],
        ['setStreamMetadata', () => store.setStreamMetadata(stream, { a: 1 }, { tx: tx as never })],
        ['deleteStream', () => store.deleteStream(stream, { tx: tx as never })],
      ]
      for (const [name, call] of calls) {
        const error = await call().then(
          () => undefined,
          (e: unknown) => e,
        )
        expect(error, `${name} ${String(tx)}`).toBeInstanceOf(InvalidOptionError)
        expect((error as InvalidOptionError).option, name).toBe('tx')
        expect((error as Error).message, name).toMatch(
          /^tx: expected a transaction \(the tx given to db\.transaction's callback\)/,
        )
      }
    }
    expect(await store.streamInfo(stream)).toMatchObject({ version: 0, exists: false })
  })

  it('refuses stream ids PostgreSQL cannot index, alike on both databases', async () => {
    // The stream id is a key of two indexes: past about 2,700 bytes PostgreSQL failed the
    // append with a bare "index row size" error, while SQLite stored it.
    const random = (bytes: number) => randomBytes(bytes / 2).toString('hex')
    // Bytes, not characters: 2,049 characters of 2,052 bytes; 1,500 characters of 3,000.
    const tooLong = [random(2050), `${random(2046)}ééé`, 'é'.repeat(1500), random(6000)]
    for (const stream of tooLong) {
      await expect(store.append(stream, [event(1)])).rejects.toThrow(
        /stream: expected a name of at most 2048 UTF-8 bytes/,
      )
      await expect(store.setStreamMetadata(stream, { a: 1 })).rejects.toThrow(
        /stream: expected a name of at most 2048 UTF-8 bytes/,
      )
      const error = await store.append(stream, [event(1)]).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      // Reading one is harmless: it is simply not there.
      expect((await store.readStream(stream)).exists).toBe(false)
    }
    const longest = random(2048)
    expect((await store.append(longest, [event(1)])).version).toBe(1)
    await store.setStreamMetadata(longest, { a: 1 })
    await store.deleteStream(longest)
    expect((await store.streamInfo(longest)).deleted).toBe(true)
    // Checkpoint names are keys too.
    expect(() => store.subscribe(() => {}, { name: random(2050) })).toThrow(
      /name: expected a name of at most 2048 UTF-8 bytes/,
    )
  })

  it('100 concurrent appends at one expected version: exactly one wins per version', async () => {
    const s = fresh()
    for (let version = 0; version < 3; version++) {
      const outcomes = await Promise.allSettled(
        Array.from({ length: 100 }, (_, i) =>
          store.append(s, [event(i)], { expectedVersion: version }),
        ),
      )
      const won = outcomes.filter((o) => o.status === 'fulfilled')
      const lost = outcomes.filter((o) => o.status === 'rejected')
      expect(won).toHaveLength(1)
      for (const o of lost) {
        expect((o as PromiseRejectedResult).reason).toBeInstanceOf(WrongExpectedVersionError)
        expect((o as PromiseRejectedResult).reason).toMatchObject({
          expected: version,
          actual: version + 1,
        })
      }
    }
    const read = await store.readStream(s)
    expect(read.events.map((e) => e.version)).toEqual([1, 2, 3])
  })

  it('100 writers racing with retries: every version is won exactly once', async () => {
    const s = fresh()
    const writer = async (id: number): Promise<number> => {
      for (let attempt = 0; ; attempt++) {
        const { version } = await store.streamInfo(s)
        try {
          await store.append(s, [{ type: 'written', data: { id } }], { expectedVersion: version })
          return attempt
        } catch (error) {
          if (!(error instanceof WrongExpectedVersionError)) throw error
        }
      }
    }
    const attempts = await Promise.all(Array.from({ length: 100 }, (_, i) => writer(i)))
    expect(attempts.some((a) => a > 0)).toBe(true)
    const { events } = await store.readStream(s)
    expect(events.map((e) => e.version)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
    expect(new Set(events.map((e) => (e.data as { id: number }).id)).size).toBe(100)
  })

  it('writers in three processes racing on one stream: every version is won exactly once', async () => {
    const s = fresh()
    const perProcess = 30
    const labels = ['p1', 'p2', 'p3']
    const results = await Promise.all(labels.map((label) => runWriter(t.url, s, perProcess, label)))
    const { events } = await store.readStream(s)
    expect(events.map((e) => e.version)).toEqual(
      Array.from({ length: perProcess * labels.length }, (_, i) => i + 1),
    )
    for (const label of labels) {
      const mine = events.filter((e) => (e.data as { by: string }).by === label)
      expect(mine.map((e) => (e.data as { i: number }).i)).toEqual(
        Array.from({ length: perProcess }, (_, i) => i),
      )
    }
    expect(results.map((r) => r.label).sort()).toEqual(labels)
  })

  it('appends inside the caller transaction commit or roll back with it', async () => {
    const s = fresh()
    await expect(
      t.db.transaction(async (tx) => {
        await store.append(s, [event(1)], { tx })
        throw new Error('business rule failed')
      }),
    ).rejects.toThrow('business rule failed')
    expect((await store.readStream(s)).exists).toBe(false)
    await t.db.transaction(async (tx) => {
      await store.append(s, [event(1)], { tx, expectedVersion: 'noStream' })
      await store.append(s, [event(2)], { tx, expectedVersion: 1 })
    })
    expect((await store.readStream(s)).version).toBe(2)
  })
})

describe.each(dbTargets)('stream writes report conflicts like appends on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_stream_conflicts')
  let store: EventStore
  beforeAll(async () => {
    store = createEventStore(t.db)
  })

  it('setStreamMetadata and deleteStream publish a conflict as append does', async () => {
    const published: unknown[] = []
    const onConflict = (message: unknown) => {
      published.push(message)
    }
    subscribe(cqrsChannelNames.conflict, onConflict)
    try {
      await store.append('conflicts-a', [event(1), event(2)])
      const append = await conflict(store.append('conflicts-a', [event(3)], { expectedVersion: 1 }))
      const metadata = await conflict(
        store.setStreamMetadata('conflicts-a', { a: 1 }, { expectedVersion: 'noStream' }),
      )
      const deletion = await conflict(store.deleteStream('conflicts-a', { expectedVersion: 3 }))
      for (const error of [append, metadata, deletion]) {
        expect(error.code).toBe('WRONG_EXPECTED_VERSION')
        expect(error).toMatchObject({ stream: 'conflicts-a', actual: 2, deleted: false })
      }
      expect(metadata.message).toMatch(
        /"conflicts-a" was expected at "noStream" but is at version 2/,
      )
      expect(published).toEqual([
        { stream: 'conflicts-a', expected: 1, actual: 2 },
        { stream: 'conflicts-a', expected: 'noStream', actual: 2 },
        { stream: 'conflicts-a', expected: 3, actual: 2 },
      ])
    } finally {
      unsubscribe(cqrsChannelNames.conflict, onConflict)
    }
  })
})

describe("PostgreSQL stream writes racing the stream's creation", () => {
  const t = useTestDb(postgresDb, 'cqrs_stream_race')

  /** Waits until a session of this database waits for a lock. */
  async function someoneWaitsForALock(): Promise<void> {
    await expect
      .poll(
        async () =>
          (
            await t.db.query<{ n: number }>(
              "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
          )[0]!.n,
        { timeout: 10_000, interval: 5 },
      )
      .toBeGreaterThan(0)
  }

  it('setStreamMetadata at noStream fails when an append creates the stream meanwhile', async () => {
    const store = createEventStore(t.db)
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let appended!: () => void
    const created = new Promise<void>((resolve) => {
      appended = resolve
    })
    const creator = t.db.transaction(async (tx) => {
      await store.append('race-meta', [event(1)], { expectedVersion: 'noStream', tx })
      appended()
      await gate
    })
    await created
    // It does not see the uncommitted stream row, so its check passes; its write then waits
    // for the creator's row, and must not overwrite the metadata of a stream at version 1.
    const write = store
      .setStreamMetadata('race-meta', { owner: 'late' }, { expectedVersion: 'noStream' })
      .then(
        () => undefined,
        (e: unknown) => e,
      )
    await someoneWaitsForALock()
    release()
    await creator
    const error = await write
    expect(error).toBeInstanceOf(WrongExpectedVersionError)
    expect(error).toMatchObject({ stream: 'race-meta', expected: 'noStream', actual: 1 })
    expect((await store.streamInfo('race-meta')).metadata).toEqual({})
  })

  it('of two setStreamMetadata at noStream on a new stream, exactly one wins', async () => {
    const store = createEventStore(t.db)
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let wrote!: () => void
    const written = new Promise<void>((resolve) => {
      wrote = resolve
    })
    const first = t.db.transaction(async (tx) => {
      await store.setStreamMetadata(
        'race-two',
        { owner: 'first' },
        { expectedVersion: 'noStream', tx },
      )
      wrote()
      await gate
    })
    await written
    const second = store
      .setStreamMetadata('race-two', { owner: 'second' }, { expectedVersion: 'noStream' })
      .then(
        () => undefined,
        (e: unknown) => e,
      )
    await someoneWaitsForALock()
    release()
    await first
    // The stream row exists now (version 0): noStream still holds, so the second write wins
    // over the first only in order, never silently in place of a conflict it should report.
    expect(await second).toBeUndefined()
    expect((await store.streamInfo('race-two')).metadata).toEqual({ owner: 'second' })
  })
})

describe('PostgreSQL appends inside longer transactions', () => {
  const t = useTestDb(postgresDb, 'cqrs_long_tx')

  it('an append after other writes, and several appends, in one transaction', async () => {
    const store = createEventStore(t.db)
    await t.db.execute('CREATE TABLE side_effects (id INTEGER)')
    const from = (await store.headPosition()) + 1
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let appended!: () => void
    const firstAppended = new Promise<void>((resolve) => {
      appended = resolve
    })
    const older = t.db.transaction(async (tx) => {
      await tx.execute('INSERT INTO side_effects (id) VALUES (1)')
      await store.append('long-a', [event(1)], { tx })
      appended()
      await gate
      await store.append('long-b', [event(2), event(3)], { tx })
      await tx.execute('INSERT INTO side_effects (id) VALUES (2)')
    })
    await firstAppended
    await store.append('newer', [event(4)])
    // The open transaction holds its positions: nothing after them is readable yet.
    expect(await store.readAll({ fromPosition: from })).toEqual([])
    release()
    await older
    const log = await store.readAll({ fromPosition: from })
    expect(log.map((e) => e.stream)).toEqual(['long-a', 'newer', 'long-b', 'long-b'])
    const positions = log.map((e) => e.position)
    expect([...positions].sort((a, b) => a - b)).toEqual(positions)
  })

  it('refuses to read the log under a fixed snapshot (REPEATABLE READ)', async () => {
    const store = createEventStore(t.db)
    await expect(
      t.db.transaction(async (tx) => {
        await tx.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ')
        await store.readAll({ tx })
      }),
    ).rejects.toThrow(/needs READ COMMITTED/)
  })
})
