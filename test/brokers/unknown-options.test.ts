// A misspelt option of a broker factory was dropped without a word and its default used:
// createRedisBroker({ visibilityTimeout: 3_000 }) left crashed consumers' messages pending for
// 30 s, createWebhookPublisher({ retry: { maxAttemps: 1 } }) retried three times. Each is now
// refused with INVALID_OPTION naming it (`redis.visibilityTimeout`), its value hidden when it is
// text or bytes (a credential given as an option of its own, `password`, would otherwise be
// quoted in a message that ends up in logs); correct options still work. Nothing connects:
// the checks run at construction.
import { describe, expect, it } from 'vitest'
import {
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
  createWebhookPublisher,
  openBroker,
  verifyWebhookSignature,
} from '../../src/brokers/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'

const secret = 'a-webhook-secret-of-32-characters'
const webhook = { url: 'http://127.0.0.1:1/hooks', secret }

// [the option the error names, a call with that misspelt option, the same call spelt right]
const cases: Array<[string, (o: Record<string, unknown>) => unknown, Record<string, unknown>]> = [
  [
    'nats.ackWait',
    (o) => createNatsBroker({ url: 'nats://127.0.0.1:1', ...o }),
    { ackWaitMs: 3_000, connectTimeoutMs: 1_000, name: 'test' },
  ],
  [
    'nats.stream.subject',
    (o) =>
      createNatsBroker({ url: 'nats://127.0.0.1:1', stream: { name: 'all', subjects: [], ...o } }),
    { subjects: ['orders.>'] },
  ],
  [
    'redis.visibilityTimeout',
    (o) => createRedisBroker({ url: 'redis://127.0.0.1:1', ...o }),
    { visibilityTimeoutMs: 3_000, prefetch: 8, consumerName: 'c1' },
  ],
  [
    'rabbitmq.exchangeTyp',
    (o) => createRabbitMqBroker({ url: 'amqp://127.0.0.1:1', ...o }),
    { exchangeType: 'direct', onError: () => {} },
  ],
  ['openBroker.rabbitMq', (o) => openBroker('amqp://127.0.0.1:1', o), { rabbitmq: {} }],
  // A section of openBroker is handed to its adapter, which names the option.
  [
    'redis.visibilityTimeout',
    (o) => openBroker('redis://127.0.0.1:1', { redis: o }),
    { visibilityTimeoutMs: 3_000 },
  ],
  ['webhook.atemptTimeoutMs', (o) => createWebhookPublisher({ ...webhook, ...o }), { batch: true }],
  [
    'webhook.retry.maxAttemps',
    (o) => createWebhookPublisher({ ...webhook, retry: o }),
    { maxAttempts: 1, baseDelayMs: 10 },
  ],
  [
    'options.tolerance',
    (o) => verifyWebhookSignature(secret, undefined, '{}', o),
    { toleranceMs: 1_000, clock: new ManualClock(0) },
  ],
]

describe('broker factories refuse an unknown option', () => {
  it.each(cases)('refuses %s', async (option, call, good) => {
    const key = option.slice(option.lastIndexOf('.') + 1)
    const error = await optionRefusal(() => call({ ...good, [key]: 'hunter2-secret' }))
    expect(error.option).toBe(option)
    // The message lists what it takes, so the right spelling is at hand; the value stays out.
    expect(error.message).toContain(Object.keys(good)[0])
    expect(error.message).not.toContain('hunter2')
    expect(JSON.stringify(error.value)).not.toContain('hunter2')
    // Spelt right (and an unknown key left undefined, as a spread of defaults leaves it) it works.
    const made = call({ ...good, [key]: undefined })
    await (made as { close?: () => Promise<void> } | undefined)?.close?.()
  })
})
