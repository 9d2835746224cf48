// An event row changed behind breakwater's back (a manual edit, another writer's bug, a restored
// backup) so that its data or metadata is not JSON. Reads failed with a bare SyntaxError naming
// no event, and a projector failed the whole page: the events before the bad one were held back
// too (checkpoint not moved), against "holds back no event before it". Reads now fail with
// StoredDataError (STORED_DATA_INVALID) naming the stream, position and event id, and followers
// stop right before the event, as for an event that cannot be upcast. Real SQLite.
import { describe, expect, it } from 'vitest'
import { createEventStore, createProjector, defineProjection } from '../../src/cqrs/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { sqliteDb, useTestDb } from './databases.js'

describe('events with malformed stored JSON, on SQLite', () => {
  const t = useTestDb(sqliteDb, 'cqrs_malformed_events')

  it.each([
    ['data', '{bad'],
    ['metadata', 'x'],
  ])('%s that is not JSON: named in reads, followers stop right before it', async (column, bad) => {
    const store = createEventStore(t.db)
    const stream = `order-${column}`
    const { events } = await store.append(stream, [
      { type: 'placed', data: { n: 1 } },
      { type: 'placed', data: { n: 2 } },
      { type: 'placed', data: { n: 3 } },
    ])
    const [first, broken] = [events[0]!, events[1]!]
    await t.db.execute(`UPDATE breakwater_events SET ${column} = $1 WHERE position = $2`, [
      bad,
      broken.position,
    ])

    const read = await store.readStream(stream).catch((e: unknown) => e)
    expect(read).toBeInstanceOf(StoredDataError)
    expect(read).toMatchObject({ code: 'STORED_DATA_INVALID', table: 'breakwater_events', column })
    const message = (read as Error).message
    expect(message).toContain(`stream "${stream}"`)
    expect(message).toContain(`position ${broken.position}`)
    expect(message).toContain(`"${broken.id}"`)

    const seen: unknown[] = []
    const projection = defineProjection({
      name: `malformed_${column}`,
      tables: {},
      eventTypes: ['placed'],
      apply(event) {
        if (event.stream === stream) seen.push(event.data)
      },
    })
    const projector = createProjector(store, projection, { batchSize: 100 })
    await expect(projector.catchUp()).rejects.toBeInstanceOf(StoredDataError)
    // The event before it is applied and checkpointed; the broken one is not skipped.
    expect(seen).toEqual([{ n: 1 }])
    expect(await projector.position()).toBe(first.position)

    const handled: number[] = []
    const errors: unknown[] = []
    const subscription = store.subscribe(
      (event) => {
        if (event.stream === stream) handled.push(event.position)
      },
      { batchSize: 100, clock: new ManualClock(0), onError: (e) => errors.push(e) },
    )
    try {
      await expect.poll(() => errors.length, { timeout: 10_000, interval: 2 }).toBeGreaterThan(0)
      expect(errors[0]).toBeInstanceOf(StoredDataError)
      expect(handled).toEqual([first.position])
      expect(subscription.position).toBe(first.position)
    } finally {
      await subscription.stop()
    }

    // The row is left as it was.
    const [row] = await t.db.query<Record<string, unknown>>(
      `SELECT ${column} AS v FROM breakwater_events WHERE position = $1`,
      [broken.position],
    )
    expect(row!.v).toBe(bad)
    // Fixed, the next case's followers read past it.
    await t.db.execute(`UPDATE breakwater_events SET ${column} = $1 WHERE position = $2`, [
      column === 'data' ? '{"n":2}' : '{}',
      broken.position,
    ])
    expect(await projector.catchUp()).toBeGreaterThanOrEqual(events[2]!.position)
    expect(seen).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }])
  })

  it('stream metadata that is not JSON: streamInfo names the stream; its events still read', async () => {
    const store = createEventStore(t.db)
    const stream = 'order-stream-metadata'
    await store.append(stream, [{ type: 'placed', data: { n: 1 } }])
    await store.setStreamMetadata(stream, { owner: 'billing' })
    await t.db.execute('UPDATE breakwater_streams SET metadata = $1 WHERE stream_id = $2', [
      '{bad',
      stream,
    ])
    const error = await store.streamInfo(stream).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoredDataError)
    expect(error).toMatchObject({ table: 'breakwater_streams', column: 'metadata' })
    expect((error as Error).message).toContain(`stream "${stream}"`)
    // The events do not depend on it: they read, and the row is left as it was.
    expect((await store.readStream(stream)).events.map((e) => e.data)).toEqual([{ n: 1 }])
    const [row] = await t.db.query<{ metadata: string }>(
      'SELECT metadata FROM breakwater_streams WHERE stream_id = $1',
      [stream],
    )
    expect(row!.metadata).toBe('{bad')
  })
})
