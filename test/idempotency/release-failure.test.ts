// A key whose release fails (the store is briefly down when a failing handler gives it back)
// stays held until its lease ends: the failure must be reported (onError, the thrown error, the
// release-failed diagnostics event), not dropped, so the client's 409s for the lease are
// explained. Before, store.release(...).catch(() => false) swallowed it.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyStore,
  idempotencyChannelNames,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listen, send } from './servers.js'

const outage = new Error('connection terminated (simulated outage)')

// A memory store whose release throws while `down` is set.
function flakyStore(): { store: IdempotencyStore; setDown(down: boolean): void } {
  const inner = createMemoryIdempotencyStore()
  let down = false
  const store: IdempotencyStore = Object.create(inner, {
    release: {
      value: async (lease: Parameters<IdempotencyStore['release']>[0]) => {
        if (down) throw outage
        return inner.release(lease)
      },
    },
  })
  return { store, setDown: (value) => (down = value) }
}

function collect(event: 'released' | 'release-failed'): { messages: unknown[]; stop(): void } {
  const messages: unknown[] = []
  const listener = (message: unknown) => messages.push(message)
  subscribe(idempotencyChannelNames[event], listener)
  return { messages, stop: () => unsubscribe(idempotencyChannelNames[event], listener) }
}

describe('a release that fails', () => {
  let listening: Listening | undefined
  const stops: (() => void)[] = []
  afterEach(async () => {
    await listening?.close()
    listening = undefined
    for (const stop of stops.splice(0)) stop()
  })

  it('is reported to onError with its own code, and published; the retry gets 409', async () => {
    const { store, setDown } = flakyStore()
    const idempotency = createIdempotency({ store, leaseMs: 60_000 })
    const errors: unknown[] = []
    const handlerError = new Error('downstream failed')
    const released = collect('released')
    const failed = collect('release-failed')
    stops.push(released.stop, failed.stop)
    listening = await listen(
      idempotentHandler({ idempotency, onError: (error) => errors.push(error) }, async () => {
        setDown(true)
        throw handlerError
      }),
    )
    expect((await send(`${listening.url}/pay`, { key: 'k1', body: '{}' })).status).toBe(500)
    setDown(false)
    expect(errors[0]).toBe(handlerError)
    expect(errors[1]).toMatchObject({
      code: 'IDEMPOTENCY_RELEASE_FAILED',
      key: 'k1',
      cause: outage,
    })
    expect(errors).toHaveLength(2)
    expect(released.messages).toEqual([])
    expect(failed.messages).toEqual([{ scope: 'anonymous', key: 'k1', error: outage }])
    const retry = await send(`${listening.url}/pay`, { key: 'k1', body: '{}' })
    expect(retry.status).toBe(409)
    expect(retry.headers['retry-after']).toBeDefined()
  })

  it('rejects abort() with IDEMPOTENCY_RELEASE_FAILED', async () => {
    const { store, setDown } = flakyStore()
    const idempotency = createIdempotency({ store })
    const begun = await idempotency.begin({
      method: 'POST',
      route: '/pay',
      header: (name) => (name === 'idempotency-key' ? 'k2' : undefined),
      body: new Uint8Array(0),
    })
    if (begun.kind !== 'execute') throw new Error(`expected execute, got ${begun.kind}`)
    setDown(true)
    await expect(begun.execution.abort()).rejects.toMatchObject({
      code: 'IDEMPOTENCY_RELEASE_FAILED',
      cause: outage,
    })
  })

  it("run(): fn's error is rethrown and the release failure published", async () => {
    const { store, setDown } = flakyStore()
    const idempotency = createIdempotency({ store })
    const failed = collect('release-failed')
    stops.push(failed.stop)
    const fnError = new Error('step failed')
    await expect(
      idempotency.run('k3', () => {
        setDown(true)
        throw fnError
      }),
    ).rejects.toBe(fnError)
    setDown(false)
    expect(failed.messages).toEqual([{ scope: 'default', key: 'k3', error: outage }])
    await expect(idempotency.run('k3', () => 1)).rejects.toMatchObject({
      code: 'IDEMPOTENCY_IN_PROGRESS',
    })
  })
})
