// The setup the malformed-row relay tests share: an emptied outbox holding a few events, and a
// relay on a ManualClock that polls quickly, not yet started, so a test edits rows behind
// breakwater's back, starts the relay and moves time until what it waits for happened.
import {
  createOutbox,
  createRelay,
  type Relay,
  type RelayEvent,
  type RelayOptions,
} from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type TestPublisher, testPublisher, testQueue, until } from './support.js'

// The time every malformed-row test starts at.
const T0 = 1_700_000_000_000

/** What {@link malformedRig} built. */
export interface MalformedRig {
  readonly clock: ManualClock
  /** Records what the relay published; `before` can make calls fail. */
  readonly publisher: TestPublisher
  /** Created, not started. */
  readonly relay: Relay
  /** Every event the relay reported, in order. */
  readonly events: RelayEvent[]
  /**
   * Waits (real time) until `check` holds, moving the clock 50 ms between looks so backoffs
   * and retries fall due; fails naming `what` after 20 s.
   */
  advanceUntil(check: () => boolean | Promise<boolean>, what: string): Promise<void>
  /** Stops the relay and closes the queue behind the publisher. */
  stop(): Promise<void>
}

/**
 * Empties the outbox of `db`, enqueues `ids` in that order (the aggregate of `x-1` is `x`, the
 * payload `{ aggregateId }`) on `topic` at a fixed time, and creates a relay polling every 10 to
 * 100 ms without retention; `options` adds to or overrides its options.
 */
export async function malformedRig(
  db: SqlDriver,
  topic: string,
  ids: readonly string[],
  options: Omit<RelayOptions, 'db' | 'publisher' | 'clock'> = {},
): Promise<MalformedRig> {
  await db.execute('DELETE FROM breakwater_outbox')
  const clock = new ManualClock(T0)
  const outbox = createOutbox({ clock, topic })
  // One transaction, in order: ids (and so the relay's reading order) follow `ids`.
  await db.transaction((tx) =>
    outbox.enqueue(
      tx,
      ids.map((id) => {
        const aggregateId = id.split('-')[0] ?? id
        return {
          id,
          aggregateType: 'thing',
          aggregateId,
          type: 'changed',
          payload: { aggregateId },
        }
      }),
    ),
  )
  const queue = testQueue(db)
  const publisher = testPublisher(queue.publisher)
  const relay = createRelay({
    db,
    publisher,
    clock,
    pollIntervalMs: 10,
    maxPollIntervalMs: 100,
    retention: false,
    ...options,
  })
  const events: RelayEvent[] = []
  relay.events.on((e) => events.push(e))
  return {
    clock,
    publisher,
    relay,
    events,
    advanceUntil: (check, what) =>
      until(async () => {
        if (await check()) return true
        await clock.advance(50)
        return false
      }, what),
    async stop() {
      await relay.stop()
      await queue.close()
    },
  }
}
