import { AsyncLocalStorage } from 'node:async_hooks'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { KeyedDispatcher, type Outcome } from '../../src/brokers/dispatcher.js'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

const bounds = {
  maxHeldPerKey: 1_000,
  holdTimeoutMs: 60_000,
  clock: new ManualClock(),
  broker: 'nats',
} as const

function message(id: number, key: string): IncomingMessage {
  return {
    id: String(id),
    topic: 't',
    key,
    payload: new Uint8Array(),
    headers: {},
    deliveryCount: 1,
  }
}

describe('KeyedDispatcher', () => {
  it('runs one handler per key at a time, in order, within the concurrency, settling each delivery once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ key: fc.constantFrom('a', 'b', 'c', 'd'), fail: fc.boolean() }), {
          maxLength: 25,
        }),
        fc.integer({ min: 1, max: 4 }),
        fc.option(fc.nat(30), { nil: undefined }),
        fc.scheduler(),
        async (items, concurrency, closeAfter, s) => {
          const outcomes = new Map<number, Outcome[]>()
          const started: number[] = []
          const runningKeys = new Set<string>()
          let running = 0
          let maxRunning = 0
          let sameKeyOverlap = false
          let startedAfterClose = false
          let closed = false
          const dispatcher = new KeyedDispatcher({
            concurrency,
            capacity: 1_000,
            ...bounds,
            onError: () => {},
            handler: async (m) => {
              const index = Number(m.id)
              if (closed) startedAfterClose = true
              if (runningKeys.has(m.key)) sameKeyOverlap = true
              runningKeys.add(m.key)
              maxRunning = Math.max(maxRunning, ++running)
              started.push(index)
              await s.schedule(Promise.resolve(), `handler ${index}`)
              runningKeys.delete(m.key)
              running--
              if (items[index]!.fail) throw new Error(`fail ${index}`)
            },
          })
          items.forEach((item, index) => {
            dispatcher.push({
              message: message(index, item.key),
              settle: (outcome) => {
                outcomes.set(index, [...(outcomes.get(index) ?? []), outcome])
              },
            })
          })
          if (closeAfter !== undefined) {
            for (let i = 0; i < closeAfter && s.count() > 0; i++) await s.waitOne()
            closed = true
            const closing = dispatcher.close()
            await s.waitIdle()
            await closing
          } else {
            await s.waitIdle()
            await dispatcher.close()
          }

          expect(sameKeyOverlap).toBe(false)
          expect(startedAfterClose).toBe(false)
          expect(maxRunning).toBeLessThanOrEqual(concurrency)
          // Every delivery is settled exactly once.
          for (let i = 0; i < items.length; i++) expect(outcomes.get(i)).toHaveLength(1)
          // Per key, handlers start in arrival order.
          for (const key of ['a', 'b', 'c', 'd']) {
            const order = started.filter((i) => items[i]!.key === key)
            expect(order).toEqual([...order].sort((x, y) => x - y))
          }
          // All were queued before any ran: nothing of a key runs after that key failed.
          for (const j of started) {
            if (!items[j]!.fail) continue
            const overtaken = started.filter((i) => i > j && items[i]!.key === items[j]!.key)
            expect(overtaken).toEqual([])
          }
          for (let i = 0; i < items.length; i++) {
            const [outcome] = outcomes.get(i)!
            if (started.includes(i)) {
              expect(outcome).toBe(items[i]!.fail ? 'retry' : 'ack')
            } else {
              // Never started: released at close, either because close came first or because
              // an earlier message of its key failed and was never redelivered here (this test
              // has no broker), so it stayed held behind it.
              expect(outcome).toBe('release')
              const failedBefore = started.some(
                (j) => j < i && items[j]!.key === items[i]!.key && items[j]!.fail,
              )
              expect(closeAfter !== undefined || failedBefore).toBe(true)
            }
          }
        },
      ),
      { numRuns: 300 },
    )
  })

  it('reports room against its capacity and wakes a waiter when a handler finishes', async () => {
    const gates: Array<() => void> = []
    const dispatcher = new KeyedDispatcher({
      concurrency: 1,
      capacity: 2,
      ...bounds,
      onError: () => {},
      handler: () => new Promise<void>((resolve) => gates.push(resolve)),
    })
    const settled: Outcome[] = []
    const push = (id: number): void =>
      dispatcher.push({ message: message(id, `k${id}`), settle: (o) => void settled.push(o) })
    push(1)
    push(2)
    expect(dispatcher.size).toBe(2)
    expect(dispatcher.room).toBe(0)
    let woke = false
    const waiting = dispatcher.whenRoom().then(() => {
      woke = true
    })
    await Promise.resolve()
    expect(woke).toBe(false)
    gates.shift()!()
    await waiting
    expect(woke).toBe(true)
    expect(settled).toEqual(['ack'])
    expect(dispatcher.held().map((d) => d.message.id)).toEqual(['2'])
    const closing = dispatcher.close()
    gates.shift()!()
    await closing
    expect(settled).toEqual(['ack', 'ack'])
  })

  it('starts no handler while paused, then runs what was queued meanwhile in per-key order once every pause is over', async () => {
    const started: string[] = []
    const dispatcher = new KeyedDispatcher({
      concurrency: 4,
      capacity: 3,
      ...bounds,
      onError: () => {},
      handler: async (m) => {
        started.push(m.id)
      },
    })
    const settled: Array<[string, Outcome]> = []
    const push = (id: number, key: string, order: number): void =>
      dispatcher.push({
        message: message(id, key),
        order,
        settle: (o) => void settled.push([String(id), o]),
      })
    const resumeFirst = dispatcher.pause()
    const resumeSecond = dispatcher.pause()
    // A later delivery of key a arrives before an earlier one, as a redelivery would.
    push(2, 'a', 2)
    push(3, 'b', 3)
    push(1, 'a', 1)
    await new Promise((resolve) => setImmediate(resolve))
    expect(started).toEqual([])
    expect(dispatcher.size).toBe(3)
    expect(dispatcher.held().map((d) => d.message.id)).toEqual(['1', '2', '3'])
    expect(dispatcher.tracks('a', '2')).toBe(true)
    expect(dispatcher.tracks('a', '9')).toBe(false)
    // Paused deliveries count against the capacity: the fourth is handed back.
    push(4, 'c', 4)
    expect(settled).toEqual([['4', 'retry']])
    expect(dispatcher.tracks('c', '4')).toBe(true)
    resumeFirst()
    resumeFirst()
    await new Promise((resolve) => setImmediate(resolve))
    expect(started).toEqual([])
    resumeSecond()
    await expect.poll(() => started.length).toBe(3)
    await dispatcher.close()
    expect(started).toEqual(['1', '3', '2'])
    expect(settled.filter(([, o]) => o === 'ack').map(([id]) => id)).toEqual(['1', '3', '2'])
  })

  it('reports handler and settle failures without breaking the flow', async () => {
    const errors: string[] = []
    const dispatcher = new KeyedDispatcher({
      concurrency: 2,
      capacity: 10,
      ...bounds,
      onError: (error, phase, m) => errors.push(`${phase}:${m.id}:${(error as Error).message}`),
      handler: async (m) => {
        if (m.id === '1') throw new Error('handler broke')
      },
    })
    dispatcher.push({
      message: message(1, 'a'),
      settle: () => Promise.reject(new Error('nack lost')),
    })
    dispatcher.push({
      message: message(2, 'b'),
      settle: () => {
        throw new Error('ack lost')
      },
    })
    await dispatcher.close()
    expect(errors.sort()).toEqual([
      'handler:1:handler broke',
      'settle:1:nack lost',
      'settle:2:ack lost',
    ])
  })

  it('runs handlers in its own context, not that of the driver callback that pushed', async () => {
    // Drivers push from callbacks running in the context their connection was opened in: the
    // subscriber's caller's, with its request store and (soon expired) deadline.
    const clock = new ManualClock()
    const request = new AsyncLocalStorage<string>()
    const seen: Array<{ deadline: unknown; request: string | undefined }> = []
    const dispatcher = new KeyedDispatcher({
      concurrency: 1,
      capacity: 4,
      ...bounds,
      onError: () => {},
      handler: async () => {
        seen.push({ deadline: currentDeadline(), request: request.getStore() })
      },
    })
    const settled: Outcome[] = []
    await request.run('request-1', () =>
      withDeadline(
        100,
        () => {
          dispatcher.push({ message: message(1, 'k'), settle: (o) => void settled.push(o) })
        },
        { clock },
      ),
    )
    await dispatcher.close()
    expect(settled).toEqual(['ack'])
    expect(seen).toEqual([{ deadline: undefined, request: undefined }])
  })

  it('close(timeoutMs) gives up on a handler still running: it settles and reports nothing when it ends', async () => {
    const clock = new ManualClock()
    const errors: unknown[] = []
    const outcomes: Array<[string, Outcome]> = []
    let fail!: (error: Error) => void
    const dispatcher = new KeyedDispatcher({
      concurrency: 2,
      capacity: 10,
      ...bounds,
      clock,
      onError: (error) => errors.push(error),
      handler: (m) =>
        m.id === '1'
          ? new Promise<void>((_resolve, reject) => {
              fail = reject
            })
          : Promise.resolve(),
    })
    for (const [id, key] of [
      [1, 'a'],
      [2, 'b'],
      [3, 'a'],
    ] as const) {
      const m = message(id, key)
      dispatcher.push({ message: m, settle: (outcome) => void outcomes.push([m.id, outcome]) })
    }
    await new Promise((resolve) => setImmediate(resolve))
    const closing = dispatcher.close(50)
    await clock.advance(49)
    await new Promise((resolve) => setImmediate(resolve))
    let done = false
    void closing.then(() => {
      done = true
    })
    await new Promise((resolve) => setImmediate(resolve))
    expect(done).toBe(false)
    await clock.advance(1)
    expect(await closing).toBe(1)
    // 2 ran and was acked; 3 waited behind 1 and was released at close.
    expect(outcomes).toEqual([
      ['2', 'ack'],
      ['3', 'release'],
    ])
    fail(new Error('late failure'))
    await new Promise((resolve) => setImmediate(resolve))
    expect(outcomes).toHaveLength(2)
    expect(errors).toEqual([])
  })
})
