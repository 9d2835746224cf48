// publish(messages, signal) on every adapter refuses a signal that is not an AbortSignal with
// INVALID_OPTION naming `signal`, before it connects or sends anything. Before, the NATS,
// RabbitMQ, Redis and SQL queue publishers read only `signal.aborted` up front (undefined on a
// string or a plain object, so a batch went out as if no signal was given) and failed with a bare
// TypeError only in a publish that had to wait for its connection; the webhook publisher
// ignored the value until its first request. No server is needed: nothing may be reached.
import { afterAll, describe, expect, it } from 'vitest'
import {
  type Broker,
  createWebhookPublisher,
  type OutgoingMessage,
  type Publisher,
} from '../../src/brokers/index.js'
import { createSqlQueue } from '../../src/outbox/index.js'
import { createSqliteDriver, type SqlDriver } from '../../src/stores/index.js'
import { testBroker } from './targets.js'

// A loopback port nobody listens on: a publish that tried to connect would fail with a broker
// error, not INVALID_OPTION.
const nowhere = '127.0.0.1:9'
const message: OutgoingMessage = { id: 'm1', topic: 'orders', key: 'k', payload: '{}', headers: {} }
const notSignals: readonly unknown[] = ['abort', {}, { aborted: false }, null]

const closers: Array<() => Promise<unknown>> = []
afterAll(async () => {
  for (const close of closers) await close()
})

const publishers: Record<string, () => Promise<Publisher>> = {
  nats: async () => own(testBroker('nats', `nats://${nowhere}`)),
  rabbitmq: async () => own(testBroker('rabbitmq', `amqp://${nowhere}`)),
  redis: async () => own(testBroker('redis', `redis://${nowhere}`)),
  webhook: async () => {
    const publisher = createWebhookPublisher({
      url: `http://${nowhere}/events`,
      secret: 'a secret of 16+ bytes',
    })
    closers.push(async () => publisher.close())
    return publisher
  },
  'sql queue': async () => {
    const db: SqlDriver = await createSqliteDriver({ filename: ':memory:' })
    closers.push(() => db.close())
    const queue = createSqlQueue(db)
    closers.push(() => queue.close())
    return queue.publisher
  },
}

function own(broker: Broker): Publisher {
  closers.push(() => broker.close())
  return broker.publisher
}

describe.each(Object.keys(publishers))('%s: publish(messages, signal)', (name) => {
  it('refuses a signal that is not an AbortSignal before connecting or sending', async () => {
    const publisher = await publishers[name]!()
    for (const signal of notSignals) {
      await expect(
        publisher.publish([message], signal as unknown as AbortSignal),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'signal' })
      await expect(publisher.publish([], signal as unknown as AbortSignal)).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'signal',
      })
    }
  })

  it('rejects with ABORTED when the signal already aborted, an empty batch too', async () => {
    // The webhook publisher resolved an empty batch under an aborted signal, where every other
    // adapter rejected it as aborted before any work.
    const publisher = await publishers[name]!()
    const signal = AbortSignal.abort(new Error('gone'))
    for (const batch of [[message], []]) {
      await expect(publisher.publish(batch, signal)).rejects.toMatchObject({ code: 'ABORTED' })
    }
  })
})
