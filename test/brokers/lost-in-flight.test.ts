// Per-key order across a connection lost with a delivery in flight, on Redis Streams and
// RabbitMQ (NATS has its own test in nats.test.ts). The broker counts a message as delivered
// once it has written it to the connection; when the connection dies with it, the subscriber
// never saw it, and must not run the key's next message first.
import { afterAll, describe, expect, it } from 'vitest'
import { createRabbitMqBroker, createRedisBroker } from '../../src/brokers/index.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { startTcpFaultProxy } from '../support/tcp-fault-proxy.js'
import { Received, unique } from './conformance.js'
import { testBroker } from './targets.js'

afterAll(stopOwnBrokers)

const closers: Array<() => Promise<void>> = []
afterAll(async () => {
  for (const close of closers.reverse()) await close()
})

const tuning = {
  retryDelayMs: 50,
  reconnectDelayMs: 50,
  maxReconnectDelayMs: 500,
  connectTimeoutMs: 2_000,
  publishTimeoutMs: 5_000,
} as const

describe('a delivery lost in flight with the connection', () => {
  it("redis: the key's next message waits for the lost entry, read back from this consumer's pending list", async () => {
    const url = await brokerUrl('redis')
    const server = new URL(url)
    const proxy = await startTcpFaultProxy(server.hostname, Number(server.port))
    const proxied = new URL(url)
    proxied.host = `127.0.0.1:${proxy.port}`
    // A visibility timeout far beyond the test: the claim loop must not be what brings the lost
    // entry back.
    const subscribing = createRedisBroker({
      ...tuning,
      url: proxied.toString(),
      visibilityTimeoutMs: 600_000,
    })
    const publishing = testBroker('redis', url)
    const { Redis } = await import('ioredis')
    const admin = new Redis(url)
    closers.push(async () => {
      await subscribing.close()
      await publishing.close()
      admin.disconnect()
      await proxy.close()
    })
    const topic = unique('lost-in-flight')
    const group = unique('g')
    const message = (id: string) => ({ id, topic, key: 'k', payload: id, headers: {} })
    const received = new Received()
    await subscribing.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await publishing.publisher.publish([message('zero')])
    await received.until(() => received.ids().includes('zero'), 'the first message')
    await expect.poll(async () => ((await admin.xpending(topic, group)) as [number])[0]).toBe(0)

    proxy.dropServerBytes(true)
    await publishing.publisher.publish([message('first')])
    // Redis put it in the consumer's pending list when it wrote the XREADGROUP reply.
    await expect.poll(async () => ((await admin.xpending(topic, group)) as [number])[0]).toBe(1)
    proxy.dropServerBytes(false)
    proxy.severAll()
    await publishing.publisher.publish([message('second')])
    await received.until(() => received.ids().includes('second'), 'the next message')
    expect(received.ids()).toEqual(['zero', 'first', 'second'])
  })

  it("rabbitmq: the key's next message comes after the lost one, which the server requeues with the connection", async () => {
    const url = await brokerUrl('rabbitmq')
    const server = new URL(url)
    const proxy = await startTcpFaultProxy(server.hostname, Number(server.port))
    const proxied = new URL(url)
    proxied.host = `127.0.0.1:${proxy.port}`
    const subscribing = createRabbitMqBroker({ ...tuning, url: proxied.toString() })
    const publishing = testBroker('rabbitmq', url)
    const amqp = await import('amqplib')
    const admin = await amqp.connect(url)
    const channel = await admin.createChannel()
    closers.push(async () => {
      await subscribing.close()
      await publishing.close()
      await admin.close()
      await proxy.close()
    })
    const topic = unique('lost-in-flight')
    const group = unique('g')
    const message = (id: string) => ({ id, topic, key: 'k', payload: id, headers: {} })
    const received = new Received()
    await subscribing.subscriber.subscribe(topic, group, async (m) => received.record(m))
    await publishing.publisher.publish([message('zero')])
    await received.until(() => received.ids().includes('zero'), 'the first message')

    proxy.dropServerBytes(true)
    await publishing.publisher.publish([message('first')])
    // Delivered (no longer ready): the server wrote it to the consumer's connection.
    await expect
      .poll(async () => (await channel.checkQueue(`${topic}.${group}`)).messageCount)
      .toBe(0)
    proxy.dropServerBytes(false)
    proxy.severAll()
    await publishing.publisher.publish([message('second')])
    await received.until(() => received.ids().includes('second'), 'the next message')
    expect(received.ids()).toEqual(['zero', 'first', 'second'])
  })
})
