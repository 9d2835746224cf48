// An entry another producer wrote in its own layout (`XADD topic * data '{...}' type order.placed`,
// no `payload` field) was delivered with an empty payload and no headers; the handler succeeded
// on nothing and the entry was acked: its content lost without a word. It is now refused and
// reported like an entry whose headers field is corrupt, naming the fields it had. Real Redis.
import { afterAll, expect, it } from 'vitest'
import { createRedisBroker, type SubscriberErrorEvent } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { Received, unique } from './conformance.js'

afterAll(stopOwnBrokers)

it("refuses another producer's entry without a payload field (onError phase refused, BROKER_REJECTED naming the fields it had, acked, kept in the stream) instead of delivering an empty payload", async () => {
  const url = await brokerUrl('redis')
  const errors: SubscriberErrorEvent[] = []
  const broker = createRedisBroker({ url, blockMs: 1_000, onError: (event) => errors.push(event) })
  const { Redis } = await import('ioredis')
  const other = new Redis(url)
  try {
    const topic = unique('no-payload')
    const group = unique('g')
    const entry = String(
      await other.xadd(topic, '*', 'data', '{"orderId":"o-1","total":42}', 'type', 'order.placed'),
    )
    // An empty payload field is a payload (breakwater writes one for an empty body).
    await other.xadd(topic, '*', 'id', 'empty', 'key', 'k', 'payload', '')
    await broker.publisher.publish([{ id: 'ours', topic, key: 'k', payload: 'p', headers: {} }])
    const received = new Received()
    await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
    const refused = () => errors.filter((e) => e.phase === 'refused')
    await received.until(
      () => received.messages.length >= 2 && refused().length >= 1,
      'the entries with a payload and the refusal',
    )
    expect(received.ids()).toEqual(['empty', 'ours'])
    expect(refused()).toHaveLength(1)
    const [event] = refused()
    expect(BreakwaterError.is(event!.error), String(event!.error)).toBe(true)
    expect((event!.error as BreakwaterError).code).toBe('BROKER_REJECTED')
    expect((event!.error as BreakwaterError).retryable).toBe(false)
    const text = (event!.error as Error).message
    expect(text).toContain(entry)
    expect(text).toMatch(/no payload field/)
    expect(text).toContain('"data", "type"')
    expect(event!.message?.id).toBe(`${topic}:${entry}`)
    expect(errors.filter((e) => e.phase !== 'refused')).toEqual([])
    // Acked for the group, but kept in the stream to be inspected.
    await until(
      async () => ((await other.xpending(topic, group)) as [number])[0] === 0,
      'the refused entry to be acked',
    )
    expect(await other.xlen(topic)).toBe(3)
  } finally {
    other.disconnect()
    await broker.close()
  }
})
