import { afterAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { describeBrokerConformance, makeBatch, Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'rabbitmq', dedupe: false })

describe('rabbitmq specifics', () => {
  const closers: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const close of closers) await close()
  })

  it('fails a publish no queue is bound for with a retryable BROKER_UNROUTABLE, then delivers once one is', async () => {
    const broker = testBroker('rabbitmq', await brokerUrl('rabbitmq'))
    closers.push(() => broker.close())
    const topic = unique('orphan')
    const batch = makeBatch(topic, 3, 1)
    const error = await broker.publisher.publish(batch).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(BreakwaterError.is(error)).toBe(true)
    expect((error as BreakwaterError).code).toBe('BROKER_UNROUTABLE')
    expect((error as BreakwaterError).retryable).toBe(true)

    // A subscriber declares and binds its queue; the relay's retry of the same batch now lands.
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    await broker.publisher.publish(batch)
    await received.until(() => received.messages.length >= 3, 'the retried batch')
    expect(received.ids().sort()).toEqual(batch.map((m) => m.id).sort())
  })
})
