// close() with a handler that never settles, against every real adapter (NATS, RabbitMQ, Redis,
// the SQL queue on SQLite and PostgreSQL): it gives up after closeTimeoutMs with
// SUBSCRIPTION_CLOSE_TIMEOUT instead of waiting for ever, and the unfinished message is left
// unacknowledged (also once its handler finally resolves), so the next subscriber gets it first,
// before its key's later message. The timeout is tiny; redelivery comes after the adapters'
// test ack wait / visibility timeout (the SQL queue's on a ManualClock).
import { afterAll, describe, expect, it } from 'vitest'
import {
  type Broker,
  type IncomingMessage,
  type OutgoingMessage,
  SubscriptionCloseTimeoutError,
} from '../../src/brokers/index.js'
import { createSqlQueue, type SqlQueueOptions } from '../../src/brokers/sql-queue.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { dbTargets, type OutboxDb } from '../outbox/support.js'
import { brokerUrl } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { driveUntil, refusal } from './support.js'
import { testBroker } from './targets.js'

interface Target {
  readonly name: string
  /**
   * Opens a broker (the same server or database each call) that gives up closing after `ms`;
   * `overrides` sets its prefetch and concurrency.
   */
  open(closeTimeoutMs: number, overrides?: Limits): Promise<Broker>
  /** Waits for `done()`, driving the target's clock where it has one of its own. */
  until(received: Received, done: () => boolean, what: string): Promise<void>
}

/** Subscriber settings a case may change. */
interface Limits {
  readonly prefetch?: number
  readonly concurrency?: number
}

const databases: OutboxDb[] = []

const targets: Target[] = [
  ...(['nats', 'rabbitmq', 'redis'] as const).map(
    (name): Target => ({
      name,
      open: async (closeTimeoutMs, overrides = {}) =>
        testBroker(name, await brokerUrl(name), {
          ...overrides,
          closeTimeoutMs,
          onError: () => {},
        }),
      until: (received, done, what) => received.until(done, what),
    }),
  ),
  ...dbTargets.map((db): Target => {
    const clock = new ManualClock()
    let opened: Promise<OutboxDb> | undefined
    const options: SqlQueueOptions = {
      clock,
      pollIntervalMs: 2,
      maxPollIntervalMs: 20,
      visibilityTimeoutMs: 3_000,
      onError: () => {},
    }
    return {
      name: `sql queue on ${db.dialect}`,
      open: async (closeTimeoutMs, overrides = {}) => {
        opened ??= db.open('close_timeout').then((t) => {
          databases.push(t)
          return t
        })
        return createSqlQueue((await opened).db, { ...options, ...overrides, closeTimeoutMs })
      },
      until: (_received, done, what) => driveUntil(clock, done, what),
    }
  }),
]

afterAll(async () => {
  for (const t of databases) await t.close()
})

describe('closeTimeoutMs', () => {
  it('is refused unless an integer from 0', () => {
    for (const value of [-1, 1.5, '10']) {
      expect(
        refusal(() =>
          testBroker('nats', 'nats://127.0.0.1:4222', { closeTimeoutMs: value as never }),
        ).option,
      ).toBe('nats.closeTimeoutMs')
    }
  })
})

describe.each(targets)('close() with a handler that never settles, on $name', (target) => {
  const brokers: Broker[] = []
  afterAll(async () => {
    for (const broker of brokers) await broker.close().catch(() => {})
  })

  it('rejects with SUBSCRIPTION_CLOSE_TIMEOUT and leaves the message for the next subscriber', async () => {
    const first = await target.open(20)
    brokers.push(first)
    const topic = unique('stuck')
    const group = unique('g')
    let release!: () => void
    const stuck = new Promise<void>((resolve) => {
      release = resolve
    })
    const started = new Received()
    await first.subscriber.subscribe(topic, group, async (m) => {
      started.record(m)
      await stuck
    })
    const batch: OutgoingMessage[] = ['stuck', 'after'].map((name) => ({
      id: `${topic}-${name}`,
      topic,
      key: 'k',
      payload: name,
      headers: {},
    }))
    await first.publisher.publish(batch)
    await target.until(started, () => started.messages.length >= 1, 'the handler to start')

    let failure: unknown = 'still waiting'
    let settled = false
    void first.close().then(
      () => {
        settled = true
        failure = undefined
      },
      (error: unknown) => {
        settled = true
        failure = error
      },
    )
    // closeTimeoutMs is 20 ms: without the bound this waits for the handler, i.e. for ever.
    await target.until(started, () => settled, 'close() to give up')
    expect(failure).toBeInstanceOf(SubscriptionCloseTimeoutError)
    expect(BreakwaterError.is(failure) && failure.code).toBe('SUBSCRIPTION_CLOSE_TIMEOUT')
    expect(failure).toMatchObject({ topic, group, timeoutMs: 20, unfinished: 1 })
    // The subscription is gone: closing the broker again has nothing left to wait for.
    await expect(first.close()).resolves.toBeUndefined()

    // It finishes late: nothing may acknowledge it now.
    release()
    const next = await target.open(1_000)
    brokers.push(next)
    const received = new Received()
    const seen: IncomingMessage[] = []
    await next.subscriber.subscribe(topic, group, async (m) => {
      seen.push(m)
      received.record(m)
    })
    await target.until(received, () => received.messages.length >= 2, 'both messages again')
    expect(received.ids()).toEqual([`${topic}-stuck`, `${topic}-after`])
    expect(seen[0]!.deliveryCount).toBeGreaterThan(1)
    expect(started.ids()).toEqual([`${topic}-stuck`])
  })
  it('gives up too when the prefetch is full behind the stuck handler', async () => {
    // Redis's read loop waited for room before it saw the subscription stop, and room never
    // came: close() never reached closeTimeoutMs and hung for good.
    const topic = unique('full')
    const group = unique('g')
    // The group exists but nobody consumes, so the subscription below gets a and b at once.
    const setup = await target.open(1_000)
    await (await setup.subscriber.subscribe(topic, group, async () => {})).close()
    await setup.publisher.publish(
      ['a', 'b', 'c'].map((name) => ({
        id: `${topic}-${name}`,
        topic,
        key: name,
        payload: name,
        headers: {},
      })),
    )
    await setup.close()
    const broker = await target.open(20, { prefetch: 2, concurrency: 1 })
    brokers.push(broker)
    const started = new Received()
    await broker.subscriber.subscribe(topic, group, async (m) => {
      started.record(m)
      await new Promise<void>(() => {})
    })
    await target.until(started, () => started.messages.length >= 1, 'the handler to start')
    let failure: unknown = 'still waiting'
    void broker.close().then(
      () => {
        failure = undefined
      },
      (error: unknown) => {
        failure = error
      },
    )
    await target.until(started, () => failure !== 'still waiting', 'close() to give up')
    expect(failure).toBeInstanceOf(SubscriptionCloseTimeoutError)
    expect(started.messages).toHaveLength(1)
  })
})
