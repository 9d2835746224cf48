// Found by the relay-process crash test (order violations at the consumer while the relay's own
// confirmation order was correct, right after the NATS restart): the NATS subscriber breaks
// per-key order when its connection drops while deliveries of a key wait behind a running
// handler. Closing the session releases them (the nak cannot reach the server), JetStream
// redelivers them only after ackWaitMs, and the new session hands later messages of the same
// key to the handler first. The Subscriber contract says messages with the same key are handled
// one at a time, in order; the outbox relies on it for per-aggregate order at the consumer.
//
// Deterministic: the connection is cut by a TCP proxy between subscriber and server (the
// server keeps its consumer state), while the handler holds the key's first message.
import { afterAll, describe, expect, it } from 'vitest'
import { createNatsBroker } from '../../../src/brokers/index.js'
import { brokerUrl } from '../../support/brokers.js'
import { startTcpFaultProxy } from '../../support/tcp-fault-proxy.js'

// Real-time waits: a real server and a real connection.
function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function until(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await delay(5)
  }
}

describe('NATS subscriber per-key order across a lost connection', () => {
  const cleanups: Array<() => Promise<void> | void> = []
  afterAll(async () => {
    for (const step of cleanups.reverse()) await step()
  })

  it('hands a key’s queued messages to the handler before later ones after reconnecting', async () => {
    const url = await brokerUrl('nats')
    const proxy = await startTcpFaultProxy('127.0.0.1', Number(new URL(url).port))
    cleanups.push(() => proxy.close())
    const topic = `order-loss-${Date.now()}`
    const publisher = createNatsBroker({ url })
    cleanups.push(() => publisher.close())
    let connectionLost = false
    const subscriber = createNatsBroker({
      url: `nats://127.0.0.1:${proxy.port}`,
      ackWaitMs: 1_000,
      reconnectDelayMs: 20,
      maxReconnectDelayMs: 100,
      onError: (event) => {
        if (event.phase === 'connection') connectionLost = true
      },
    })
    cleanups.push(() => subscriber.close())

    const firstDeliveries: string[] = []
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let held = false
    const subscription = await subscriber.subscriber.subscribe(topic, 'ordered', async (m) => {
      if (!firstDeliveries.includes(m.id)) firstDeliveries.push(m.id)
      if (m.id === 'k-1' && !held) {
        held = true
        await gate
      }
    })
    cleanups.push(() => subscription.close())

    const message = (n: number) => ({
      id: `k-${n}`,
      topic,
      key: 'k',
      payload: `{"n":${n}}`,
      headers: {},
    })
    await publisher.publisher.publish([1, 2, 3, 4, 5].map(message))
    // k-1 is in the handler; k-2..k-5 wait behind it (same key).
    await until(() => held, 'the handler to hold k-1')
    await delay(100)
    proxy.severAll()
    // The subscription saw its session end (k-2..k-5 were released, never started); k-6 is
    // published while k-1's handler still runs, then the handler finishes.
    await until(() => connectionLost, 'the subscription to notice the lost connection')
    await publisher.publisher.publish([message(6)])
    release()
    await until(() => firstDeliveries.length === 6, 'every message to be delivered')
    expect(firstDeliveries).toEqual(['k-1', 'k-2', 'k-3', 'k-4', 'k-5', 'k-6'])
  })
})
