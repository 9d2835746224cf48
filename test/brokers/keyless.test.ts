// Messages without a key: a producer that is not breakwater sends no breakwater-key header (NATS,
// RabbitMQ) or key field (Redis), so its messages arrived with the key '' and shared one ordering
// lane. One whose handler failed every time (a malformed body) was redelivered for ever and held
// back every other keyless message behind it: 149 attempts in 75 s, none of the others run. An
// empty key now means no ordering: each keyless message runs on its own. Real servers.
import { afterAll, describe, expect, it } from 'vitest'
import type { Broker, IncomingMessage, OutgoingMessage } from '../../src/brokers/index.js'
import type { SqlQueue } from '../../src/brokers/sql-queue.js'
import { dbTargets, type OutboxDb, testQueue } from '../outbox/support.js'
import { type BrokerName, brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

/** A malformed keyless message first, then three good ones, all with the key ''. */
function keylessBatch(topic: string): OutgoingMessage[] {
  const message = (id: string, payload: string): OutgoingMessage => ({
    id,
    topic,
    key: '',
    payload,
    headers: {},
  })
  return [
    message('bad', '{"bad":'),
    message('good-1', '{"good":1}'),
    message('good-2', '{"good":2}'),
    message('good-3', '{"good":3}'),
  ]
}

/**
 * A handler that parses the payload as JSON, as an application's would: it fails on 'bad' every
 * time. Returns it with what it handled and how often 'bad' was tried.
 */
function parsingHandler() {
  const received = new Received()
  const attempts = { bad: 0 }
  const handler = async (m: IncomingMessage): Promise<void> => {
    if (m.id === 'bad') attempts.bad++
    JSON.parse(Buffer.from(m.payload).toString('utf8'))
    received.record(m)
  }
  return { received, attempts, handler }
}

async function expectGoodOnesRun(
  received: Received,
  attempts: { bad: number },
  what: string,
): Promise<void> {
  // Before, the good ones waited behind 'bad' for as long as it failed: for ever.
  await received.until(() => received.messages.length >= 3, `the good keyless messages (${what})`)
  expect(received.ids().sort()).toEqual(['good-1', 'good-2', 'good-3'])
  expect(attempts.bad).toBeGreaterThanOrEqual(1)
}

describe.each(['nats', 'rabbitmq', 'redis'] as const)(
  '%s: keyless messages',
  (name: BrokerName) => {
    let broker: Broker | undefined
    afterAll(async () => {
      await broker?.close()
    })

    it('run each on its own: one whose handler keeps failing holds none of the others back', async () => {
      broker = testBroker(name, await brokerUrl(name), { concurrency: 1 })
      const topic = unique('keyless')
      const { received, attempts, handler } = parsingHandler()
      await broker.subscriber.subscribe(topic, unique('g'), handler)
      await broker.publisher.publish(keylessBatch(topic))
      await expectGoodOnesRun(received, attempts, name)
    })
  },
)

describe.each(dbTargets)('SQL queue on $dialect: keyless messages', (target) => {
  let t: OutboxDb | undefined
  let queue: SqlQueue | undefined
  afterAll(async () => {
    await queue?.close()
    await t?.close()
  })

  it('run each on its own: one whose handler keeps failing holds none of the others back', async () => {
    t = await target.open('sql_queue_keyless')
    queue = testQueue(t.db, { concurrency: 1, retryDelayMs: 20, onError: () => {} })
    const topic = unique('keyless')
    const { received, attempts, handler } = parsingHandler()
    await queue.subscriber.subscribe(topic, 'g', handler)
    await queue.publisher.publish(keylessBatch(topic))
    await expectGoodOnesRun(received, attempts, target.dialect)
  })
})
