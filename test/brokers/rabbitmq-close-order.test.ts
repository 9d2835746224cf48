// A subscription closed gracefully while it holds a key's later messages behind that key's
// earlier one (running, or waiting for its retry), and more of the key wait in the queue beyond
// its prefetch, against a real RabbitMQ: the next consumer of the group must run the key's
// messages in order. The held ones were nacked with requeue one by one at close, which a quorum
// queue (RabbitMQ 4) puts at the back, behind the key's messages not yet delivered, while the
// channel's close returns what it still held to the front: m0 m3 m4 m1 (m2).
import { afterAll, describe, expect, it } from 'vitest'
import { createRabbitMqBroker, type IncomingMessage } from '../../src/brokers/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { makeBatch, Received, unique } from './conformance.js'
import { testTuning } from './targets.js'

afterAll(stopOwnBrokers)

/** How many messages of the queue wait to be delivered (not the delivered, unacked ones). */
async function ready(url: string, queue: string): Promise<number> {
  const amqp = await import('amqplib')
  const model = await amqp.connect(url)
  try {
    const channel = await model.createChannel()
    return (await channel.checkQueue(queue)).messageCount
  } finally {
    await model.close()
  }
}

/** Polls until the queue of `topic` (group g) holds `count` messages not yet delivered. */
async function untilReady(url: string, topic: string, count: number, what: string) {
  const deadline = Date.now() + 20_000
  while ((await ready(url, `${topic}.g`)) !== count) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * Resolves once a consumer of this process has been cancelled (its cancel answered by the
 * server) and the microtasks that follow have run: close() then waits for its running handlers.
 * Watches amqplib's channels through the prototype every channel shares; `restore` ends it.
 */
async function watchCancel(url: string) {
  const amqp = await import('amqplib')
  const model = await amqp.connect(url)
  const proto = Object.getPrototypeOf(await model.createChannel()) as {
    cancel: (tag: string) => Promise<unknown>
  }
  await model.close()
  const original = proto.cancel
  let cancelled!: () => void
  const done = new Promise<void>((resolve) => {
    cancelled = resolve
  })
  proto.cancel = async function (this: unknown, tag: string) {
    const reply = await original.call(this, tag)
    setImmediate(cancelled)
    return reply
  }
  return {
    done,
    restore: () => {
      proto.cancel = original
    },
  }
}

/** Prefetch of the consumers: of a five-message batch, two stay in the queue. */
const PREFETCH = 3

/**
 * Subscribes `handler` to `topic` as group g. The clock moves only when the test moves it, so
 * a failed message waits for its retry until the subscription closes.
 */
async function consumer(
  url: string,
  topic: string,
  handler: (m: IncomingMessage) => Promise<void>,
) {
  const broker = createRabbitMqBroker({
    ...testTuning,
    url,
    clock: new ManualClock(),
    retryDelayMs: 1_000,
    prefetch: PREFETCH,
    concurrency: 1,
    onError: () => {},
  })
  const subscription = await broker.subscriber.subscribe(topic, 'g', handler)
  return { broker, subscription }
}

/** Runs a new consumer of the group until it has seen `ids`; returns the ids of its first runs. */
async function nextRuns(url: string, topic: string, ids: readonly string[]): Promise<string[]> {
  const received = new Received()
  const next = await consumer(url, topic, async (m) => received.record(m))
  try {
    await received.until(() => ids.every((id) => received.ids().includes(id)), 'every message')
    return [...new Set(received.ids())]
  } finally {
    await next.broker.close()
  }
}

describe('rabbitmq: a subscription closed while it holds a key’s later messages', () => {
  it('returns them behind the key’s failed message, so the next consumer runs the key in order', async () => {
    const url = await brokerUrl('rabbitmq')
    const topic = unique('close-held')
    const batch = makeBatch(topic, 5, 1)
    const tried = new Received()
    const first = await consumer(url, topic, async (m) => {
      tried.record(m)
      if (m.id === batch[0]!.id) throw new Error('the first message fails here')
    })
    try {
      await first.broker.publisher.publish(batch)
      // m0 failed and waits for its retry; m1 and m2 were delivered and are held behind it;
      // m3 and m4 wait in the queue.
      await tried.until(() => tried.messages.length === 1, 'the first attempt')
      await untilReady(url, topic, batch.length - PREFETCH, 'the prefetch')
      expect(tried.ids()).toEqual([batch[0]!.id])
      await first.subscription.close()
      const later = makeBatch(topic, 1, 1, 'later')
      await first.broker.publisher.publish(later)
      const all = [...batch, ...later].map((m) => m.id)
      expect(await nextRuns(url, topic, all)).toEqual(all)
    } finally {
      await first.broker.close()
    }
  }, 60_000)

  it('lets the running handler finish and acks it, and returns the held ones in order', async () => {
    const url = await brokerUrl('rabbitmq')
    const topic = unique('close-running')
    const batch = makeBatch(topic, 5, 1)
    let finish!: () => void
    const slow = new Promise<void>((resolve) => {
      finish = resolve
    })
    const started = new Received()
    const done: string[] = []
    const first = await consumer(url, topic, async (m) => {
      started.record(m)
      if (m.id === batch[0]!.id) await slow
      done.push(m.id)
    })
    try {
      await first.broker.publisher.publish(batch)
      await started.until(() => started.messages.length === 1, 'the first handler')
      await untilReady(url, topic, batch.length - PREFETCH, 'the prefetch')
      const cancel = await watchCancel(url)
      try {
        const closing = first.subscription.close()
        // Finishes once close() has cancelled the consumer and waits for the running handler.
        await cancel.done
        finish()
        await closing
      } finally {
        cancel.restore()
      }
      // The in-flight handler finished before close() resolved; nothing else started.
      expect(done).toEqual([batch[0]!.id])
      const later = makeBatch(topic, 1, 1, 'later')
      await first.broker.publisher.publish(later)
      const rest = [...batch.slice(1), ...later].map((m) => m.id)
      // m0 was acknowledged: it does not come back.
      expect(await nextRuns(url, topic, rest)).toEqual(rest)
    } finally {
      await first.broker.close()
    }
  }, 60_000)
})
