// A Redis subscription whose key waits for a failed message must not read the stream on just to
// hand each new entry back: every one it hands back stays pending on it, held in process (its
// payload included) until it comes back, and the claim loop brings them back `prefetch` at a
// time in stream order, so the failed message itself came back only after all of them, past
// holdTimeoutMs once enough were read, and its key's later messages then ran before it.
import { afterAll, describe, expect, it } from 'vitest'
import { createRedisBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { until } from '../support/until.js'
import { unique } from './conformance.js'

afterAll(stopOwnBrokers)

describe('redis subscription behind a failed message', () => {
  it('keeps what it has read and not acknowledged within prefetch, held and handed back together', async () => {
    const url = await brokerUrl('redis')
    const prefetch = 8
    const broker = createRedisBroker({
      url,
      prefetch,
      concurrency: 1,
      retryDelayMs: 50,
      visibilityTimeoutMs: 1_000,
      claimIntervalMs: 300,
      connectTimeoutMs: 2_000,
      onError: () => {},
    })
    const { Redis } = await import('ioredis')
    const admin = new Redis(url)
    const topic = unique('handed-back')
    const total = 1_000
    try {
      const payload = 'x'.repeat(256)
      for (let i = 0; i < total; i += 250) {
        await broker.publisher.publish(
          Array.from({ length: 250 }, (_, j) => ({
            id: `m${i + j}`,
            topic,
            key: 'k',
            payload,
            headers: {},
          })),
        )
      }
      const ran: string[] = []
      let pendingAtRetry: number | undefined
      await broker.subscriber.subscribe(topic, 'g', async (message) => {
        if (message.id === 'm0' && message.deliveryCount === 1) throw new Error('first try fails')
        if (message.id === 'm0') {
          const summary = (await admin.xpending(topic, 'g')) as [number, ...unknown[]]
          pendingAtRetry = summary[0]
        }
        ran.push(message.id)
      })
      // retryDelayMs and a claim interval or two: it came back only after every entry handed
      // back before it was claimed (at prefetch per claimIntervalMs) while the key waited.
      await until(() => pendingAtRetry !== undefined, 'the failed message to come back', 5_000)
      // Read and not acknowledged when the failed message came back: those queued behind it
      // and those handed back, at most prefetch of each (it was read ahead of the whole stream).
      expect(pendingAtRetry).toBeLessThanOrEqual(2 * prefetch)
      await until(() => ran.length === total, `all ${total} messages handled`)
      expect(ran.slice(0, 3)).toEqual(['m0', 'm1', 'm2'])
      expect(ran).toEqual(Array.from({ length: total }, (_, i) => `m${i}`))
    } finally {
      admin.disconnect()
      await broker.close()
    }
  }, 30_000)
})
