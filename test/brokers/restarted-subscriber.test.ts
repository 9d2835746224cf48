// Per-key order across a restarted subscriber process: the old process is SIGKILLed while its
// handler holds a key's message (never acknowledged), the key's next message is published, and
// a new process subscribes to the same group. The held message must run before the next one.
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import type { BrokerName } from '../../scripts/lib/brokers.mjs'
import { type Broker, createNatsBroker, createRedisBroker } from '../../src/brokers/index.js'
import { ManualClock } from '../../src/testing/manual-clock.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testBroker, testTuning } from './targets.js'

afterAll(stopOwnBrokers)

const closers: Array<() => Promise<void>> = []
afterAll(async () => {
  for (const close of closers.reverse()) await close()
})

const holdSubscriber = fileURLToPath(new URL('./fixtures/hold-subscriber.ts', import.meta.url))

/**
 * Runs the hold-subscriber fixture on (topic, group), calls `publish`, waits until the child's
 * handler holds message `first`, and SIGKILLs the child.
 */
async function holdThenKill(
  name: BrokerName,
  url: string,
  topic: string,
  group: string,
  publish: () => Promise<void>,
  env: Readonly<Record<string, string>> = {},
): Promise<void> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', holdSubscriber], {
    env: {
      ...process.env,
      ...env,
      HOLD_BROKER: name,
      HOLD_URL: url,
      HOLD_TOPIC: topic,
      HOLD_GROUP: group,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
    const next = async (prefix: string): Promise<string> => {
      for (;;) {
        const line = await lines.next()
        if (line.done) throw new Error(`child exited before printing "${prefix}"`)
        if (line.value.startsWith(prefix)) return line.value
      }
    }
    await next('ready')
    await publish()
    expect(await next('received')).toBe('received first 1')
  } finally {
    child.kill('SIGKILL')
    if (child.exitCode === null && child.signalCode === null) {
      await new Promise((resolve) => child.once('exit', resolve))
    }
  }
}

const tuning = { ...testTuning, ackWaitMs: 1_000 } as const

// Redis: with its default consumer name (new per process) a restarted process does not own its
// predecessor's pending entries; it claims them after visibilityTimeoutMs (a real clock here, as
// the claim loop runs on it), and must not run the key's next message before.
describe.each<BrokerName>(['nats', 'rabbitmq', 'redis'])('%s: a restarted subscriber', (name) => {
  it("runs the message its killed predecessor held before the key's next one", async () => {
    const url = await brokerUrl(name)
    const publishing = testBroker(name, url)
    // NATS: a clock that never moves, so only the redelivery itself (after the server's ack
    // wait), not the wait's time-out, can let the key's next message run.
    const subscribing =
      name === 'nats' ? createNatsBroker({ ...tuning, url, clock: new ManualClock() }) : publishing
    closers.push(async () => {
      await subscribing.close()
      await publishing.close()
    })
    const topic = unique('restarted')
    const group = unique('g')
    const message = (id: string) => ({ id, topic, key: 'k', payload: id, headers: {} })
    // The group exists before the first message (RabbitMQ binds its queue on subscribe).
    await (await publishing.subscriber.subscribe(topic, group, async () => {})).close()
    await holdThenKill(name, url, topic, group, () =>
      publishing.publisher.publish([message('first')]),
    )
    await publishing.publisher.publish([message('second')])

    const received = new Received()
    await subscribing.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await received.until(() => received.messages.length >= 2, 'both messages')
    expect(received.ids()).toEqual(['first', 'second'])
  })
})

// Redis with a fixed consumerName: the restarted process is the same consumer, so it reads its
// own pending entries back first (XREADGROUP from 0), at once, without waiting for
// visibilityTimeoutMs or a claim. Its clock never moves, so no claim loop runs: only that read
// can bring them back.
describe('redis: a restarted subscriber with a fixed consumerName', () => {
  it('gets its own pending entries back first, at once, and keeps per-key order', async () => {
    const url = await brokerUrl('redis')
    const topic = unique('restarted-named')
    const group = unique('g')
    const consumerName = unique('worker')
    const publishing = testBroker('redis', url)
    const subscribing = createRedisBroker({
      ...testTuning,
      url,
      consumerName,
      visibilityTimeoutMs: 600_000,
      clock: new ManualClock(),
    })
    closers.push(async () => {
      await subscribing.close()
      await publishing.close()
    })
    const message = (id: string, key: string) => ({ id, topic, key, payload: id, headers: {} })
    await (await publishing.subscriber.subscribe(topic, group, async () => {})).close()
    // The child runs 'first' (held) and has read 'other' (another key, queued behind it at
    // concurrency 1, never started) when it is killed: both stay pending under its name.
    await holdThenKill(
      'redis',
      url,
      topic,
      group,
      () => publishing.publisher.publish([message('first', 'k'), message('other', 'j')]),
      { HOLD_CONSUMER: consumerName },
    )
    await publishing.publisher.publish([message('second', 'k')])

    const received = new Received()
    await subscribing.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await received.until(() => received.messages.length >= 3, 'all three messages')
    expect(received.ids()).toEqual(['first', 'other', 'second'])
    expect(received.messages[0]!.deliveryCount).toBe(2)
    expect(received.messages[2]!.deliveryCount).toBe(1)
  })
})

/**
 * Subscribes `peer` with a handler that holds message `held`, then `joining` to the same group,
 * and waits until the joining one runs a message: it must not wait for the peer's held one.
 */
async function joinLiveGroup(peer: Broker, joining: Broker): Promise<void> {
  let release = (): void => {}
  const hanging = new Promise<void>((resolve) => {
    release = resolve
  })
  closers.push(async () => {
    release()
    await joining.close()
    await peer.close()
  })
  const topic = unique('joining')
  const group = unique('g')
  const message = (id: string) => ({ id, topic, key: id, payload: id, headers: {} })
  const peerReceived = new Received()
  await peer.subscriber.subscribe(topic, group, async (m) => {
    peerReceived.record(m)
    if (m.id === 'held') await hanging
  })
  await peer.publisher.publish([message('held')])
  await peerReceived.until(() => peerReceived.ids().includes('held'), 'the peer to hold one')

  const received = new Received()
  await joining.subscriber.subscribe(topic, group, async (m) => received.record(m))
  // The broker shares these between the two subscribers.
  await peer.publisher.publish(Array.from({ length: 20 }, (_, i) => message(`m${i}`)))
  await received.until(() => received.messages.length > 0, 'a message on the joining one')
}

describe('nats: a subscriber joining a live group', () => {
  it('does not wait for the deliveries its live peer holds (they never come back to it)', async () => {
    const url = await brokerUrl('nats')
    const peer = createNatsBroker({ ...tuning, url, concurrency: 2, prefetch: 4 })
    // A clock that never moves: a wait for the peer's delivery would never time out.
    const joining = createNatsBroker({ ...tuning, url, prefetch: 4, clock: new ManualClock() })
    await joinLiveGroup(peer, joining)
  })
})

describe('redis: a subscriber joining a live group', () => {
  it('does not wait for the entries its live peer holds (they never come back to it)', async () => {
    const url = await brokerUrl('redis')
    const peer = testBroker('redis', url, { concurrency: 2, prefetch: 4 })
    // visibilityTimeoutMs far beyond the test: a wait for the peer's entry would outlast it.
    const joining = createRedisBroker({
      ...testTuning,
      url,
      prefetch: 4,
      visibilityTimeoutMs: 600_000,
      blockMs: 1_000,
    })
    await joinLiveGroup(peer, joining)
  })
})
