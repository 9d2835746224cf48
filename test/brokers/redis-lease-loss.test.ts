// A Redis subscription that stalls longer than visibilityTimeoutMs (a GC pause, SIGSTOP) has
// the entries it holds claimed by another consumer of its group. When it resumes, it must not
// take them back (its refresh used XCLAIM with min-idle 0), run the key's later entries beside
// and before the other consumer's run of the earlier one, or ack an entry now another's.
// The stall is simulated deterministically: a raw connection claims the entries for another
// consumer name while the subscription's handler is blocked and its clock stands still.
import type { Redis } from 'ioredis'
import { afterAll, describe, expect, it } from 'vitest'
import { KeyedDispatcher, type Outcome } from '../../src/brokers/dispatcher.js'
import { createRedisBroker, type SubscriberErrorEvent } from '../../src/brokers/index.js'
import type { Clock } from '../../src/core/clock.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { unique } from './conformance.js'

afterAll(stopOwnBrokers)

type PendingRow = [id: string, consumer: string, idle: number, deliveries: number]

async function owners(redis: Redis, topic: string, group: string): Promise<Map<string, string>> {
  const rows = (await redis.call('XPENDING', topic, group, '-', '+', '100')) as PendingRow[]
  return new Map(rows.map(([id, consumer]) => [id, consumer]))
}

/** A deferred that the handler awaits. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void
  const promise = new Promise<void>((resolve) => {
    open = resolve
  })
  return { promise, open }
}

function isLoss(event: SubscriberErrorEvent, entryId: string): boolean {
  return (
    event.phase === 'settle' &&
    BreakwaterError.is(event.error) &&
    event.error.code === 'BROKER_UNAVAILABLE' &&
    event.error.message.includes(entryId)
  )
}

describe('redis: entries another consumer claimed while this one stalled', () => {
  it('are not claimed back by the refresh: the queued one is dropped unrun, the running one is not acked, each loss is reported', async () => {
    const url = await brokerUrl('redis')
    const clock = new ManualClock(1_000)
    const errors: SubscriberErrorEvent[] = []
    const broker = createRedisBroker({
      url,
      clock,
      visibilityTimeoutMs: 30_000,
      claimIntervalMs: 1_000,
      blockMs: 50,
      onError: (event) => errors.push(event),
    })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    const first = gate()
    try {
      const topic = unique('lease-loss')
      const group = unique('g')
      const runs: string[] = []
      let firstDone = false
      await broker.subscriber.subscribe(topic, group, async (m) => {
        runs.push(m.id)
        if (m.id === 'a') {
          await first.promise
          firstDone = true
        }
      })
      await broker.publisher.publish([
        { id: 'a', topic, key: 'k', payload: '1', headers: {} },
        { id: 'b', topic, key: 'k', payload: '2', headers: {} },
      ])
      await until(async () => (await owners(other, topic, group)).size === 2, 'both delivered')
      const ids = [...(await owners(other, topic, group)).keys()]
      const mine = (await owners(other, topic, group)).get(ids[0]!)!
      expect(runs).toEqual(['a'])
      // What another consumer's XAUTOCLAIM does once this one stalled past the timeout.
      await other.call('XAUTOCLAIM', topic, group, 'thief', '0', '0-0')
      // The subscription's claim loop runs its refresh.
      await clock.advance(1_000)
      await until(
        async () =>
          errors.length >= 2 || [...(await owners(other, topic, group)).values()].includes(mine),
        'the refresh to take the entries back or report them lost',
      )
      expect(Object.fromEntries(await owners(other, topic, group))).toEqual({
        [ids[0]!]: 'thief',
        [ids[1]!]: 'thief',
      })
      for (const id of ids) expect(errors.filter((e) => isLoss(e, id))).toHaveLength(1)
      expect(errors.find((e) => isLoss(e, ids[1]!))?.message?.id).toBe('b')
      // Later refreshes do not report them again.
      await clock.advance(1_000)
      await clock.advance(1_000)
      first.open()
      await until(() => firstDone, 'the first handler to finish')
      await broker.close()
      // b never ran here (the thief runs it), and a's ack did not take the thief's entry.
      expect(runs).toEqual(['a'])
      expect(Object.fromEntries(await owners(other, topic, group))).toEqual({
        [ids[0]!]: 'thief',
        [ids[1]!]: 'thief',
      })
      expect(errors).toHaveLength(2)
    } finally {
      first.open()
      other.disconnect()
      await broker.close()
    }
  })

  it('does not ack a running entry another consumer claimed before any refresh noticed, and reports it', async () => {
    const url = await brokerUrl('redis')
    const clock = new ManualClock(1_000)
    const errors: SubscriberErrorEvent[] = []
    const broker = createRedisBroker({
      url,
      clock,
      visibilityTimeoutMs: 30_000,
      claimIntervalMs: 1_000,
      blockMs: 50,
      onError: (event) => errors.push(event),
    })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    const running = gate()
    try {
      const topic = unique('lease-loss-ack')
      const group = unique('g')
      let done = false
      let started = false
      await broker.subscriber.subscribe(topic, group, async () => {
        started = true
        await running.promise
        done = true
      })
      await broker.publisher.publish([{ id: 'a', topic, key: 'k', payload: '1', headers: {} }])
      await until(() => started, 'the handler to start')
      const [id] = [...(await owners(other, topic, group)).keys()]
      await other.call('XCLAIM', topic, group, 'thief', '0', id!, 'JUSTID')
      // The clock stands still: no refresh runs before the ack.
      running.open()
      await until(() => done, 'the handler to finish')
      await broker.close()
      expect(Object.fromEntries(await owners(other, topic, group))).toEqual({ [id!]: 'thief' })
      expect(errors.filter((e) => isLoss(e, id!))).toHaveLength(1)
      expect(errors.find((e) => isLoss(e, id!))?.message?.id).toBe('a')
      expect(errors).toHaveLength(1)
    } finally {
      running.open()
      other.disconnect()
      await broker.close()
    }
  })
})

describe('redis: a stalled subscription resuming with a handler that just finished', () => {
  it('checks what it holds before the key goes on: the next entry, claimed by another consumer, is not started here', async () => {
    const url = await brokerUrl('redis')
    const manual = new ManualClock(1_000)
    // A resuming process: its clock has jumped past the stall, and its timers (the claim loop's
    // among them) have not fired yet; whatever runs first must not start a lost entry.
    let stalledMs = 0
    const clock: Clock = {
      now: () => manual.now() + stalledMs,
      setTimeout: (callback, delayMs) => manual.setTimeout(callback, delayMs),
      clearTimeout: (handle) => manual.clearTimeout(handle),
    }
    const errors: SubscriberErrorEvent[] = []
    const broker = createRedisBroker({
      url,
      clock,
      visibilityTimeoutMs: 30_000,
      claimIntervalMs: 1_000,
      blockMs: 50,
      onError: (event) => errors.push(event),
    })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    const first = gate()
    try {
      const topic = unique('lease-loss-resume')
      const group = unique('g')
      const runs: string[] = []
      let firstDone = false
      await broker.subscriber.subscribe(topic, group, async (m) => {
        runs.push(m.id)
        if (m.id === 'a') {
          await first.promise
          firstDone = true
        }
      })
      await broker.publisher.publish([
        { id: 'a', topic, key: 'k', payload: '1', headers: {} },
        { id: 'b', topic, key: 'k', payload: '2', headers: {} },
      ])
      await until(async () => (await owners(other, topic, group)).size === 2, 'both delivered')
      const ids = [...(await owners(other, topic, group)).keys()]
      // The process stalls past visibilityTimeoutMs: another consumer claims both...
      await other.call('XCLAIM', topic, group, 'thief', '0', ...ids, 'JUSTID')
      // ...and on resuming, the handler finishes first.
      stalledMs = 31_000
      first.open()
      await until(() => firstDone, 'the first handler to finish')
      await until(() => errors.length >= 2, 'both losses to be reported')
      await broker.close()
      expect(runs).toEqual(['a'])
      expect(Object.fromEntries(await owners(other, topic, group))).toEqual({
        [ids[0]!]: 'thief',
        [ids[1]!]: 'thief',
      })
      for (const id of ids) expect(errors.filter((e) => isLoss(e, id))).toHaveLength(1)
      expect(errors).toHaveLength(2)
    } finally {
      first.open()
      other.disconnect()
      await broker.close()
    }
  })
})

describe('KeyedDispatcher.forsake', () => {
  it('drops the lost queued deliveries unsettled and unawaited, hands back the later ones of their keys, lets a lost running one finish, and leaves other keys alone', async () => {
    const clock = new ManualClock()
    const started: string[] = []
    const outcomes: Array<[string, Outcome]> = []
    const first = gate()
    const dispatcher = new KeyedDispatcher({
      concurrency: 2,
      capacity: 100,
      maxHeldPerKey: 100,
      holdTimeoutMs: 60_000,
      clock,
      broker: 'redis',
      onError: () => {},
      handler: async (m) => {
        started.push(m.id)
        if (m.id === 'k1') await first.promise
      },
    })
    const push = (id: string, key: string, order: number): void =>
      dispatcher.push({
        message: { id, topic: 't', key, payload: new Uint8Array(), headers: {}, deliveryCount: 1 },
        order,
        settle: (outcome) => {
          outcomes.push([id, outcome])
        },
      })
    push('k1', 'k', 1)
    push('k2', 'k', 2)
    push('k3', 'k', 3)
    push('j1', 'j', 4)
    // j's first delivery runs (not lost); a later one of j is queued behind it, not lost.
    expect(started).toEqual(['k1', 'j1'])
    push('j2', 'j', 5)
    const dropped = dispatcher.forsake((d) => d.message.id === 'k1' || d.message.id === 'k2')
    expect(dropped.map((d) => d.message.id)).toEqual(['k2'])
    // k3 is still this consumer's, but runs after k1 and k2, which another consumer now runs.
    expect(outcomes).toContainEqual(['k3', 'release'])
    expect(dispatcher.awaited).toBe(1)
    await until(() => started.includes('j2'), 'the other key to go on')
    first.open()
    await dispatcher.close()
    expect(started).toEqual(['k1', 'j1', 'j2'])
    // k1 (running) is still settled by the dispatcher, for the adapter to refuse; k2 never is.
    expect(outcomes.filter(([id]) => id === 'k2')).toEqual([])
    expect(outcomes.filter(([id]) => id === 'k1')).toEqual([['k1', 'ack']])
  })
})

// The live case, without a stall: a handler that runs several times visibilityTimeoutMs keeps
// its entry, because the claim loop refreshes it meanwhile; another consumer of the group never
// claims it, and it is acked once, here. (Redis measures idle time on its own clock, so real
// time must pass here: the wait is for the server, not for a backoff.)
describe('redis: a handler slower than visibilityTimeoutMs on a live subscription', () => {
  it('keeps its entry: the other consumer of the group does not run it, and it is acked once', async () => {
    const url = await brokerUrl('redis')
    const errors: SubscriberErrorEvent[] = []
    const tuning = { url, visibilityTimeoutMs: 300, claimIntervalMs: 50, blockMs: 50 }
    const slow = createRedisBroker({ ...tuning, onError: (event) => errors.push(event) })
    const peer = createRedisBroker({ ...tuning, onError: (event) => errors.push(event) })
    const { Redis } = await import('ioredis')
    const other = new Redis(url)
    const held = gate()
    try {
      const topic = unique('slow-handler')
      const group = unique('g')
      const runs: string[] = []
      await slow.subscriber.subscribe(topic, group, async (m) => {
        runs.push(`slow:${m.id}`)
        if (m.id === 'a') await held.promise
      })
      await slow.publisher.publish([{ id: 'a', topic, key: 'k', payload: '1', headers: {} }])
      await until(() => runs.length === 1, 'the slow handler to start')
      await peer.subscriber.subscribe(topic, group, async (m) => {
        runs.push(`peer:${m.id}`)
      })
      const started = Date.now()
      await until(() => Date.now() - started > 5 * 300, 'five visibility timeouts', 10_000, 50)
      expect(runs).toEqual(['slow:a'])
      held.open()
      await until(async () => (await owners(other, topic, group)).size === 0, 'the ack')
      // Once more past the timeout: nothing pending is left to claim, nothing runs again.
      const acked = Date.now()
      await until(() => Date.now() - acked > 2 * 300, 'two visibility timeouts', 10_000, 50)
      expect(runs).toEqual(['slow:a'])
      expect(errors).toEqual([])
    } finally {
      held.open()
      other.disconnect()
      await slow.close()
      await peer.close()
    }
  })
})
