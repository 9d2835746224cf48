// Options that asked for something breakwater could not do, refused with INVALID_OPTION rather
// than ignored or left to the database: a query's read-your-writes wait with no projector to
// wait for, and snapshot text the databases cannot store alike (NUL, which PostgreSQL refuses
// with 22021 and blocked the stream's every later command, and a lone surrogate, stored as
// U+FFFD by PostgreSQL and as given by SQLite).
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createCommandHandler, createEventStore, createQueryHandler } from '../../src/cqrs/index.js'
import { dbTargets, useTestDb } from './databases.js'

describe.each(dbTargets)('refused options on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_refused_options')

  it.each([
    ['without projectors', undefined],
    ['with no projectors', []],
  ])(
    'a query with atLeastPosition %s is refused, naming atLeastPosition',
    async (_, projectors) => {
      let ran = false
      const query = createQueryHandler({
        db: t.db,
        ...(projectors === undefined ? {} : { projectors }),
        run: async () => {
          ran = true
          return 1
        },
      })
      const error = await query(undefined, { atLeastPosition: 1 }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('atLeastPosition')
      expect(ran).toBe(false)
      // Without the wait it runs.
      expect(await query(undefined)).toBe(1)
    },
  )

  it.each([
    ['a NUL', (n: number) => `${n}\u0000`],
    ['a lone surrogate', (n: number) => `${n}|\ud800`],
  ])(
    'snapshot text with %s is refused, naming snapshots.serialize, and the stream goes on',
    async (what, serialize) => {
      const store = createEventStore(t.db)
      let bad = true
      const handler = createCommandHandler(store, {
        decider: {
          initialState: () => ({ n: 0 }),
          evolve: (state: { n: number }) => ({ n: state.n + 1 }),
          decide: () => [{ type: 'inc', data: {} }],
        },
        snapshots: {
          every: 2,
          name: `snap-${what.length}`,
          serialize: (state) => (bad ? serialize(state.n) : String(state.n)),
          deserialize: (text) => ({ n: Number(text) }),
        },
      })
      const stream = `refused-snapshot-${what.length}`
      await handler.handle(stream, {})
      const error = await handler.handle(stream, {}).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('snapshots.serialize')
      // The command rolled back as a whole, and the stream takes commands again once the
      // serializer is fixed.
      expect((await store.readStream(stream)).version).toBe(1)
      bad = false
      expect((await handler.handle(stream, {})).version).toBe(2)
      expect((await handler.load(stream)).state).toEqual({ n: 2 })
    },
  )
})
