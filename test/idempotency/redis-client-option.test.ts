// The Redis store's `client` option: a client it cannot use was taken without a word, and every
// request then failed (a 500): a node-redis client, which has none of ioredis's buffer commands,
// with a bare TypeError ("client.callBuffer is not a function"), and an ioredis client with
// enableAutoPipelining, whose callBuffer sends the Lua script as the command name, with "ERR
// unknown command 'local function fresh...'". Both are refused at construction, naming `client`.
// So is an ioredis client with autoResendUnfulfilledCommands: false, which never settles a
// command whose connection was lost before its reply: the store's call hung for good.
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createIdempotency, createRedisIdempotencyStore } from '../../src/idempotency/index.js'
import { brokerUrl } from '../support/brokers.js'
import { proxiedUrl } from '../support/tcp-fault-proxy.js'

let url: string

beforeAll(async () => {
  url = await brokerUrl('redis')
})

const clients: Redis[] = []
afterAll(() => {
  for (const client of clients) client.disconnect()
})

function ioredis(
  options: { enableAutoPipelining: boolean; autoResendUnfulfilledCommands?: boolean },
  at = url,
): Redis {
  const client = new Redis(at, { ...options, retryStrategy: () => 0 })
  client.on('error', () => {})
  clients.push(client)
  return client
}

it('refuses an ioredis client with enableAutoPipelining, naming client', async () => {
  const client = ioredis({ enableAutoPipelining: true })
  const create = () =>
    createRedisIdempotencyStore({ client, keyPrefix: `bw-test:${randomUUID()}:` })
  expect(create).toThrow(InvalidOptionError)
  expect(create).toThrow(/^client: expected an ioredis client without enableAutoPipelining/)
})

it('refuses a client without the ioredis commands the store sends (node-redis), naming client', () => {
  // node-redis's shape: sendCommand, hGetAll, hmGet; no callBuffer, hgetallBuffer or hmget.
  const nodeRedis = {
    sendCommand: async () => null,
    hGetAll: async () => ({}),
    hmGet: async () => [],
  }
  const create = () =>
    createRedisIdempotencyStore({ client: nodeRedis as never, keyPrefix: 'bw-test:' })
  expect(create).toThrow(InvalidOptionError)
  expect(create).toThrow(/^client: expected an ioredis client \(with callBuffer/)
})

it('still takes an ioredis client without auto-pipelining, and claims through it', async () => {
  const client = ioredis({ enableAutoPipelining: false })
  const store = createRedisIdempotencyStore({ client, keyPrefix: `bw-test:${randomUUID()}:` })
  const idempotency = createIdempotency({ store })
  expect(await idempotency.run('key-1', () => ({ ran: true }))).toEqual({ ran: true })
  expect(await idempotency.run('key-1', () => ({ ran: false }))).toEqual({ ran: true })
})

it('refuses an ioredis client with autoResendUnfulfilledCommands: false, naming client', () => {
  const client = ioredis({ enableAutoPipelining: false, autoResendUnfulfilledCommands: false })
  const create = () =>
    createRedisIdempotencyStore({ client, keyPrefix: `bw-test:${randomUUID()}:` })
  expect(create).toThrow(InvalidOptionError)
  expect(create).toThrow(/^client: expected an ioredis client with autoResendUnfulfilledCommands/)
})

// Why: such a client drops a command whose connection was lost before its reply, neither
// sending it again nor failing it, so whoever awaits it waits for ever. If this starts to fail,
// ioredis settles such commands now and the refusal above can go.
it('ioredis without autoResendUnfulfilledCommands never settles a command cut before its reply', async () => {
  const { proxy, url: proxied } = await proxiedUrl(url)
  const client = ioredis(
    { enableAutoPipelining: false, autoResendUnfulfilledCommands: false },
    proxied,
  )
  try {
    const key = `bw-test:${randomUUID()}`
    await client.ping()
    const cut = proxy.cutAt(key, 'after-answer')
    const reconnected = once(client, 'ready')
    let settled = false
    void client.set(key, '1').finally(() => {
      settled = true
    })
    await cut
    await reconnected
    // A command sent after the reconnection is answered; the cut one is not, and never will
    // be: Redis answers in order, so had it been sent again its reply would have come first.
    await client.ping()
    expect(await client.get(key)).toBe('1')
    expect(settled).toBe(false)
    await client.del(key)
  } finally {
    // Before the proxy closes: it waits for its connections, and this client would reconnect.
    client.disconnect()
    await proxy.close()
  }
})
