// A Redis subscription's close() wakes its blocked read (XREADGROUP BLOCK) with CLIENT UNBLOCK
// instead of waiting out blockMs. Right after a message was handled the read loop has just sent
// its next read, on its own connection, and an UNBLOCK sent on the command connection could
// reach the server first: it woke nothing (answering 0), and close() took blockMs longer, most
// times in a row here. blockMs is long so that a missed wake cannot pass for a quick close.
import { describe, expect, it } from 'vitest'
import { createRedisBroker } from '../../src/brokers/index.js'
import { brokerUrl } from '../support/brokers.js'
import { Received, unique } from './conformance.js'
import { testTuning } from './targets.js'

const blockMs = 5_000

describe('closing a Redis subscription right after it handled a message', () => {
  it('wakes its read at once rather than after blockMs', async () => {
    const url = await brokerUrl('redis')
    const took: number[] = []
    for (let round = 0; round < 6; round++) {
      const broker = createRedisBroker({ ...testTuning, url, blockMs, onError: () => {} })
      try {
        const topic = unique('unblock')
        const handled = new Received()
        const subscription = await broker.subscriber.subscribe(topic, unique('g'), async (m) =>
          handled.record(m),
        )
        await broker.publisher.publish([
          { id: `${topic}-1`, topic, key: 'k', payload: '', headers: {} },
        ])
        await handled.until(() => handled.messages.length >= 1, 'the message')
        const started = Date.now()
        await subscription.close()
        took.push(Date.now() - started)
      } finally {
        await broker.close()
      }
    }
    // Each close is a few round trips; a missed wake costs blockMs.
    expect(Math.max(...took), `close() took ${took.join(', ')} ms`).toBeLessThan(blockMs / 2)
  })
})
