// While the relay's circuit breaker is open, each round's publishFailed event carries the
// breaker's refusal. It used to be the bare "The circuit is open; retry after N ms", naming
// neither the broker nor what opened the circuit: an operator reading one line learned nothing.
// Real PostgreSQL outbox, real NATS publisher aimed at a port nothing listens on.
import { afterAll, beforeAll, expect, it } from 'vitest'
import { openBroker } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { createOutbox, createRelay, type RelayEvent } from '../../src/outbox/index.js'
import { BrokenCircuitError } from '../../src/policies/errors.js'
import { freeLoopbackPort } from '../support/loopback.js'
import { type OutboxDb, postgresTarget, until } from './support.js'

let t: OutboxDb
beforeAll(async () => {
  t = await postgresTarget.open('relay_open_circuit')
})
afterAll(async () => {
  await t?.close()
})

it('names the breaker and the failure that opened it while the circuit is open', async () => {
  const port = await freeLoopbackPort()
  const broker = openBroker(`nats://127.0.0.1:${port}`)
  const relay = createRelay({
    db: t.db,
    publisher: broker.publisher,
    pollIntervalMs: 10,
    retryBackoff: { baseDelayMs: 5, maxDelayMs: 10, jitter: 'none' },
    // Open for the rest of the test once tripped.
    circuitBreaker: { window: { kind: 'consecutive', failures: 2 }, cooldownMs: 600_000 },
    retention: false,
  })
  const events: RelayEvent[] = []
  relay.events.on((e) => events.push(e))
  const failures = (): unknown[] =>
    events.flatMap((e) => (e.type === 'publishFailed' ? [e.error] : []))
  try {
    await t.db.transaction((tx) =>
      createOutbox().enqueue(tx, {
        aggregateType: 'order',
        aggregateId: 'o1',
        type: 'placed',
        topic: 'orders',
        payload: { n: 1 },
      }),
    )
    await relay.start()
    await until(
      () => failures().some((e) => BreakwaterError.is(e) && e.code === 'BROKEN_CIRCUIT'),
      'a round refused by the open circuit',
    )
    const all = failures()
    const first = all.findIndex((e) => BreakwaterError.is(e) && e.code === 'BROKEN_CIRCUIT')
    // The failure that tripped the window: the last one before the first refusal.
    const opener = all[first - 1]
    expect(BreakwaterError.is(opener) && opener.code).toBe('BROKER_UNAVAILABLE')
    const refused = all[first]
    // Still the error callers match on, with the wait the relay backs off by.
    expect(refused).toBeInstanceOf(BrokenCircuitError)
    const error = refused as BrokenCircuitError
    expect(error.retryAfterMs).toBeGreaterThan(0)
    // Names what is open, and why.
    expect(error.message).toContain('outbox-relay')
    expect(error.message).toContain((opener as Error).message)
    expect(error.message).toContain('relay.circuitBreaker.cooldownMs')
    expect(error.cause).toBe(opener)
  } finally {
    await relay.stop()
    await broker.close()
  }
})
