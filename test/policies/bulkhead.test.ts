import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { describe, expect, it } from 'vitest'
import {
  AbortedError,
  type BulkheadEvent,
  type BulkheadOptions,
  BulkheadRejectedError,
  bulkhead,
  createBulkheads,
  InvalidOptionError,
} from '../../src/index.js'
import { timeout } from '../../src/policies/timeout.js'
import { ManualClock } from '../../src/testing/index.js'

interface Deferred<T> {
  promise: Promise<T>
  resolve(value: T): void
  reject(error: unknown): void
}

function deferred<T = string>(): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

function thrown(fn: () => unknown): unknown {
  try {
    fn()
  } catch (error) {
    return error
  }
  return undefined
}

describe('bulkhead', () => {
  it('runs up to maxConcurrent calls and refuses the next one without running it', async () => {
    const clock = new ManualClock()
    const limiter = bulkhead({ maxConcurrent: 2, clock })
    const gates = [deferred(), deferred()]
    const running = gates.map((g) => limiter.execute(() => g.promise))
    expect(limiter.running).toBe(2)
    let ran = false
    const error = await limiter
      .execute(() => {
        ran = true
        return 'x'
      })
      .catch((e: unknown) => e)
    expect(ran).toBe(false)
    expect(error).toBeInstanceOf(BulkheadRejectedError)
    expect(error).toMatchObject({
      code: 'BULKHEAD_FULL',
      reason: 'full',
      retryable: false,
      maxConcurrent: 2,
      maxQueued: 0,
    })
    gates[0]!.resolve('a')
    await expect(running[0]).resolves.toBe('a')
    expect(limiter.running).toBe(1)
    await expect(limiter.execute(() => 'c')).resolves.toBe('c')
    gates[1]!.resolve('b')
    await running[1]
    expect(limiter.running).toBe(0)
  })

  it('queues up to maxQueued calls and starts them in arrival order', async () => {
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 2 })
    const started: string[] = []
    const gates = new Map<string, Deferred<string>>()
    const call = (name: string) => {
      gates.set(name, deferred())
      return limiter.execute(() => {
        started.push(name)
        return gates.get(name)!.promise
      })
    }
    const a = call('a')
    const b = call('b')
    const c = call('c')
    expect([limiter.running, limiter.queued]).toEqual([1, 2])
    await expect(call('d')).rejects.toThrow(BulkheadRejectedError)
    gates.get('a')!.resolve('a')
    await a
    // The freed slot went straight to the oldest waiter: a newcomer cannot jump the queue.
    const e = call('e')
    expect([limiter.running, limiter.queued]).toEqual([1, 2])
    gates.get('b')!.resolve('b')
    await b
    gates.get('c')!.resolve('c')
    await c
    gates.get('e')!.resolve('e')
    await e
    expect(started).toEqual(['a', 'b', 'c', 'e'])
    expect([limiter.running, limiter.queued]).toEqual([0, 0])
  })

  it('refuses a queued call whose wait passes queueTimeoutMs, and clears the timer otherwise', async () => {
    const clock = new ManualClock()
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 2, queueTimeoutMs: 100, clock })
    const gate = deferred()
    const first = limiter.execute(() => gate.promise)
    const waiting = limiter.execute(() => 'never')
    const waitingResult = waiting.catch((e: unknown) => e)
    await clock.advance(60)
    const second = limiter.execute(() => 'second')
    await clock.advance(40)
    expect(await waitingResult).toMatchObject({ code: 'BULKHEAD_FULL', reason: 'queueTimeout' })
    expect(limiter.queued).toBe(1)
    gate.resolve('first')
    await first
    await expect(second).resolves.toBe('second')
    expect(clock.pendingTimers).toBe(0)
  })

  it('takes an aborted queued call out of the queue at once', async () => {
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5 })
    const gate = deferred()
    const first = limiter.execute(() => gate.promise)
    const controller = new AbortController()
    let ran = false
    const aborted = limiter.execute(() => {
      ran = true
      return 'x'
    }, controller.signal)
    const behind = limiter.execute(() => 'behind')
    expect(limiter.queued).toBe(2)
    controller.abort(new Error('no longer needed'))
    expect(limiter.queued).toBe(1) // synchronously, not when a slot frees
    const error = await aborted.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(AbortedError)
    expect((error as AbortedError).cause).toEqual(new Error('no longer needed'))
    gate.resolve('first')
    await first
    await expect(behind).resolves.toBe('behind')
    expect(ran).toBe(false)
  })

  it('takes a call aborted by a queued listener out of the queue at once', async () => {
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 5 })
    const gate = deferred()
    const first = limiter.execute(() => gate.promise)
    const controller = new AbortController()
    // The listener runs while the call is being queued, before it would otherwise have
    // subscribed to its signal.
    limiter.events.on((event) => {
      if (event.type === 'queued') controller.abort('no longer needed')
    })
    let ran = false
    const aborted = limiter.execute(() => {
      ran = true
      return 'x'
    }, controller.signal)
    expect(limiter.queued).toBe(0)
    const error = await aborted.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(AbortedError)
    expect((error as AbortedError).cause).toBe('no longer needed')
    gate.resolve('first')
    await first
    expect(ran).toBe(false)
    expect(limiter.running).toBe(0)
  })

  it('rejects a call whose signal is already aborted without taking a slot', async () => {
    const limiter = bulkhead({ maxConcurrent: 1 })
    await expect(limiter.execute(() => 'x', AbortSignal.abort())).rejects.toThrow(AbortedError)
    expect(limiter.running).toBe(0)
  })

  it('holds the slot until fn settles, even after its caller stopped waiting', async () => {
    const limiter = bulkhead({ maxConcurrent: 1 })
    const controller = new AbortController()
    const gate = deferred()
    const call = limiter.execute(() => gate.promise, controller.signal) // fn ignores the signal
    controller.abort()
    await Promise.resolve()
    expect(limiter.running).toBe(1)
    await expect(limiter.execute(() => 'x')).rejects.toThrow(BulkheadRejectedError)
    gate.resolve('done')
    await call
    expect(limiter.running).toBe(0)
  })

  it('keeps the slot after a hard timeout outside has rejected the caller', async () => {
    const clock = new ManualClock()
    const limiter = bulkhead({ maxConcurrent: 1, clock })
    const hard = timeout(100, { mode: 'hard', clock })
    const gate = deferred()
    const call = hard.execute((ctx) => limiter.execute(() => gate.promise, ctx.signal))
    const result = call.catch((e: unknown) => e)
    await clock.advance(100)
    expect(await result).toMatchObject({ code: 'TIMEOUT' })
    expect(limiter.running).toBe(1)
    gate.resolve('late')
    await gate.promise
    await Promise.resolve()
    expect(limiter.running).toBe(0)
  })

  // Infinity is how the rest of the library says "no limit" (timeouts, sleep, deadlines); a
  // bulkhead refused it for maxQueued with "an integer in [0, 2^53 - 1]", naming no way to ask
  // for an unbounded queue.
  it('takes maxQueued: Infinity as an unbounded queue, also in a registry', async () => {
    const clock = new ManualClock()
    for (const limiter of [
      bulkhead({ maxConcurrent: 1, maxQueued: Infinity, queueTimeoutMs: 50, clock }),
      createBulkheads({ a: { maxConcurrent: 1, maxQueued: Infinity } }, { clock }).get('a'),
    ]) {
      const gate = deferred()
      const first = limiter.execute(() => gate.promise)
      const order: number[] = []
      const queued = Array.from({ length: 1000 }, (_, i) =>
        limiter.execute(() => {
          order.push(i)
        }),
      )
      expect(limiter.queued).toBe(1000)
      gate.resolve('done')
      await Promise.all([first, ...queued])
      expect(order).toEqual(Array.from({ length: 1000 }, (_, i) => i))
      expect(limiter.running).toBe(0)
    }
    const error = thrown(() => bulkhead({ maxConcurrent: 1, maxQueued: -Infinity }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as Error).message).toContain('or Infinity (an unbounded queue)')
  })

  it('frees the slot when fn throws synchronously or rejects', async () => {
    const limiter = bulkhead({ maxConcurrent: 1 })
    await expect(
      limiter.execute(() => {
        throw new Error('sync')
      }),
    ).rejects.toThrow('sync')
    await expect(limiter.execute(() => Promise.reject(new Error('async')))).rejects.toThrow('async')
    expect(limiter.running).toBe(0)
    await expect(limiter.execute(() => 'ok')).resolves.toBe('ok')
  })

  it('hands the waiter the caller context (signal, attempt 1)', async () => {
    const limiter = bulkhead({ maxConcurrent: 1 })
    const controller = new AbortController()
    const seen = await limiter.execute((ctx) => ctx, controller.signal)
    expect(seen.signal).toBe(controller.signal)
    expect(seen.attempt).toBe(1)
  })

  it('emits queued and rejected events, and publishes rejections on breakwater:bulkhead:rejected', async () => {
    const clock = new ManualClock()
    const limiter = bulkhead({
      maxConcurrent: 1,
      maxQueued: 1,
      queueTimeoutMs: 10,
      clock,
      name: 'db',
    })
    const events: BulkheadEvent[] = []
    limiter.events.on((e) => events.push(e))
    const published: unknown[] = []
    const onMessage = (m: unknown) => published.push(m)
    subscribe('breakwater:bulkhead:rejected', onMessage)
    try {
      const gate = deferred()
      const first = limiter.execute(() => gate.promise)
      const queued = limiter.execute(() => 'x').catch(() => undefined)
      await limiter.execute(() => 'y').catch(() => undefined)
      await clock.advance(10)
      await queued
      gate.resolve('done')
      await first
    } finally {
      unsubscribe('breakwater:bulkhead:rejected', onMessage)
    }
    expect(events).toEqual([
      { type: 'queued', queued: 1 },
      { type: 'rejected', reason: 'full' },
      { type: 'rejected', reason: 'queueTimeout' },
    ])
    expect(published).toEqual([
      expect.objectContaining({ name: 'db', reason: 'full' }),
      expect.objectContaining({ name: 'db', reason: 'queueTimeout' }),
    ])
  })

  it('removes waiters from anywhere in a long queue', async () => {
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 10_000 })
    const gate = deferred()
    const first = limiter.execute(() => gate.promise)
    const controllers = Array.from({ length: 10_000 }, () => new AbortController())
    const order: number[] = []
    const calls = controllers.map((c, i) =>
      limiter
        .execute(() => {
          order.push(i)
        }, c.signal)
        .catch(() => undefined),
    )
    // Abort every other waiter, from the middle outwards.
    for (let i = 1; i < controllers.length; i += 2) controllers[i]!.abort()
    expect(limiter.queued).toBe(5_000)
    gate.resolve('go')
    await first
    await Promise.all(calls)
    expect(order).toEqual(Array.from({ length: 5_000 }, (_, k) => 2 * k))
    expect([limiter.running, limiter.queued]).toEqual([0, 0])
  })

  const bad: Array<[string, unknown]> = [
    ['bulkhead.maxConcurrent', {}],
    ['bulkhead.maxConcurrent', { maxConcurrent: 0 }],
    ['bulkhead.maxConcurrent', { maxConcurrent: 1.5 }],
    ['bulkhead.maxQueued', { maxConcurrent: 1, maxQueued: -1 }],
    ['bulkhead.queueTimeoutMs', { maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: Number.NaN }],
    ['bulkhead.clock', { maxConcurrent: 1, clock: { now: () => 0 } }],
    ['bulkhead.name', { maxConcurrent: 1, name: 7 }],
    ['bulkhead', null],
  ]
  it.each(bad)('rejects a bad %s with InvalidOptionError naming it', (option, options) => {
    const error = thrown(() => bulkhead(options as BulkheadOptions))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
  })
})

describe('createBulkheads', () => {
  it('makes one independent bulkhead per name, named after its key', async () => {
    const bulkheads = createBulkheads({
      B: { maxConcurrent: 30 },
      C: { maxConcurrent: 1 },
      D: { maxConcurrent: 2, maxQueued: 4 },
    })
    expect(bulkheads.names).toEqual(['B', 'C', 'D'])
    expect(bulkheads.get('C').name).toBe('C')
    expect(bulkheads.get('C')).toBe(bulkheads.get('C'))
    const gate = deferred()
    const busy = bulkheads.get('C').execute(() => gate.promise)
    await expect(bulkheads.get('C').execute(() => 'x')).rejects.toThrow(BulkheadRejectedError)
    await expect(bulkheads.get('B').execute(() => 'b')).resolves.toBe('b')
    gate.resolve('c')
    await busy
  })

  it('throws InvalidOptionError for an unknown name, and has() narrows strings', () => {
    const bulkheads = createBulkheads({ B: { maxConcurrent: 1 } })
    const name: string = 'Z'
    expect(bulkheads.has(name)).toBe(false)
    const error = thrown(() => bulkheads.get(name as 'B'))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).message).toBe(
      'bulkheads.get(name): expected one of "B", got "Z"',
    )
  })

  // The refusal listed the names as "${n}": an empty registry (built from a config that defines
  // none, which has() serves) read 'expected one of , got "Z"', and a name holding a quote
  // could not be told apart from two names.
  it.each([
    [{}, 'bulkheads.get(name): expected a name this registry defines (it defines none), got "Z"'],
    [
      { 'a"b': { maxConcurrent: 1 }, c: { maxConcurrent: 1 } },
      'bulkheads.get(name): expected one of "a\\"b", "c", got "Z"',
    ],
  ] as const)(
    'names the known names in the refusal of an unknown one (%j)',
    (definitions, message) => {
      const bulkheads = createBulkheads(definitions as Record<string, { maxConcurrent: number }>)
      expect((thrown(() => bulkheads.get('Z')) as Error).message).toBe(message)
    },
  )

  it('names the bad entry in InvalidOptionError', () => {
    const error = thrown(() =>
      createBulkheads({ B: { maxConcurrent: 1 }, C: { maxConcurrent: 1, maxQueued: -2 } }),
    )
    expect((error as InvalidOptionError).option).toBe('bulkheads.C.maxQueued')
  })

  // bulkhead() and retry() read options as they are given, inherited ones too; the registry
  // spread each definition ({ ...definition }), which keeps own keys only, so a definition made
  // with Object.create(defaults) lost maxConcurrent and was refused as if it were not given.
  it('reads inherited options of a definition, as bulkhead() does', async () => {
    const clock = new ManualClock()
    const defaults = { maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 5, clock }
    const bulkheads = createBulkheads({
      search: Object.create(defaults) as BulkheadOptions,
      named: Object.assign(Object.create(defaults) as BulkheadOptions, { name: 'own' }),
    })
    expect(bulkheads.get('search').name).toBe('search')
    expect(bulkheads.get('named').name).toBe('own')
    const gate = deferred()
    const busy = bulkheads.get('search').execute(() => gate.promise)
    const queued = bulkheads
      .get('search')
      .execute(() => 'queued')
      .catch((e: unknown) => e)
    // maxQueued 1: a third call is refused; the queued one times out on the inherited clock.
    await expect(bulkheads.get('search').execute(() => 'x')).rejects.toThrow(BulkheadRejectedError)
    expect(clock.pendingTimers).toBe(1)
    await clock.advance(5)
    expect(await queued).toBeInstanceOf(BulkheadRejectedError)
    gate.resolve('s')
    await busy
  })

  it('still refuses a misspelt own option of a definition, and a bad inherited one', () => {
    const misspelt = thrown(() =>
      createBulkheads({ search: { maxConcurrent: 1, maxQeued: 2 } as BulkheadOptions }),
    )
    expect((misspelt as InvalidOptionError).option).toBe('bulkheads.search.maxQeued')
    const inherited = thrown(() =>
      createBulkheads({ search: Object.create({ maxConcurrent: 0 }) as BulkheadOptions }),
    )
    expect((inherited as InvalidOptionError).option).toBe('bulkheads.search.maxConcurrent')
  })

  it('gives every bulkhead the registry clock unless it has its own', async () => {
    const shared = new ManualClock()
    const own = new ManualClock()
    const bulkheads = createBulkheads(
      {
        A: { maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 5 },
        B: { maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 5, clock: own },
      },
      { clock: shared },
    )
    const gates = [deferred(), deferred()]
    const busy = [
      bulkheads.get('A').execute(() => gates[0]!.promise),
      bulkheads.get('B').execute(() => gates[1]!.promise),
    ]
    const a = bulkheads
      .get('A')
      .execute(() => 'a')
      .catch((e: unknown) => e)
    const b = bulkheads
      .get('B')
      .execute(() => 'b')
      .catch((e: unknown) => e)
    expect([shared.pendingTimers, own.pendingTimers]).toEqual([1, 1])
    await shared.advance(5)
    await own.advance(5)
    expect(await a).toBeInstanceOf(BulkheadRejectedError)
    expect(await b).toBeInstanceOf(BulkheadRejectedError)
    for (const g of gates) g.resolve('x')
    await Promise.all(busy)
  })
})

// Read from Node's list of referenced handles (a referenced timer is listed as a 'Timeout').
// Real system-clock timers, but nothing waits for them: the queued call is aborted at once.
describe('bulkhead on the system clock', () => {
  const heldTimers = (): number =>
    process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length

  it('holds the process open while a queued call waits for its queue timeout', async () => {
    const limiter = bulkhead({ maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 60_000 })
    // The running call never settles and holds nothing: only the queue timeout can answer the
    // queued caller, so a script awaiting it must not exit before it does.
    void limiter.execute(() => new Promise(() => {}))
    const before = heldTimers()
    const stop = new AbortController()
    const queued = limiter.execute(() => 'never', stop.signal)
    expect(limiter.queued).toBe(1)
    expect(heldTimers()).toBe(before + 1)
    stop.abort()
    await expect(queued).rejects.toBeInstanceOf(AbortedError)
    expect(heldTimers()).toBe(before)
  })
})
