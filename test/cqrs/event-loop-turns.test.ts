// Projectors, rebuilds and subscriptions let the event loop turn between batches. better-sqlite3
// answers with promises that are already resolved, so a catch-up over many batches would
// otherwise run as one chain of microtasks: no timer, no I/O, no request of the process could
// run until it ended (50k events froze a process for 2 s). A chain of setImmediate callbacks
// counts the loop's turns; every batch after the first must find the count moved on since the
// batch before it ended. No timing threshold: each turn between batches runs the pending tick.
import { afterEach, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
  type RecordedEvent,
} from '../../src/cqrs/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }
const batchSize = 5

/** Counts the event loop's turns through a chain of setImmediate callbacks until stopped. */
function turnCounter(): { readonly turns: number; stop(): void } {
  let turns = 0
  let running = true
  const tick = (): void => {
    turns++
    if (running) setImmediate(tick)
  }
  setImmediate(tick)
  return {
    get turns() {
      return turns
    },
    stop() {
      running = false
    },
  }
}

let counter: ReturnType<typeof turnCounter> | undefined
afterEach(() => counter?.stop())

/**
 * A catch-all projection (every event of the log is applied, so its batches are consecutive
 * groups of `batchSize` applies) recording the turn count at each apply.
 */
function recording(name: string, seen: number[]) {
  return defineProjection({
    name,
    tables: { [name]: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
    apply() {
      seen.push(counter!.turns)
    },
  })
}

/** Whether the loop turned between every two consecutive batches of `seen` (one count per event). */
function turnedBetweenBatches(seen: readonly number[]): boolean[] {
  const boundaries: boolean[] = []
  for (let i = batchSize; i < seen.length; i += batchSize) {
    boundaries.push(seen[i]! > seen[i - 1]!)
  }
  return boundaries
}

async function appendMany(store: EventStore, stream: string, count: number): Promise<void> {
  await store.append(
    stream,
    Array.from({ length: count }, (_, i) => ({ type: 'n', data: i })),
  )
}

describe.each(dbTargets)('the event loop turns between batches on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_event_loop_turns')

  /** A store with 4 batches of events appended, and a recording projector named `name`. */
  async function projectorOver(name: string, options: { clock?: ManualClock } = {}) {
    const store = createEventStore(t.db)
    await appendMany(store, name, 4 * batchSize)
    const seen: number[] = []
    const projector = createProjector(store, recording(name, seen), { batchSize, ...options })
    return { store, seen, projector }
  }

  it('in catchUp()', async () => {
    const { seen, projector } = await projectorOver('turns_catch_up')
    counter = turnCounter()
    await projector.catchUp()
    expect(seen.length).toBeGreaterThanOrEqual(4 * batchSize)
    expect(turnedBetweenBatches(seen).every(Boolean)).toBe(true)
  })

  it('in the loop start() runs', async () => {
    const { store, seen, projector } = await projectorOver('turns_start', {
      clock: new ManualClock(Date.now()),
    })
    const head = await store.headPosition()
    counter = turnCounter()
    projector.start()
    await expect.poll(() => projector.position(), poll).toBe(head)
    await projector.stop()
    expect(turnedBetweenBatches(seen).every(Boolean)).toBe(true)
  })

  it("in rebuild()'s fill", async () => {
    const { seen, projector } = await projectorOver('turns_rebuild')
    counter = turnCounter()
    const rebuilt = await projector.rebuild()
    expect(seen.length).toBe(rebuilt.events)
    expect(turnedBetweenBatches(seen).every(Boolean)).toBe(true)
  })

  it('in a subscription', async () => {
    const store = createEventStore(t.db)
    const from = (await store.headPosition()) + 1
    await appendMany(store, 'turns-subscription', 4 * batchSize)
    const seen: number[] = []
    counter = turnCounter()
    const subscription = store.subscribe(
      (_event: RecordedEvent) => {
        seen.push(counter!.turns)
      },
      { fromPosition: from, batchSize, clock: new ManualClock(Date.now()) },
    )
    await expect.poll(() => seen.length, poll).toBe(4 * batchSize)
    await subscription.stop()
    expect(turnedBetweenBatches(seen).every(Boolean)).toBe(true)
  })
})
