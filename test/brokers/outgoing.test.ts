// Messages a broker cannot carry unchanged are refused before anything is sent, on every
// adapter against its real server, instead of arriving altered (or retried forever).
import { afterAll, describe, expect, it } from 'vitest'
import { type Broker, KEY_HEADER, type OutgoingMessage } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

const names: readonly BrokerName[] = ['nats', 'rabbitmq', 'redis']

describe.each(names)('%s: outgoing messages', (name) => {
  const open: Broker[] = []
  afterAll(async () => {
    for (const broker of open) await broker.close()
  })

  it('refuses text with a lone surrogate and fields of the wrong type with BROKER_REJECTED, sending nothing', async () => {
    const broker = testBroker(name, await brokerUrl(name))
    open.push(broker)
    const topic = unique('out')
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    const good: OutgoingMessage = { id: 'good', topic, key: 'k', payload: '{}', headers: {} }
    // A lone surrogate has no UTF-8 form: it would be sent as U+FFFD, so 'x\ud800' and
    // 'x\ud801' would arrive as one id (NATS would even drop the second as a duplicate).
    const bad: Array<[string, OutgoingMessage]> = [
      ['id', { ...good, id: 'x\ud800' }],
      ['key', { ...good, key: 'k\udc00' }],
      ['header value', { ...good, headers: { h: 'v\ud800' } }],
      ['header name', { ...good, headers: { 'h\ud800': 'v' } }],
      ['payload', { ...good, payload: '{"a":"\ud800"}' }],
      ['id type', { ...good, id: 7 as unknown as string }],
      ['key type', { ...good, key: undefined as unknown as string }],
      ['header type', { ...good, headers: { h: 1 as unknown as string } }],
      ['payload type', { ...good, payload: { a: 1 } as unknown as string }],
    ]
    // The adapters' own limits are checked before the first message goes out as well.
    if (name === 'nats') {
      bad.push(
        ['padded key', { ...good, key: ' k' }],
        ['CR in a header', { ...good, headers: { h: 'a\rb' } }],
      )
    }
    if (name === 'rabbitmq') bad.push(['long id', { ...good, id: 'é'.repeat(128) }])
    for (const [what, message] of bad) {
      const error = await broker.publisher.publish([good, message]).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(BreakwaterError.is(error), `${what}: ${String(error)}`).toBe(true)
      expect((error as BreakwaterError).code, what).toBe('BROKER_REJECTED')
      expect((error as BreakwaterError).retryable, what).toBe(false)
      expect((error as Error).message, what).toMatch(/messages\[1\]/)
    }
    // Nothing of the refused batches went out: only this one arrives.
    await broker.publisher.publish([{ ...good, id: 'after' }])
    await received.until(() => received.messages.length >= 1, 'the good message')
    expect(received.ids()).toEqual(['after'])
  })

  it('refuses an application header named like the reserved key header (BROKER_REJECTED) instead of overwriting it with the key', async () => {
    const broker = testBroker(name, await brokerUrl(name))
    open.push(broker)
    const topic = unique('reserved')
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    const good: OutgoingMessage = { id: 'good', topic, key: 'k', payload: '{}', headers: {} }
    const reserved = [KEY_HEADER]
    // NATS also carries the id in a header of its own.
    if (name === 'nats') reserved.push('Nats-Msg-Id')
    for (const header of reserved) {
      const error = await broker.publisher
        .publish([good, { ...good, id: 'bad', headers: { [header]: 'mine' } }])
        .then(
          () => undefined,
          (e: unknown) => e,
        )
      expect(BreakwaterError.is(error), `${header}: ${String(error)}`).toBe(true)
      expect((error as BreakwaterError).code).toBe('BROKER_REJECTED')
      expect((error as BreakwaterError).retryable).toBe(false)
      expect((error as Error).message).toContain(`messages[1].headers has a header named ${header}`)
    }
    // A name that merely contains the reserved one is the application's and arrives unchanged.
    await broker.publisher.publish([
      { ...good, id: 'after', headers: { 'x-breakwater-key': 'mine' } },
    ])
    await received.until(() => received.messages.length >= 1, 'the good message')
    expect(received.ids()).toEqual(['after'])
    expect(received.messages[0]!.key).toBe('k')
    expect(received.messages[0]!.headers).toEqual({ 'x-breakwater-key': 'mine' })
  })
})
