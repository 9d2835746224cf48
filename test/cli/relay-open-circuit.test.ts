// `breakwater relay` as a real process against PostgreSQL, with its broker (NATS, credentials
// in the URL) on a port nothing listens on. Once the circuit opens, every round logged only
// `publish failed` with "The circuit is open; retry after N ms": no broker, no cause.
import { afterAll, expect, it } from 'vitest'
import { createOutbox, migrateOutbox } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { spawnCli } from '../process/cli-process.js'
import { freeLoopbackPort } from '../support/loopback.js'
import { createTestDatabase } from '../support/postgres.js'

const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

it('logs which broker and why while the circuit is open, the password masked', async () => {
  const created = await createTestDatabase('relay_cli_open_circuit')
  cleanups.push(() => created.drop())
  const db = await openDatabase(created.url)
  cleanups.push(() => db.close())
  await migrateOutbox(db)
  await db.transaction((tx) =>
    createOutbox().enqueue(tx, {
      aggregateType: 'order',
      aggregateId: 'o1',
      type: 'placed',
      topic: 'orders',
      payload: { n: 1 },
    }),
  )
  const port = await freeLoopbackPort()
  const brokerUrl = `nats://relay:hunter2secret@127.0.0.1:${port}`
  const relay = spawnCli([
    'relay',
    '--db',
    created.url,
    '--broker',
    brokerUrl,
    '--max-backoff-ms',
    '20',
    '--breaker-cooldown-ms',
    '600000',
  ])
  cleanups.push(() => relay.kill())
  const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
  const refused = await relay.waitForLine(
    (l) =>
      l.msg === 'publish failed' &&
      (l.error as { code?: unknown } | undefined)?.code === 'BROKEN_CIRCUIT',
    'a round refused by the open circuit',
    20_000,
  )
  // The broker, named as `relay started` names it (credentials masked by the logger).
  expect(refused.broker).toBe(started.broker)
  expect(String(refused.broker)).toContain(`127.0.0.1:${port}`)
  // The failure that opened the circuit, in the line itself.
  const error = refused.error as { message: string; cause?: { code?: unknown } }
  expect(error.message).toMatch(/^relay: the publisher's circuit breaker "outbox-relay" is open/)
  expect(error.message).toContain('nats:')
  expect(error.cause?.code).toBe('BROKER_UNAVAILABLE')
  expect(relay.stdout()).not.toContain('hunter2secret')
  relay.child.kill('SIGTERM')
  expect((await relay.exited).code, relay.stderr()).toBe(0)
})
