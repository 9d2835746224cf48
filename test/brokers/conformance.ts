// The conformance suite every broker adapter passes, against a real server (never a mock).
// Each test uses fresh topics and groups, so tests share one server without seeing each other.
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Subscription,
} from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { classifyFailure } from '../../src/policies/classify.js'
import {
  type BrokerName,
  brokerUrl,
  type StartedBroker,
  startPrivateBroker,
} from '../support/brokers.js'
import { type TestOverrides, testBroker } from './targets.js'

/** What a broker's test file hands the suite. */
export interface ConformanceTarget {
  readonly name: BrokerName
  /** Whether the broker drops a message id published twice inside its window (NATS). */
  readonly dedupe: boolean
}

/** Collects deliveries and lets a test wait for a condition on them. */
export class Received {
  readonly messages: IncomingMessage[] = []
  #waiters: Array<() => void> = []

  /** Records a delivery; use as (part of) a handler. */
  record(message: IncomingMessage): void {
    this.messages.push(message)
    const waiters = this.#waiters
    this.#waiters = []
    for (const wake of waiters) wake()
  }

  ids(): string[] {
    return this.messages.map((m) => m.id)
  }

  /** Resolves once `done()` holds; fails the test after `timeoutMs` of real time. */
  async until(done: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!done()) {
      const left = deadline - Date.now()
      if (left <= 0) {
        throw new Error(`timed out waiting for ${what}; received ${this.messages.length}`)
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250))
        this.#waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }
}

/** A unique name for a test's topic or group. */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`
}

/**
 * A batch exercising the codec: UTF-8 text, binary bytes that are not valid UTF-8, an empty
 * payload, several headers and none.
 */
export function makeBatch(
  topic: string,
  count: number,
  keys: number,
  prefix = 'm',
): OutgoingMessage[] {
  return Array.from({ length: count }, (_, i) => {
    const variant = i % 4
    const payload =
      variant === 0
        ? JSON.stringify({ seq: i, text: 'grüße ✓' })
        : variant === 1
          ? Uint8Array.from([0, 255, 128, 10, 13, i % 256])
          : variant === 2
            ? ''
            : Buffer.from(`buffer ${i}`)
    const headers: Record<string, string> =
      variant === 2
        ? {}
        : {
            traceparent: `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`,
            'x-correlation-id': `corr-${i}`,
            'event-type': 'OrderPlaced',
          }
    return { id: `${prefix}-${i}`, topic, key: `key-${i % keys}`, payload, headers }
  })
}

function bytesOf(payload: Uint8Array | string): Buffer {
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload)
}

const holdSubscriber = fileURLToPath(new URL('./fixtures/hold-subscriber.ts', import.meta.url))

/** Runs a subscriber in a child process whose handler never finishes. */
function spawnHolder(env: Record<string, string>): {
  child: ChildProcess
  lines: AsyncIterator<string>
} {
  const child = spawn(process.execPath, ['--import', 'tsx', holdSubscriber], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  return { child, lines }
}

async function nextLine(lines: AsyncIterator<string>, prefix: string): Promise<string> {
  for (;;) {
    const line = await lines.next()
    if (line.done) throw new Error(`child exited before printing "${prefix}"`)
    if (line.value.startsWith(prefix)) return line.value
  }
}

/** Defines the shared conformance tests for one broker. */
export function describeBrokerConformance(target: ConformanceTarget): void {
  const create = (url: string, overrides?: TestOverrides): Broker =>
    testBroker(target.name, url, overrides)
  describe(`${target.name} conformance`, () => {
    const open: Array<Broker | Subscription> = []
    const track = <T extends Broker | Subscription>(thing: T): T => {
      open.push(thing)
      return thing
    }
    // The restart test's private server boots while the other tests run (RabbitMQ takes
    // seconds); it is stopped at the end whatever happened.
    let privateServer: Promise<StartedBroker> | undefined
    beforeAll(() => {
      privateServer = startPrivateBroker(target.name)
      privateServer.catch(() => {})
    })
    afterAll(async () => {
      await privateServer?.then(
        (server) => server.stop(),
        () => {},
      )
      for (const thing of open.reverse()) await thing.close()
    })

    it('delivers every message of a batch with its id, key, headers and payload', async () => {
      const broker = track(create(await brokerUrl(target.name)))
      const topic = unique('batch')
      const received = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
      const batch = makeBatch(topic, 40, 5)
      await broker.publisher.publish(batch)
      await received.until(() => received.messages.length >= batch.length, 'the whole batch')

      expect(received.ids().sort()).toEqual(batch.map((m) => m.id).sort())
      for (const sent of batch) {
        const got = received.messages.find((m) => m.id === sent.id)!
        expect(got.topic).toBe(topic)
        expect(got.key).toBe(sent.key)
        expect(got.headers).toEqual(sent.headers)
        expect(Buffer.from(got.payload).equals(bytesOf(sent.payload))).toBe(true)
        expect(got.deliveryCount).toBe(1)
      }
    })

    it('keeps per-key order with one subscriber, even with concurrent handlers', async () => {
      const broker = track(create(await brokerUrl(target.name), { concurrency: 4, prefetch: 32 }))
      const topic = unique('order')
      const received = new Received()
      const running = new Map<string, number>()
      let concurrent = 0
      let maxConcurrent = 0
      let sameKeyOverlaps = 0
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => {
        if ((running.get(m.key) ?? 0) !== 0) sameKeyOverlaps++
        running.set(m.key, 1)
        concurrent++
        maxConcurrent = Math.max(maxConcurrent, concurrent)
        // Yield a few times so handlers of different keys overlap.
        for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve))
        running.set(m.key, 0)
        concurrent--
        received.record(m)
      })
      const all: OutgoingMessage[] = []
      for (let round = 0; round < 3; round++) {
        const batch = makeBatch(topic, 60, 6, `r${round}`).map((m, i) => ({
          ...m,
          headers: { ...m.headers, seq: String(round * 60 + i) },
        }))
        all.push(...batch)
        await broker.publisher.publish(batch)
      }
      await received.until(() => received.messages.length >= all.length, 'every message')

      expect(received.messages).toHaveLength(all.length)
      const lastSeq = new Map<string, number>()
      for (const m of received.messages) {
        const seq = Number(m.headers.seq)
        expect(seq).toBeGreaterThan(lastSeq.get(m.key) ?? -1)
        lastSeq.set(m.key, seq)
      }
      expect(sameKeyOverlaps).toBe(0)
      expect(maxConcurrent).toBeGreaterThan(1)
      expect(maxConcurrent).toBeLessThanOrEqual(4)
    })

    it('redelivers a message whose handler throws (deliveryCount > 1) and loses nothing', async () => {
      const broker = track(create(await brokerUrl(target.name)))
      const topic = unique('retry')
      const batch = makeBatch(topic, 20, 4)
      // Distinct keys: a failure also returns the same key's queued successors unhandled.
      const failing = ['m-3', 'm-6', 'm-13']
      const failOnce = new Set(failing)
      const attempts = new Map<string, number[]>()
      const succeeded = new Received()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => {
        attempts.set(m.id, [...(attempts.get(m.id) ?? []), m.deliveryCount])
        if (failOnce.delete(m.id)) throw new Error(`handler failure for ${m.id}`)
        succeeded.record(m)
      })
      await broker.publisher.publish(batch)
      await succeeded.until(
        () => new Set(succeeded.ids()).size >= batch.length,
        'every message to be handled successfully',
      )

      expect(new Set(succeeded.ids())).toEqual(new Set(batch.map((m) => m.id)))
      for (const id of failing) {
        const counts = attempts.get(id)!
        expect(counts.length).toBeGreaterThanOrEqual(2)
        expect(counts[0]).toBe(1)
        expect(counts.at(-1)).toBeGreaterThan(1)
        const final = succeeded.messages.find((m) => m.id === id)!
        expect(final.deliveryCount).toBeGreaterThan(1)
      }
    })

    it('holds later messages of a key while an earlier one is out for redelivery, with a large prefetch', async () => {
      const broker = track(create(await brokerUrl(target.name), { concurrency: 4, prefetch: 64 }))
      const topic = unique('held')
      const message = (key: string, n: number): OutgoingMessage => ({
        id: `${key}-${n}`,
        topic,
        key,
        payload: String(n),
        headers: { seq: String(n) },
      })
      const firstSuccess: IncomingMessage[] = []
      const done = new Received()
      let failed = false
      let published: Promise<void> = Promise.resolve()
      await broker.subscriber.subscribe(topic, unique('g'), async (m) => {
        if (m.id === 'hot-0' && !failed) {
          failed = true
          // The key's later messages (and others) arrive while hot-0 is out for redelivery:
          // they must wait for it, not overtake it.
          published = (async () => {
            await new Promise((resolve) => setImmediate(resolve))
            await broker.publisher.publish([
              ...[1, 2, 3, 4, 5].map((n) => message('hot', n)),
              ...[0, 1, 2].map((n) => message('cold', n)),
            ])
          })()
          throw new Error('hot-0 fails once')
        }
        if (!done.ids().includes(m.id)) firstSuccess.push(m)
        done.record(m)
      })
      await broker.publisher.publish([message('hot', 0)])
      await done.until(() => new Set(done.ids()).size >= 9, 'every message to succeed')
      await published

      const hot = firstSuccess.filter((m) => m.key === 'hot').map((m) => m.id)
      expect(hot).toEqual(['hot-0', 'hot-1', 'hot-2', 'hot-3', 'hot-4', 'hot-5'])
      expect(firstSuccess.filter((m) => m.key === 'cold').map((m) => m.id)).toEqual([
        'cold-0',
        'cold-1',
        'cold-2',
      ])
    })

    it('does not ack before the handler resolves: a killed subscriber’s message goes to the next one', async () => {
      const url = await brokerUrl(target.name)
      const topic = unique('crash')
      const group = unique('g')
      const holder = spawnHolder({
        HOLD_BROKER: target.name,
        HOLD_URL: url,
        HOLD_TOPIC: topic,
        HOLD_GROUP: group,
      })
      try {
        await nextLine(holder.lines, 'ready')
        const broker = track(create(url))
        await broker.publisher.publish(makeBatch(topic, 1, 1, 'held'))
        expect(await nextLine(holder.lines, 'received')).toBe('received held-0 1')
        holder.child.kill('SIGKILL')
        await new Promise((resolve) => holder.child.once('exit', resolve))

        const received = new Received()
        await broker.subscriber.subscribe(topic, group, async (m) => received.record(m))
        await received.until(() => received.messages.length >= 1, 'the redelivery')
        expect(received.messages[0]!.id).toBe('held-0')
        expect(received.messages[0]!.deliveryCount).toBeGreaterThan(1)
      } finally {
        holder.child.kill('SIGKILL')
      }
    })

    it('shares the messages of one group between two subscribers, each message to one', async () => {
      const url = await brokerUrl(target.name)
      const first = track(create(url, { prefetch: 4 }))
      const second = track(create(url, { prefetch: 4 }))
      const topic = unique('share')
      const group = unique('g')
      const received = new Received()
      const byFirst = new Set<string>()
      const bySecond = new Set<string>()
      const work = async (): Promise<void> => {
        for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
      }
      await first.subscriber.subscribe(topic, group, async (m) => {
        await work()
        byFirst.add(m.id)
        received.record(m)
      })
      await second.subscriber.subscribe(topic, group, async (m) => {
        await work()
        bySecond.add(m.id)
        received.record(m)
      })
      const batch = makeBatch(topic, 100, 10)
      for (let i = 0; i < batch.length; i += 10) {
        await first.publisher.publish(batch.slice(i, i + 10))
      }
      await received.until(() => received.messages.length >= batch.length, 'every message')

      expect(received.ids().sort()).toEqual(batch.map((m) => m.id).sort())
      expect(byFirst.size).toBeGreaterThan(0)
      expect(bySecond.size).toBeGreaterThan(0)
      expect([...byFirst].filter((id) => bySecond.has(id))).toEqual([])
    })

    if (target.dedupe) {
      it('stores a message id published twice inside the window only once', async () => {
        const broker = track(create(await brokerUrl(target.name)))
        const topic = unique('dedupe')
        const received = new Received()
        await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
        const [message] = makeBatch(topic, 1, 1, 'once')
        // Twice in one batch, then again in a later batch (a relay retrying after a crash).
        await broker.publisher.publish([message!, message!])
        await broker.publisher.publish([{ ...message!, payload: 'a retry' }])
        // Published after the duplicates on the same stream: once it arrives, they would have.
        await broker.publisher.publish(makeBatch(topic, 1, 1, 'sentinel'))
        await received.until(() => received.ids().includes('sentinel-0'), 'the sentinel')

        expect(received.ids().filter((id) => id === 'once-0')).toHaveLength(1)
      })
    }

    it('rejects a publish while the server is down (BrokerError, transient) and recovers after a restart', async () => {
      const server = await privateServer!
      const broker = create(server.url)
      try {
        const topic = unique('restart')
        const received = new Received()
        await broker.subscriber.subscribe(topic, unique('g'), async (m) => received.record(m))
        await broker.publisher.publish(makeBatch(topic, 3, 1, 'before'))
        await received.until(() => received.messages.length >= 3, 'messages before the stop')

        await server.kill('SIGTERM')
        const failure = await broker.publisher.publish(makeBatch(topic, 1, 1, 'down')).then(
          () => undefined,
          (error: unknown) => error,
        )
        expect(BreakwaterError.is(failure)).toBe(true)
        expect((failure as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
        expect((failure as BreakwaterError).retryable).toBe(true)
        expect(classifyFailure(failure)).toBe('transient')

        await server.restart()
        // The publisher reconnects on this very call: no retry needed.
        await broker.publisher.publish(makeBatch(topic, 2, 1, 'after'))
        // The subscription reconnects by itself (with backoff) and receives them.
        await received.until(
          () => ['after-0', 'after-1'].every((id) => received.ids().includes(id)),
          'messages after the restart',
        )
        expect(received.ids()).not.toContain('down-0')
      } finally {
        await broker.close()
        await server.stop()
      }
    })
  })
}
