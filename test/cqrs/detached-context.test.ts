// Followers of the log outlive the code that starts them: an application that bounds its
// startup with withDeadline must not have every handler call and every projection batch run
// later bound by that (long expired) deadline. Real databases; a ManualClock drives the polling.
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  type EventStore,
} from '../../src/cqrs/index.js'
import { currentDeadline, type Deadline, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, useTestDb } from './databases.js'

const T0 = 1_700_000_000_000

describe.each(dbTargets)('log followers started inside a deadline on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_detached_context')
  let store: EventStore

  beforeAll(async () => {
    store = createEventStore(t.db)
  })

  /** Moves the clock a poll interval at a time until `done()` (real I/O runs in between). */
  async function pollUntil(clock: ManualClock, done: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 20_000
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await clock.advance(50)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  }

  it("a subscription's handler runs outside the deadline subscribe() was called under", async () => {
    const clock = new ManualClock(T0)
    const seen: Array<Deadline | undefined> = []
    const from = (await store.headPosition()) + 1
    const subscription = await withDeadline(
      1_000,
      async () =>
        store.subscribe(
          () => {
            seen.push(currentDeadline())
          },
          { fromPosition: from, pollIntervalMs: 50, clock },
        ),
      { clock },
    )
    try {
      await clock.advance(2_000)
      await store.append('sub-1', [{ type: 'n', data: 1 }])
      await pollUntil(clock, () => seen.length > 0, 'the handler')
      expect(seen).toEqual([undefined])
    } finally {
      await subscription.stop()
    }
  })

  it("a projector's apply runs outside the deadline start() was called under", async () => {
    const clock = new ManualClock(T0)
    const seen: Array<Deadline | undefined> = []
    const projection = defineProjection({
      name: 'deadline-look',
      tables: {},
      eventTypes: ['looked'],
      apply() {
        seen.push(currentDeadline())
      },
    })
    const projector = createProjector(store, projection, { pollIntervalMs: 50, clock })
    await projector.catchUp()
    await withDeadline(1_000, async () => projector.start(), { clock })
    try {
      await clock.advance(2_000)
      await store.append('proj-1', [{ type: 'looked', data: 1 }])
      await pollUntil(clock, () => seen.length > 0, 'the projection')
      expect(seen).toEqual([undefined])
    } finally {
      await projector.stop()
    }
  })
})
