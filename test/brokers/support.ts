// Small helpers the broker adapters' own test files share (the conformance suite has its own).
import { expect } from 'vitest'
import {
  type Broker,
  createNatsBroker,
  createRabbitMqBroker,
  createRedisBroker,
} from '../../src/brokers/index.js'
import type { ErrorCode } from '../../src/core/error-codes.js'
import { BreakwaterError, InvalidOptionError } from '../../src/core/errors.js'
import type { ManualClock } from '../../src/testing/index.js'
import { makeBatch, Received, unique } from './conformance.js'

/**
 * What a promise rejected with, or `undefined` when it fulfilled: lets a test collect several
 * failures first and check them together (a fulfilled one then fails the check, not the test
 * early).
 */
export function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (e: unknown) => e,
  )
}

/**
 * Publishes one message to `topic`, then subscribes to it as `group`, and returns what each
 * rejected with (`undefined` for one that succeeded), in that order.
 */
export async function publishAndSubscribeFailures(
  broker: Broker,
  topic: string,
  group: string = unique('g'),
): Promise<[unknown, unknown]> {
  return [
    await rejectionOf(broker.publisher.publish(makeBatch(topic, 1, 1))),
    await rejectionOf(broker.subscriber.subscribe(topic, group, async () => {})),
  ]
}

/**
 * Checks `error` is a breakwater error with `code` and, when given, `retryable`; `label` (the
 * error itself by default) names the case in a failure.
 */
export function expectBrokerError(
  error: unknown,
  code: ErrorCode,
  retryable?: boolean,
  label: string = String(error),
): asserts error is BreakwaterError {
  expect(BreakwaterError.is(error), label).toBe(true)
  expect((error as BreakwaterError).code, label).toBe(code)
  if (retryable !== undefined) expect((error as BreakwaterError).retryable, label).toBe(retryable)
}

/** What `make` threw, checked to be an {@link InvalidOptionError}; fails when it returns. */
export function refusal(make: () => unknown): InvalidOptionError {
  try {
    make()
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  throw new Error('expected INVALID_OPTION')
}

/**
 * Subscribes, publishes one message and waits for it, then closes `broker`: the connection
 * works end to end (`label` names the topic, e.g. the TLS setting under test).
 */
export async function roundTrip(broker: Broker, label = 'round-trip'): Promise<void> {
  try {
    const topic = unique(label)
    const received = new Received()
    await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
    const batch = makeBatch(topic, 1, 1)
    await broker.publisher.publish(batch)
    await received.until(() => received.messages.length >= 1, `the message (${label})`)
    expect(received.messages[0]?.id).toBe(batch[0]?.id)
  } finally {
    await broker.close()
  }
}

/**
 * Each TLS adapter made with `tls` as given (unchecked: refusal tests pass what the types do
 * not allow) on a URL that uses TLS; nothing connects until a publish or subscribe.
 */
export const createWithTls = {
  nats: (tls: unknown, extra: object = {}) =>
    createNatsBroker({ url: 'tls://127.0.0.1:4222', tls, ...extra } as Parameters<
      typeof createNatsBroker
    >[0]),
  redis: (tls: unknown, extra: object = {}) =>
    createRedisBroker({ url: 'rediss://127.0.0.1:6380', tls, ...extra } as Parameters<
      typeof createRedisBroker
    >[0]),
  rabbitmq: (tls: unknown, extra: object = {}) =>
    createRabbitMqBroker({ url: 'amqps://127.0.0.1:5671', tls, ...extra } as Parameters<
      typeof createRabbitMqBroker
    >[0]),
}

/**
 * Advances the clock to each pending timer, letting real I/O run between, until `done()`. Gives
 * up after 30 s of real time so a hang fails the test with `what` instead of its timeout.
 */
export async function driveUntil(
  clock: ManualClock,
  done: () => boolean,
  what: string,
): Promise<void> {
  const deadline = Date.now() + 30_000
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what}`)
    const next = clock.nextTimerAt()
    if (next !== undefined) await clock.advance(next - clock.now())
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}
