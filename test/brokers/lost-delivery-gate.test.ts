import { describe, expect, it } from 'vitest'
import { KeyedDispatcher, type Outcome } from '../../src/brokers/dispatcher.js'
import { gateLostDeliveries } from '../../src/brokers/lost-delivery-gate.js'
import type { IncomingMessage } from '../../src/brokers/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

function message(id: string, key: string): IncomingMessage {
  return { id, topic: 't', key, payload: new Uint8Array(), headers: {}, deliveryCount: 1 }
}

function setUp() {
  const clock = new ManualClock()
  const started: string[] = []
  const settled: Array<[string, Outcome]> = []
  const dispatcher = new KeyedDispatcher({
    concurrency: 4,
    capacity: 16,
    maxHeldPerKey: 16,
    holdTimeoutMs: 60_000,
    clock,
    broker: 'nats',
    onError: () => {},
    handler: async (m) => {
      started.push(m.id)
    },
  })
  const delivery = (id: string, key: string, order: number) => ({
    message: message(id, key),
    order,
    settle: (o: Outcome) => void settled.push([id, o]),
  })
  const settle = () => new Promise((resolve) => setImmediate(resolve))
  /** Opens a gate (31 s wait) whose `admit(id, key, position)` pushes a fresh delivery. */
  const gate = (pending: number, deliveredUpTo: number, known: number) => {
    const opened = gateLostDeliveries(dispatcher, { pending, deliveredUpTo, known }, clock, 31_000)
    if (opened === undefined) return undefined
    return {
      admit: (id: string, key: string, position: number) =>
        opened.admit(key, id, position, () => dispatcher.push(delivery(id, key, position))),
      release: () => opened.release(),
    }
  }
  return { clock, started, settled, dispatcher, delivery, settle, gate }
}

describe('gateLostDeliveries', () => {
  it('opens no gate when the broker counts no more pending deliveries than the subscription knows of', () => {
    expect(setUp().gate(2, 9, 2)).toBeUndefined()
  })

  it('holds every handler until the unknown old deliveries are back, then runs each key in log order', async () => {
    const { started, dispatcher, delivery, settle, gate } = setUp()
    // A delivery the subscription handled before the reconnect, its ack lost with it.
    dispatcher.push(delivery('m3', 'b', 3))
    await settle()
    expect(started).toEqual(['m3'])
    // Two of the broker's three pending deliveries are unknown: lost in flight.
    const { admit } = gate(3, 5, 1)!
    admit('m6', 'a', 6) // new since the reconnect: not one of the lost ones
    admit('m3', 'b', 3) // a copy of the one handled before: not lost
    admit('m4', 'a', 4) // lost
    await settle()
    expect(started).toEqual(['m3'])
    admit('m2', 'c', 2) // lost: the last one missing
    await settle()
    expect(started.slice(1).sort()).toEqual(['m2', 'm3', 'm4', 'm6'])
    // Key a's lost delivery ran before the later one that arrived first.
    expect(started.filter((id) => id === 'm4' || id === 'm6')).toEqual(['m4', 'm6'])
    await dispatcher.close()
  })

  it('counts an old delivery the dispatcher awaits (handed back before the reconnect) as known, not lost', async () => {
    const { started, dispatcher, delivery, settle, gate } = setUp()
    // Queued (not started) when its connection was lost: abandoned, awaited.
    const resume = dispatcher.pause()
    dispatcher.push(delivery('m1', 'a', 1))
    expect(dispatcher.abandon(() => true)).toHaveLength(1)
    resume()
    const { admit } = gate(2, 2, dispatcher.size + dispatcher.awaited)!
    admit('m1', 'a', 1)
    await settle()
    expect(started).toEqual([])
    admit('m2', 'b', 2)
    await settle()
    expect(started).toEqual(['m1', 'm2'])
    await dispatcher.close()
  })

  it('lets handlers run once the wait times out on the injected clock (the lost ones went to another subscriber), and on release', async () => {
    const { clock, started, dispatcher, settle, gate } = setUp()
    gate(1, 1, 0)!.admit('m2', 'a', 2)
    await clock.advance(30_999)
    await settle()
    expect(started).toEqual([])
    await clock.advance(1)
    await settle()
    expect(started).toEqual(['m2'])
    // A second gate, released by its session's end.
    const second = gate(1, 3, 0)!
    second.admit('m4', 'a', 4)
    await settle()
    expect(started).toEqual(['m2'])
    second.release()
    await settle()
    expect(started).toEqual(['m2', 'm4'])
    expect(clock.pendingTimers).toBe(0)
    await dispatcher.close()
  })
})
