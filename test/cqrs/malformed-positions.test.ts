// A checkpoint or projection position changed outside breakwater (a manual edit, a restored
// backup). SQLite keeps text set into its INTEGER columns as text ('abc') and a fraction as a
// real; either database keeps a negative number. Read as Number(), such a value failed the
// subscriber and the projector with INVALID_OPTION about `fromPosition ... got NaN`, an option
// the caller never passed, and the subscription's last checkpoint save with NOT NULL. Now it is
// STORED_DATA_INVALID naming the checkpoint or projection row and the column, and the row is
// left as it is. Real SQLite and PostgreSQL.
import { describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type Projector,
} from '../../src/cqrs/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type TestDb, useTestDb } from './databases.js'

// What each database can hold in a BIGINT/INTEGER column besides a position: text and a fraction
// only SQLite (PostgreSQL's columns are BIGINT).
function badPositions(dialect: string): [string, string | number, string][] {
  const both: [string, string | number, string][] = [['a negative number', -3, '-3']]
  if (dialect !== 'sqlite') return both
  return [...both, ['text', 'abc', '"abc"'], ['a fraction', 1.5, '1.5']]
}

async function storedValue(t: TestDb, table: string, column: string, name: string) {
  const rows = await t.db.query<{ v: unknown }>(
    `SELECT ${column} AS v FROM ${table} WHERE name = $1`,
    [name],
  )
  return rows[0]?.v
}

function expectNamed(
  error: unknown,
  table: string,
  row: string,
  column: string,
  shown: string,
  what = 'a position',
) {
  expect(error).toBeInstanceOf(StoredDataError)
  expect(error).toMatchObject({ code: 'STORED_DATA_INVALID', table, row, column })
  expect((error as Error).message).toContain(`${column} is not ${what}`)
  expect((error as Error).message).toContain(shown)
}

describe.each(dbTargets)('stored positions changed outside breakwater on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_malformed_positions')

  it.each(badPositions(target.dialect))(
    'a subscription checkpoint holding %s is named, nothing is handled, the row is kept',
    async (_, bad, shown) => {
      const store = createEventStore(t.db)
      const name = `sub-${String(bad)}`
      await store.append(`s-${name}`, [{ type: 'placed', data: {} }])
      await t.db.execute(
        'INSERT INTO breakwater_checkpoints (name, position, updated_at) VALUES ($1, $2, 0)',
        [name, bad],
      )
      const handled: unknown[] = []
      const errors: unknown[] = []
      const subscription = store.subscribe((event) => void handled.push(event), {
        name,
        clock: new ManualClock(0),
        onError: (e) => errors.push(e),
      })
      try {
        await expect.poll(() => errors.length, { timeout: 10_000, interval: 2 }).toBeGreaterThan(0)
      } finally {
        await subscription.stop()
      }
      // Each retry reads the row again (and fails the same way); the last save adds nothing.
      for (const error of errors) {
        expectNamed(error, 'breakwater_checkpoints', `checkpoint "${name}"`, 'position', shown)
      }
      expect(handled).toEqual([])
      expect(await storedValue(t, 'breakwater_checkpoints', 'position', name)).toBe(bad)
    },
  )

  it.each(badPositions(target.dialect))(
    'a projection position holding %s is named by catchUp and position(); a rebuild replaces it',
    async (_, bad, shown) => {
      const store = createEventStore(t.db)
      const name = `proj-${String(bad)}`.replace(/\W/g, '_')
      const seen: unknown[] = []
      const projection = defineProjection({
        name,
        tables: {},
        eventTypes: ['placed'],
        apply: (event) => void seen.push(event.position),
      })
      const projector: Projector = createProjector(store, projection)
      await projector.catchUp()
      await t.db.execute('UPDATE breakwater_projections SET position = $1 WHERE name = $2', [
        bad,
        name,
      ])
      seen.length = 0

      const caughtUp = await projector.catchUp().catch((e: unknown) => e)
      expectNamed(caughtUp, 'breakwater_projections', `projection "${name}"`, 'position', shown)
      const position = await projector.position().catch((e: unknown) => e)
      expectNamed(position, 'breakwater_projections', `projection "${name}"`, 'position', shown)
      expect(seen).toEqual([])
      expect(await storedValue(t, 'breakwater_projections', 'position', name)).toBe(bad)

      // A rebuild applies the whole log and stores the position it reached.
      await projector.rebuild()
      const head = await store.headPosition()
      expect(await projector.position()).toBe(head)
      expect(await projector.catchUp()).toBe(head)
    },
  )

  // Moving to inline rewrites the row. Refusing an unreadable position there would stop every
  // append of the store; it is read as nothing applied. Number() wrote a missing_through of text
  // back as NULL (and kept a negative one), so the projection was reported complete; it is read
  // as lacking every event taken so far. Either until a rebuild.
  it.each(
    badPositions(target.dialect).flatMap(([label, bad]) =>
      ['position', 'missing_through'].map((column) => [column, label, bad] as const),
    ),
  )(
    'a projection moved to inline over a %s holding %s reports what it may lack',
    async (column, _, bad) => {
      const name = `inl-${column}-${String(bad)}`.replace(/\W/g, '_')
      const projection = defineProjection({ name, tables: {}, eventTypes: [], apply() {} })
      const store = createEventStore(t.db)
      await store.append(`s-${name}`, [{ type: 'placed', data: {} }])
      await createProjector(store, projection).catchUp()
      // Appended after the projector's last batch: never applied to its tables. Only with a bad
      // position: it would itself mark the projection as lacking events.
      if (column === 'position') await store.append(`s-${name}`, [{ type: 'placed', data: {} }])
      await t.db.execute(`UPDATE breakwater_projections SET ${column} = $1 WHERE name = $2`, [
        bad,
        name,
      ])

      const inline = createEventStore(t.db, { inlineProjections: [projection] })
      const { lastPosition } = await inline.append(`s-${name}`, [{ type: 'placed', data: {} }])
      const projector = createProjector(inline, projection)
      expect(await projector.position()).toBeLessThan(lastPosition)
      await projector.rebuild()
      expect(await projector.position()).toBe(lastPosition)
    },
  )

  // An inline projection registered on a log that had events lacks those up to missing_through
  // until a rebuild. Read with Number(), text made position() report the log's first position
  // minus one whatever was stored, and a negative number (either database) reported it complete.
  it.each(badPositions(target.dialect))(
    'an inline projection whose missing_through holds %s is named by position(); a rebuild clears it',
    async (_, bad, shown) => {
      const name = `mis-${String(bad)}`.replace(/\W/g, '_')
      const projection = defineProjection({ name, tables: {}, eventTypes: [], apply() {} })
      await createEventStore(t.db).append(`s-${name}`, [{ type: 'placed', data: {} }])
      const store = createEventStore(t.db, { inlineProjections: [projection] })
      const { lastPosition } = await store.append(`s-${name}`, [{ type: 'placed', data: {} }])
      await t.db.execute('UPDATE breakwater_projections SET missing_through = $1 WHERE name = $2', [
        bad,
        name,
      ])

      const projector = createProjector(store, projection)
      const position = await projector.position().catch((e: unknown) => e)
      const row = `projection "${name}"`
      expectNamed(position, 'breakwater_projections', row, 'missing_through', shown)
      expect(await storedValue(t, 'breakwater_projections', 'missing_through', name)).toBe(bad)
      await projector.rebuild()
      expect(await projector.position()).toBe(lastPosition)
    },
  )

  // A rebuild numbers its tables above the generation swapped in last and above a rebuild in
  // progress, so that one still filling its tables cannot share them. An unreadable number
  // leaves no safe choice: the rebuild refuses before it creates or drops anything.
  it.each(
    badPositions(target.dialect).flatMap(([label, bad, shown]) =>
      ['generation', 'rebuild_generation'].map((column) => [column, label, bad, shown] as const),
    ),
  )('a rebuild over a %s holding %s is refused, naming it', async (column, _, bad, shown) => {
    const name = `gen-${column}-${String(bad)}`.replace(/\W/g, '_')
    const projection = defineProjection({
      name,
      tables: { [`${name}_t`]: (t) => [`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`] },
      eventTypes: [],
      apply() {},
    })
    const projector = createProjector(createEventStore(t.db), projection)
    await projector.catchUp()
    await t.db.execute(`UPDATE breakwater_projections SET ${column} = $1 WHERE name = $2`, [
      bad,
      name,
    ])

    const error = await projector.rebuild().catch((e: unknown) => e)
    const row = `projection "${name}"`
    expectNamed(error, 'breakwater_projections', row, column, shown, 'a generation')
    expect(await storedValue(t, 'breakwater_projections', column, name)).toBe(bad)
  })
})
