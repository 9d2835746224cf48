// A phase whose lease is taken over between its fenced write and its commit (another process,
// whose clock runs ahead, took the key over): the store's commit refuses, and the phase fails
// as any lost lease does, with the configured retryAfterMs and the 'lease-lost' event, not the
// store's bare error (retryAfterMs 0, so a 409's Retry-After said 1 s whatever was set).
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterEach, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  IdempotencyInProgressError,
  type IdempotencyStore,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'

const lost: unknown[] = []
const onLost = (message: unknown) => lost.push(message)
afterEach(() => {
  unsubscribe('breakwater:idempotency:lease-lost', onLost)
  lost.length = 0
})

it('fails the phase with the configured retryAfterMs and publishes lease-lost', async () => {
  subscribe('breakwater:idempotency:lease-lost', onLost)
  const inner = createMemoryIdempotencyStore()
  // The real in-memory store; only the moment of the other process's takeover is chosen here.
  const store: IdempotencyStore = {
    ...inner,
    claim: (input) => inner.claim(input),
    get: (scope, key) => inner.get(scope, key),
    takeOver: (input) => inner.takeOver(input),
    recycle: (input) => inner.recycle(input),
    transaction: (fn) => inner.transaction(fn),
    complete: (...args) => inner.complete(...args),
    release: (lease) => inner.release(lease),
    sweep: (now, limit) => inner.sweep(now, limit),
    async savePhase(tx, lease, point, phases, nowMs, leaseExpiresAtMs) {
      const held = await inner.savePhase(tx, lease, point, phases, nowMs, leaseExpiresAtMs)
      const record = (await inner.get(lease.scope, lease.key))!
      await inner.takeOver({
        scope: lease.scope,
        key: lease.key,
        fingerprint: record.fingerprint,
        previousLeaseToken: record.leaseToken,
        leaseToken: 'another-process',
        nowMs: record.leaseExpiresAtMs!,
        leaseExpiresAtMs: record.leaseExpiresAtMs! + 60_000,
        expiresAtMs: record.expiresAtMs,
      })
      return held
    },
  }
  const idempotency = createIdempotency({
    store,
    clock: new ManualClock(1_000),
    retryAfterMs: 7_000,
  })
  const failure = await idempotency
    .run('k', (ctx) => ctx.phase('charge', () => 'charged'))
    .catch((error: unknown) => error)
  expect(failure).toBeInstanceOf(IdempotencyInProgressError)
  expect(failure).toMatchObject({ reason: 'lease-lost', retryAfterMs: 7_000 })
  expect(lost).toEqual([{ scope: 'default', key: 'k' }])
})
