import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  AbortedError,
  BreakwaterError,
  BulkheadRejectedError,
  bulkhead,
  type PolicyFunction,
} from '../../src/index.js'

// fast-check's scheduler decides the order in which calls start, finish and abort, exploring
// interleavings a hand-written test would not think of. The checker is shown to work by
// running it against a deliberately racy bulkhead, which it must reject.

interface BulkheadLike {
  execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T>
  readonly running: number
  readonly queued: number
}

type MakeBulkhead = (s: fc.Scheduler, maxConcurrent: number, maxQueued: number) => BulkheadLike

interface CallPlan {
  readonly abort: boolean
  readonly fail: boolean
}

function capacityProperty(make: MakeBulkhead) {
  return fc.asyncProperty(
    fc.scheduler(),
    fc.integer({ min: 1, max: 3 }),
    fc.integer({ min: 0, max: 3 }),
    fc.array(fc.record({ abort: fc.boolean(), fail: fc.boolean() }), {
      minLength: 1,
      maxLength: 12,
    }),
    async (s, maxConcurrent, maxQueued, plans: CallPlan[]) => {
      const limiter = make(s, maxConcurrent, maxQueued)
      const violations: string[] = []
      let active = 0
      const check = (where: string) => {
        if (active > maxConcurrent) violations.push(`${where}: ${active} fns running at once`)
        if (limiter.running > maxConcurrent)
          violations.push(`${where}: running ${limiter.running} > maxConcurrent`)
        if (limiter.queued > maxQueued)
          violations.push(`${where}: queued ${limiter.queued} > maxQueued`)
      }
      let settled = 0
      const starts = plans.map(async (plan, i) => {
        const controller = new AbortController()
        if (plan.abort)
          void s.schedule(Promise.resolve(), `abort ${i}`).then(() => controller.abort())
        await s.schedule(Promise.resolve(), `start ${i}`)
        const hadRoom =
          !controller.signal.aborted &&
          (limiter.running < maxConcurrent || limiter.queued < maxQueued)
        const call = limiter.execute(async () => {
          active++
          check(`fn ${i} started`)
          try {
            await s.schedule(Promise.resolve(), `work ${i}`)
            if (plan.fail) throw new Error(`fn ${i} failed`)
            return i
          } finally {
            active--
          }
        }, controller.signal)
        check(`call ${i} submitted`)
        try {
          await call
        } catch (error) {
          if (error instanceof BulkheadRejectedError && hadRoom)
            violations.push(`call ${i} refused although a slot or queue place was free`)
          else if (!BreakwaterError.is(error) && !(error instanceof Error))
            violations.push(`call ${i} rejected with ${String(error)}`)
          else if (error instanceof AbortedError && !plan.abort)
            violations.push(`call ${i} aborted without an abort`)
        } finally {
          settled++
        }
      })
      while (s.count() > 0) {
        await s.waitNext(1)
        check('step')
      }
      await s.waitIdle()
      await new Promise<void>((resolve) => setImmediate(resolve)) // let promise jobs finish
      check('end')
      // Nothing is scheduled any more, so a call still pending now would wait forever (a lost
      // wake-up): report it rather than hang on it.
      if (settled !== plans.length) violations.push(`${plans.length - settled} calls never settled`)
      else await Promise.all(starts)
      if (limiter.running !== 0 || limiter.queued !== 0)
        violations.push(`left running=${limiter.running} queued=${limiter.queued}`)
      if (violations.length > 0) throw new Error(violations.join('\n'))
    },
  )
}

// The classic mistake: capacity is checked, then the code awaits something (here a scheduled
// pause standing for a config read or a log write), and only then takes the slot, so callers
// that checked in the same window all get in.
class RacyBulkhead implements BulkheadLike {
  running = 0
  readonly #waiting: Array<() => void> = []

  constructor(
    readonly maxConcurrent: number,
    readonly maxQueued: number,
    readonly pause: () => Promise<void>,
  ) {}

  get queued(): number {
    return this.#waiting.length
  }

  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    const mustWait = this.running >= this.maxConcurrent
    if (mustWait && this.#waiting.length >= this.maxQueued)
      throw new BulkheadRejectedError('full', this.maxConcurrent, this.maxQueued)
    await this.pause()
    // Re-checked here only to decide whether to wait, so no wake-up is lost: the one bug left
    // is the stale `mustWait` above letting callers through together.
    if (mustWait && this.running >= this.maxConcurrent)
      await new Promise<void>((resolve) => this.#waiting.push(resolve))
    this.running++
    try {
      return await fn({ signal: signal ?? new AbortController().signal, attempt: 1 })
    } finally {
      this.running--
      this.#waiting.shift()?.()
    }
  }
}

describe('bulkhead under arbitrary interleavings', () => {
  it('never runs more than maxConcurrent or queues more than maxQueued, refuses only when full, and settles every call', async () => {
    await fc.assert(
      capacityProperty((_s, maxConcurrent, maxQueued) => bulkhead({ maxConcurrent, maxQueued })),
      { numRuns: 300 },
    )
  })

  it('the same checker catches a bulkhead that checks capacity before an await', async () => {
    const result = await fc.check(
      capacityProperty(
        (s, maxConcurrent, maxQueued) =>
          new RacyBulkhead(maxConcurrent, maxQueued, () => s.schedule(Promise.resolve(), 'pause')),
      ),
      { numRuns: 300 },
    )
    expect(result.failed).toBe(true)
    expect(String(result.errorInstance)).toMatch(/fns running at once|> maxConcurrent/)
  })
})
