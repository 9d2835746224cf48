// `breakwater relay` as a real process against a real redis-server whose TLS port requires a
// client certificate signed by the test CA (`tls-auth-clients yes`): the CA comes from
// BREAKWATER_BROKER_CA_FILE, the certificate and its encrypted key from --broker-cert-file and
// --broker-key-file, the key's passphrase from BREAKWATER_BROKER_KEY_PASSPHRASE; an enqueued
// event reaches the stream, and the passphrase is never printed. The event is read back on
// the server's plain port.
import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { type StartedBroker, startRedis } from '../../scripts/lib/brokers.mjs'
import { createOutbox } from '../../src/outbox/index.js'
import { until } from '../outbox/support.js'
import { spawnCli } from '../process/cli-process.js'
import { createTestCerts, type TestCerts } from '../proxy/support/certs.js'
import { migratedSqlite, writeEncryptedClientKey } from './relay-support.js'

let certs: TestCerts
let redis: StartedBroker
let plain: Redis
const passphrase = `pw-${randomUUID()}`
let encryptedKeyFile: string
const cleanups: Array<() => Promise<unknown> | unknown> = []

beforeAll(async () => {
  certs = createTestCerts()
  encryptedKeyFile = writeEncryptedClientKey(certs, passphrase)
  redis = await startRedis({
    stopOnExit: true,
    tls: {
      certFile: certs.server.certFile,
      keyFile: certs.server.keyFile,
      caFile: certs.ca.certFile,
    },
  })
  const { Redis } = await import('ioredis')
  plain = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 })
}, 60_000)

afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
  plain?.disconnect()
  await redis?.stop()
  certs?.cleanup()
})

it('publishes an enqueued event to a rediss:// broker that requires a client certificate', async () => {
  const { url: dbUrl, db } = await migratedSqlite('relay-tls', cleanups)
  const topic = `mtls-${randomUUID().slice(0, 8)}.orders`

  const relay = spawnCli(
    [
      'relay',
      '--db',
      dbUrl,
      '--broker',
      redis.tlsUrl!,
      '--broker-cert-file',
      certs.client.certFile,
      '--broker-key-file',
      encryptedKeyFile,
    ],
    {
      BREAKWATER_BROKER_CA_FILE: certs.ca.certFile,
      BREAKWATER_BROKER_KEY_PASSPHRASE: passphrase,
    },
  )
  cleanups.push(() => relay.kill())
  await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
  const [eventId] = await db.transaction((tx) =>
    createOutbox().enqueue(tx, [
      {
        aggregateType: 'order',
        aggregateId: 'order-1',
        type: 'order-placed',
        topic,
        payload: { total: 42 },
      },
    ]),
  )

  let ids: string[] = []
  await until(async () => {
    const entries = await plain.xrange(topic, '-', '+')
    ids = entries.map(([, fields]) => fields[fields.indexOf('id') + 1] ?? '')
    return ids.length > 0
  }, 'the event in the Redis stream')
  expect(ids).toEqual([eventId])

  relay.child.kill('SIGTERM')
  expect((await relay.exited).code, relay.stderr()).toBe(0)
  expect(relay.lines.filter((l) => l.level === 'warn' || l.level === 'error')).toEqual([])
  expect(relay.stdout() + relay.stderr()).not.toContain(passphrase)
})
