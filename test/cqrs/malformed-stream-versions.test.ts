// A stream row (breakwater_streams) or snapshot changed outside breakwater (a manual edit, a
// restored backup). SQLite keeps text set into its INTEGER columns as text ('abc') and a fraction
// as a real; either database keeps a negative number. The stream's version is what every
// append's concurrency check compares: read with Number(), text failed every append with a bare
// NOT NULL error (or a version conflict "actual NaN"), a fraction or a negative number let an
// append at "any" write events at versions 2.5 or -2, -1, 0 (after which "noStream" and
// expectedVersion 0 held on a stream with events). An append on such a stream now fails with
// STORED_DATA_INVALID naming the stream and the column and writes nothing; reads report it
// too. Real SQLite and PostgreSQL.
import { describe, expect, it } from 'vitest'
import {
  createCommandHandler,
  createEventStore,
  type ExpectedVersion,
} from '../../src/cqrs/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { account } from './accounts.js'
import { dbTargets, outcomeOf, type TestDb, useTestDb } from './databases.js'

type Bad = [string, string | number]

// Text and a fraction only on SQLite (PostgreSQL's columns are BIGINT).
function badVersions(dialect: string): Bad[] {
  const both: Bad[] = [['a negative number', -3]]
  if (dialect !== 'sqlite') return both
  return [...both, ['text', 'abc'], ['a fraction', 1.5]]
}

const expectations: ExpectedVersion[] = ['any', 'noStream', 'streamExists', 2, 0]

function expectNamed(error: unknown, table: string, row: string, column: string) {
  expect(error).toBeInstanceOf(StoredDataError)
  expect(error).toMatchObject({ code: 'STORED_DATA_INVALID', table, row, column })
}

async function streamState(t: TestDb, stream: string) {
  const rows = await t.db.query<{ version: unknown; deleted: unknown }>(
    'SELECT version, deleted FROM breakwater_streams WHERE stream_id = $1',
    [stream],
  )
  const events = await t.db.query<{ v: unknown }>(
    'SELECT stream_version AS v FROM breakwater_events WHERE stream_id = $1 ORDER BY position',
    [stream],
  )
  return { row: rows[0], versions: events.map((e) => Number(e.v)) }
}

describe.each(dbTargets)('stream versions changed outside breakwater on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_malformed_stream_versions')
  let n = 0

  async function badStream(bad: unknown, column = 'version'): Promise<string> {
    const stream = `bad-${++n}`
    const store = createEventStore(t.db)
    await store.append(stream, [
      { type: 'placed', data: {} },
      { type: 'paid', data: {} },
    ])
    await t.db.execute(`UPDATE breakwater_streams SET ${column} = $1 WHERE stream_id = $2`, [
      bad,
      stream,
    ])
    return stream
  }

  it.each(badVersions(target.dialect))(
    'a stream version holding %s: every append fails by name and writes nothing',
    async (_, bad) => {
      const stream = await badStream(bad)
      const before = await streamState(t, stream)
      const stores = [createEventStore(t.db), createEventStore(t.db, { groupCommit: false })]
      for (const store of stores) {
        for (const expectedVersion of expectations) {
          const alone = await outcomeOf(
            store.append(stream, [{ type: 'x', data: {} }], { expectedVersion }),
          )
          expectNamed(alone, 'breakwater_streams', `stream "${stream}"`, 'version')
          expect((alone as Error).message).toContain(String(bad))
          const inTx = await outcomeOf(
            t.db.transaction((tx) =>
              store.append(stream, [{ type: 'x', data: {} }], { expectedVersion, tx }),
            ),
          )
          expectNamed(inTx, 'breakwater_streams', `stream "${stream}"`, 'version')
        }
      }
      expect(await streamState(t, stream)).toEqual(before)
    },
  )

  it.each(badVersions(target.dialect))(
    'a stream version holding %s: a group commit fails that append alone',
    async (_, bad) => {
      const stream = await badStream(bad)
      const before = await streamState(t, stream)
      const store = createEventStore(t.db)
      // The first goes out alone; the two after it queue and share one batch statement.
      const outcomes = await Promise.all(
        ['ok-a', stream, 'ok-b'].map((s) => outcomeOf(store.append(s, [{ type: 'x', data: {} }]))),
      )
      expectNamed(outcomes[1], 'breakwater_streams', `stream "${stream}"`, 'version')
      expect(outcomes[0]).toMatchObject({ version: expect.any(Number) })
      expect(outcomes[2]).toMatchObject({ version: expect.any(Number) })
      expect(await streamState(t, stream)).toEqual(before)
    },
  )

  it.each(badVersions(target.dialect))(
    'a stream version holding %s: streamInfo, readStream and a command handler name it',
    async (_, bad) => {
      const stream = await badStream(bad)
      const store = createEventStore(t.db)
      const place = ['breakwater_streams', `stream "${stream}"`, 'version'] as const
      expectNamed(await outcomeOf(store.streamInfo(stream)), ...place)
      expectNamed(await outcomeOf(store.readStream(stream)), ...place)
      expectNamed(await outcomeOf(store.readStream(stream, { limit: 0 })), ...place)
      expectNamed(
        await outcomeOf(store.readStream(stream, { direction: 'backwards', from: 10 })),
        ...place,
      )
      const handler = createCommandHandler(store, { decider: account })
      expectNamed(await outcomeOf(handler.handle(stream, { kind: 'open', owner: 'x' })), ...place)
      expectNamed(await outcomeOf(store.deleteStream(stream)), ...place)
    },
  )

  it.each(badVersions(target.dialect))(
    'a truncate_before holding %s: reads name it',
    async (_, bad) => {
      const stream = await badStream(bad, 'truncate_before')
      const store = createEventStore(t.db)
      const place = ['breakwater_streams', `stream "${stream}"`, 'truncate_before'] as const
      expectNamed(await outcomeOf(store.readStream(stream)), ...place)
      expectNamed(await outcomeOf(store.readStream(stream, { limit: 0 })), ...place)
      const handler = createCommandHandler(store, { decider: account })
      expectNamed(await outcomeOf(handler.load(stream)), ...place)
    },
  )

  it.each(badVersions(target.dialect))(
    'a snapshot version holding %s: the command handler names it and appends nothing',
    async (_, bad) => {
      const store = createEventStore(t.db)
      const handler = createCommandHandler(store, {
        decider: account,
        snapshots: { every: 2, name: 'acc' },
      })
      const stream = `snap-${++n}`
      await handler.handle(stream, { kind: 'open', owner: 'ada' })
      for (let i = 0; i < 3; i++) await handler.handle(stream, { kind: 'deposit', amount: 1 })
      await t.db.execute('UPDATE breakwater_snapshots SET version = $1 WHERE stream_id = $2', [
        bad,
        stream,
      ])
      const before = await streamState(t, stream)
      const place = ['breakwater_snapshots', `snapshot "acc" of stream "${stream}"`, 'version']
      const failed = await outcomeOf(handler.handle(stream, { kind: 'deposit', amount: 1 }))
      expect(failed).toBeInstanceOf(StoredDataError)
      expect(failed).toMatchObject({ table: place[0], column: place[2] })
      expect((failed as StoredDataError).row).toContain(stream)
      expect(await streamState(t, stream)).toEqual(before)
    },
  )

  if (target.dialect === 'sqlite') {
    it.each([
      ['text', 'false'],
      ['2', 2],
    ] as Bad[])('a deleted flag holding %s: an append fails by name', async (_, bad) => {
      const stream = await badStream(bad, 'deleted')
      const before = await streamState(t, stream)
      const store = createEventStore(t.db)
      for (const expectedVersion of expectations) {
        const failed = await outcomeOf(
          store.append(stream, [{ type: 'x', data: {} }], { expectedVersion }),
        )
        expectNamed(failed, 'breakwater_streams', `stream "${stream}"`, 'deleted')
      }
      expectNamed(
        await outcomeOf(store.streamInfo(stream)),
        'breakwater_streams',
        `stream "${stream}"`,
        'deleted',
      )
      expect(await streamState(t, stream)).toEqual(before)
    })
  }
})
