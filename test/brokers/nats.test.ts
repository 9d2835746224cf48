import { afterAll, describe, expect, it } from 'vitest'
import { createNatsBroker } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { describeBrokerConformance, makeBatch, Received, unique } from './conformance.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'nats', dedupe: true })

describe('nats specifics', () => {
  const closers: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const close of closers) await close()
  })

  it('keeps topics apart in one shared stream and refuses topics outside it as unroutable', async () => {
    const prefix = unique('shared')
    const broker = createNatsBroker({
      url: await brokerUrl('nats'),
      stream: { name: prefix, subjects: [`${prefix}.>`] },
      retryDelayMs: 50,
    })
    closers.push(() => broker.close())
    const group = unique('g')
    const onA = new Received()
    const onB = new Received()
    await broker.subscriber.subscribe(`${prefix}.a`, group, async (m) => onA.record(m))
    await broker.subscriber.subscribe(`${prefix}.b`, group, async (m) => onB.record(m))
    await broker.publisher.publish([
      ...makeBatch(`${prefix}.a`, 3, 1, 'a'),
      ...makeBatch(`${prefix}.b`, 2, 1, 'b'),
    ])
    await onA.until(() => onA.messages.length >= 3, 'topic a')
    await onB.until(() => onB.messages.length >= 2, 'topic b')
    expect(onA.ids().sort()).toEqual(['a-0', 'a-1', 'a-2'])
    expect(onB.ids().sort()).toEqual(['b-0', 'b-1'])

    const error = await broker.publisher.publish(makeBatch(unique('elsewhere'), 1, 1)).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(BreakwaterError.is(error)).toBe(true)
    expect((error as BreakwaterError).code).toBe('BROKER_UNROUTABLE')
  })
})
