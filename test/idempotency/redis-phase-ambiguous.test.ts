// A Redis script whose connection is lost after Redis ran it, and that ioredis then fails
// rather than sends again (maxRetriesPerRequest reached: at once with 0, after 20 failed
// reconnections with the default): the phase it saved is in Redis, but the handler sees a
// connection error. Releasing the key then must not forget that phase, or the retry runs it
// (its charge) a second time. Real redis-server behind a TCP proxy that cuts the connection as
// Redis answers the phase's script. Likewise the release after the result's own write ran
// unanswered must leave the completed record; an error Redis answered itself still releases.
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, expect, it, vi } from 'vitest'
import {
  createIdempotency,
  createRedisIdempotencyStore,
  IdempotencyInProgressError,
  type RedisIdempotencyStore,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { brokerUrl } from '../support/brokers.js'
import { proxiedUrl, type TcpFaultProxy } from '../support/tcp-fault-proxy.js'

let setup: { proxy: TcpFaultProxy; client: Redis; store: RedisIdempotencyStore } | undefined

function opened(): { proxy: TcpFaultProxy; store: RedisIdempotencyStore } {
  if (setup === undefined) throw new Error('beforeAll did not finish')
  return setup
}

beforeAll(async () => {
  const { proxy, url } = await proxiedUrl(await brokerUrl('redis'))
  // Fails a command whose connection is lost instead of sending it again; reconnects at once.
  const client = new Redis(url, {
    enableAutoPipelining: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => 0,
  })
  client.on('error', () => {})
  const store = createRedisIdempotencyStore({
    client,
    keyPrefix: `bw-phase-ambiguous:${randomUUID()}:`,
  })
  setup = { proxy, client, store }
})
afterAll(async () => {
  await setup?.store.close()
  setup?.client.disconnect()
  await setup?.proxy.close()
})

const leaseMs = 10_000
// The phase write's kind, as RESP sends it among the commit script's arguments.
const phaseWrite = '$5\r\nphase\r\n'

// Runs `key` with phases 'a' then 'b', each counting its charge; the save of `cut` is cut.
function runner(key: string, cut: string) {
  const { proxy, store } = opened()
  const clock = new ManualClock(1_000_000)
  const idempotency = createIdempotency({ store, clock, leaseMs })
  const charges: string[] = []
  let armed: string | undefined = cut
  const run = () =>
    idempotency.run(key, async (ctx) => {
      for (const phase of ['a', 'b']) {
        await ctx.phase(phase, () => {
          charges.push(phase)
          if (armed === phase) {
            armed = undefined
            void proxy.cutAt(phaseWrite, 'after-answer')
          }
        })
      }
      return 'done'
    })
  return { run, clock, charges }
}

// The holder cannot know that its phase was saved: the key stays held until its lease ends,
// then a retry takes it over and resumes after the phases that were saved, each charged once.
async function expectResumedAfterLease(
  run: () => Promise<unknown>,
  clock: ManualClock,
  charges: readonly string[],
): Promise<void> {
  const second = await run().catch((error: unknown) => error)
  await clock.advance(leaseMs + 1)
  const third = await run().catch((error: unknown) => error)
  expect(charges).toEqual(['a', 'b'])
  expect(second).toBeInstanceOf(IdempotencyInProgressError)
  expect(third).toBe('done')
}

for (const [cut, label] of [
  ['a', 'the first phase'],
  ['b', 'a phase after a saved one'],
] as const) {
  it(`never runs ${label} twice when its save's answer was lost`, async () => {
    const { store } = opened()
    const key = randomUUID()
    const { run, clock, charges } = runner(key, cut)
    const first = await run().catch((error: unknown) => error)
    expect(first).toBeInstanceOf(Error)
    expect(first).not.toBeInstanceOf(IdempotencyInProgressError)
    // The phase was saved.
    expect((await store.get('default', key))?.recoveryPoint).toBe(cut)
    await expectResumedAfterLease(run, clock, charges)
  })
}

// ioredis's commandTimeout fails a script that is still on its way: Redis runs it all the same.
// The proxy holds Redis's answer to the phase's save (a slow answer) while fake timers run the
// client's commandTimeout out.
it("never runs a phase twice when its save outlived the client's commandTimeout", async () => {
  const { proxy, url } = await proxiedUrl(await brokerUrl('redis'))
  const client = new Redis(url, { enableAutoPipelining: false, commandTimeout: 1_000 })
  client.on('error', () => {})
  try {
    await client.ping()
    const store = createRedisIdempotencyStore({
      client,
      keyPrefix: `bw-phase-timeout:${randomUUID()}:`,
    })
    const clock = new ManualClock(1_000_000)
    const idempotency = createIdempotency({ store, clock, leaseMs })
    const charges: string[] = []
    const run = () =>
      idempotency.run('k', async (ctx) => {
        for (const phase of ['a', 'b']) await ctx.phase(phase, () => void charges.push(phase))
        return 'done'
      })
    const hold = proxy.holdAnswerTo(phaseWrite)
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    let first: Promise<unknown>
    try {
      first = run().catch((error: unknown) => error)
      await hold.sent
      vi.advanceTimersByTime(1_000)
    } finally {
      vi.useRealTimers()
    }
    hold.release()
    expect(await first).toHaveProperty('message', 'Command timed out')
    expect((await store.get('default', 'k'))?.recoveryPoint).toBe('a')
    await expectResumedAfterLease(run, clock, charges)
  } finally {
    client.disconnect()
    await proxy.close()
  }
})

// The result's write that ran unanswered: the release that follows deletes only a record still
// in progress, so the completed one stays and the retry replays it.
it("never deletes the record whose result's write ran unanswered", async () => {
  const { proxy, store } = opened()
  const idempotency = createIdempotency({ store, leaseMs })
  const key = randomUUID()
  let runs = 0
  const run = () =>
    idempotency.run(key, () => {
      runs++
      // The result's write goes out once fn returns.
      if (runs === 1) void proxy.cutAt('$8\r\ncomplete\r\n', 'after-answer')
      return 'charged'
    })
  const first = await run().catch((error: unknown) => error)
  expect(first).toBeInstanceOf(Error)
  expect(first).not.toBeInstanceOf(IdempotencyInProgressError)
  expect((await store.get('default', key))?.state).toBe('completed')
  await expect(run()).resolves.toBe('charged')
  expect(runs).toBe(1)
})

// Redis's own error answer (a ReplyError) says the script wrote nothing: the key is released
// as usual, and the retry runs at once. The store's user loses HSET while the phase runs, so
// the script's first write is refused (NOPERM) after its reads.
it('releases the key when Redis answered the phase save with an error', async () => {
  const admin = new Redis(await brokerUrl('redis'), { enableAutoPipelining: false })
  const user = `bw-phase-refused-${randomUUID()}`
  await admin.call('ACL', 'SETUSER', user, 'on', 'nopass', '~*', '&*', '+@all')
  const url = new URL(await brokerUrl('redis'))
  url.username = user
  const client = new Redis(url.toString(), { enableAutoPipelining: false })
  try {
    const store = createRedisIdempotencyStore({
      client,
      keyPrefix: `bw-phase-refused:${randomUUID()}:`,
    })
    const idempotency = createIdempotency({ store, clock: new ManualClock(1_000_000), leaseMs })
    const charges: string[] = []
    let refuse = true
    const run = () =>
      idempotency.run('k', async (ctx) => {
        await ctx.phase('a', async () => {
          charges.push('a')
          if (refuse) await admin.call('ACL', 'SETUSER', user, '-hset')
        })
        return 'done'
      })
    await expect(run()).rejects.toThrow(/can't run this command/)
    refuse = false
    await admin.call('ACL', 'SETUSER', user, '+hset')
    await expect(run()).resolves.toBe('done')
    expect(charges).toEqual(['a', 'a'])
  } finally {
    client.disconnect()
    await admin.call('ACL', 'DELUSER', user)
    admin.disconnect()
  }
})
