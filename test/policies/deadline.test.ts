import type { IncomingHttpHeaders } from 'node:http'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  adoptDeadline,
  currentDeadline,
  DEADLINE_HEADER,
  DEFAULT_MAX_DEADLINE_MS,
  deadlineFromHeaders,
  deadlineHeaderValue,
  parseGrpcTimeout,
  remainingMs,
  withDeadline,
} from '../../src/policies/deadline.js'
import { DeadlineExceededError } from '../../src/policies/errors.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

describe('withDeadline', () => {
  it('makes the deadline visible to everything inside, across awaits, and only there', async () => {
    const clock = new ManualClock(1_000)
    expect(currentDeadline()).toBeUndefined()
    expect(remainingMs()).toBeUndefined()
    const seen = await withDeadline(
      500,
      async () => {
        await Promise.resolve()
        const deadline = currentDeadline()
        await new Promise((resolve) => setImmediate(resolve))
        return { atMs: deadline?.atMs, left: remainingMs(), header: deadlineHeaderValue() }
      },
      { clock },
    )
    expect(seen).toEqual({ atMs: 1_500, left: 500, header: '500' })
    expect(currentDeadline()).toBeUndefined()
  })

  it('counts down with the clock and never reports less than zero', async () => {
    const clock = new ManualClock()
    const done = withDeadline(
      300,
      async () => {
        const left: Array<number | undefined> = [remainingMs()]
        await clock.advance(120.6)
        left.push(remainingMs(), Number(deadlineHeaderValue()))
        await clock.advance(1_000)
        left.push(remainingMs(), Number(deadlineHeaderValue()))
        return left
      },
      { clock },
    )
    expect(await done).toEqual([300, 179.4, 179, 0, 0])
  })

  it('sends no header for an infinite deadline (there is no budget to announce)', async () => {
    const clock = new ManualClock()
    const header = await withDeadline(Number.POSITIVE_INFINITY, () => deadlineHeaderValue(), {
      clock,
    })
    expect(header).toBeUndefined()
  })

  it('nested deadlines can shorten the budget but never extend it', async () => {
    const clock = new ManualClock()
    await withDeadline(
      1_000,
      async () => {
        // The inner call inherits the outer clock.
        await withDeadline(5_000, async () => {
          expect(currentDeadline()?.atMs).toBe(1_000)
        })
        await withDeadline(200, async () => {
          expect(currentDeadline()?.atMs).toBe(200)
          await clock.advance(50)
          await withDeadline(400, async () => expect(remainingMs()).toBe(150))
        })
        expect(currentDeadline()?.atMs).toBe(1_000)
      },
      { clock },
    )
  })

  it('its signal aborts at the deadline with DeadlineExceededError, and no timer outlives it', async () => {
    const clock = new ManualClock()
    let signal: AbortSignal | undefined
    const done = withDeadline(
      250,
      async () => {
        signal = currentDeadline()!.signal
        expect(clock.pendingTimers).toBe(1)
        await clock.advance(249)
        expect(signal.aborted).toBe(false)
        await clock.advance(1)
        expect(signal.aborted).toBe(true)
        expect(signal.reason).toBeInstanceOf(DeadlineExceededError)
        return 'done'
      },
      { clock },
    )
    expect(await done).toBe('done')
    expect(clock.pendingTimers).toBe(0)
  })

  it('creates no timer when nobody reads the signal, and clears it when the work ends early', async () => {
    const clock = new ManualClock()
    await withDeadline(1_000, async () => expect(clock.pendingTimers).toBe(0), { clock })
    await withDeadline(
      1_000,
      async () => {
        void currentDeadline()!.signal
        expect(clock.pendingTimers).toBe(1)
      },
      { clock },
    )
    expect(clock.pendingTimers).toBe(0)
  })

  it('hands back what fn returns or throws, sync or async', async () => {
    const clock = new ManualClock()
    expect(await withDeadline(10, () => 7, { clock })).toBe(7)
    await expect(
      withDeadline(
        10,
        () => {
          throw new Error('sync')
        },
        { clock },
      ),
    ).rejects.toThrow('sync')
  })

  it('rejects invalid arguments naming them', async () => {
    await expect(withDeadline(-1, async () => 1)).rejects.toThrow(/^withDeadline\.ms: expected/)
    await expect(withDeadline(Number.NaN, async () => 1)).rejects.toBeInstanceOf(InvalidOptionError)
    await expect(withDeadline(10, 'x' as never)).rejects.toThrow(/^withDeadline\.fn: expected/)
  })
})

describe('deadline headers', () => {
  it('round-trips: the header sent out is the budget adopted by the next service', async () => {
    const client = new ManualClock(10_000)
    const server = new ManualClock(99_999)
    const headers: Record<string, string> = {}
    await withDeadline(
      800,
      async () => {
        await client.advance(300)
        headers[DEADLINE_HEADER] = deadlineHeaderValue()!
      },
      { clock: client },
    )
    expect(headers).toEqual({ 'x-breakwater-deadline-ms': '500' })
    const seen = await adoptDeadline(
      headers,
      async () => ({ atMs: currentDeadline()?.atMs, left: remainingMs() }),
      { clock: server },
    )
    expect(seen).toEqual({ atMs: 100_499, left: 500 })
  })

  it('reads fetch Headers, Node header objects, arrays and odd capitalisation', () => {
    expect(deadlineFromHeaders(new Headers({ 'X-Breakwater-Deadline-Ms': '42' }))).toBe(42)
    expect(deadlineFromHeaders({ 'x-breakwater-deadline-ms': ['43', '1'] })).toBe(1)
    const incoming: IncomingHttpHeaders = { host: 'a', 'x-breakwater-deadline-ms': '41' }
    expect(deadlineFromHeaders(incoming)).toBe(41)
    expect(deadlineFromHeaders({ 'X-Breakwater-Deadline-MS': '44' })).toBe(44)
    expect(deadlineFromHeaders({ 'x-breakwater-deadline-ms': ' 45 ' })).toBe(45)
    expect(deadlineFromHeaders({ 'x-breakwater-deadline-ms': '-3' })).toBe(-3)
    expect(deadlineFromHeaders({})).toBeUndefined()
  })

  it('caps the budget with maxMs, uses defaultMs without a header and ignores garbage', () => {
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '90000' }, { maxMs: 30_000 })).toBe(30_000)
    expect(deadlineFromHeaders({}, { defaultMs: 5_000, maxMs: 30_000 })).toBe(5_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '12abc' }, { defaultMs: 7 })).toBe(7)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '1e3' })).toBeUndefined()
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '' })).toBeUndefined()
    expect(() => deadlineFromHeaders({}, { maxMs: -1 })).toThrow(
      /^deadlineFromHeaders\.maxMs: expected/,
    )
    expect(() => deadlineFromHeaders({}, { defaultMs: Number.NaN })).toThrow(
      /^deadlineFromHeaders\.defaultMs: expected/,
    )
  })

  it('accepts gRPC grpc-timeout values; with both headers, the smaller budget', () => {
    expect(deadlineFromHeaders({ 'grpc-timeout': '100m' })).toBe(100)
    expect(deadlineFromHeaders({ 'grpc-timeout': '2S' })).toBe(2_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '3M' })).toBe(180_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '4M' })).toBe(240_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '2500u' })).toBe(2.5)
    expect(deadlineFromHeaders({ 'grpc-timeout': '3000000n' })).toBe(3)
    expect(deadlineFromHeaders({ 'grpc-timeout': '2S', [DEADLINE_HEADER]: '10' })).toBe(10)
    // Two bounds on one budget: the tighter holds (as the proxy reads them), so a hop that
    // speaks gRPC cannot be given more time than the caller's own header allows, or the reverse.
    expect(deadlineFromHeaders({ 'grpc-timeout': '10m', [DEADLINE_HEADER]: '2000' })).toBe(10)
    expect(deadlineFromHeaders({ 'grpc-timeout': '2S', [DEADLINE_HEADER]: 'junk' })).toBe(2_000)
  })

  it('caps a caller budget at DEFAULT_MAX_DEADLINE_MS (five minutes) unless maxMs says otherwise', () => {
    const threeDays = String(3 * 24 * 3_600_000)
    expect(DEFAULT_MAX_DEADLINE_MS).toBe(300_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: threeDays })).toBe(300_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '1H' })).toBe(300_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '299999' })).toBe(299_999)
    // An explicit maxMs replaces the default, in both directions; Infinity turns the cap off.
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: threeDays }, { maxMs: 600_000 })).toBe(600_000)
    expect(
      deadlineFromHeaders({ [DEADLINE_HEADER]: threeDays }, { maxMs: Number.POSITIVE_INFINITY }),
    ).toBe(3 * 24 * 3_600_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '1H' }, { maxMs: Number.POSITIVE_INFINITY })).toBe(
      3_600_000,
    )
  })

  it("never cuts the server's own defaultMs with the default cap, and refuses defaultMs above an explicit maxMs", () => {
    expect(deadlineFromHeaders({}, { defaultMs: 600_000 })).toBe(600_000)
    // The caller's header is still capped at the default, even when defaultMs is longer.
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '900000' }, { defaultMs: 600_000 })).toBe(
      300_000,
    )
    expect(() => deadlineFromHeaders({}, { defaultMs: 60_000, maxMs: 30_000 })).toThrow(
      InvalidOptionError,
    )
    expect(() => deadlineFromHeaders({}, { defaultMs: 60_000, maxMs: 30_000 })).toThrow(
      /^deadlineFromHeaders\.defaultMs: expected .*<= maxMs/,
    )
  })

  it('adoptDeadline holds work for at most the default cap when a caller asks for days', async () => {
    const clock = new ManualClock(1_000)
    const left = await adoptDeadline(
      { [DEADLINE_HEADER]: String(3 * 24 * 3_600_000) },
      () => remainingMs(),
      { clock },
    )
    expect(left).toBe(300_000)
  })

  it.each(['', '100', 'm', '123456789S', '1.5S', '-1S', '10s', '10x'])(
    'rejects malformed grpc-timeout %j',
    (value) => {
      expect(parseGrpcTimeout(value)).toBeUndefined()
    },
  )

  it('adoptDeadline rejects already-expired work at once without running it', async () => {
    const clock = new ManualClock(5_000)
    let ran = 0
    for (const value of ['0', '-20']) {
      const error = await adoptDeadline(
        { [DEADLINE_HEADER]: value },
        async () => {
          ran++
        },
        { clock },
      ).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(DeadlineExceededError)
      expect((error as DeadlineExceededError).code).toBe('DEADLINE_EXCEEDED')
      expect((error as DeadlineExceededError).retryable).toBe(false)
    }
    expect(
      await adoptDeadline({ 'grpc-timeout': '0m' }, async () => 1, { clock }).catch((e) => e),
    ).toBeInstanceOf(DeadlineExceededError)
    expect(ran).toBe(0)
  })

  it('adoptDeadline runs fn without a deadline when there is no header, or with defaultMs', async () => {
    const clock = new ManualClock()
    expect(await adoptDeadline({}, () => currentDeadline())).toBeUndefined()
    expect(await adoptDeadline({}, () => currentDeadline()?.atMs, { clock, defaultMs: 250 })).toBe(
      250,
    )
    expect(
      await adoptDeadline({ [DEADLINE_HEADER]: '99999' }, () => remainingMs(), {
        clock,
        maxMs: 1_000,
      }),
    ).toBe(1_000)
  })

  it('adoptDeadline reports invalid options as a rejection', async () => {
    await expect(adoptDeadline({}, async () => 1, { maxMs: -5 })).rejects.toBeInstanceOf(
      InvalidOptionError,
    )
    // A bad clock too: a rejection naming adoptDeadline.clock, never a synchronous throw.
    const badClock = adoptDeadline({}, async () => 1, { clock: {} as never })
    await expect(badClock).rejects.toBeInstanceOf(InvalidOptionError)
    await expect(badClock).rejects.toMatchObject({ option: 'adoptDeadline.clock' })
  })
})
