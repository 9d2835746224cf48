import { describe, expect, it } from 'vitest'
import {
  AbortedError,
  BrokenCircuitError,
  bulkhead,
  circuitBreaker,
  DeadlineExceededError,
  InvalidOptionError,
  neverAbortedSignal,
  type Policy,
  type PolicyContext,
  type PolicyFunction,
  pipeline,
} from '../../src/index.js'
import { retry } from '../../src/policies/retry.js'
import { timeout } from '../../src/policies/timeout.js'
import { ManualClock } from '../../src/testing/index.js'

// A policy that logs when a call passes through it, in and out, and hands fn a context of
// its own (attempt 1) as any policy unaware of pipeline's context protocol would.
class Recording implements Policy {
  constructor(
    readonly name: string,
    readonly log: string[],
  ) {}

  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    this.log.push(`${this.name}>`)
    try {
      return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
    } finally {
      this.log.push(`<${this.name}`)
    }
  }
}

// Runs fn `times` times, numbering the attempts like a retry policy does.
class Repeat implements Policy {
  constructor(readonly times: number) {}

  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    let last: T | undefined
    for (let attempt = 1; attempt <= this.times; attempt++)
      last = await fn({ signal: signal ?? neverAbortedSignal, attempt })
    return last as T
  }
}

describe('pipeline', () => {
  it('runs the first policy outermost and the last innermost', async () => {
    const log: string[] = []
    const policy = pipeline(
      new Recording('a', log),
      new Recording('b', log),
      new Recording('c', log),
    )
    await expect(
      policy.execute(() => {
        log.push('fn')
        return 'done'
      }),
    ).resolves.toBe('done')
    expect(log).toEqual(['a>', 'b>', 'c>', 'fn', '<c', '<b', '<a'])
  })

  it('records events of real policies from the outer to the inner one', async () => {
    const clock = new ManualClock()
    const log: string[] = []
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 1 }, clock })
    const limiter = bulkhead({ maxConcurrent: 1, clock })
    breaker.events.on((e) => log.push(`breaker:${e.type}`))
    limiter.events.on((e) => log.push(`bulkhead:${e.type}`))
    const policy = pipeline(
      new Recording('outer', log),
      breaker,
      new Recording('mid', log),
      limiter,
    )
    await policy.execute(() => {
      log.push(`fn running=${limiter.running}`)
    })
    expect(log).toEqual(['outer>', 'mid>', 'fn running=1', '<mid', 'breaker:success', '<outer'])
    log.length = 0
    await policy.execute(() => Promise.reject(new Error('down'))).catch(() => undefined)
    await policy.execute(() => 'unreached').catch(() => undefined)
    // Open: the breaker answers, and nothing inside it runs.
    expect(log).toEqual([
      'outer>',
      'mid>',
      '<mid',
      'breaker:failure',
      'breaker:stateChange',
      '<outer',
      'outer>',
      'breaker:rejected',
      '<outer',
    ])
  })

  it("hands fn the outer retry's attempt through policies that build their own context", async () => {
    const log: string[] = []
    const attempts: number[] = []
    const policy = pipeline(
      new Repeat(3),
      circuitBreaker(),
      new Recording('own-context', log),
      bulkhead({ maxConcurrent: 1 }),
    )
    await policy.execute(({ attempt }) => {
      attempts.push(attempt)
    })
    expect(attempts).toEqual([1, 2, 3])
    const innermost = pipeline(new Repeat(2), new Recording('last', log))
    const seen: number[] = []
    await innermost.execute(({ attempt }) => {
      seen.push(attempt)
    })
    expect(seen).toEqual([1, 2])
  })

  // "Anything with execute(fn, signal)" composes (docs/policies.md), and fn always receives a
  // PolicyContext. cockatiel's timeout, bulkhead and breaker hand their fn { signal } only, and a
  // hand-written JavaScript policy may call fn() with nothing: fn saw attempt undefined (and
  // attempt undefined even on an outer retry's second attempt), or the call failed with a
  // TypeError from inside pipeline ("Cannot read properties of undefined (reading 'attempt')").
  it('hands fn a whole context through a policy of ones own that hands it less', async () => {
    const signalOnly: Policy = {
      execute: (fn, signal) =>
        Promise.resolve((fn as (c: unknown) => unknown)({ signal: signal ?? neverAbortedSignal })),
    } as Policy
    const nothing: Policy = {
      execute: (fn) => Promise.resolve((fn as () => unknown)()),
    } as Policy
    const controller = new AbortController()
    for (const foreign of [signalOnly, nothing]) {
      for (const shape of ['last', 'middle'] as const) {
        const seen: Array<[unknown, unknown]> = []
        const policy =
          shape === 'last'
            ? pipeline(new Repeat(2), foreign)
            : pipeline(new Repeat(2), foreign, circuitBreaker())
        await policy.execute(({ attempt, signal }) => {
          seen.push([attempt, signal])
        }, controller.signal)
        expect(seen).toEqual([
          [1, controller.signal],
          [2, controller.signal],
        ])
      }
    }
  })

  it("passes the caller's signal through context-aware policies unchanged", async () => {
    const controller = new AbortController()
    let seen: PolicyContext | undefined
    await pipeline(circuitBreaker(), bulkhead({ maxConcurrent: 1 })).execute((context) => {
      seen = context
    }, controller.signal)
    expect(seen?.signal).toBe(controller.signal)
    await pipeline(circuitBreaker()).execute((context) => {
      seen = context
    })
    expect(seen?.signal).toBe(neverAbortedSignal)
  })

  it("still rejects at once on the caller's abort after an inner retry slept (outer timeout racing the signal)", async () => {
    const clock = new ManualClock()
    const policy = pipeline(
      timeout(10_000, { clock }),
      retry({ clock, baseDelayMs: 100, jitter: 'none' }),
    )
    const controller = new AbortController()
    let calls = 0
    let outcome: unknown = 'pending'
    // fn ignores its signal, so only the timeout's race can answer the caller.
    policy
      .execute(() => {
        calls++
        if (calls === 1) throw Object.assign(new Error('unavailable'), { status: 503 })
        return new Promise(() => {})
      }, controller.signal)
      .then(
        (value) => (outcome = value),
        (error: unknown) => (outcome = error),
      )
    await clock.advance(100)
    expect(calls).toBe(2)
    controller.abort('caller left')
    await clock.advance(0)
    expect(outcome).toBeInstanceOf(AbortedError)
    expect((outcome as AbortedError).cause).toBe('caller left')
  })

  it('composes nested pipelines as if flattened', async () => {
    const log: string[] = []
    const inner = pipeline(new Recording('b', log), new Recording('c', log))
    await pipeline(new Recording('a', log), inner, new Recording('d', log)).execute(() => {
      log.push('fn')
    })
    expect(log).toEqual(['a>', 'b>', 'c>', 'd>', 'fn', '<d', '<c', '<b', '<a'])
  })

  it('with no policies just runs fn, turning a synchronous throw into a rejection', async () => {
    await expect(pipeline().execute(() => 7)).resolves.toBe(7)
    const call = pipeline().execute(() => {
      throw new Error('sync')
    })
    await expect(call).rejects.toThrow('sync')
  })

  // An empty pipeline ran fn under an already-aborted signal, while every policy and every
  // non-empty pipeline refuses the call without running fn.
  it('with no policies refuses an already-aborted signal without running fn, as a policy does', async () => {
    const controller = new AbortController()
    controller.abort(new Error('caller left'))
    let calls = 0
    const fn = () => {
      calls++
      return 7
    }
    for (const empty of [pipeline(), pipeline(pipeline())]) {
      const refused = await empty.execute(fn, controller.signal).catch((e: unknown) => e)
      const byPolicy = await pipeline(bulkhead({ maxConcurrent: 1 }))
        .execute(fn, controller.signal)
        .catch((e: unknown) => e)
      expect(refused).toMatchObject({ code: 'ABORTED', cause: controller.signal.reason })
      expect((refused as Error).constructor).toBe((byPolicy as Error).constructor)
    }
    // A deadline that ran out is refused as the deadline, as the policies do.
    const deadline = new AbortController()
    deadline.abort(new DeadlineExceededError(0))
    await expect(pipeline().execute(fn, deadline.signal)).rejects.toMatchObject({
      code: 'DEADLINE_EXCEEDED',
      started: false,
    })
    expect(calls).toBe(0)
    // A signal that has not aborted still runs fn.
    await expect(pipeline().execute(fn, new AbortController().signal)).resolves.toBe(7)
    expect(calls).toBe(1)
  })

  it('rejects something that is not a policy, naming its position', () => {
    let error: unknown
    try {
      pipeline(circuitBreaker(), {} as Policy)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('pipeline.policies[1]')
  })

  describe('in the recommended order', () => {
    function build(clock: ManualClock, breakerFailures: number) {
      const retrier = retry({ maxAttempts: 5, baseDelayMs: 100, jitter: 'none', clock })
      const breaker = circuitBreaker({
        window: { kind: 'consecutive', failures: breakerFailures },
        clock,
      })
      const policy = pipeline(
        timeout(10_000, { clock }),
        retrier,
        breaker,
        timeout(1_000, { clock }),
        bulkhead({ maxConcurrent: 2, clock }),
      )
      return { policy, retrier, breaker }
    }
    const reset = () => Promise.reject(Object.assign(new Error('reset'), { code: 'ECONNRESET' }))

    it('retries transient failures, and fn sees each attempt number', async () => {
      const clock = new ManualClock()
      const { policy } = build(clock, 5)
      const attempts: number[] = []
      const call = policy.execute(({ attempt }) => {
        attempts.push(attempt)
        return attempt < 3 ? reset() : Promise.resolve('ok')
      })
      await clock.advance(1_000)
      await expect(call).resolves.toBe('ok')
      expect(attempts).toEqual([1, 2, 3])
    })

    it('a per-try timeout counts as a breaker failure', async () => {
      const clock = new ManualClock()
      const { policy, breaker } = build(clock, 1)
      const call = policy
        .execute(
          ({ signal }) =>
            new Promise((_, reject) =>
              signal.addEventListener('abort', () => reject(new Error('aborted by timeout'))),
            ),
        )
        .catch((e: unknown) => e)
      await clock.advance(1_000)
      expect(breaker.state).toBe('open')
      await clock.advance(200)
      expect(await call).toBeInstanceOf(BrokenCircuitError)
    })

    it('stops retrying as soon as the breaker opens', async () => {
      const clock = new ManualClock()
      const { policy, retrier } = build(clock, 2)
      const giveUps: string[] = []
      retrier.events.on((e) => {
        if (e.type === 'giveUp') giveUps.push(e.reason)
      })
      let calls = 0
      const call = policy
        .execute(() => {
          calls++
          return reset()
        })
        .catch((e: unknown) => e)
      await clock.advance(5_000)
      expect(await call).toBeInstanceOf(BrokenCircuitError)
      expect(calls).toBe(2)
      expect(giveUps).toEqual(['notRetryable'])
    })
  })
})
