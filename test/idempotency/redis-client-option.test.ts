// The Redis store's `client` option: a client it cannot use was taken without a word, and every
// request then failed (a 500): a node-redis client, which has none of ioredis's buffer commands,
// with a bare TypeError ("client.callBuffer is not a function"), and an ioredis client with
// enableAutoPipelining, whose callBuffer sends the Lua script as the command name, with "ERR
// unknown command 'local function fresh...'". Both are refused at construction, naming `client`.
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createIdempotency, createRedisIdempotencyStore } from '../../src/idempotency/index.js'
import { brokerUrl } from '../support/brokers.js'

let url: string

beforeAll(async () => {
  url = await brokerUrl('redis')
})

const clients: Redis[] = []
afterAll(() => {
  for (const client of clients) client.disconnect()
})

function ioredis(options: { enableAutoPipelining: boolean }): Redis {
  const client = new Redis(url, options)
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
