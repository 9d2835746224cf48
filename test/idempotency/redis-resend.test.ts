// A connection to Redis lost after a script ran but before its reply arrived: ioredis (by
// default, autoResendUnfulfilledCommands) sends the script again on the new connection, so
// each step of the protocol must come out the same when it runs twice. Real redis-server; the
// fault is a TCP proxy that swallows one reply and cuts the connection.
import { randomUUID } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createRedisIdempotencyStore,
  type RedisIdempotencyStore,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl } from '../support/brokers.js'

/** A proxy to Redis that can drop the reply to the next command containing a marker. */
interface Proxy {
  readonly url: string
  /** Drops the reply to the next command whose bytes contain `marker`, then cuts the link. */
  dropReplyTo(marker: string): void
  /** How many replies were dropped. */
  readonly dropped: number
  close(): Promise<void>
}

async function startProxy(target: URL): Promise<Proxy> {
  let armed: string | undefined
  let dropped = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname)
    sockets.add(client)
    sockets.add(upstream)
    let dropNext = false
    client.on('data', (chunk: Buffer) => {
      if (armed !== undefined && chunk.includes(armed)) {
        armed = undefined
        dropNext = true
      }
      upstream.write(chunk)
    })
    upstream.on('data', (chunk: Buffer) => {
      if (dropNext) {
        dropped++
        client.destroy()
        upstream.destroy()
        return
      }
      client.write(chunk)
    })
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('close', end)
    upstream.on('close', end)
    client.on('error', () => {})
    upstream.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `redis://127.0.0.1:${port}`,
    dropReplyTo(marker) {
      armed = marker
    },
    get dropped() {
      return dropped
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}

describe('Redis idempotency store, a reply lost with its connection', () => {
  let proxy: Proxy
  let client: Redis
  let store: RedisIdempotencyStore
  const prefix = `bw-resend:${randomUUID()}:`

  beforeAll(async () => {
    proxy = await startProxy(new URL(await brokerUrl('redis')))
    // ioredis's defaults (offline queue, resending unanswered commands), reconnecting at once.
    client = new Redis(proxy.url, { enableAutoPipelining: false, retryStrategy: () => 0 })
    client.on('error', () => {})
    store = createRedisIdempotencyStore({ client, keyPrefix: prefix })
  })
  afterAll(async () => {
    await store?.close()
    client?.disconnect()
    await proxy?.close()
  })

  it('claims a key once when the claim is sent twice', async () => {
    const idempotency = createIdempotency({ store, clock: new ManualClock(1_000) })
    let runs = 0
    const dropped = proxy.dropped
    proxy.dropReplyTo("'EXISTS'")
    const value = await idempotency.run(randomUUID(), () => ++runs)
    expect(proxy.dropped).toBe(dropped + 1)
    expect(value).toBe(1)
    expect(runs).toBe(1)
  })

  it('records a result once when the write of the result is sent twice', async () => {
    const idempotency = createIdempotency({ store, clock: new ManualClock(1_000) })
    const key = randomUUID()
    let runs = 0
    const dropped = proxy.dropped
    proxy.dropReplyTo("'complete'")
    const value = await idempotency.run(key, () => ++runs)
    expect(proxy.dropped).toBe(dropped + 1)
    expect(value).toBe(1)
    expect(await idempotency.run(key, () => ++runs)).toBe(1)
    expect(runs).toBe(1)
  })

  it('takes over an expired lease once when the takeover is sent twice', async () => {
    const clock = new ManualClock(1_000)
    const idempotency = createIdempotency({ store, clock, leaseMs: 1_000 })
    const key = randomUUID()
    const claimed = await store.claim({
      scope: 'default',
      key,
      fingerprint: '',
      leaseToken: 'crashed-holder',
      nowMs: 1_000,
      leaseExpiresAtMs: 2_000,
      expiresAtMs: 90_000,
    })
    expect(claimed).toEqual({ claimed: true })
    await clock.advance(5_000)
    const dropped = proxy.dropped
    proxy.dropReplyTo("'HINCRBY'")
    const value = await idempotency.run(key, (ctx) => ctx.attempt)
    expect(proxy.dropped).toBe(dropped + 1)
    expect(value).toBe(2)
  })

  it('reuses a key past its retention once when the reuse is sent twice', async () => {
    const clock = new ManualClock(1_000)
    const idempotency = createIdempotency({ store, clock, leaseMs: 1_000 })
    const key = randomUUID()
    await store.claim({
      scope: 'default',
      key,
      fingerprint: '',
      leaseToken: 'old-holder',
      nowMs: 1_000,
      leaseExpiresAtMs: 2_000,
      expiresAtMs: 60_000,
    })
    await clock.advance(60_000)
    const dropped = proxy.dropped
    proxy.dropReplyTo("'lt', 'ea'")
    const value = await idempotency.run(key, (ctx) => ctx.attempt)
    expect(proxy.dropped).toBe(dropped + 1)
    expect(value).toBe(1)
  })
  it('reports a release as done when the release is sent twice', async () => {
    const released: unknown[] = []
    const onReleased = (message: unknown) => released.push(message)
    subscribe('breakwater:idempotency:released', onReleased)
    try {
      const idempotency = createIdempotency({ store, clock: new ManualClock(1_000) })
      const key = randomUUID()
      const dropped = proxy.dropped
      proxy.dropReplyTo("redis.call('DEL', KEYS[1])")
      await expect(
        idempotency.run(key, () => {
          throw new Error('handler failed')
        }),
      ).rejects.toThrow('handler failed')
      expect(proxy.dropped).toBe(dropped + 1)
      expect(released).toEqual([{ scope: 'default', key }])
      expect(await store.release({ scope: 'default', key, leaseToken: 'another-holder' })).toBe(
        false,
      )
      // The key is free: the retry runs the work.
      expect(await idempotency.run(key, () => 'second')).toBe('second')
    } finally {
      unsubscribe('breakwater:idempotency:released', onReleased)
    }
  })
})
