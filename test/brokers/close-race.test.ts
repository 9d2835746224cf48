// close() racing an operation still connecting, on every adapter against its real server: the
// operation must fail as closed and leave nothing consuming behind.
import { afterAll, describe, expect, it } from 'vitest'
import type { Broker } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { makeBatch, Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

const names: readonly BrokerName[] = ['nats', 'rabbitmq', 'redis']

describe.each(names)('%s: close() while subscribe() connects', (name) => {
  const open: Broker[] = []
  afterAll(async () => {
    for (const broker of open) await broker.close()
  })

  it('rejects the subscribe as closed and leaves no consumer in the group', async () => {
    const url = await brokerUrl(name)
    const racing = testBroker(name, url)
    open.push(racing)
    const topic = unique('race')
    const group = unique('g')
    const leaked = new Received()
    // subscribe() is still connecting when close() runs: close() must not miss it.
    const subscribing = racing.subscriber.subscribe(topic, group, async (m) => leaked.record(m))
    await racing.subscriber.close()
    const error = await subscribing.then(
      (subscription) => subscription,
      (e: unknown) => e,
    )
    expect(BreakwaterError.is(error), String(error)).toBe(true)
    expect((error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
    expect((error as Error).message).toMatch(/closed/)

    // A live member of the same group gets every message: nothing competes with it.
    const broker = testBroker(name, url)
    open.push(broker)
    const received = new Received()
    await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
    const batch = makeBatch(topic, 12, 3)
    await broker.publisher.publish(batch)
    await received.until(() => received.messages.length >= batch.length, 'the whole batch')
    expect(leaked.messages).toEqual([])
  })
})
