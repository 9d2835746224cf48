// Model-based check of the event store on real SQLite and PostgreSQL: random sequences of
// appends (one or several events, every kind of expectation), soft deletes, metadata writes,
// batched appends racing each other, and reads (forwards, backwards, from a version, limited),
// against a plain in-memory model of streams. Every run works on streams of its own prefix.
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  type EventStore,
  type ExpectedVersion,
  WrongExpectedVersionError,
} from '../../src/cqrs/index.js'
import { dbTargets, useTestDb } from './databases.js'

interface ModelStream {
  version: number
  deleted: boolean
  truncateBefore: number
  metadata: Record<string, unknown>
  /** Every event ever appended, by version - 1. */
  events: number[]
}

interface Model {
  streams: Map<string, ModelStream>
  /** Data values in log order (readAll). */
  log: { stream: string; version: number; data: number }[]
}

interface Real {
  store: EventStore
  prefix: string
  next: number
}

const streamNames = ['a', 'b', 'c']

function holds(expected: ExpectedVersion, s: ModelStream | undefined): boolean {
  const version = s?.version ?? 0
  const deleted = s?.deleted ?? false
  if (expected === 'any') return true
  if (expected === 'noStream') return version === 0 || deleted
  if (expected === 'streamExists') return version > 0 && !deleted
  return version === expected
}

/** An expectation: a kind, or a version relative to the model's (so it sometimes matches). */
type ExpectationPick = { kind: 'any' | 'noStream' | 'streamExists' } | { offset: number }
const expectationArb: fc.Arbitrary<ExpectationPick> = fc.oneof(
  fc.constantFrom('any', 'noStream', 'streamExists').map((kind) => ({ kind })),
  fc.integer({ min: -1, max: 1 }).map((offset) => ({ offset })),
  fc.constant({ offset: 0 }),
)

function resolve(pick: ExpectationPick, s: ModelStream | undefined): ExpectedVersion {
  if ('kind' in pick) return pick.kind
  return Math.max(0, (s?.version ?? 0) + pick.offset)
}

async function outcome(run: () => Promise<unknown>): Promise<'ok' | WrongExpectedVersionError> {
  try {
    await run()
    return 'ok'
  } catch (error) {
    if (error instanceof WrongExpectedVersionError) return error
    throw error
  }
}

function checkConflict(
  result: 'ok' | WrongExpectedVersionError,
  ok: boolean,
  s: ModelStream | undefined,
): void {
  if (ok) {
    expect(result).toBe('ok')
    return
  }
  expect(result).toBeInstanceOf(WrongExpectedVersionError)
  const error = result as WrongExpectedVersionError
  expect(error.code).toBe('WRONG_EXPECTED_VERSION')
  expect(error.actual).toBe(s?.version ?? 0)
  expect(error.deleted).toBe(s?.deleted ?? false)
}

function applyAppend(model: Model, stream: string, data: number[]): void {
  let s = model.streams.get(stream)
  if (s === undefined) {
    s = { version: 0, deleted: false, truncateBefore: 1, metadata: {}, events: [] }
    model.streams.set(stream, s)
  }
  for (const d of data) {
    s.events.push(d)
    s.version++
    model.log.push({ stream, version: s.version, data: d })
  }
  s.deleted = false
}

class Append implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly stream: string,
    readonly count: number,
    readonly pick: ExpectationPick,
  ) {}
  check = () => true
  async run(model: Model, real: Real): Promise<void> {
    const s = model.streams.get(this.stream)
    const expected = resolve(this.pick, s)
    const data = Array.from({ length: this.count }, () => real.next++)
    const result = await outcome(() =>
      real.store.append(
        real.prefix + this.stream,
        data.map((n) => ({ type: 'n', data: n })),
        { expectedVersion: expected },
      ),
    )
    const ok = holds(expected, s)
    checkConflict(result, ok, s)
    if (ok) applyAppend(model, this.stream, data)
  }
  toString = () => `append(${this.stream}, ${this.count}, ${JSON.stringify(this.pick)})`
}

/** Appends started together (PostgreSQL: one group-commit batch), settled in any order. */
class Race implements fc.AsyncCommand<Model, Real> {
  constructor(readonly appends: { stream: string; pick: ExpectationPick }[]) {}
  check = () => true
  async run(model: Model, real: Real): Promise<void> {
    const planned = this.appends.map((a) => ({
      ...a,
      expected: resolve(a.pick, model.streams.get(a.stream)),
      data: real.next++,
    }))
    const results = await Promise.all(
      planned.map((a) =>
        outcome(() =>
          real.store.append(real.prefix + a.stream, [{ type: 'n', data: a.data }], {
            expectedVersion: a.expected,
          }),
        ),
      ),
    )
    // Which of them won depends on the order they were applied in: replay the winners in the
    // order of the positions they got, and check every loser lost against some state.
    const read = await real.store.readAll({ fromPosition: 0, limit: 100_000 })
    const positionOf = new Map(read.map((e) => [e.data as number, e.position]))
    const winners = planned
      .filter((_, i) => results[i] === 'ok')
      .sort((x, y) => positionOf.get(x.data)! - positionOf.get(y.data)!)
    const losers = planned.filter((_, i) => results[i] !== 'ok')
    // A loser lost against the state at its turn: some state of the replay refuses it.
    const refused = new Set<number>()
    const look = () => {
      for (const l of losers) {
        const s = model.streams.get(l.stream)
        if (!holds(l.expected, s)) refused.add(l.data)
        const error = results[planned.indexOf(l)] as WrongExpectedVersionError
        expect(error).toBeInstanceOf(WrongExpectedVersionError)
      }
    }
    look()
    for (const w of winners) {
      expect(holds(w.expected, model.streams.get(w.stream))).toBe(true)
      applyAppend(model, w.stream, [w.data])
      look()
    }
    expect(losers.filter((l) => !refused.has(l.data))).toEqual([])
  }
  toString = () => `race(${JSON.stringify(this.appends)})`
}

class Delete implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly stream: string,
    readonly pick: ExpectationPick,
  ) {}
  check = () => true
  async run(model: Model, real: Real): Promise<void> {
    const s = model.streams.get(this.stream)
    const expected = resolve(this.pick, s)
    const result = await outcome(() =>
      real.store.deleteStream(real.prefix + this.stream, { expectedVersion: expected }),
    )
    const ok = holds(expected, s)
    checkConflict(result, ok, s)
    if (ok && s !== undefined && s.version > 0 && !s.deleted) {
      s.deleted = true
      s.truncateBefore = s.version + 1
    }
  }
  toString = () => `delete(${this.stream}, ${JSON.stringify(this.pick)})`
}

class SetMetadata implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly stream: string,
    readonly pick: ExpectationPick,
    readonly value: number,
  ) {}
  check = () => true
  async run(model: Model, real: Real): Promise<void> {
    let s = model.streams.get(this.stream)
    const expected = resolve(this.pick, s)
    const metadata = { v: this.value }
    const result = await outcome(() =>
      real.store.setStreamMetadata(real.prefix + this.stream, metadata, {
        expectedVersion: expected,
      }),
    )
    const ok = holds(expected, s)
    checkConflict(result, ok, s)
    if (!ok) return
    if (s === undefined) {
      s = { version: 0, deleted: false, truncateBefore: 1, metadata: {}, events: [] }
      model.streams.set(this.stream, s)
    }
    s.metadata = metadata
  }
  toString = () => `setMetadata(${this.stream}, ${JSON.stringify(this.pick)})`
}

class Read implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly stream: string,
    readonly direction: 'forwards' | 'backwards',
    readonly from: number | undefined,
    readonly limit: number | undefined,
  ) {}
  check = () => true
  async run(model: Model, real: Real): Promise<void> {
    const s = model.streams.get(this.stream)
    const read = await real.store.readStream(real.prefix + this.stream, {
      direction: this.direction,
      ...(this.from === undefined ? {} : { from: this.from }),
      ...(this.limit === undefined ? {} : { limit: this.limit }),
    })
    const info = await real.store.streamInfo(real.prefix + this.stream)
    const version = s?.version ?? 0
    const deleted = s?.deleted ?? false
    expect({ version: read.version, exists: read.exists, deleted: read.deleted }).toEqual({
      version,
      exists: version > 0 && !deleted,
      deleted,
    })
    expect(info).toEqual({
      version,
      exists: version > 0 && !deleted,
      deleted,
      metadata: s?.metadata ?? {},
    })
    let expected: { version: number; data: number }[] = []
    if (s !== undefined) {
      const visible = s.events
        .map((data, i) => ({ version: i + 1, data }))
        .filter((e) => e.version >= s.truncateBefore)
      if (this.direction === 'forwards') {
        expected = visible.filter((e) => e.version >= (this.from ?? 1))
      } else {
        expected = visible.filter((e) => e.version <= (this.from ?? Number.MAX_SAFE_INTEGER))
        expected.reverse()
      }
      if (this.limit !== undefined) expected = expected.slice(0, this.limit)
    }
    expect(read.events.map((e) => ({ version: e.version, data: e.data }))).toEqual(expected)
    for (const e of read.events) expect(e.stream).toBe(real.prefix + this.stream)
  }
  toString = () => `read(${this.stream}, ${this.direction}, ${this.from}, ${this.limit})`
}

const streamArb = fc.constantFrom(...streamNames)
const commands = [
  fc
    .tuple(streamArb, fc.integer({ min: 1, max: 3 }), expectationArb)
    .map(([s, n, e]) => new Append(s, n, e)),
  fc
    .array(fc.record({ stream: streamArb, pick: expectationArb }), { minLength: 2, maxLength: 5 })
    .map((appends) => new Race(appends)),
  fc.tuple(streamArb, expectationArb).map(([s, e]) => new Delete(s, e)),
  fc
    .tuple(streamArb, expectationArb, fc.integer({ min: 0, max: 9 }))
    .map(([s, e, v]) => new SetMetadata(s, e, v)),
  fc
    .tuple(
      streamArb,
      fc.constantFrom('forwards' as const, 'backwards' as const),
      fc.option(fc.integer({ min: 0, max: 8 }), { nil: undefined }),
      fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }),
    )
    .map(([s, d, f, l]) => new Read(s, d, f, l)),
]

describe.each(dbTargets)('event store against a model on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_event_store_model')
  let store: EventStore
  let run = 0
  beforeAll(async () => {
    store = createEventStore(t.db)
  })

  it('property: appends, deletes, metadata and reads behave as the model says', async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 25 }), async (cmds) => {
        const prefix = `m${++run}-`
        const real: Real = { store, prefix, next: 1 }
        const model: Model = { streams: new Map(), log: [] }
        await fc.asyncModelRun(() => ({ model, real }), cmds)
        // The log holds the run's events in the order the model appended them, deleted or not.
        const all = await store.readAll({ fromPosition: 0, limit: 100_000 })
        const mine = all.filter((e) => e.stream.startsWith(prefix))
        expect(
          mine.map((e) => ({
            stream: e.stream.slice(prefix.length),
            version: e.version,
            data: e.data,
          })),
        ).toEqual(model.log)
      }),
      { numRuns: 40 },
    )
  })
})
